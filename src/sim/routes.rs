//! The HTTP face of the simulator: bitHuman's routes under `/v1`, and the control routes under
//! `/_sim` that tests, the demo and docker-compose users steer it with.
//!
//! Handlers only translate between actix and [`SimState`]; every decision is made there.

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::agent::Outcome;
use super::state::{Incoming, Route, SimState};

/// Generate bodies may carry base64 media; upstream takes large ones, so the simulator does too.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
        .service(control_routes())
        .route("/v1/agent/generate", web::post().to(generate))
        .route("/v1/agent/status/{agent_id}", web::get().to(status))
        .route("/v1/validate", web::post().to(validate))
        .route("/v1/webhooks", web::post().to(register_webhook))
        .route("/v1/webhooks", web::get().to(list_webhooks))
        .route("/v1/webhooks/{id}", web::delete().to(delete_webhook))
        .route("/v1/webhooks/{id}/test", web::post().to(test_webhook))
        .default_service(web::to(unknown));
}

async fn generate(req: HttpRequest, body: web::Bytes, state: web::Data<SimState>) -> HttpResponse {
    upstream(&req, &body, &state, Route::Generate).await
}

async fn status(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<SimState>,
    agent_id: web::Path<String>,
) -> HttpResponse {
    let route = Route::Status {
        agent_id: agent_id.into_inner(),
    };
    upstream(&req, &body, &state, route).await
}

async fn validate(req: HttpRequest, body: web::Bytes, state: web::Data<SimState>) -> HttpResponse {
    upstream(&req, &body, &state, Route::Validate).await
}

async fn register_webhook(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<SimState>,
) -> HttpResponse {
    upstream(&req, &body, &state, Route::RegisterWebhook).await
}

async fn list_webhooks(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<SimState>,
) -> HttpResponse {
    upstream(&req, &body, &state, Route::ListWebhooks).await
}

async fn delete_webhook(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<SimState>,
    id: web::Path<String>,
) -> HttpResponse {
    let route = Route::DeleteWebhook {
        id: id.into_inner(),
    };
    upstream(&req, &body, &state, route).await
}

async fn test_webhook(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<SimState>,
    id: web::Path<String>,
) -> HttpResponse {
    let route = Route::TestWebhook {
        id: id.into_inner(),
    };
    upstream(&req, &body, &state, route).await
}

/// Any other path outside `/_sim`: recorded, and answered 404 in the configured error shape.
async fn unknown(req: HttpRequest, body: web::Bytes, state: web::Data<SimState>) -> HttpResponse {
    upstream(&req, &body, &state, Route::Unknown).await
}

async fn upstream(req: &HttpRequest, body: &[u8], state: &SimState, route: Route) -> HttpResponse {
    let incoming = Incoming {
        route,
        method: req.method().to_string(),
        path: req.path().to_owned(),
        headers: header_map(req),
        body: body.to_vec(),
    };
    let (reply, latency) = state.handle(&incoming);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    reply.into_response()
}

fn header_map(req: &HttpRequest) -> BTreeMap<String, String> {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in req.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_ascii_lowercase())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(&value);
            })
            .or_insert(value);
    }
    headers
}

fn control_routes() -> actix_web::Scope {
    web::scope("/_sim")
        .route("/health", web::get().to(health))
        .route("/requests", web::get().to(requests))
        .route("/stats", web::get().to(stats))
        .route("/config", web::get().to(get_config))
        .route("/config", web::post().to(patch_config))
        .route("/outage", web::post().to(outage))
        .route("/fail-next", web::post().to(fail_next))
        .route("/agents", web::get().to(agents))
        .route("/agents/{id}", web::get().to(agent))
        .route("/agents/{id}", web::post().to(force_agent))
        .route("/agents/{id}", web::delete().to(forget_agent))
        .route("/reset", web::post().to(reset))
        .default_service(web::to(|| async {
            ControlError::NotFound("no such control route".into()).error_response()
        }))
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"ok": true}))
}

async fn requests(state: web::Data<SimState>) -> HttpResponse {
    HttpResponse::Ok().json(state.requests())
}

async fn stats(state: web::Data<SimState>) -> HttpResponse {
    HttpResponse::Ok().json(state.stats())
}

async fn get_config(state: web::Data<SimState>) -> HttpResponse {
    HttpResponse::Ok().json(state.config().to_redacted_json())
}

/// Merges a partial configuration, e.g. `{"time_to_ready": "200ms", "error_shape": "seed"}`.
async fn patch_config(
    state: web::Data<SimState>,
    body: web::Bytes,
) -> Result<HttpResponse, ControlError> {
    let patch: Value = parse_body(&body)?;
    let config = state
        .merge_config(&patch)
        .map_err(ControlError::BadRequest)?;
    Ok(HttpResponse::Ok().json(config.to_redacted_json()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutageBody {
    on: bool,
}

async fn outage(
    state: web::Data<SimState>,
    body: web::Bytes,
) -> Result<HttpResponse, ControlError> {
    let OutageBody { on } = parse_body(&body)?;
    state.set_outage(on);
    Ok(HttpResponse::Ok().json(json!({ "outage": on })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FailNextBody {
    count: usize,
    status: u16,
}

async fn fail_next(
    state: web::Data<SimState>,
    body: web::Bytes,
) -> Result<HttpResponse, ControlError> {
    let FailNextBody { count, status } = parse_body(&body)?;
    if !(400..=599).contains(&status) {
        return Err(ControlError::BadRequest("status must be 400-599".into()));
    }
    state.fail_next(count, status);
    let pending = state.stats().pending_injected_failures;
    Ok(HttpResponse::Ok().json(json!({ "pending": pending })))
}

async fn agents(state: web::Data<SimState>) -> HttpResponse {
    HttpResponse::Ok().json(state.agent_statuses())
}

async fn agent(
    state: web::Data<SimState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ControlError> {
    let data = state.agent_status(&id).ok_or_else(|| no_such_agent(&id))?;
    Ok(HttpResponse::Ok().json(data))
}

/// Forces an agent, e.g. `{"status": "ready"}` or `{"status": "failed", "error_message": "..."}`.
async fn force_agent(
    state: web::Data<SimState>,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ControlError> {
    let outcome: Outcome = parse_body(&body)?;
    if !state.set_agent_outcome(&id, outcome) {
        return Err(no_such_agent(&id));
    }
    agent(state, id).await
}

async fn forget_agent(
    state: web::Data<SimState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ControlError> {
    if state.forget_agent(&id) {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(no_such_agent(&id))
    }
}

async fn reset(state: web::Data<SimState>) -> HttpResponse {
    state.reset();
    HttpResponse::NoContent().finish()
}

/// Errors of the control routes, answered as `{"error": "..."}`.
#[derive(Debug, thiserror::Error)]
enum ControlError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
}

impl ResponseError for ControlError {
    fn status_code(&self) -> StatusCode {
        match self {
            ControlError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ControlError::NotFound(_) => StatusCode::NOT_FOUND,
        }
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(json!({ "error": self.to_string() }))
    }
}

fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ControlError> {
    serde_json::from_slice(body).map_err(|e| {
        ControlError::BadRequest(format!("the body is not what this route takes: {e}"))
    })
}

fn no_such_agent(id: &str) -> ControlError {
    ControlError::NotFound(format!("no agent {id}"))
}
