//! `x-request-id` on every response (echoed when the client sent a sane one), and one log line
//! per request carrying it.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage};

use super::openapi::ApiDocument;

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the request being handled, for handlers and error logs.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

fn acceptable(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// The route `req` takes, as its template: looked up in the API document, or by actix for
/// the few paths it does not name (the dashboard's).
fn route_label(req: &ServiceRequest) -> String {
    req.app_data::<web::Data<ApiDocument>>()
        .and_then(|doc| doc.route_of(req.path()))
        .map(str::to_owned)
        .or_else(|| req.match_pattern())
        .unwrap_or_else(|| "unmatched".to_owned())
}

pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = req
        .headers()
        .get(&HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map(str::to_owned)
        .unwrap_or_else(|| ulid::Ulid::new().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().clone();
    let path = req.path().to_owned();
    let route = route_label(&req);
    let started = Instant::now();
    let mut res = next.call(req).await?;
    if let Ok(value) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(HEADER, value);
    }
    let status = res.status().as_u16();
    let elapsed = started.elapsed();
    let micros = elapsed.as_micros() as u64;
    metrics::counter!(
        "agenthook_http_requests_total",
        "method" => method.to_string(),
        "route" => route.clone(),
        "status" => status.to_string()
    )
    .increment(1);
    metrics::histogram!("agenthook_http_request_duration_seconds", "route" => route)
        .record(elapsed.as_secs_f64());
    if matches!(path.as_str(), "/healthz" | "/readyz" | "/metrics") {
        tracing::debug!(request_id = %id, %method, %path, status, micros, "probe");
    } else {
        tracing::info!(request_id = %id, %method, %path, status, micros, "request");
    }
    Ok(res)
}
