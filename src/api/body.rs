//! Request bodies: read with a size limit, parsed as JSON, every failure a 4xx in our shape.

use actix_web::{web, HttpRequest};
use futures_util::StreamExt;
use serde_json::Value;

use super::ApiError;

/// Read the whole body, refusing more than `limit` bytes (before reading, when
/// `content-length` already says so).
pub async fn read_limited(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes, ApiError> {
    let declared = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::payload_too_large(limit));
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("could not read the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::payload_too_large(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Parse a JSON body; the parser's message (line and column) goes into `details`.
pub fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "request body is empty; a JSON object is expected",
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request("request body is not valid JSON").with_details(e.to_string())
    })
}

/// A JSON object body, or a 400.
pub async fn json_object(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<serde_json::Map<String, Value>, ApiError> {
    let bytes = read_limited(req, payload, limit).await?;
    match parse_json(&bytes)? {
        Value::Object(map) => Ok(map),
        other => Err(ApiError::bad_request(format!(
            "request body must be a JSON object, not {}",
            kind_of(&other)
        ))),
    }
}

pub fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
