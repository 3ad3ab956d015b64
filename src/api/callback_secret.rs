//! `/v1/callback-secret`: the secret that signs a tenant's job callbacks, and its rotation.

use std::cell::Cell;

use actix_web::{web, HttpRequest, HttpResponse};

use super::subscriptions::{optional_object, overlap_ends, parse_rotation, BODY_LIMIT};
use super::{ApiError, AppState};
use crate::clock::{after, Timestamp};
use crate::delivery::signature::SigningSecret;
use crate::domain::{SecretSet, Tenant};

fn view(secrets: &SecretSet, now: Timestamp) -> serde_json::Value {
    serde_json::json!({
        "secret": secrets.current,
        "previous_secret_expires_at": overlap_ends(secrets, now),
    })
}

pub async fn get(tenant: Tenant, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let secrets = state
        .store
        .callback_secrets(&tenant, SigningSecret::generate)?;
    state.store.durable().await?;
    Ok(HttpResponse::Ok().json(view(&secrets, state.clock.now())))
}

/// A new secret (generated, or `{"secret": "whsec_..."}`); the old one keeps signing beside it
/// for `delivery.secret_overlap`.
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
    // A tenant without a secret yet simply gets this one: there is nothing to overlap with.
    let created = Cell::new(false);
    let same = Cell::new(false);
    let secrets = state.store.update_callback_secrets(
        &tenant,
        || {
            created.set(true);
            secret.clone()
        },
        |s| {
            let fresh = created.replace(false);
            same.set(!fresh && s.current == secret);
            if !fresh && !same.get() {
                s.rotate(secret.clone(), until);
            }
        },
    )?;
    if same.get() {
        return Err(
            ApiError::bad_request("the new secret must differ from the current one")
                .with_details("secret"),
        );
    }
    state.store.durable().await?;
    Ok(HttpResponse::Ok().json(view(&secrets, now)))
}
