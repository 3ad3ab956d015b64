//! The HTTP API: routes grouped by resource, API-key auth, one error shape.

mod agent;
mod auth;
pub mod body;
mod callback_secret;
mod deliveries;
mod error;
mod health;
mod jobs;
pub mod metrics;
pub mod request_id;
mod subscriptions;

use std::sync::Arc;

use actix_web::middleware::ErrorHandlers;
use actix_web::web;

pub use auth::KeyRing;
pub use error::{ApiError, ErrorBody};

use crate::clock::SharedClock;
use crate::config::Settings;
use crate::lifecycle::Lifecycle;
use crate::signals::Signals;
use crate::store::Store;

/// What handlers share.
pub struct AppState {
    pub store: Store,
    pub lifecycle: Lifecycle,
    pub clock: SharedClock,
    pub keys: KeyRing,
    pub settings: Arc<Settings>,
    pub signals: Arc<Signals>,
}

/// Every route of the service.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/healthz").route(web::get().to(health::healthz)))
        .service(web::resource("/readyz").route(web::get().to(health::readyz)))
        .service(
            web::scope("/v1")
                .service(
                    web::resource("/jobs")
                        .route(web::post().to(jobs::create))
                        .route(web::get().to(jobs::list)),
                )
                .service(
                    web::resource("/jobs/{id}")
                        .route(web::get().to(jobs::get))
                        .route(web::delete().to(jobs::cancel)),
                )
                .service(
                    web::resource("/jobs/{id}/deliveries").route(web::get().to(jobs::deliveries)),
                )
                .service(web::resource("/agent/generate").route(web::post().to(agent::generate)))
                .service(
                    web::resource("/agent/status/{agent_id}").route(web::get().to(agent::status)),
                )
                .service(
                    web::resource("/subscriptions")
                        .route(web::post().to(subscriptions::create))
                        .route(web::get().to(subscriptions::list)),
                )
                .service(
                    web::resource("/subscriptions/{id}")
                        .route(web::get().to(subscriptions::get))
                        .route(web::patch().to(subscriptions::patch))
                        .route(web::delete().to(subscriptions::delete)),
                )
                .service(
                    web::resource("/subscriptions/{id}/rotate-secret")
                        .route(web::post().to(subscriptions::rotate_secret)),
                )
                .service(
                    web::resource("/subscriptions/{id}/test")
                        .route(web::post().to(subscriptions::test)),
                )
                .service(
                    web::resource("/subscriptions/{id}/recover")
                        .route(web::post().to(subscriptions::recover)),
                )
                .service(
                    web::resource("/callback-secret").route(web::get().to(callback_secret::get)),
                )
                .service(
                    web::resource("/callback-secret/rotate")
                        .route(web::post().to(callback_secret::rotate)),
                )
                .service(web::resource("/deliveries").route(web::get().to(deliveries::list)))
                .service(web::resource("/deliveries/{id}").route(web::get().to(deliveries::get)))
                .service(
                    web::resource("/deliveries/{id}/retry")
                        .route(web::post().to(deliveries::retry)),
                ),
        );
}

/// Query and path extractor failures in the contract's shape.
pub fn extractor_configs(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::QueryConfig::default().error_handler(|err, _| {
        ApiError::bad_request("invalid query string")
            .with_details(err.to_string())
            .into()
    }))
    .app_data(web::PathConfig::default().error_handler(|err, _| {
        ApiError::bad_request("invalid path")
            .with_details(err.to_string())
            .into()
    }));
}

pub fn error_handlers<B: actix_web::body::MessageBody + 'static>() -> ErrorHandlers<B> {
    ErrorHandlers::new().default_handler(error::shape_error_response)
}

/// Unknown routes.
pub async fn not_found() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::not_found("route"))
}
