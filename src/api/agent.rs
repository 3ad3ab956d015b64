//! The drop-in routes: bitHuman's own bodies, so a client only changes its base URL.

use actix_web::http::StatusCode;
use actix_web::{get, post, web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::jobs::{answer_to_http, idempotency_key, GenerateRequest, IDEMPOTENCY_KEY_DOC};
use super::{body, ApiError, AppState, ErrorBody};
use crate::domain::{Job, Tenant};
use crate::service::admission::{admit, Mode};
use crate::store::IdempotentResponse;

/// Upstream's answer to a generate request.
#[derive(Debug, Serialize, ToSchema)]
pub struct GenerateResponse {
    pub success: bool,
    #[schema(example = "Agent generation started")]
    pub message: &'static str,
    #[schema(example = "A91XMB7113")]
    pub agent_id: Option<String>,
    #[schema(example = "processing")]
    pub status: &'static str,
}

/// Upstream's answer to a status request.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentStatusResponse {
    pub success: bool,
    /// The latest upstream status data, as received.
    #[schema(value_type = AgentStatus)]
    pub data: Value,
}

/// An agent's status, in upstream's shape.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentStatus {
    #[schema(example = "A91XMB7113")]
    pub agent_id: Option<String>,
    #[schema(example = "lip_created")]
    pub event_type: Option<String>,
    /// `processing`, `ready` or `failed`.
    #[schema(example = "ready")]
    pub status: String,
    pub error_message: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub system_prompt: Option<String>,
    pub image_url: Option<String>,
    pub video_url: Option<String>,
    pub name: Option<String>,
    pub model_url: Option<String>,
}

fn generate_answer(job: &Job) -> IdempotentResponse {
    let answer = GenerateResponse {
        success: true,
        message: "Agent generation started",
        agent_id: job.agent_id.clone(),
        status: "processing",
    };
    IdempotentResponse {
        status: 200,
        body: serde_json::to_value(answer).expect("generate answer serialises"),
    }
}

/// Generate an agent (bitHuman's own route)
///
/// Takes and returns upstream's bodies, plus `callback_url` and `metadata`. Synchronous: an
/// upstream failure is returned, not deferred.
#[utoipa::path(
    tag = "drop-in",
    operation_id = "generate_agent",
    params(("Idempotency-Key" = Option<String>, Header, description = IDEMPOTENCY_KEY_DOC)),
    request_body = GenerateRequest,
    responses(
        (status = 200, description = "Accepted upstream; the job is tracked", body = GenerateResponse),
        (status = 400, description = "Malformed body, bad `callback_url` or `metadata`, or refused by upstream", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key, or upstream refused the account", body = ErrorBody),
        (status = 402, description = "Upstream refused: insufficient balance (`UPSTREAM_ERROR`)", body = ErrorBody),
        (status = 404, description = "Upstream refused (`UPSTREAM_ERROR`)", body = ErrorBody),
        (status = 409, description = "A request with this `Idempotency-Key` is still in flight", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "`Idempotency-Key` reused with a different body", body = ErrorBody),
        (status = 429, description = "Upstream or agenthook's generate budget is used up", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "Upstream is unavailable (`UPSTREAM_ERROR`)", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_secret" = [])),
)]
#[post("/agent/generate")]
pub async fn generate(
    req: HttpRequest,
    payload: web::Payload,
    tenant: Tenant,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = body::json_object(&req, payload, state.settings.server.max_body_bytes).await?;
    let key = idempotency_key(&req, &body)?;
    let spec = GenerateRequest::parse(body, state.settings.delivery.allow_private_networks)?;
    let answer = admit(
        state.into_inner(),
        tenant,
        spec,
        key,
        Mode::Synchronous,
        generate_answer,
    )
    .await?;
    Ok(answer_to_http(&answer))
}

fn plausible_agent_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// An agent's status (bitHuman's own route)
///
/// The tenant's own agents from storage, without an upstream call; another tenant's agent is
/// a 404; agents agenthook does not track are proxied upstream, answer and status as received.
#[utoipa::path(
    tag = "drop-in",
    operation_id = "get_agent_status",
    params(("agent_id" = String, Path, description = "The upstream agent id")),
    responses(
        (status = 200, description = "The agent's status", body = AgentStatusResponse),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "No such agent, or another tenant's", body = ErrorBody),
        (status = 429, description = "The upstream read budget is used up", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "Upstream is unavailable (`UPSTREAM_ERROR`)", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_secret" = [])),
)]
#[get("/agent/status/{agent_id}")]
pub async fn status(
    path: web::Path<String>,
    tenant: Tenant,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let agent_id = path.into_inner();
    if !plausible_agent_id(&agent_id) {
        return Err(ApiError::not_found("agent"));
    }
    if let Some(job) = state.store.job_by_agent(&agent_id).await? {
        if job.tenant != tenant {
            return Err(ApiError::not_found("agent"));
        }
        return Ok(HttpResponse::Ok().json(AgentStatusResponse {
            success: true,
            data: stored_status(&job),
        }));
    }
    let now = state.clock.now();
    let read = &state.lifecycle.upstream.budgets().read;
    if !read.try_acquire(now) {
        let wait = crate::clock::until(now, read.next_available_at(now));
        return Err(ApiError::rate_limited(wait.as_secs() + 1));
    }
    match state.lifecycle.upstream.status_raw(&agent_id).await {
        Ok((status, bytes)) => Ok(HttpResponse::build(
            StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
        )
        .content_type("application/json")
        .body(bytes)),
        Err(error) => Err(ApiError::upstream(&error)),
    }
}

/// The latest upstream data of a tracked agent, or what is known before the first poll.
fn stored_status(job: &Job) -> Value {
    match &job.agent {
        Some(Value::Object(data)) => Value::Object(data.clone()),
        _ => serde_json::to_value(AgentStatus {
            agent_id: job.agent_id.clone(),
            event_type: None,
            status: "processing".into(),
            error_message: None,
            created_at: job.created_at,
            updated_at: job.updated_at,
            system_prompt: None,
            image_url: None,
            video_url: None,
            name: None,
            model_url: None,
        })
        .expect("agent status serialises"),
    }
}
