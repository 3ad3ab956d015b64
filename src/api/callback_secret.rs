//! `/v1/callback-secret`: the secret that signs a tenant's job callbacks, and its rotation.

use actix_web::{get, post, web, HttpRequest, HttpResponse};

use super::subscriptions::{
    optional_object, parse_rotation, RotateSecretRequest, SecretView, BODY_LIMIT,
};
use super::{ApiError, AppState, ErrorBody};
use crate::clock::after;
use crate::delivery::signature::SigningSecret;
use crate::domain::{SecretSet, Tenant};

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
    let secrets = state
        .store
        .callback_secrets(&tenant, SigningSecret::generate)
        .await?;
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
    let secrets = state
        .store
        .update_callback_secrets(
            &tenant,
            Box::new(move |stored| match stored {
                // A tenant without a secret yet simply gets this one: nothing to overlap with.
                None => Some(SecretSet::new(secret.clone())),
                Some(s) if s.current == secret => None,
                Some(s) => {
                    let mut rotated = s.clone();
                    rotated.rotate(secret.clone(), until);
                    Some(rotated)
                }
            }),
        )
        .await?;
    let Some(secrets) = secrets else {
        return Err(
            ApiError::bad_request("the new secret must differ from the current one")
                .with_details("secret"),
        );
    };
    Ok(HttpResponse::Ok().json(SecretView::of(&secrets, now)))
}
