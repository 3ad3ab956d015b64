//! The HTTP API: routes grouped by resource, API-key auth, one error shape.

mod agent;
mod auth;
pub mod body;
mod callback_secret;
mod deliveries;
mod error;
mod events;
mod health;
mod jobs;
pub mod metrics;
mod openapi;
pub mod request;
pub mod request_id;
mod subscriptions;
mod upstream_push;
mod zapier;

use std::sync::Arc;

use actix_web::dev::{ServiceFactory, ServiceRequest};
use actix_web::middleware::ErrorHandlers;
use actix_web::{web, App};
use utoipa_actix_web::service_config::ServiceConfig;
use utoipa_actix_web::{scope, AppExt};

pub use auth::KeyRing;
pub use error::{ApiError, ErrorBody};
pub use openapi::{no_route, ApiDocument};

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

/// Every route of the service. Each handler is registered and documented by the same
/// `.service(...)` call: its actix route macro gives the method and path, its
/// `#[utoipa::path]` the rest of its OpenAPI operation. Register nothing here any other way
/// (`.route(...)`, `.map(...)`): it would be served undocumented.
pub fn configure(cfg: &mut ServiceConfig) {
    cfg.service(health::healthz)
        .service(health::readyz)
        .service(metrics::render)
        .service(openapi::openapi_json)
        .service(
            scope("/v1")
                .service(jobs::create)
                .service(jobs::list)
                .service(jobs::get)
                .service(jobs::cancel)
                .service(jobs::deliveries)
                .service(agent::generate)
                .service(agent::status)
                .service(subscriptions::create)
                .service(subscriptions::list)
                .service(subscriptions::get)
                .service(subscriptions::patch)
                .service(subscriptions::delete)
                .service(subscriptions::rotate_secret)
                .service(subscriptions::test)
                .service(subscriptions::recover)
                .service(callback_secret::get)
                .service(callback_secret::rotate)
                .service(deliveries::list)
                .service(deliveries::get)
                .service(deliveries::retry)
                .service(events::sample)
                .service(upstream_push::receive),
        );
}

/// Register every route on `app`, with the OpenAPI document collected from those same
/// registrations: served at `/openapi.json`, and consulted by [`no_route`].
pub fn routes<T>(app: App<T>) -> App<T>
where
    T: ServiceFactory<ServiceRequest, Config = (), Error = actix_web::Error, InitError = ()>,
{
    let (app, doc) = collect(app);
    app.app_data(web::Data::new(ApiDocument::new(&doc)))
}

/// The OpenAPI document of every route, as `/openapi.json` serves it.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    collect(App::new()).1
}

fn collect<T>(app: App<T>) -> (App<T>, utoipa::openapi::OpenApi)
where
    T: ServiceFactory<ServiceRequest, Config = (), Error = actix_web::Error, InitError = ()>,
{
    app.into_utoipa_app()
        .openapi(openapi::base())
        .configure(configure)
        .split_for_parts()
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
