//! Job admission: a generate request becomes a job, settled against its idempotency key,
//! submitted upstream at once and stored with the answer its key replays.

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::api::{ApiError, AppState};
use crate::clock::after;
use crate::domain::{Job, Tenant};
use crate::lifecycle::Submission;
use crate::store::{
    Admission, IdempotencyKey, IdempotentResponse, KeyHold, StoreError, IDEMPOTENCY_TTL,
};

/// A generate request, validated: agenthook's own fields split from the upstream's.
#[derive(Debug)]
pub struct JobSpec {
    /// Forwarded upstream as they came.
    pub upstream: Map<String, Value>,
    pub callback_url: Option<String>,
    pub metadata: Map<String, Value>,
}

/// What the client is answered.
#[derive(Debug)]
pub enum Answer {
    /// The answer of this request.
    Fresh(IdempotentResponse),
    /// The answer of the first request with the same idempotency key.
    Replayed(IdempotentResponse),
}

/// How the caller wants an unreachable upstream handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Answer `202 submitting` and keep trying in the background (`/v1/jobs`).
    Deferrable,
    /// Answer with the failure; keep nothing (the drop-in generate route).
    Synchronous,
}

/// Render the answer for a job that upstream accepted (or that will be retried).
pub type Render = fn(&Job) -> IdempotentResponse;

/// How long a request may wait for upstream's answer before its job is stored as pending
/// (durably), so that a crash while upstream takes its time cannot leave an agent that no
/// job tracks. Upstream usually answers sooner: then the job is written once, accepted.
pub const HOLD_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// How long a request waits for its job to be stored once upstream has accepted it and a
/// first write failed, before answering 503 (the write goes on in the background).
pub const LAND_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// `503 UNAVAILABLE` for failing storage, saying what fails.
pub fn storage_unavailable(fault: &str) -> ApiError {
    ApiError::from(StoreError::Unavailable(fault.to_owned()))
}

/// Settle the idempotency key, submit the job upstream, store the outcome with the answer
/// its key replays, durably, and answer.
pub async fn admit(
    state: Arc<AppState>,
    tenant: Tenant,
    spec: JobSpec,
    key: Option<IdempotencyKey>,
    mode: Mode,
    render: Render,
) -> Result<Answer, ApiError> {
    if let Some(fault) = state.store.current_fault() {
        // Refused before upstream hears of it: a job that cannot be stored must not exist there.
        return Err(storage_unavailable(&fault));
    }
    let now = state.clock.now();
    let mut job = Job::new(tenant, spec.upstream, spec.callback_url, spec.metadata, now);
    // If the job has to be held: the poller takes it over then, should we die meanwhile.
    job.next_poll_at = Some(after(now, state.settings.poller.lease));
    let hold = match state
        .store
        .begin_job(&job, key.as_ref(), IDEMPOTENCY_TTL)
        .await?
    {
        Admission::Created(hold) => hold,
        Admission::Replay(response) => return Ok(Answer::Replayed(response)),
        Admission::Mismatch => {
            return Err(ApiError::unprocessable(
                "this Idempotency-Key was already used with a different request body",
            ))
        }
        Admission::InFlight { job_id, since } => {
            let abandoned = after(since, state.settings.poller.lease) <= now;
            match state.store.job(&job.tenant, &job_id).await? {
                Some(first) if abandoned => return Ok(Answer::Replayed(render(&first))),
                _ => {
                    return Err(ApiError::conflict(
                        "a request with this Idempotency-Key is still in progress",
                    ))
                }
            }
        }
    };
    // From here on the job is upstream's business too: finish even if the client goes away.
    let finished = actix_web::rt::spawn(async move {
        submit_and_store(&state, job, key, mode, render, hold).await
    });
    match finished.await {
        Ok(answer) => answer.map(Answer::Fresh),
        Err(e) => Err(ApiError::internal(&e)),
    }
}

async fn submit_and_store(
    state: &Arc<AppState>,
    mut job: Job,
    key: Option<IdempotencyKey>,
    mode: Mode,
    render: Render,
    hold: KeyHold,
) -> Result<IdempotentResponse, ApiError> {
    let now = job.created_at;
    let pending = job.clone();
    let mut held = false;
    let submission = {
        let submit = state.lifecycle.submit(&mut job);
        tokio::pin!(submit);
        tokio::select! {
            submission = &mut submit => submission,
            _ = tokio::time::sleep(HOLD_AFTER) => {
                // If storage fails here, upstream is still asked (the request is out): what it
                // answers is stored below, tried until it lands.
                held = state.store.hold_job(&pending, key.as_ref()).await.is_ok();
                submit.await
            }
        }
    };
    drop(pending);
    let outcome = match &submission {
        Submission::Accepted => "accepted",
        Submission::Deferred(_) => "deferred",
        Submission::Refused(_) => "refused",
    };
    metrics::counter!("agenthook_jobs_submitted_total", "outcome" => outcome).increment(1);
    match submission {
        Submission::Accepted => {}
        Submission::Deferred(_) if mode == Mode::Deferrable => {}
        Submission::Deferred(error) => {
            state.store.refuse_job(&job, key.as_ref(), None).await?;
            return Err(match error {
                Some(error) => ApiError::upstream(&error),
                None => {
                    let wait = crate::clock::until(
                        now,
                        state
                            .lifecycle
                            .upstream
                            .budgets()
                            .generate
                            .next_available_at(now),
                    );
                    let mut e = ApiError::rate_limited(wait.as_secs() + 1);
                    e.message = "the upstream generate budget is used up; try again later".into();
                    e
                }
            });
        }
        Submission::Refused(error) => {
            let api_error = ApiError::upstream(&error);
            let response = IdempotentResponse {
                status: api_error.status.as_u16(),
                body: serde_json::to_value(api_error.body()).expect("error body serialises"),
            };
            state
                .store
                .refuse_job(&job, key.as_ref(), Some(&response))
                .await?;
            return Err(api_error);
        }
    }
    if let Some(agent) = &job.agent_id {
        // Before the write that records it: should storage stall there and the process go, this
        // line is what ties the agent to its job (as the poller's "submitted upstream" does).
        tracing::info!(job_id = %job.id, agent_id = %agent, "submitted upstream");
    }
    let response = render(&job);
    let id = job.id.clone();
    let stored = job.clone();
    let idempotency = key.map(|k| (k, response.clone()));
    let saved = match state
        .store
        .accept_job(job.clone(), held, idempotency.clone())
        .await
    {
        Err(StoreError::Unavailable(fault)) if job.agent_id.is_some() => {
            // Upstream made an agent for this job: it is stored whatever it takes (see `land`),
            // the key held meanwhile so a retry of the request cannot make a second one.
            let landing = {
                let state = Arc::clone(state);
                tokio::spawn(async move {
                    let saved = crate::lifecycle::land(&state.signals, &job, || {
                        state
                            .store
                            .accept_job(job.clone(), held, idempotency.clone())
                    })
                    .await;
                    drop(hold);
                    if matches!(saved, Ok(true)) {
                        state.signals.poller_wake.notify_one();
                    }
                    saved
                })
            };
            match tokio::time::timeout(LAND_WAIT, landing).await {
                Ok(Ok(saved)) => saved?,
                Ok(Err(join)) => return Err(ApiError::internal(&join)),
                Err(_) => {
                    let mut e = storage_unavailable(&fault);
                    e.message = format!(
                        "{}; job {id} was accepted upstream and will be stored as soon as storage works \
                         again (retry with the same Idempotency-Key to get its answer)",
                        e.message
                    );
                    return Err(e);
                }
            }
        }
        other => other?,
    };
    if saved {
        if state.lifecycle.after_accepted(&stored) {
            state.signals.pushed.mark(&stored.id);
        }
        state.signals.poller_wake.notify_one();
    } else {
        tracing::info!(job_id = %id, "job was cancelled during submission");
    }
    Ok(response)
}
