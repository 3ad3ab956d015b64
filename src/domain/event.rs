//! Events and their standard body.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::{EventId, Job, JobStatus, Tenant};
use crate::clock::Timestamp;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum EventType {
    #[serde(rename = "agent.ready")]
    AgentReady,
    #[serde(rename = "agent.failed")]
    AgentFailed,
    #[serde(rename = "webhook.test")]
    WebhookTest,
}

impl EventType {
    pub const ALL: [EventType; 3] = [
        EventType::AgentReady,
        EventType::AgentFailed,
        EventType::WebhookTest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::AgentReady => "agent.ready",
            EventType::AgentFailed => "agent.failed",
            EventType::WebhookTest => "webhook.test",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == raw)
    }
}

/// Something that happened, once; each destination gets its own delivery of it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event {
    pub id: EventId,
    pub tenant: Tenant,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub timestamp: Timestamp,
    pub data: Value,
}

impl Event {
    /// The event a job's terminal transition causes. `None` while the job is still pending, and
    /// for cancelled jobs, which emit nothing.
    pub fn for_job(job: &Job, now: Timestamp) -> Option<Event> {
        let event_type = match job.status {
            JobStatus::Ready => EventType::AgentReady,
            JobStatus::Failed => EventType::AgentFailed,
            _ => return None,
        };
        let agent = job.agent.as_ref().and_then(Value::as_object);
        let field = |name: &str| {
            agent
                .and_then(|a| a.get(name))
                .cloned()
                .unwrap_or(Value::Null)
        };
        let error_message = match (&job.error, field("error_message")) {
            (_, Value::String(upstream)) if !upstream.is_empty() => Value::String(upstream),
            (Some(error), _) => Value::String(error.message.clone()),
            _ => Value::Null,
        };
        let data = json!({
            "job_id": job.id,
            "agent_id": job.agent_id,
            "status": job.status,
            "model_url": field("model_url"),
            "name": field("name"),
            "image_url": field("image_url"),
            "video_url": field("video_url"),
            "system_prompt": field("system_prompt"),
            "error_code": job.error.as_ref().map(|e| e.code.clone()),
            "error_message": error_message,
            "metadata": job.metadata,
            "created_at": job.created_at,
            "completed_at": job.completed_at,
        });
        Some(Event {
            id: EventId::generate(),
            tenant: job.tenant.clone(),
            event_type,
            timestamp: now,
            data,
        })
    }

    pub fn test(tenant: Tenant, now: Timestamp) -> Event {
        Event {
            id: EventId::generate(),
            tenant,
            event_type: EventType::WebhookTest,
            timestamp: now,
            data: json!({ "message": "This is a test event from agenthook." }),
        }
    }

    /// The Standard Webhooks body: `{"type", "timestamp", "data"}`.
    pub fn payload(&self) -> Value {
        json!({
            "type": self.event_type,
            "timestamp": self.timestamp.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "data": self.data,
        })
    }
}
