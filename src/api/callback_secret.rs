//! `/v1/callback-secret`: the secret that signs a tenant's job callbacks, and its rotation.

use crate::service;

use actix_web::{get, post, web, HttpRequest, HttpResponse};

use super::subscriptions::{
    optional_object, parse_rotation, RotateSecretRequest, SecretView, BODY_LIMIT,
};
use super::{ApiError, AppState, ErrorBody};
use crate::clock::after;
use crate::domain::Tenant;

/// The secret that signs job callbacks
///
/// Generated on first use.
#[utoipa::path(
    tag = "callback secret",
    operation_id = "get_callback_secret",
    responses(
        (status = 200, description = "The tenant's callback secret", body = SecretView),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_secret" = [])),
)]
#[get("/callback-secret")]
pub async fn get(tenant: Tenant, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let secrets = service::subscriptions::callback_secrets(&state.store, &tenant).await?;
    Ok(HttpResponse::Ok().json(SecretView::of(&secrets, state.clock.now())))
}

/// Rotate the callback secret
///
/// A new secret (generated, or `{"secret": "whsec_..."}`); the old one keeps signing beside it
/// for the overlap (24 h by default).
#[utoipa::path(
    tag = "callback secret",
    operation_id = "rotate_callback_secret",
    request_body(content = Option<RotateSecretRequest>, description = "Optional: a chosen secret"),
    responses(
        (status = 200, description = "The new secret", body = SecretView),
        (status = 400, description = "Malformed body, or a secret refused or unchanged", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_secret" = [])),
)]
#[post("/callback-secret/rotate")]
pub async fn rotate(
    req: HttpRequest,
    payload: web::Payload,
    tenant: Tenant,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let limit = BODY_LIMIT.min(state.settings.server.max_body_bytes);
    let body = optional_object(&req, payload, limit).await?;
    let secret = parse_rotation(body)?;
    let now = state.clock.now();
    let until = after(now, state.settings.delivery.secret_overlap);
    let secrets =
        service::subscriptions::rotate_callback_secret(&state.store, &tenant, secret, until)
            .await?;
    Ok(HttpResponse::Ok().json(SecretView::of(&secrets, now)))
}
