//! The one place an HTTP error body is made: `{"error", "code", "details"}`, the upstream's
//! flat shape, on every route and every failure.

use actix_web::body::{BoxBody, EitherBody, MessageBody};
use actix_web::dev::ServiceResponse;
use actix_web::http::{header, StatusCode};
use actix_web::middleware::ErrorHandlerResponse;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::ToSchema;

use crate::store::StoreError;
use crate::upstream::UpstreamError;

/// Every `code` an error body can carry.
pub const ERROR_CODES: [&str; 10] = [
    "BAD_REQUEST",
    "UNAUTHORIZED",
    "NOT_FOUND",
    "CONFLICT",
    "UNPROCESSABLE",
    "PAYLOAD_TOO_LARGE",
    "RATE_LIMITED",
    "UPSTREAM_ERROR",
    "UNAVAILABLE",
    "INTERNAL",
];

/// The error body of every route, in the upstream's flat shape.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"error": "job not found", "code": "NOT_FOUND", "details": ""}))]
pub struct ErrorBody {
    /// What went wrong, for a human.
    pub error: String,
    #[schema(schema_with = error_code_schema)]
    pub code: &'static str,
    /// The field at fault, upstream's own error code, or other detail; may be empty.
    pub details: String,
}

fn error_code_schema() -> impl Into<RefOr<Schema>> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some("What went wrong, for a program."))
        .enum_values(Some(ERROR_CODES))
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        debug_assert!(
            ERROR_CODES.contains(&code),
            "undocumented error code {code}"
        );
        ApiError {
            status,
            code,
            message: message.into(),
            details: String::new(),
            retry_after: None,
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "missing or invalid API key",
        )
        .with_details("send `Authorization: Bearer KEY` or `api-secret: KEY`")
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("{what} not found"),
        )
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "CONFLICT", message)
    }

    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "UNPROCESSABLE", message)
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            format!("request body is larger than {limit} bytes"),
        )
    }

    pub fn rate_limited(retry_after_secs: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "RATE_LIMITED",
            "request budget exhausted; try again later",
        );
        e.retry_after = Some(retry_after_secs.max(1));
        e
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", message)
    }

    /// An internal failure: the cause goes to the log, the client gets no internals.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "internal error",
        )
    }

    /// An upstream failure as the client sees it: a refusal keeps upstream's status and has
    /// upstream's code in `details`; a transient failure is a 503 (or a 429).
    pub fn upstream(error: &UpstreamError) -> Self {
        match error {
            UpstreamError::Refused {
                status,
                code,
                message,
                ..
            } => {
                let status = StatusCode::from_u16(*status)
                    .ok()
                    .filter(|s| s.is_client_error())
                    .unwrap_or(StatusCode::BAD_GATEWAY);
                Self::new(status, "UPSTREAM_ERROR", message.clone()).with_details(code.clone())
            }
            UpstreamError::Transient {
                status: Some(429),
                retry_after,
                ..
            } => {
                let mut e = ApiError::rate_limited(retry_after.map_or(10, |d| d.as_secs()));
                e.message = "upstream rate limit reached; try again later".into();
                e
            }
            UpstreamError::Transient { reason, .. } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "UPSTREAM_ERROR",
                "upstream is unavailable",
            )
            .with_details(reason.clone()),
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.message.clone(),
            code: self.code,
            details: self.details.clone(),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(secs) = self.retry_after {
            response.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        response.json(self.body())
    }
}

impl From<StoreError> for ApiError {
    /// Storage that cannot answer is the service being unavailable (a full disk, a lost
    /// database): `503` with what is wrong, retryable. Nothing was written (every write is
    /// whole or absent); the health tracker logs the failure once, not per request.
    fn from(e: StoreError) -> Self {
        match e {
            // The backend did not answer (a full disk, a lost database): nothing was written, and
            // the client may try again. The cause says what is wrong; backends keep secrets
            // (a database URL's password) out of it.
            StoreError::Unavailable(_) => {
                let mut error = ApiError::unavailable(e.to_string());
                error.retry_after = Some(5);
                error
            }
            StoreError::Corrupt(_) => ApiError::internal(&e),
        }
    }
}

/// Give every error response that is not already in the contract's shape (actix's own 404,
/// 405, payload and extractor errors) that shape, keeping its status.
pub fn shape_error_response<B: MessageBody + 'static>(
    res: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_json = res
        .response()
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let error = match status {
        StatusCode::NOT_FOUND => ApiError::not_found("route"),
        StatusCode::METHOD_NOT_ALLOWED => {
            ApiError::new(status, "BAD_REQUEST", "method not allowed on this route")
        }
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(status, "PAYLOAD_TOO_LARGE", "request body too large")
        }
        StatusCode::UNAUTHORIZED => ApiError::unauthorized(),
        StatusCode::TOO_MANY_REQUESTS => ApiError::new(status, "RATE_LIMITED", "too many requests"),
        StatusCode::SERVICE_UNAVAILABLE => ApiError::unavailable("service unavailable"),
        s if s.is_client_error() => ApiError::new(
            s,
            "BAD_REQUEST",
            s.canonical_reason().unwrap_or("bad request"),
        ),
        s => ApiError::new(s, "INTERNAL", "internal error"),
    };
    let (req, res) = res.into_parts();
    let mut new = HttpResponse::build(status);
    for (name, value) in res.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            new.insert_header((name.clone(), value.clone()));
        }
    }
    let new = new.json(error.body()).map_into_boxed_body();
    let res: ServiceResponse<EitherBody<B, BoxBody>> =
        ServiceResponse::new(req, new).map_into_right_body();
    Ok(ErrorHandlerResponse::Response(res))
}
