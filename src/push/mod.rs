//! Upstream push: what agenthook does with bitHuman's own webhooks (`agent.ready`,
//! `agent.failed`). A push never decides an outcome; it makes the job due for a status read at
//! once, ahead of routine polls but inside the read budget, and the read decides. Polling stays
//! as the safety net, slowed while pushes arrive (see [`PushInbox::is_healthy`]).
//!
//! Everything here is memory, on purpose:
//! - Delivery ids already seen are kept for [`SEEN_FOR`] (at most [`SEEN_CAPACITY`]). A
//!   replay older than that fails the signature's 5-minute window anyway, and a duplicate that
//!   slips through (after a restart, say) costs one extra status read, never a wrong outcome:
//!   the read decides, and a job ends once.
//! - Pushes for agents no job tracks yet (a fast upstream pushes before the job that submitted
//!   the agent is stored) are kept by agent id for [`EARLY_FOR`] and applied when the job is
//!   stored ([`crate::lifecycle::Lifecycle::after_accepted`]). Lost on a restart: then the
//!   routine poll finds the agent ended.
//! - Jobs made due wait in a queue the poller drains first ([`PushInbox::take_due`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

mod registration;

pub use registration::{ensure_registration, heartbeat};

use crate::clock::{after, Timestamp};
use crate::domain::JobId;
use crate::upstream::push::{self, PushEvent, Rejection};

/// How long a delivery id is remembered: twice the signature window and a margin, so a replay
/// signed up to 5 minutes ahead of our clock is still recognised.
pub const SEEN_FOR: Duration = Duration::from_secs(11 * 60);
pub const SEEN_CAPACITY: usize = 100_000;
/// How long a push for an agent no job tracks yet is kept.
pub const EARLY_FOR: Duration = Duration::from_secs(10 * 60);
pub const EARLY_CAPACITY: usize = 10_000;
/// Push arrival times kept for the push-to-callback latency metric.
const LATENCY_CAPACITY: usize = 10_000;

/// What one verified push led to; also the `outcome` label of
/// `agenthook_upstream_pushes_total`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    /// A tracked, pending job was made due for a status read now.
    Accepted(JobId),
    /// This delivery id was seen before.
    Duplicate,
    /// No job tracks this agent (yet): kept for a while in case its job is being stored.
    UnknownAgent,
    /// The job has already ended (ready, failed or cancelled): nothing to do.
    JobEnded,
    /// `ping`, or an event agenthook does not use.
    Ignored,
}

impl PushOutcome {
    pub fn label(&self) -> &'static str {
        match self {
            PushOutcome::Accepted(_) => "accepted",
            PushOutcome::Duplicate => "duplicate",
            PushOutcome::UnknownAgent => "unknown_agent",
            PushOutcome::JobEnded => "job_ended",
            PushOutcome::Ignored => "ignored",
        }
    }
}

/// The metric label of a refused push.
pub fn rejection_label(rejection: Rejection) -> &'static str {
    match rejection {
        Rejection::BadSignature => "bad_signature",
        Rejection::Stale => "stale",
    }
}

#[derive(Debug)]
pub struct PushInbox {
    /// The secrets a push may be signed with: the configured one and the registration's.
    secrets: RwLock<Vec<String>>,
    /// The id of agenthook's own registration upstream, once known (for heartbeat pings).
    registration: Mutex<Option<String>>,
    /// While a push arrived within this long, routine polls slow down.
    healthy_for: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    seen: HashSet<String>,
    seen_order: VecDeque<(String, Timestamp)>,
    early: HashMap<String, Timestamp>,
    early_order: VecDeque<(String, Timestamp)>,
    due: VecDeque<JobId>,
    queued: HashSet<JobId>,
    /// Jobs whose push was not yet confirmed by their status, until when they keep the normal
    /// cadence.
    unconfirmed: HashMap<JobId, Timestamp>,
    last_push_at: Option<Timestamp>,
    /// Whether the poller last saw pushes arriving (to notice when they stop).
    was_healthy: bool,
}

impl PushInbox {
    pub fn new(healthy_for: Duration) -> Self {
        PushInbox {
            secrets: RwLock::new(Vec::new()),
            registration: Mutex::new(None),
            healthy_for,
            state: Mutex::new(State::default()),
        }
    }

    /// Accept pushes signed with `secret` (ignored when empty or already known).
    pub fn add_secret(&self, secret: &str) {
        if secret.is_empty() {
            return;
        }
        let mut secrets = self.secrets.write().unwrap_or_else(|e| e.into_inner());
        if !secrets.iter().any(|s| s == secret) {
            secrets.push(secret.to_owned());
        }
    }

    pub fn set_registration(&self, id: &str) {
        *self.registration.lock().unwrap_or_else(|e| e.into_inner()) = Some(id.to_owned());
    }

    pub fn registration(&self) -> Option<String> {
        self.registration
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How often to ask upstream for a `ping` so that arriving pushes are known even while no
    /// agent ends: twice per health window.
    pub fn heartbeat_every(&self) -> Duration {
        (self.healthy_for / 2).max(Duration::from_secs(1))
    }

    /// Whether any secret is known: without one the route is off.
    pub fn is_enabled(&self) -> bool {
        !self
            .secrets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Check a delivery's signature and timestamp against every known secret.
    pub fn verify(
        &self,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now: Timestamp,
    ) -> Result<(), Rejection> {
        let secrets = self.secrets.read().unwrap_or_else(|e| e.into_inner());
        let keys: Vec<&str> = secrets.iter().map(String::as_str).collect();
        push::verify(&keys, timestamp, signature, body, now)
    }

    /// Record a verified delivery: a repeat of `delivery_id` is a duplicate; otherwise it
    /// counts as a sign that pushes arrive. `find` looks the agent up: `Some(Some(pending))`
    /// for a job that tracks it, `Some(None)` (tracked but ended), `None` (no job).
    pub async fn receive<F>(
        &self,
        delivery_id: Option<&str>,
        event: &PushEvent,
        now: Timestamp,
        find: impl FnOnce(String) -> F,
    ) -> PushOutcome
    where
        F: std::future::Future<Output = Option<Option<JobId>>>,
    {
        {
            let mut state = self.lock();
            state.forget_old(now);
            state.last_push_at = Some(state.last_push_at.map_or(now, |t| t.max(now)));
            if let Some(id) = delivery_id.filter(|id| !id.is_empty()) {
                if !state.seen.insert(id.to_owned()) {
                    return PushOutcome::Duplicate;
                }
                state.seen_order.push_back((id.to_owned(), now));
                if state.seen_order.len() > SEEN_CAPACITY {
                    if let Some((old, _)) = state.seen_order.pop_front() {
                        state.seen.remove(&old);
                    }
                }
            }
        }
        let PushEvent::AgentEnded { agent_id } = event else {
            return PushOutcome::Ignored;
        };
        // Remembered before the look-up: a job stored meanwhile finds it in
        // `take_early` (which looks after storing), so no order of the two loses the push.
        self.remember_early(agent_id, now);
        match find(agent_id.clone()).await {
            None => PushOutcome::UnknownAgent,
            Some(found) => {
                self.lock().early.remove(agent_id);
                match found {
                    Some(job_id) => {
                        self.make_due(job_id.clone());
                        PushOutcome::Accepted(job_id)
                    }
                    None => PushOutcome::JobEnded,
                }
            }
        }
    }

    fn remember_early(&self, agent_id: &str, now: Timestamp) {
        let mut state = self.lock();
        if state.early.insert(agent_id.to_owned(), now).is_none() {
            state.early_order.push_back((agent_id.to_owned(), now));
        }
        while state.early_order.len() > EARLY_CAPACITY {
            if let Some((old, _)) = state.early_order.pop_front() {
                state.early.remove(&old);
            }
        }
    }

    /// A push for `agent_id` arrived before its job was stored: forget it and say so.
    pub fn take_early(&self, agent_id: &str, now: Timestamp) -> bool {
        let mut state = self.lock();
        state.forget_old(now);
        state.early.remove(agent_id).is_some()
    }

    /// Queue a job for a status read ahead of routine polls.
    pub fn make_due(&self, job_id: JobId) {
        let mut state = self.lock();
        if state.queued.insert(job_id.clone()) {
            state.due.push_back(job_id);
        }
    }

    /// Up to `limit` jobs made due by pushes, oldest push first.
    pub fn take_due(&self, limit: usize) -> Vec<JobId> {
        let mut state = self.lock();
        let n = limit.min(state.due.len());
        let taken: Vec<JobId> = state.due.drain(..n).collect();
        for id in &taken {
            state.queued.remove(id);
        }
        taken
    }

    /// A push said the job's agent ended but its status does not show it yet (upstream may
    /// update one before the other): keep polling it at the normal cadence until `until`.
    pub fn unconfirmed(&self, job_id: &JobId, until: Timestamp) {
        let mut state = self.lock();
        if state.unconfirmed.len() >= EARLY_CAPACITY {
            state.unconfirmed.clear();
        }
        state.unconfirmed.insert(job_id.clone(), until);
    }

    /// Whether routine polls of this job may slow down: pushes arrive, and none for this job is
    /// waiting for its status to agree.
    pub fn may_slow(&self, job_id: &JobId, now: Timestamp) -> bool {
        if !self.is_healthy(now) {
            return false;
        }
        let mut state = self.lock();
        match state.unconfirmed.get(job_id) {
            Some(until) if *until > now => false,
            Some(_) => {
                state.unconfirmed.remove(job_id);
                true
            }
            None => true,
        }
    }

    /// Jobs waiting for a push-triggered read.
    pub fn due_len(&self) -> usize {
        self.lock().due.len()
    }

    /// Whether pushes are arriving: a verified one came within `max_interval_with_webhooks`.
    pub fn is_healthy(&self, now: Timestamp) -> bool {
        self.lock()
            .last_push_at
            .is_some_and(|at| after(at, self.healthy_for) > now)
    }

    /// True once each time pushes stop arriving (healthy before, not now): the poller then
    /// pulls in the polls it had slowed.
    pub fn stopped_arriving(&self, now: Timestamp) -> bool {
        let healthy = self.is_healthy(now);
        let mut state = self.lock();
        let stopped = state.was_healthy && !healthy;
        state.was_healthy = healthy;
        stopped
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state consistent: a panic elsewhere does not poison it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    fn forget_old(&mut self, now: Timestamp) {
        while let Some((id, at)) = self.seen_order.front() {
            if after(*at, SEEN_FOR) > now {
                break;
            }
            self.seen.remove(id);
            self.seen_order.pop_front();
        }
        while let Some((agent, at)) = self.early_order.front() {
            if after(*at, EARLY_FOR) > now {
                break;
            }
            // Only if not remembered again since.
            if self.early.get(agent) == Some(at) {
                self.early.remove(agent);
            }
            self.early_order.pop_front();
        }
    }
}

/// When pushes that made jobs due arrived, for the push-to-callback latency metric. Shared with
/// the delivery worker through [`crate::signals::Signals`].
#[derive(Debug, Default)]
pub struct PushTimes(Mutex<HashMap<JobId, Instant>>);

impl PushTimes {
    pub fn mark(&self, job_id: &JobId) {
        let mut times = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if times.len() >= LATENCY_CAPACITY {
            times.clear();
        }
        times.entry(job_id.clone()).or_insert_with(Instant::now);
    }

    /// The time since the push for `job_id`, once.
    pub fn take(&self, job_id: &JobId) -> Option<Duration> {
        let mut times = self.0.lock().unwrap_or_else(|e| e.into_inner());
        times.remove(job_id).map(|at| at.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Timestamp {
        chrono::Utc::now()
    }

    fn ended(agent: &str) -> PushEvent {
        PushEvent::AgentEnded {
            agent_id: agent.into(),
        }
    }

    #[tokio::test]
    async fn a_delivery_id_counts_once_until_it_is_forgotten() {
        let inbox = PushInbox::new(Duration::from_secs(600));
        let now = t0();
        let job = JobId::generate();
        let found = |_: String| async { Some(Some(job.clone())) };
        assert!(matches!(
            inbox.receive(Some("evt_1"), &ended("A1"), now, found).await,
            PushOutcome::Accepted(_)
        ));
        assert_eq!(
            inbox
                .receive(Some("evt_1"), &ended("A1"), now, |_| async {
                    unreachable!()
                })
                .await,
            PushOutcome::Duplicate
        );
        let later = after(now, SEEN_FOR + Duration::from_secs(1));
        assert!(matches!(
            inbox
                .receive(Some("evt_1"), &ended("A1"), later, |_| async { Some(None) })
                .await,
            PushOutcome::JobEnded
        ));
    }

    #[tokio::test]
    async fn an_early_push_is_kept_for_its_agent_and_taken_once() {
        let inbox = PushInbox::new(Duration::from_secs(600));
        let now = t0();
        assert_eq!(
            inbox
                .receive(Some("evt_1"), &ended("A1"), now, |_| async { None })
                .await,
            PushOutcome::UnknownAgent
        );
        assert!(inbox.take_early("A1", now));
        assert!(!inbox.take_early("A1", now));
        inbox
            .receive(Some("evt_2"), &ended("A2"), now, |_| async { None })
            .await;
        assert!(!inbox.take_early("A2", after(now, EARLY_FOR)));
    }

    #[test]
    fn jobs_made_due_are_taken_in_order_without_repeats() {
        let inbox = PushInbox::new(Duration::from_secs(600));
        let (a, b) = (JobId::generate(), JobId::generate());
        inbox.make_due(a.clone());
        inbox.make_due(b.clone());
        inbox.make_due(a.clone());
        assert_eq!(inbox.take_due(1), vec![a]);
        assert_eq!(inbox.take_due(10), vec![b]);
        assert!(inbox.take_due(10).is_empty());
    }

    #[tokio::test]
    async fn health_lasts_the_interval_after_the_last_push_and_its_end_is_noticed_once() {
        let inbox = PushInbox::new(Duration::from_secs(600));
        let now = t0();
        assert!(!inbox.is_healthy(now));
        assert!(!inbox.stopped_arriving(now));
        inbox
            .receive(None, &PushEvent::Ping, now, |_| async { None })
            .await;
        assert!(inbox.is_healthy(after(now, Duration::from_secs(599))));
        assert!(!inbox.stopped_arriving(now));
        let gone = after(now, Duration::from_secs(600));
        assert!(!inbox.is_healthy(gone));
        assert!(inbox.stopped_arriving(gone));
        assert!(!inbox.stopped_arriving(gone));
    }
}
