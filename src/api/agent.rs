//! The drop-in routes: bitHuman's own bodies, so a client only changes its base URL.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::jobs::{admit, idempotency_key, JobSpec, Mode};
use super::{body, ApiError, AppState};
use crate::domain::{Job, Tenant};
use crate::store::IdempotentResponse;

fn generate_answer(job: &Job) -> IdempotentResponse {
    IdempotentResponse {
        status: 200,
        body: json!({
            "success": true,
            "message": "Agent generation started",
            "agent_id": job.agent_id,
            "status": "processing",
        }),
    }
}

/// `POST /v1/agent/generate`: synchronous; an upstream failure is returned, not deferred.
pub async fn generate(
    req: HttpRequest,
    payload: web::Payload,
    tenant: Tenant,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = body::json_object(&req, payload, state.settings.server.max_body_bytes).await?;
    let key = idempotency_key(&req, &body)?;
    let spec = JobSpec::parse(body, state.settings.delivery.allow_private_networks)?;
    admit(
        &state,
        tenant,
        spec,
        key,
        Mode::Synchronous,
        generate_answer,
    )
    .await
}

fn plausible_agent_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `GET /v1/agent/status/{agent_id}`: the tenant's own agents from storage, no upstream call;
/// another tenant's agent is a 404; agents agenthook does not track are proxied upstream.
pub async fn status(
    path: web::Path<String>,
    tenant: Tenant,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let agent_id = path.into_inner();
    if !plausible_agent_id(&agent_id) {
        return Err(ApiError::not_found("agent"));
    }
    if let Some(job) = state.store.job_by_agent(&agent_id)? {
        if job.tenant != tenant {
            return Err(ApiError::not_found("agent"));
        }
        return Ok(HttpResponse::Ok().json(json!({ "success": true, "data": stored_status(&job) })));
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
        _ => json!({
            "agent_id": job.agent_id,
            "event_type": null,
            "status": "processing",
            "error_message": null,
            "created_at": job.created_at,
            "updated_at": job.updated_at,
            "system_prompt": null,
            "image_url": null,
            "video_url": null,
            "name": null,
            "model_url": null,
        }),
    }
}
