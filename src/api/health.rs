use actix_web::{web, HttpResponse};
use serde_json::json;

use super::{ApiError, AppState};

/// The process is alive.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Storage open, scheduler and delivery workers running, not shutting down.
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if state.signals.is_shutting_down() {
        return Err(ApiError::unavailable("shutting down"));
    }
    if !state.store.is_healthy() {
        return Err(ApiError::unavailable("storage is not available"));
    }
    if !state.signals.workers_running() {
        return Err(ApiError::unavailable("background workers are not running"));
    }
    Ok(HttpResponse::Ok().json(json!({ "status": "ready" })))
}
