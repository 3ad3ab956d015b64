//! `GET /v1/events/sample`: events in exactly the shape a receiver gets them, for tools that
//! want a sample before the first real event (Zapier's `performList`, see `zapier.rs`).
//!
//! The tenant's latest ended jobs of the asked type are shown as the events they caused; with
//! none, a made-up sample. Both are built by `Event::for_job` and `Event::payload`, the code
//! that builds live events, so a sample cannot drift from the live shape.

use actix_web::{get, web, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::jobs::query_param;
use super::{ApiError, AppState, ErrorBody};
use crate::domain::{sample_event, Event, EventType, JobStatus, Tenant};

/// Recent jobs looked at for real samples; bounds the work of one request.
const RECENT_JOBS: usize = 50;
/// Real events shown at most, per type.
const SAMPLES_PER_TYPE: usize = 3;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SampleQuery {
    /// The event type; absent: `agent.ready` and `agent.failed`.
    #[serde(rename = "type")]
    #[param(rename = "type", value_type = Option<EventType>)]
    event_type: Option<String>,
}

/// An event body as receivers get it in the standard format.
// Only describes the body for the OpenAPI document: samples are the live JSON itself.
#[allow(dead_code)]
#[derive(Debug, Serialize, ToSchema)]
pub struct EventBody {
    #[serde(rename = "type")]
    #[schema(rename = "type")]
    event_type: EventType,
    /// When the event happened (RFC 3339, seconds).
    timestamp: String,
    /// `job_id`, `agent_id`, `status`, `model_url`, `name`, `image_url`, `video_url`,
    /// `system_prompt`, `error_code`, `error_message`, `metadata`, `created_at`,
    /// `completed_at`.
    data: Value,
}

/// Sample events
///
/// A JSON array of events in exactly the shape receivers get them (the standard format):
/// the tenant's most recent real ones of that type when there are any, else a made-up one.
/// Zapier's `performList` for a REST Hook trigger.
#[utoipa::path(
    tag = "events",
    operation_id = "sample_events",
    params(SampleQuery),
    responses(
        (status = 200, description = "Events, newest first for each type", body = Vec<EventBody>),
        (status = 400, description = "Unknown event type or query parameter", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_secret" = [])),
)]
#[get("/events/sample")]
pub async fn sample(
    query: web::Query<SampleQuery>,
    tenant: Tenant,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let asked = query_param(
        query.event_type.as_deref(),
        EventType::parse,
        "type",
        "one of agent.ready, agent.failed, webhook.test",
    )?;
    let types = match asked {
        Some(event_type) => vec![event_type],
        None => vec![EventType::AgentReady, EventType::AgentFailed],
    };
    let recent = state
        .store
        .list_jobs(&tenant, None, None, RECENT_JOBS)
        .await?
        .jobs;
    let now = state.clock.now();
    let mut events: Vec<Value> = Vec::new();
    for event_type in types {
        let status = match event_type {
            EventType::AgentReady => Some(JobStatus::Ready),
            EventType::AgentFailed => Some(JobStatus::Failed),
            EventType::WebhookTest => None,
        };
        let real: Vec<Value> = recent
            .iter()
            .filter(|job| Some(job.status) == status)
            .filter_map(|job| Event::for_job(job, job.completed_at.unwrap_or(job.updated_at)))
            .take(SAMPLES_PER_TYPE)
            .map(|event| event.payload())
            .collect();
        if real.is_empty() {
            events.push(sample_event(tenant.clone(), event_type, now).payload());
        } else {
            events.extend(real);
        }
    }
    Ok(HttpResponse::Ok().json(events))
}
