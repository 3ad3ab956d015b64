//! What happens to a job between its creation and its end: submission upstream, what each
//! status answer means for it, and the outbox write of its terminal state. Shared by the API
//! (immediate submission) and the poller (everything after).

use std::sync::Arc;
use std::time::Duration;

use crate::clock::{after, SharedClock, Timestamp};
use crate::config::PollerSettings;
use crate::domain::{Delivery, Destination, Event, Job, JobError, JobStatus, Payload};
use crate::push::PushInbox;
use crate::store::{self, Store, StoreError};
use crate::upstream::{AgentState, StatusReport, UpstreamClient, UpstreamError};

/// How one submission attempt went; the job has been updated to match.
#[derive(Debug)]
pub enum Submission {
    /// Upstream took it: the job is `processing` with its agent id.
    Accepted,
    /// Upstream refused it for good.
    Refused(UpstreamError),
    /// Not now (no budget, or a transient failure): the job stays `submitting`, due again later.
    Deferred(Option<UpstreamError>),
}

#[derive(Clone, Debug)]
pub struct Lifecycle {
    pub store: Store,
    pub upstream: UpstreamClient,
    pub clock: SharedClock,
    pub settings: PollerSettings,
    /// bitHuman's pushes: jobs they made due, and whether they are arriving.
    pub push: Arc<PushInbox>,
}

impl Lifecycle {
    /// One submission attempt, through the generate budget, with the job id as upstream
    /// `Idempotency-Key` so a retry after an unanswered attempt cannot create a second agent.
    pub async fn submit(&self, job: &mut Job) -> Submission {
        let now = self.clock.now();
        if !self.upstream.budgets().generate.try_acquire(now) {
            let ready_at = self.upstream.budgets().generate.next_available_at(now);
            job.next_poll_at = Some(ready_at.max(after(now, Duration::from_millis(100))));
            job.updated_at = now;
            return Submission::Deferred(None);
        }
        let Some(request) = job.request.as_ref() else {
            // Cannot happen for a submitting job; fail it rather than retry forever.
            let error = UpstreamError::Refused {
                status: 400,
                code: "MISSING_REQUEST".into(),
                message: "the job's generate request is no longer stored".into(),
                details: None,
            };
            return Submission::Refused(error);
        };
        job.submit_attempts += 1;
        let result = self.upstream.generate(request, job.id.as_str()).await;
        let now = self.clock.now();
        match result {
            Ok(accepted) => {
                job.accepted(
                    accepted.agent_id,
                    after(now, self.settings.first_poll_after),
                    now,
                );
                Submission::Accepted
            }
            Err(error @ UpstreamError::Refused { .. }) => Submission::Refused(error),
            Err(error) => {
                job.transient_errors += 1;
                job.next_poll_at = Some(after(now, self.submit_backoff(job, &error)));
                job.updated_at = now;
                Submission::Deferred(Some(error))
            }
        }
    }

    /// Background submission backs off from `submit_retry_after`, doubling, up to
    /// `max_interval`, and never sooner than upstream's `Retry-After`.
    fn submit_backoff(&self, job: &Job, error: &UpstreamError) -> Duration {
        let doublings = job.submit_attempts.saturating_sub(1).min(16);
        let backoff = self
            .settings
            .submit_retry_after
            .saturating_mul(1 << doublings)
            .min(self.settings.max_interval);
        backoff.max(retry_after(error))
    }

    /// The pause before the next poll: the base interval while the job is young, then a
    /// twelfth of its age, capped: old jobs, which finish rarely, cost little budget. While
    /// upstream pushes arrive, `max_interval_with_webhooks`: the push makes the job due when
    /// it ends, and this poll is only the safety net.
    pub fn poll_interval(&self, job: &Job, now: Timestamp) -> Duration {
        let normal = self.normal_poll_interval(job, now);
        if self.push.may_slow(&job.id, now) {
            normal.max(self.settings.max_interval_with_webhooks)
        } else {
            normal
        }
    }

    /// The cadence without pushes.
    pub fn normal_poll_interval(&self, job: &Job, now: Timestamp) -> Duration {
        (job.age(now) / 12).clamp(self.settings.interval, self.settings.max_interval)
    }

    /// A job was stored with its agent id: if a push for that agent came first (a fast
    /// upstream), make the job due now. Returns whether it did (the caller wakes the poller).
    pub fn after_accepted(&self, job: &Job) -> bool {
        let Some(agent_id) = &job.agent_id else {
            return false;
        };
        if !job.is_pending() || !self.push.take_early(agent_id, self.clock.now()) {
            return false;
        }
        tracing::info!(job_id = %job.id, %agent_id, "applying a push that arrived before its job was stored");
        self.push.make_due(job.id.clone());
        true
    }

    pub fn is_too_old(&self, job: &Job, now: Timestamp) -> bool {
        job.age(now) >= self.settings.max_age
    }

    /// Fold one status answer into the job. Returns `true` when the job has ended.
    pub fn apply_poll(
        &self,
        job: &mut Job,
        result: Result<StatusReport, UpstreamError>,
        now: Timestamp,
    ) -> bool {
        job.updated_at = now;
        match result {
            Ok(report) => {
                job.polls += 1;
                job.not_found_streak = 0;
                job.agent = Some(serde_json::Value::Object(report.data));
                match report.state {
                    AgentState::Running => {}
                    AgentState::Ready => {
                        job.finish(JobStatus::Ready, None, now);
                        return true;
                    }
                    AgentState::Failed { message } => {
                        let message = message
                            .unwrap_or_else(|| "upstream reported the generation as failed".into());
                        job.finish(
                            JobStatus::Failed,
                            Some(JobError {
                                code: "GENERATION_FAILED".into(),
                                message,
                            }),
                            now,
                        );
                        return true;
                    }
                }
                job.next_poll_at = Some(after(now, self.poll_interval(job, now)));
            }
            Err(error) if error.is_not_found() => {
                job.polls += 1;
                job.not_found_streak += 1;
                if job.not_found_streak >= self.settings.max_not_found {
                    let message = format!(
                        "upstream answered 404 for agent {} {} times in a row",
                        job.agent_id.as_deref().unwrap_or("?"),
                        job.not_found_streak
                    );
                    job.finish(
                        JobStatus::Failed,
                        Some(JobError {
                            code: "NOT_FOUND".into(),
                            message,
                        }),
                        now,
                    );
                    return true;
                }
                job.next_poll_at = Some(after(now, self.poll_interval(job, now)));
            }
            Err(error) => {
                job.transient_errors += 1;
                let wait = self.poll_interval(job, now).max(retry_after(&error));
                job.next_poll_at = Some(after(now, wait));
            }
        }
        false
    }

    /// End a job that ran out of time.
    pub fn expire(&self, job: &mut Job, now: Timestamp) {
        let message = format!(
            "no result after {}",
            humantime::format_duration(self.settings.max_age)
        );
        job.finish(
            JobStatus::Failed,
            Some(JobError {
                code: "TIMEOUT".into(),
                message,
            }),
            now,
        );
    }

    /// End a job that upstream refused for good during background submission.
    pub fn refuse(&self, job: &mut Job, error: &UpstreamError, now: Timestamp) {
        let (code, message) = match error {
            UpstreamError::Refused { code, message, .. } => (code.clone(), message.clone()),
            UpstreamError::Transient { reason, .. } => ("UPSTREAM_ERROR".into(), reason.clone()),
        };
        job.finish(JobStatus::Failed, Some(JobError { code, message }), now);
    }

    /// Write a job's terminal state and its deliveries (its callback and every matching
    /// subscription) in one transaction. Returns how many deliveries were queued, or `None`
    /// when the job had already ended (cancelled meanwhile).
    pub async fn complete(&self, job: &Job) -> Result<Option<usize>, StoreError> {
        let now = self.clock.now();
        let deliveries = match Event::for_job(job, now) {
            Some(event) => self.deliveries_for(job, &event, now).await?,
            None => Vec::new(),
        };
        let count = deliveries.len();
        let written = self.store.complete_job(job, deliveries).await?;
        Ok(written.then_some(count))
    }

    async fn deliveries_for(
        &self,
        job: &Job,
        event: &Event,
        now: Timestamp,
    ) -> Result<Vec<Delivery>, StoreError> {
        // One body for all of them, rendered once.
        let payload = Payload::from(event.payload());
        let subscriptions =
            store::subscriptions_for(&*self.store, &job.tenant, event.event_type).await?;
        let callback = job
            .callback_url
            .iter()
            .map(|url| Destination::Callback { url: url.clone() });
        let destinations = callback.chain(subscriptions.iter().map(Destination::subscription));
        let deliveries = destinations
            .map(|destination| {
                Delivery::with_payload(event, &payload, Some(job.id.clone()), destination, now)
            })
            .collect();
        Ok(deliveries)
    }
}

fn retry_after(error: &UpstreamError) -> Duration {
    match error {
        UpstreamError::Transient {
            retry_after: Some(d),
            ..
        } => *d,
        _ => Duration::ZERO,
    }
}

/// The first wait between tries of a write that must land, doubled up to [`LAND_MAX_WAIT`].
const LAND_FIRST_WAIT: Duration = Duration::from_millis(250);
const LAND_MAX_WAIT: Duration = Duration::from_secs(5);

/// Try `write` until it lands: for a write that records what upstream has already done (an
/// agent it created), which must not be forgotten. Only storage failures are tried again, with
/// a growing pause; at shutdown one last try is made, and if it fails too the agent is logged
/// at error level for an operator to reconcile, and the error returned.
pub async fn land<T, F, Fut>(
    signals: &crate::signals::Signals,
    job: &Job,
    write: F,
) -> Result<T, StoreError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut wait = LAND_FIRST_WAIT;
    let mut warned = false;
    loop {
        let error = match write().await {
            Ok(value) => {
                if warned {
                    tracing::info!(job_id = %job.id, agent_id = job.agent_id.as_deref().unwrap_or(""), "job stored after storage recovered");
                }
                return Ok(value);
            }
            Err(error @ StoreError::Unavailable(_)) => error,
            Err(error) => return Err(error),
        };
        if signals.is_shutting_down() {
            tracing::error!(
                job_id = %job.id,
                agent_id = job.agent_id.as_deref().unwrap_or(""),
                tenant = %job.tenant,
                %error,
                "giving up storing a job that upstream accepted: this agent is tracked by no job"
            );
            return Err(error);
        }
        if !warned {
            tracing::warn!(job_id = %job.id, agent_id = job.agent_id.as_deref().unwrap_or(""), %error, "upstream accepted the job but storage failed; trying again until it is stored");
            warned = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = signals.shutdown_started() => {}
        }
        wait = (wait * 2).min(LAND_MAX_WAIT);
    }
}
