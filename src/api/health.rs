use actix_web::{get, web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, AppState, ErrorBody};

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthStatus {
    /// `ok` from `/healthz`, `ready` from `/readyz`.
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// The process is alive
#[utoipa::path(
    tag = "operations",
    operation_id = "healthz",
    responses((status = 200, description = "The process is alive", body = HealthStatus)),
)]
#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(HealthStatus { status: "ok" })
}

/// The service can take work
///
/// Storage open, scheduler and delivery workers running, not shutting down.
#[utoipa::path(
    tag = "operations",
    operation_id = "readyz",
    responses(
        (status = 200, description = "Ready", body = HealthStatus),
        (status = 503, description = "Shutting down, storage unavailable or workers stopped (`UNAVAILABLE`)", body = ErrorBody),
    ),
)]
#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if state.signals.is_shutting_down() {
        return Err(ApiError::unavailable("shutting down"));
    }
    if let Some(fault) = state.store.current_fault() {
        return Err(ApiError::unavailable(format!(
            "storage unavailable: {fault}"
        )));
    }
    if !state.store.is_healthy().await {
        return Err(ApiError::unavailable("storage is not available"));
    }
    if !state.signals.workers_running() {
        return Err(ApiError::unavailable("background workers are not running"));
    }
    Ok(HttpResponse::Ok().json(HealthStatus { status: "ready" }))
}
