//! A generation job: what the client asked for and where it stands.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::{JobId, Tenant};
use crate::clock::Timestamp;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Accepted by agenthook, not yet by upstream.
    Submitting,
    /// Accepted upstream; being polled.
    Processing,
    Ready,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Submitting,
        JobStatus::Processing,
        JobStatus::Ready,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Ready | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Submitting => "submitting",
            JobStatus::Processing => "processing",
            JobStatus::Ready => "ready",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }
}

/// Why a job failed: an upstream code (`VALIDATION_ERROR`, ...) or one of agenthook's own
/// (`TIMEOUT`, `NOT_FOUND`, `GENERATION_FAILED`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobError {
    pub code: String,
    pub message: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub tenant: Tenant,
    pub agent_id: Option<String>,
    pub status: JobStatus,
    pub callback_url: Option<String>,
    pub metadata: Map<String, Value>,
    /// The upstream generate body, kept only until upstream accepts it (media can be large).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Map<String, Value>>,
    /// The latest upstream status `data`, as received.
    pub agent: Option<Value>,
    pub error: Option<JobError>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub completed_at: Option<Timestamp>,
    pub polls: u32,
    /// Submission attempts upstream (immediate and background).
    #[serde(default)]
    pub submit_attempts: u32,
    /// Transient upstream failures seen while polling or submitting.
    #[serde(default)]
    pub transient_errors: u32,
    /// Upstream 404s in a row; reset by any other answer.
    #[serde(default)]
    pub not_found_streak: u32,
    /// When the scheduler next looks at this job; `None` once terminal.
    pub next_poll_at: Option<Timestamp>,
}

impl Job {
    pub fn new(
        tenant: Tenant,
        request: Map<String, Value>,
        callback_url: Option<String>,
        metadata: Map<String, Value>,
        now: Timestamp,
    ) -> Self {
        Job {
            id: JobId::generate(),
            tenant,
            agent_id: None,
            status: JobStatus::Submitting,
            callback_url,
            metadata,
            request: Some(request),
            agent: None,
            error: None,
            created_at: now,
            updated_at: now,
            completed_at: None,
            polls: 0,
            submit_attempts: 0,
            transient_errors: 0,
            not_found_streak: 0,
            next_poll_at: Some(now),
        }
    }

    /// Upstream took the job: from now on it is polled, and its media is forgotten.
    pub fn accepted(&mut self, agent_id: String, first_poll_at: Timestamp, now: Timestamp) {
        self.agent_id = Some(agent_id);
        self.status = JobStatus::Processing;
        self.request = None;
        self.not_found_streak = 0;
        self.next_poll_at = Some(first_poll_at);
        self.updated_at = now;
    }

    pub fn finish(&mut self, status: JobStatus, error: Option<JobError>, now: Timestamp) {
        debug_assert!(status.is_terminal());
        self.status = status;
        self.error = error;
        self.request = None;
        self.next_poll_at = None;
        self.completed_at = Some(now);
        self.updated_at = now;
    }

    pub fn is_pending(&self) -> bool {
        !self.status.is_terminal()
    }

    pub fn age(&self, now: Timestamp) -> std::time::Duration {
        crate::clock::until(self.created_at, now)
    }
}

/// The job as the API shows it: no tenant, no media, no internal counters.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    pub id: JobId,
    /// The upstream agent id; null until upstream has accepted the job.
    #[schema(example = "A91XMB7113")]
    pub agent_id: Option<String>,
    pub status: JobStatus,
    pub callback_url: Option<String>,
    /// The client's own data, echoed in every event of this job.
    pub metadata: Map<String, Value>,
    /// The latest upstream status `data`, as received.
    pub agent: Option<Value>,
    pub error: Option<JobError>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// Status polls made upstream so far.
    pub polls: u32,
    /// When upstream is next asked; null once the job has ended.
    pub next_poll_at: Option<DateTime<Utc>>,
}

impl From<&Job> for JobView {
    fn from(job: &Job) -> Self {
        JobView {
            id: job.id.clone(),
            agent_id: job.agent_id.clone(),
            status: job.status,
            callback_url: job.callback_url.clone(),
            metadata: job.metadata.clone(),
            agent: job.agent.clone(),
            error: job.error.clone(),
            created_at: job.created_at,
            updated_at: job.updated_at,
            completed_at: job.completed_at,
            polls: job.polls,
            next_poll_at: job.next_poll_at,
        }
    }
}
