//! The status scheduler: drives every pending job to its end within the account's budgets.
//!
//! Each [`Poller::step`] claims the jobs that are due (through the due-time index, oldest due
//! first, so nothing starves), as many as the budgets allow right now, submits or polls them
//! with bounded concurrency, and writes back what it learned. [`Poller::run`] is a thin loop
//! around it that sleeps until the next job is due or the budget refills.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;

use crate::clock::{after, until, Timestamp};
use crate::domain::Job;
use crate::lifecycle::{Lifecycle, Submission};
use crate::signals::Signals;
use crate::store::{StoreError, WorkKind};

/// What one step did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepReport {
    pub submitted: usize,
    pub polled: usize,
    /// Polls made because an upstream push made the job due (counted in `polled` too).
    pub pushed: usize,
    /// Jobs that reached `ready` or `failed` in this step.
    pub completed: usize,
    /// Deliveries queued by those completions.
    pub deliveries: usize,
}

#[derive(Clone, Debug)]
pub struct Poller {
    lifecycle: Lifecycle,
    signals: Arc<Signals>,
}

/// The pause between rounds while storage is failing.
const FAULT_PAUSE: Duration = Duration::from_secs(1);
/// After a push whose status read still says running, the next read comes this soon.
const UNCONFIRMED_RECHECK: Duration = Duration::from_secs(1);

/// The longest the loop sleeps without looking again.
const MAX_IDLE: Duration = Duration::from_secs(5);

impl Poller {
    pub fn new(lifecycle: Lifecycle, signals: Arc<Signals>) -> Self {
        Poller { lifecycle, signals }
    }

    /// One round: claim what is due and affordable, handle it, write the results.
    pub async fn step(&self) -> Result<StepReport, StoreError> {
        let lc = &self.lifecycle;
        if lc.store.current_fault().is_some() {
            // Nothing upstream does now could be stored: no generate call, no poll.
            return Ok(StepReport::default());
        }
        let now = lc.clock.now();
        let lease_until = after(now, lc.settings.lease);
        let budgets = lc.upstream.budgets();
        let cap = lc.settings.concurrency;
        let submits = lc
            .store
            .claim_due_jobs(
                WorkKind::Submit,
                now,
                budgets.generate.available(now, cap),
                lease_until,
            )
            .await?;
        self.pull_in_if_pushes_stopped(now).await?;
        // Jobs an upstream push made due go first, inside the same read budget.
        let read_room = budgets.read.available(now, cap);
        let pushed = self.claim_pushed(read_room, lease_until).await?;
        let routine = lc
            .store
            .claim_due_jobs(
                WorkKind::Poll,
                now,
                read_room.saturating_sub(pushed.len()),
                lease_until,
            )
            .await?;
        let mut report = StepReport {
            pushed: pushed.len(),
            ..StepReport::default()
        };
        let submits = submits.into_iter().map(|job| (job, ())).collect();
        let submits = self.expire_too_old(submits, now, &mut report).await?;
        // Each poll marked with whether a push asked for it.
        let polls = pushed
            .into_iter()
            .map(|job| (job, true))
            .chain(routine.into_iter().map(|job| (job, false)))
            .collect();
        let polls = self.expire_too_old(polls, now, &mut report).await?;
        let handled = submits.len() + polls.len();
        let submit_results = join_all(submits.into_iter().map(|(job, ())| self.submit_one(job)));
        let poll_results = join_all(
            polls
                .into_iter()
                .map(|(job, pushed)| self.poll_one(job, now, pushed)),
        );
        let (submit_results, poll_results) = tokio::join!(submit_results, poll_results);
        for outcome in submit_results {
            let outcome = outcome?;
            report.submitted += usize::from(outcome.touched_upstream);
            report.add_completion(&outcome);
        }
        for outcome in poll_results {
            let outcome = outcome?;
            report.polled += usize::from(outcome.touched_upstream);
            report.add_completion(&outcome);
        }
        if report.deliveries > 0 {
            self.signals.delivery_wake.notify_one();
        }
        if handled >= crate::memory::BURST {
            // A wide round: what its requests, connections and writes held is free now.
            crate::memory::release_after_burst().await;
        }
        Ok(report)
    }

    /// End the jobs that are past their maximum age (without spending budget on them); return
    /// the others, each with its mark.
    async fn expire_too_old<T>(
        &self,
        jobs: Vec<(Job, T)>,
        now: Timestamp,
        report: &mut StepReport,
    ) -> Result<Vec<(Job, T)>, StoreError> {
        let lc = &self.lifecycle;
        let mut live = Vec::with_capacity(jobs.len());
        for (mut job, mark) in jobs {
            if lc.is_too_old(&job, now) {
                lc.expire(&mut job, now);
                report.add_completion(&self.finish(&job, false).await?);
            } else {
                live.push((job, mark));
            }
        }
        Ok(live)
    }

    /// Claim up to `room` of the jobs upstream pushes made due, oldest push first. Jobs that
    /// ended or are unknown meanwhile are dropped; the rest wait for room in the budget.
    async fn claim_pushed(
        &self,
        room: usize,
        lease_until: Timestamp,
    ) -> Result<Vec<Job>, StoreError> {
        let lc = &self.lifecycle;
        let mut claimed = Vec::new();
        while claimed.len() < room {
            let ids = lc.push.take_due(room - claimed.len());
            if ids.is_empty() {
                break;
            }
            for id in ids {
                if let Some(job) = lc.store.claim_job_for_poll(&id, lease_until).await? {
                    claimed.push(job);
                }
            }
        }
        Ok(claimed)
    }

    /// When pushes stop arriving, polls slowed to `max_interval_with_webhooks` come back to the
    /// normal cadence at once instead of at their slowed time.
    async fn pull_in_if_pushes_stopped(&self, now: Timestamp) -> Result<(), StoreError> {
        let lc = &self.lifecycle;
        if !lc.push.stopped_arriving(now) {
            return Ok(());
        }
        let horizon = after(now, lc.settings.max_interval);
        let cadence = lc.clone();
        let moved = lc
            .store
            .pull_in_polls(
                horizon,
                usize::MAX,
                Box::new(move |job| after(now, cadence.normal_poll_interval(job, now))),
            )
            .await?;
        tracing::warn!(
            moved,
            "upstream pushes stopped arriving; polling at the normal cadence again"
        );
        Ok(())
    }

    async fn submit_one(&self, mut job: Job) -> Result<JobOutcome, StoreError> {
        let lc = &self.lifecycle;
        match lc.submit(&mut job).await {
            Submission::Accepted => {
                tracing::info!(job_id = %job.id, agent_id = job.agent_id.as_deref().unwrap_or(""), "submitted upstream");
                // The agent exists now: its id must be stored, or a later try would make another.
                let saved =
                    crate::lifecycle::land(&self.signals, &job, || lc.store.save_job(&job)).await?;
                if saved && lc.after_accepted(&job) {
                    self.signals.pushed.mark(&job.id);
                }
                Ok(JobOutcome::touched())
            }
            Submission::Deferred(error) => {
                if let Some(error) = &error {
                    tracing::warn!(job_id = %job.id, %error, "submission deferred");
                }
                lc.store.save_job(&job).await?;
                Ok(JobOutcome {
                    touched_upstream: error.is_some(),
                    ..JobOutcome::default()
                })
            }
            Submission::Refused(error) => {
                tracing::warn!(job_id = %job.id, %error, "upstream refused the job");
                lc.refuse(&mut job, &error, lc.clock.now());
                self.finish(&job, true).await
            }
        }
    }

    async fn poll_one(
        &self,
        mut job: Job,
        claimed_at: Timestamp,
        pushed: bool,
    ) -> Result<JobOutcome, StoreError> {
        let lc = &self.lifecycle;
        let read = &lc.upstream.budgets().read;
        if !read.try_acquire(claimed_at) {
            // Someone else (the drop-in status proxy) took the slot: wait for the next one.
            job.next_poll_at = Some(read.next_available_at(claimed_at));
            lc.store.save_job(&job).await?;
            return Ok(JobOutcome::default());
        }
        let agent_id = job.agent_id.clone().unwrap_or_default();
        let result = lc.upstream.status(&agent_id).await;
        if let Err(error) = &result {
            tracing::debug!(job_id = %job.id, %agent_id, %error, "status poll failed");
        }
        let now = lc.clock.now();
        let answered = result.is_ok();
        if lc.apply_poll(&mut job, result, now) {
            return self.finish(&job, true).await;
        }
        if pushed && answered {
            // Upstream said it ended but its status does not show it yet: look again in a
            // second, then at the normal cadence (not the slowed one) for a few minutes.
            lc.push
                .unconfirmed(&job.id, after(now, lc.settings.max_interval * 2));
            let soon = after(now, UNCONFIRMED_RECHECK.min(lc.settings.interval));
            job.next_poll_at = Some(job.next_poll_at.map_or(soon, |t| t.min(soon)));
        }
        lc.store.save_job(&job).await?;
        Ok(JobOutcome::touched())
    }

    async fn finish(&self, job: &Job, touched_upstream: bool) -> Result<JobOutcome, StoreError> {
        let queued = self.lifecycle.complete(job).await?;
        if let Some(n) = queued {
            metrics::counter!("agenthook_jobs_completed_total", "status" => job.status.as_str())
                .increment(1);
            tracing::info!(job_id = %job.id, status = job.status.as_str(), deliveries = n, "job ended");
        }
        Ok(JobOutcome {
            touched_upstream,
            completed: queued.is_some(),
            deliveries: queued.unwrap_or(0),
        })
    }

    /// How long the loop may sleep: until the next job is due and affordable, at most
    /// [`MAX_IDLE`].
    async fn idle_for(&self) -> Result<Duration, StoreError> {
        let lc = &self.lifecycle;
        let now = lc.clock.now();
        let budgets = lc.upstream.budgets();
        let mut wake = after(now, MAX_IDLE);
        for (kind, budget) in [
            (WorkKind::Submit, &budgets.generate),
            (WorkKind::Poll, &budgets.read),
        ] {
            if let Some(due) = lc.store.next_due_at(kind).await? {
                wake = wake.min(due.max(budget.next_available_at(now)));
            }
        }
        if lc.push.due_len() > 0 {
            wake = wake.min(budgets.read.next_available_at(now));
        }
        Ok(until(now, wake).max(Duration::from_millis(5)))
    }

    /// Step until shutdown.
    pub async fn run(self) {
        self.signals.set_poller_running(true);
        while !self.signals.is_shutting_down() {
            let step = self.step().await;
            let pause = match step {
                // Storage is failing (its tracker logs that once): look again in a while.
                _ if self.lifecycle.store.current_fault().is_some() => FAULT_PAUSE,
                Ok(report) if report.submitted + report.polled > 0 => Duration::ZERO,
                Ok(_) => self.idle_for().await.unwrap_or(MAX_IDLE),
                Err(error) => {
                    tracing::error!(%error, "scheduler step failed");
                    Duration::from_secs(1)
                }
            };
            if pause.is_zero() {
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.signals.poller_wake.notified() => {}
            }
        }
        self.signals.set_poller_running(false);
    }
}

impl StepReport {
    fn add_completion(&mut self, outcome: &JobOutcome) {
        self.completed += usize::from(outcome.completed);
        self.deliveries += outcome.deliveries;
    }
}

#[derive(Debug, Default)]
struct JobOutcome {
    touched_upstream: bool,
    completed: bool,
    deliveries: usize,
}

impl JobOutcome {
    fn touched() -> Self {
        JobOutcome {
            touched_upstream: true,
            ..Self::default()
        }
    }
}
