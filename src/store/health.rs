//! Storage health, seen from every result the store gives: [`Watched`] wraps a backend and
//! feeds each outcome to [`Health`], which knows whether storage is failing and why.
//!
//! - A store call that fails as [`StoreError::Unavailable`] (a full disk, an I/O error, a lost
//!   database) marks storage failing: one error line, `agenthook_storage_healthy` 0, `/readyz`
//!   503, and new jobs refused before anything is sent upstream.
//! - A write that lands marks it healthy again (one info line). While storage is failing,
//!   [`Health::watch`] asks the backend every second whether a write would land
//!   ([`Storage::check_writable`]); while it is healthy, every few seconds, so an idle service
//!   notices a full disk too.
//! - A backend that cannot recover in place (sled keeps an I/O error until it is reopened)
//!   answers [`Writable::AfterRestart`] once the medium takes writes again: the service then
//!   drains and exits non-zero, for its supervisor to start it afresh.
//!
//! - A write that does not come back is worse than one that fails: a disk that hangs (or
//!   sled, which can leave a flush waiting forever once a write has failed) would hold every
//!   request and worker behind it. When writes are under way and none has finished for
//!   `storage.stall_timeout`, storage is declared **stalled**: the service stops at once,
//!   without waiting for what it cannot finish, and exits non-zero for its supervisor.
//!
//! Reads that succeed say nothing: a full disk still reads.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::*;

/// How often a healthy store is probed with a write.
const PROBE_WHILE_HEALTHY: Duration = Duration::from_secs(5);
/// How often a failing store is probed.
const PROBE_WHILE_FAILING: Duration = Duration::from_secs(1);

/// How often the stall watch looks at the writes under way.
const STALL_CHECK: Duration = Duration::from_millis(250);

/// Whether storage works, and what is wrong when it does not.
#[derive(Debug, Default)]
pub struct Health {
    fault: Mutex<Option<String>>,
    restart: AtomicBool,
    /// Set with `restart` when writes stopped coming back (see [`Health::stalled`]).
    stalled: AtomicBool,
    /// Writes begun and writes ended (came back, or were dropped by their caller).
    writes_begun: AtomicU64,
    writes_ended: AtomicU64,
    /// Bumped when a write comes back (landed or failed), and when one begins with none under
    /// way. A write dropped by its caller does not count: the backend may still be stuck on it.
    progress: AtomicU64,
    /// Wakes the watcher when storage starts failing.
    failed: tokio::sync::Notify,
    /// Wakes whoever waits for [`Health::restart_needed`].
    restart_wake: tokio::sync::Notify,
}

impl Health {
    pub fn new() -> Arc<Health> {
        Arc::new(Health::default())
    }

    /// The failure in progress, if storage is failing.
    pub fn fault(&self) -> Option<String> {
        self.lock().clone()
    }

    pub fn is_healthy(&self) -> bool {
        self.lock().is_none()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.fault.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Storage failed with `message`: logged once, when it starts.
    pub fn failing(&self, message: &str) {
        let mut fault = self.lock();
        if fault.is_none() {
            tracing::error!(error = %message, "storage is failing: new jobs are refused and /readyz answers 503 until it works again");
            *fault = Some(message.to_owned());
            self.failed.notify_one();
        }
    }

    /// A write landed: logged once, when storage heals.
    pub fn working(&self) {
        let mut fault = self.lock();
        if let Some(was) = fault.take() {
            tracing::info!(was = %was, "storage works again");
        }
    }

    /// Feed a store result; `write` says whether it was a write (only a write proves health).
    pub fn observe<T>(&self, result: &Result<T>, write: bool) {
        match result {
            Err(StoreError::Unavailable(message)) => self.failing(message),
            Ok(_) if write => self.working(),
            _ => {}
        }
    }

    /// Whether the backend asked for a fresh process to recover.
    pub fn restart_needed(&self) -> bool {
        self.restart.load(Ordering::SeqCst)
    }

    /// Whether writes stopped coming back (storage stalled): the process must go without
    /// waiting for them, and without the flush a clean close would make.
    pub fn stalled(&self) -> bool {
        self.stalled.load(Ordering::SeqCst)
    }

    fn ask_for_restart(&self) {
        self.restart.store(true, Ordering::SeqCst);
        self.restart_wake.notify_waiters();
    }

    /// Count `write` as under way until it comes back (or its caller drops it).
    pub async fn timed_write<T>(&self, write: impl Future<Output = T>) -> T {
        let mut under_way = self.write_begins();
        let result = write.await;
        under_way.came_back = true;
        result
    }

    fn write_begins(&self) -> WriteUnderWay<'_> {
        if self.writes_begun.load(Ordering::SeqCst) == self.writes_ended.load(Ordering::SeqCst) {
            // None under way: the time before this write is not a stall.
            self.progress.fetch_add(1, Ordering::SeqCst);
        }
        self.writes_begun.fetch_add(1, Ordering::SeqCst);
        WriteUnderWay {
            health: self,
            came_back: false,
        }
    }

    fn writes_under_way(&self) -> bool {
        self.writes_begun.load(Ordering::SeqCst) != self.writes_ended.load(Ordering::SeqCst)
    }

    /// Declare storage stalled once writes have been under way for `limit` with none coming
    /// back (`limit` zero: never). Returns when it does. The time is counted check by check,
    /// at most two check periods at a time, so that a process paused as a whole (a stopped
    /// container, a suspended VM) does not find its writes stalled when it resumes.
    pub async fn notice_a_stall(&self, limit: Duration) {
        if limit.is_zero() {
            return std::future::pending().await;
        }
        let mut stalled_for = Duration::ZERO;
        let mut progress = self.progress.load(Ordering::SeqCst);
        let mut checked = Instant::now();
        loop {
            tokio::time::sleep(STALL_CHECK).await;
            let now = Instant::now();
            let since_last = now.duration_since(checked).min(2 * STALL_CHECK);
            checked = now;
            let seen = self.progress.load(Ordering::SeqCst);
            if seen != progress || !self.writes_under_way() {
                progress = seen;
                stalled_for = Duration::ZERO;
                continue;
            }
            stalled_for += since_last;
            if stalled_for >= limit {
                let message = format!(
                    "storage stalled: no write has come back for {}s",
                    stalled_for.as_secs()
                );
                tracing::error!(stall_timeout = ?limit, "{message}; stopping at once and exiting 1 for the supervisor to restart the service");
                *self.lock() = Some(message);
                self.stalled.store(true, Ordering::SeqCst);
                self.ask_for_restart();
                return;
            }
        }
    }

    /// Wait until storage is declared stalled (forever if it never is).
    pub async fn wait_for_stall(&self) {
        self.wait_until(Health::stalled).await
    }

    /// Wait until the backend asks for a fresh process (or storage stalls).
    pub async fn wait_for_restart(&self) {
        self.wait_until(Health::restart_needed).await
    }

    async fn wait_until(&self, condition: fn(&Health) -> bool) {
        loop {
            let wake = self.restart_wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            if condition(self) {
                return;
            }
            wake.await;
        }
    }

    /// Probe the store until `stop` resolves: every second while it fails, every few seconds
    /// while it works. (The watch for a stall, [`Health::notice_a_stall`], runs apart: it must
    /// go on through a shutdown, which waits on storage too.)
    pub async fn watch(self: Arc<Self>, store: Store, stop: impl Future<Output = ()>) {
        tokio::select! {
            _ = stop => {}
            _ = self.probe(store) => {}
        }
    }

    async fn probe(&self, store: Store) {
        loop {
            let every = if self.is_healthy() {
                PROBE_WHILE_HEALTHY
            } else {
                PROBE_WHILE_FAILING
            };
            let failed = self.failed.notified();
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                // Just failed: the next probe is a second away, not a full healthy period.
                _ = failed => { tokio::time::sleep(PROBE_WHILE_FAILING).await; }
            }
            if self.restart_needed() {
                continue;
            }
            match store.check_writable().await {
                Ok(Writable::Yes) => self.working(),
                Ok(Writable::AfterRestart) => {
                    tracing::warn!("storage takes writes again, but this backend recovers only when reopened: draining and exiting for the supervisor to restart the service");
                    self.ask_for_restart();
                }
                Err(StoreError::Unavailable(message)) => self.failing(&message),
                Err(error) => tracing::warn!(%error, "storage write probe failed"),
            }
        }
    }
}

/// A write under way, until dropped.
struct WriteUnderWay<'a> {
    health: &'a Health,
    came_back: bool,
}

impl Drop for WriteUnderWay<'_> {
    fn drop(&mut self) {
        if self.came_back {
            self.health.progress.fetch_add(1, Ordering::SeqCst);
        }
        self.health.writes_ended.fetch_add(1, Ordering::SeqCst);
    }
}

/// A backend with its results fed to a [`Health`].
#[derive(Debug)]
pub struct Watched {
    inner: Store,
    health: Arc<Health>,
}

impl Watched {
    pub fn new(inner: Store, health: Arc<Health>) -> Watched {
        Watched { inner, health }
    }

    async fn read<T>(&self, read: impl Future<Output = Result<T>>) -> Result<T> {
        let result = read.await;
        self.health.observe(&result, false);
        result
    }

    async fn write<T>(&self, write: impl Future<Output = Result<T>>) -> Result<T> {
        let result = self.health.timed_write(write).await;
        self.health.observe(&result, true);
        result
    }
}

#[async_trait::async_trait]
impl Storage for Watched {
    async fn begin_job(
        &self,
        job: &Job,
        idempotency: Option<&IdempotencyKey>,
        key_ttl: std::time::Duration,
    ) -> Result<Admission> {
        self.read(self.inner.begin_job(job, idempotency, key_ttl))
            .await
    }

    async fn hold_job(&self, job: &Job, idempotency: Option<&IdempotencyKey>) -> Result<()> {
        self.write(self.inner.hold_job(job, idempotency)).await
    }

    async fn accept_job(
        &self,
        job: Job,
        held: bool,
        idempotency: Option<(IdempotencyKey, IdempotentResponse)>,
    ) -> Result<bool> {
        self.write(self.inner.accept_job(job, held, idempotency))
            .await
    }

    async fn refuse_job(
        &self,
        job: &Job,
        idempotency: Option<&IdempotencyKey>,
        response: Option<&IdempotentResponse>,
    ) -> Result<()> {
        self.write(self.inner.refuse_job(job, idempotency, response))
            .await
    }

    async fn save_job(&self, job: &Job) -> Result<bool> {
        self.write(self.inner.save_job(job)).await
    }

    async fn complete_job(&self, job: &Job, deliveries: Vec<Delivery>) -> Result<bool> {
        self.write(self.inner.complete_job(job, deliveries)).await
    }

    async fn cancel_job(
        &self,
        tenant: &Tenant,
        id: &JobId,
        now: Timestamp,
    ) -> Result<Cancellation> {
        self.write(self.inner.cancel_job(tenant, id, now)).await
    }

    async fn job(&self, tenant: &Tenant, id: &JobId) -> Result<Option<Job>> {
        self.read(self.inner.job(tenant, id)).await
    }

    async fn job_by_id(&self, id: &JobId) -> Result<Option<Job>> {
        self.read(self.inner.job_by_id(id)).await
    }

    async fn job_by_agent(&self, agent_id: &str) -> Result<Option<Job>> {
        self.read(self.inner.job_by_agent(agent_id)).await
    }

    async fn list_jobs(
        &self,
        tenant: &Tenant,
        status: Option<JobStatus>,
        after: Option<&JobId>,
        limit: usize,
    ) -> Result<JobPage> {
        self.read(self.inner.list_jobs(tenant, status, after, limit))
            .await
    }

    async fn purge_idempotency(
        &self,
        now: Timestamp,
        ttl: std::time::Duration,
        limit: usize,
    ) -> Result<usize> {
        self.write(self.inner.purge_idempotency(now, ttl, limit))
            .await
    }

    async fn claim_due_jobs(
        &self,
        kind: WorkKind,
        now: Timestamp,
        limit: usize,
        lease_until: Timestamp,
    ) -> Result<Vec<Job>> {
        self.write(self.inner.claim_due_jobs(kind, now, limit, lease_until))
            .await
    }

    async fn release_leases(&self, now: Timestamp, horizon: Timestamp) -> Result<usize> {
        self.write(self.inner.release_leases(now, horizon)).await
    }

    async fn next_due_at(&self, kind: WorkKind) -> Result<Option<Timestamp>> {
        self.read(self.inner.next_due_at(kind)).await
    }

    async fn count_due(&self, kind: WorkKind, now: Timestamp, cap: usize) -> Result<usize> {
        self.read(self.inner.count_due(kind, now, cap)).await
    }

    async fn claim_due_deliveries(
        &self,
        queue: DeliveryQueue,
        now: Timestamp,
        limit: usize,
        room: Room,
    ) -> Result<Vec<Claimed>> {
        // A delivery claim writes nothing in every backend we have: a read.
        self.read(self.inner.claim_due_deliveries(queue, now, limit, room))
            .await
    }

    async fn next_delivery_due_at(&self, queue: DeliveryQueue) -> Result<Option<Timestamp>> {
        self.read(self.inner.next_delivery_due_at(queue)).await
    }

    async fn insert_deliveries(&self, deliveries: Vec<Delivery>) -> Result<()> {
        self.write(self.inner.insert_deliveries(deliveries)).await
    }

    async fn update_claimed(
        &self,
        claim: Claimed,
        change: DeliveryChange,
    ) -> Result<Option<Recorded>> {
        self.write(self.inner.update_claimed(claim, change)).await
    }

    async fn update_delivery(
        &self,
        tenant: &Tenant,
        id: &DeliveryId,
        change: DeliveryChange,
    ) -> Result<DeliveryUpdate> {
        self.write(self.inner.update_delivery(tenant, id, change))
            .await
    }

    async fn delivery(&self, tenant: &Tenant, id: &DeliveryId) -> Result<Option<Delivery>> {
        self.read(self.inner.delivery(tenant, id)).await
    }

    async fn list_deliveries(
        &self,
        tenant: &Tenant,
        state: Option<DeliveryState>,
        after: Option<&DeliveryId>,
        limit: usize,
    ) -> Result<DeliveryPage> {
        self.read(self.inner.list_deliveries(tenant, state, after, limit))
            .await
    }

    async fn deliveries_of_job(&self, job: &JobId) -> Result<Vec<Delivery>> {
        self.read(self.inner.deliveries_of_job(job)).await
    }

    async fn failed_deliveries_of_subscription(
        &self,
        sub: &SubscriptionId,
    ) -> Result<Vec<Delivery>> {
        self.read(self.inner.failed_deliveries_of_subscription(sub))
            .await
    }

    async fn save_subscription(&self, sub: &Subscription) -> Result<()> {
        self.write(self.inner.save_subscription(sub)).await
    }

    async fn subscription(
        &self,
        tenant: &Tenant,
        id: &SubscriptionId,
    ) -> Result<Option<Subscription>> {
        self.read(self.inner.subscription(tenant, id)).await
    }

    async fn list_subscriptions(&self, tenant: &Tenant) -> Result<Vec<Subscription>> {
        self.read(self.inner.list_subscriptions(tenant)).await
    }

    async fn delete_subscription(&self, tenant: &Tenant, id: &SubscriptionId) -> Result<bool> {
        self.write(self.inner.delete_subscription(tenant, id)).await
    }

    async fn update_subscription(
        &self,
        id: &SubscriptionId,
        change: SubscriptionChange,
    ) -> Result<Option<Subscription>> {
        self.write(self.inner.update_subscription(id, change)).await
    }

    async fn callback_secrets(
        &self,
        tenant: &Tenant,
        generate: fn() -> String,
    ) -> Result<SecretSet> {
        self.read(self.inner.callback_secrets(tenant, generate))
            .await
    }

    async fn update_callback_secrets(
        &self,
        tenant: &Tenant,
        change: SecretsChange,
    ) -> Result<Option<SecretSet>> {
        self.write(self.inner.update_callback_secrets(tenant, change))
            .await
    }

    async fn claim_job_for_poll(&self, id: &JobId, lease_until: Timestamp) -> Result<Option<Job>> {
        self.write(self.inner.claim_job_for_poll(id, lease_until))
            .await
    }

    async fn pull_in_polls(
        &self,
        later_than: Timestamp,
        limit: usize,
        to: crate::store::JobTime,
    ) -> Result<usize> {
        self.write(self.inner.pull_in_polls(later_than, limit, to))
            .await
    }

    async fn upstream_webhook(&self) -> Result<Option<crate::store::UpstreamWebhook>> {
        self.read(self.inner.upstream_webhook()).await
    }

    async fn save_upstream_webhook(&self, webhook: &crate::store::UpstreamWebhook) -> Result<()> {
        self.write(self.inner.save_upstream_webhook(webhook)).await
    }

    async fn prepare(&self) -> Result<()> {
        self.inner.prepare().await
    }

    fn watch_wakeups(&self, wake: crate::store::WakeFn) {
        self.inner.watch_wakeups(wake)
    }

    fn shares_budgets(&self) -> bool {
        self.inner.shares_budgets()
    }

    async fn take_budget(
        &self,
        name: &str,
        now: Timestamp,
        spacing: std::time::Duration,
        burst: u32,
        want: u32,
    ) -> Result<u32> {
        self.inner
            .take_budget(name, now, spacing, burst, want)
            .await
    }

    async fn counts(&self) -> Result<Counts> {
        self.inner.counts().await
    }

    async fn is_healthy(&self) -> bool {
        self.health.is_healthy() && self.inner.is_healthy().await
    }

    async fn close(&self) -> Result<()> {
        self.health.timed_write(self.inner.close()).await
    }

    async fn purge_finished_before(
        &self,
        cutoff: Timestamp,
        after: Option<&JobId>,
        limit: usize,
    ) -> Result<PurgeReport> {
        let result = self
            .health
            .timed_write(self.inner.purge_finished_before(cutoff, after, limit))
            .await;
        // A purge that found nothing to delete wrote nothing: it proves nothing either way.
        match &result {
            Ok(report) if report.jobs == 0 => {}
            _ => self.health.observe(&result, true),
        }
        result
    }

    async fn stored_totals(&self) -> Result<StoredTotals> {
        self.inner.stored_totals().await
    }

    async fn check_writable(&self) -> Result<Writable> {
        let result = self.health.timed_write(self.inner.check_writable()).await;
        match &result {
            Ok(Writable::Yes) => self.health.working(),
            Err(StoreError::Unavailable(message)) => self.health.failing(message),
            _ => {}
        }
        result
    }

    fn current_fault(&self) -> Option<String> {
        self.health.fault()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_noted_once_and_only_a_write_that_lands_heals_it() {
        let health = Health::default();
        assert!(health.is_healthy());
        health.observe::<()>(&Err(StoreError::Unavailable("disk full".into())), true);
        health.observe::<()>(&Err(StoreError::Unavailable("later".into())), false);
        assert_eq!(
            health.fault().as_deref(),
            Some("disk full"),
            "the first cause stays"
        );
        health.observe(&Ok(()), false);
        assert!(
            !health.is_healthy(),
            "a read proves nothing: a full disk still reads"
        );
        health.observe::<()>(&Err(StoreError::Corrupt("bad record".into())), true);
        assert_eq!(health.fault().as_deref(), Some("disk full"));
        health.observe(&Ok(()), true);
        assert!(health.is_healthy());
        health.observe::<()>(&Err(StoreError::Corrupt("bad record".into())), true);
        assert!(health.is_healthy(), "a bad record is not a failing disk");
    }

    /// Whether `notice_a_stall(limit)` declares a stall within `within`.
    async fn stalls_within(health: &Health, limit: Duration, within: Duration) -> bool {
        tokio::time::timeout(within, health.notice_a_stall(limit))
            .await
            .is_ok()
    }

    fn hang(health: &Arc<Health>) -> tokio::task::JoinHandle<()> {
        let health = health.clone();
        tokio::spawn(async move { health.timed_write(std::future::pending::<()>()).await })
    }

    // The clock is paused: it moves on only when every task waits, so these timings are exact.
    #[tokio::test(start_paused = true)]
    async fn writes_under_way_with_none_coming_back_for_the_limit_are_a_stall() {
        let limit = Duration::from_secs(30);
        let health = Arc::new(Health::default());
        assert!(
            !stalls_within(&health, limit, Duration::from_secs(60)).await,
            "idle is not a stall"
        );

        // Writes that keep coming back, each slow, longer together than the limit.
        let busy = {
            let health = health.clone();
            tokio::spawn(async move {
                loop {
                    let slow = tokio::time::sleep(Duration::from_secs(10));
                    health.timed_write(slow).await;
                }
            })
        };
        let _hung_meanwhile = hang(&health);
        assert!(!stalls_within(&health, limit, Duration::from_secs(60)).await);
        busy.abort();
        let _ = busy.await;

        let started = Instant::now();
        assert!(stalls_within(&health, limit, Duration::from_secs(60)).await);
        let took = started.elapsed();
        assert!(took >= limit && took <= limit + 2 * STALL_CHECK, "{took:?}");
        assert!(health.stalled() && health.restart_needed());
        assert!(
            health.fault().unwrap_or_default().contains("stalled"),
            "{:?}",
            health.fault()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_its_caller_gave_up_on_neither_ends_a_stall_nor_starts_one() {
        let limit = Duration::from_secs(30);
        let health = Arc::new(Health::default());
        let abandoned = hang(&health);
        tokio::time::sleep(Duration::from_secs(1)).await;
        abandoned.abort();
        let _ = abandoned.await;
        assert!(
            !stalls_within(&health, limit, Duration::from_secs(60)).await,
            "nothing under way"
        );

        // The backend is stuck: one write waits, and callers keep giving up on others.
        let _stuck = hang(&health);
        let impatient = {
            let health = health.clone();
            tokio::spawn(async move {
                loop {
                    let gave_up = tokio::time::timeout(
                        Duration::from_secs(5),
                        health.timed_write(std::future::pending::<()>()),
                    );
                    let _ = gave_up.await;
                }
            })
        };
        assert!(stalls_within(&health, limit, Duration::from_secs(40)).await);
        impatient.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_timeout_of_zero_never_declares_one() {
        let health = Arc::new(Health::default());
        let _hung = hang(&health);
        assert!(!stalls_within(&health, Duration::ZERO, Duration::from_secs(3600)).await);
        assert!(!health.stalled());
    }
}
