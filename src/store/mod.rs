//! Durable state behind one API in domain terms: create a job, complete it with its deliveries
//! (the outbox), claim due work, record an attempt. The API is async and knows no backend;
//! [`Storage`] is what a backend implements and [`Store`] is what the rest of the service holds.
//!
//! Promises every backend keeps (the conformance suite, `tests/api/store_conformance.rs`,
//! states each one):
//! - a write is durable when it returns: there is no separate "flush now" step;
//! - the outbox is atomic: a job is terminal if and only if its deliveries exist, and a second
//!   completion writes nothing;
//! - a subscription is stored with its indexes in one write;
//! - an idempotency key admits one request at a time, and replays or refuses the rest;
//! - a due job or delivery is claimed by one claimer at a time, and a claim whose lease ends
//!   goes to the next claimer;
//! - every read is scoped to a tenant, except the lookups the workers need (by id, by agent).
//!
//! The embedded backend is sled ([`sled`], one process per directory). Nothing outside that
//! folder names sled (`.ci/run` checks).

pub mod copy;
pub mod health;
mod postgres;
mod sled;

pub use self::postgres::{PgStore, KEY_HOLD, WAKE_CHANNEL};
pub use self::sled::{delivery_record_len, SledStore};

use std::any::Any;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::Timestamp;
use crate::domain::{
    Delivery, DeliveryId, DeliveryState, EventType, Job, JobId, JobStatus, SecretSet, Subscription,
    SubscriptionId, Tenant,
};

/// How long an `Idempotency-Key` is remembered: a repeat within it replays the first answer.
pub const IDEMPOTENCY_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The store the service holds: one backend, shared.
pub type Store = Arc<dyn Storage>;

/// Open the configured backend. PostgreSQL connects when first used (needs a tokio runtime);
/// [`Storage::prepare`] connects and migrates.
pub fn open(settings: &crate::config::StorageSettings) -> Result<Store> {
    match settings.backend {
        crate::config::StorageBackend::Sled => Ok(Arc::new(SledStore::open(
            &settings.path,
            settings.cache_bytes,
        )?)),
        crate::config::StorageBackend::Postgres => {
            let pg = &settings.postgres;
            Ok(Arc::new(PgStore::open(
                &pg.url,
                pg.max_connections,
                pg.delivery_lease,
            )?))
        }
    }
}

/// What to wake when work is written to a shared backend (by this process or another).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wakeup {
    /// Deliveries were queued.
    Deliveries,
    /// Jobs are due.
    Jobs,
}

/// Called by a shared backend for each [`Wakeup`].
pub type WakeFn = Arc<dyn Fn(Wakeup) + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (I/O, a lost connection, a full disk): the operation did not happen.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("storage record could not be decoded: {0}")]
    Corrupt(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What the scheduler does next with a pending job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkKind {
    /// Hand the job to upstream (it has no agent id yet).
    Submit,
    /// Ask upstream how the agent is doing.
    Poll,
}

impl WorkKind {
    /// The kind of work a job in this state waits for, if any.
    pub fn of(job: &Job) -> Option<WorkKind> {
        match job.status {
            JobStatus::Submitting => Some(WorkKind::Submit),
            JobStatus::Processing => Some(WorkKind::Poll),
            _ => None,
        }
    }
}

/// An `Idempotency-Key` with the fingerprint of the request that carried it.
#[derive(Clone, Debug)]
pub struct IdempotencyKey {
    pub key: String,
    pub fingerprint: String,
}

/// The first answer given for an idempotency key, replayed as it was.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IdempotentResponse {
    pub status: u16,
    pub body: Value,
}

/// An idempotency key held for the request that is admitting a job; released when dropped,
/// which the request does once the key's record is stored (or the request has failed).
pub struct KeyHold(Option<Box<dyn Any + Send + Sync>>);

impl KeyHold {
    /// A hold of nothing (the request carried no key).
    pub fn none() -> KeyHold {
        KeyHold(None)
    }

    /// A hold that lasts as long as `guard`: the backend releases the key when it is dropped.
    pub fn new(guard: impl Any + Send + Sync) -> KeyHold {
        KeyHold(Some(Box::new(guard)))
    }
}

impl std::fmt::Debug for KeyHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("KeyHold").field(&self.0.is_some()).finish()
    }
}

/// The outcome of asking to create a job.
#[derive(Debug)]
pub enum Admission {
    /// Go on and submit it; the key (if any) is held until the hold is dropped.
    Created(KeyHold),
    /// The key was used before with the same body: answer this.
    Replay(IdempotentResponse),
    /// The key's first request has not been answered yet.
    InFlight { job_id: JobId, since: Timestamp },
    /// The key was used before with another body.
    Mismatch,
}

#[derive(Clone, Debug)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    /// The cursor for the next page, when there is one.
    pub next: Option<JobId>,
}

/// How a `DELETE` ended.
#[derive(Clone, Debug)]
pub enum Cancellation {
    Cancelled(Job),
    AlreadyFinished(Job),
    NotFound,
}

/// The worker drains two queues so that a receiver piling up retries never delays fresh
/// events to healthy receivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryQueue {
    /// First attempts.
    Fresh,
    /// Everything after a failed attempt.
    Retry,
}

impl DeliveryQueue {
    pub fn of(delivery: &Delivery) -> DeliveryQueue {
        if delivery.is_first_attempt() {
            DeliveryQueue::Fresh
        } else {
            DeliveryQueue::Retry
        }
    }
}

/// A claimed delivery as [`Storage::update_claimed`] left it stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub state: DeliveryState,
    /// Attempts made so far, the one just recorded included.
    pub attempts: usize,
}

/// What [`Storage::update_delivery`] did.
#[derive(Clone, Debug)]
pub enum DeliveryUpdate {
    /// No such delivery for this tenant.
    NotFound,
    /// The change declined; the delivery as stored.
    Unchanged(Delivery),
    /// The delivery as changed and stored.
    Updated(Delivery),
}

#[derive(Clone, Debug)]
pub struct DeliveryPage {
    pub deliveries: Vec<Delivery>,
    pub next: Option<DeliveryId>,
}

/// A change to a stored delivery: returns `false` to leave it as it is. It may run more than
/// once (a backend retries a write that met a concurrent one), so it must only change its
/// argument.
pub type DeliveryChange = Box<dyn Fn(&mut Delivery) -> bool + Send + Sync>;
/// A time computed from a job (when to poll it next, say).
pub type JobTime = Box<dyn Fn(&Job) -> Timestamp + Send + Sync>;
/// A change to a stored subscription (may run more than once, as [`DeliveryChange`]).
pub type SubscriptionChange = Box<dyn Fn(&mut Subscription) + Send + Sync>;
/// A change to a tenant's callback secrets, given what is stored (`None`: nothing yet): what
/// to store, or `None` to leave them as they are. It may run more than once, as
/// [`DeliveryChange`].
pub type SecretsChange = Box<dyn Fn(Option<&SecretSet>) -> Option<SecretSet> + Send + Sync>;

/// What a backend keeps for a claim it handed out: released when dropped.
pub trait Lease: Any + Send + Sync {
    /// Release the claim, and let the item be claimed again no earlier than `at`.
    fn put_back(self: Box<Self>, at: Timestamp);
    /// For the backend that made it, to take its own lease back.
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
}

/// How many more requests the worker can send to each destination (its `scheme://host[:port]`,
/// [`Destination::host`](crate::domain::Destination::host)) now. A claim takes no more
/// deliveries to a destination than its room; a backend that knows the destination of each
/// queued delivery passes over the others without reading them. Destinations are known by
/// their [`DestinationKey`].
#[derive(Clone, Debug)]
pub struct Room {
    /// The room of the destinations with requests in flight.
    free: std::collections::HashMap<DestinationKey, usize>,
    /// The room of every other destination.
    idle: usize,
}

impl Room {
    /// `idle` for a destination with nothing in flight, `free` for the others (by host).
    pub fn new<'a>(idle: usize, free: impl IntoIterator<Item = (&'a str, usize)>) -> Room {
        Room {
            free: free
                .into_iter()
                .map(|(host, n)| (DestinationKey::of(host), n))
                .collect(),
            idle,
        }
    }

    /// No limit: every destination has room.
    pub fn unlimited() -> Room {
        Room::new(usize::MAX, [])
    }

    /// The room of `destination`.
    pub fn of(&self, destination: DestinationKey) -> usize {
        self.free.get(&destination).copied().unwrap_or(self.idle)
    }

    /// Take one request of `destination`'s room, if it has any.
    pub fn take(&mut self, destination: DestinationKey) -> bool {
        let free = self.free.entry(destination).or_insert(self.idle);
        if *free == 0 {
            return false;
        }
        *free -= 1;
        true
    }
}

/// A destination's host ([`Destination::host`](crate::domain::Destination::host)) as 64 bits:
/// FNV-1a, the same in every run and every build, so a backend may store it. Two hosts with
/// one key (about one chance in 10^19 for a pair) would only share their room in a claim; the
/// worker's own per-host limit still holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DestinationKey(pub u64);

impl DestinationKey {
    pub fn of(host: &str) -> DestinationKey {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in host.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        DestinationKey(hash)
    }
}

/// A delivery the worker holds. Dropping it releases the claim; recording its attempt
/// ([`Storage::update_claimed`]) ends it. The delivery is shared, so the worker keeps it while
/// the claim goes to the storage backend.
pub struct Claimed {
    pub delivery: Arc<Delivery>,
    pub lease: Box<dyn Lease>,
}

impl Claimed {
    /// Release the claim, and let the delivery be claimed again no earlier than `at` (the
    /// worker had no room for it). Nothing is written.
    pub fn put_back(self, at: Timestamp) {
        self.lease.put_back(at);
    }
}

impl std::fmt::Debug for Claimed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claimed")
            .field("delivery", &self.delivery.id)
            .finish_non_exhaustive()
    }
}

/// Stored counts for `/metrics`, kept up to date by the writes themselves so that a scrape
/// costs the same however much is stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Jobs waiting to be handed to upstream.
    pub jobs_submitting: u64,
    /// Jobs upstream is working on.
    pub jobs_processing: u64,
    /// Deliveries waiting for their first attempt.
    pub deliveries_fresh: u64,
    /// Deliveries waiting for a retry.
    pub deliveries_retry: u64,
}

/// The registration agenthook made of its push URL with bitHuman: its id, URL and the
/// signing secret upstream shows only once.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamWebhook {
    pub id: String,
    pub url: String,
    pub secret: String,
}

impl std::fmt::Debug for UpstreamWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamWebhook")
            .field("id", &self.id)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// What a backend does. Every method is a unit of work in domain terms; every write is
/// durable when it returns.
#[async_trait::async_trait]
pub trait Storage: std::fmt::Debug + Send + Sync + 'static {
    // --- Jobs and idempotency ---

    /// Start admitting a new job: settle its idempotency key without writing anything. A live
    /// key (younger than `key_ttl`) short-circuits; otherwise the key is held until the
    /// returned [`KeyHold`] is dropped, and a second request with it meanwhile is told
    /// [`Admission::InFlight`].
    async fn begin_job(
        &self,
        job: &Job,
        idempotency: Option<&IdempotencyKey>,
        key_ttl: std::time::Duration,
    ) -> Result<Admission>;

    /// Store a pending job, with the idempotency record of its key marked in flight: the
    /// poller takes the job over at its `next_poll_at` if no one saves it before.
    async fn hold_job(&self, job: &Job, idempotency: Option<&IdempotencyKey>) -> Result<()>;

    /// Store a job that upstream accepted (or that will be submitted in the background), with
    /// the answer its idempotency key replays. Returns `false`, writing nothing, when the job
    /// was held and has meanwhile ended (cancelled): the cancellation stands. `held` says
    /// whether [`Storage::hold_job`] stored it before.
    async fn accept_job(
        &self,
        job: Job,
        held: bool,
        idempotency: Option<(IdempotencyKey, IdempotentResponse)>,
    ) -> Result<bool>;

    /// Keep nothing of a job that will not run. With `response`, that answer is what the key
    /// replays; without, the key is released so the client may try again.
    async fn refuse_job(
        &self,
        job: &Job,
        idempotency: Option<&IdempotencyKey>,
        response: Option<&IdempotentResponse>,
    ) -> Result<()>;

    /// Save a pending job's progress, moving its due time. Returns `false`, writing nothing,
    /// when the stored job has meanwhile ended (cancelled, say): the caller's news is stale.
    async fn save_job(&self, job: &Job) -> Result<bool>;

    /// The outbox: a job's terminal state and the deliveries it causes, in one write. Returns
    /// `false`, writing nothing, when the job had already ended.
    async fn complete_job(&self, job: &Job, deliveries: Vec<Delivery>) -> Result<bool>;

    /// Cancel a tenant's job: no more polls, no events.
    async fn cancel_job(&self, tenant: &Tenant, id: &JobId, now: Timestamp)
        -> Result<Cancellation>;

    /// A job of this tenant; another tenant's job is as good as absent.
    async fn job(&self, tenant: &Tenant, id: &JobId) -> Result<Option<Job>>;

    /// A job whichever tenant owns it (for the workers, never for a tenant's request).
    async fn job_by_id(&self, id: &JobId) -> Result<Option<Job>>;

    /// The job that tracks an upstream agent, whichever tenant owns it.
    async fn job_by_agent(&self, agent_id: &str) -> Result<Option<Job>>;

    /// A tenant's jobs, newest first, optionally of one status, after the cursor `after`.
    async fn list_jobs(
        &self,
        tenant: &Tenant,
        status: Option<JobStatus>,
        after: Option<&JobId>,
        limit: usize,
    ) -> Result<JobPage>;

    /// Drop idempotency records older than `ttl`, at most `limit` of them; returns how many.
    async fn purge_idempotency(
        &self,
        now: Timestamp,
        ttl: std::time::Duration,
        limit: usize,
    ) -> Result<usize>;

    // --- Due work ---

    /// Claim up to `limit` jobs of `kind` due at `now`, each leased until `lease_until`: no one
    /// else takes it meanwhile, and it is due again by itself if the claimer never reports.
    async fn claim_due_jobs(
        &self,
        kind: WorkKind,
        now: Timestamp,
        limit: usize,
        lease_until: Timestamp,
    ) -> Result<Vec<Job>>;

    /// At the start of a process: the polls leased by a process that has stopped, whose
    /// leases end after `now` and at or before `horizon`, are due at `now` instead of when
    /// their leases end. `horizon` is this process's start plus `poller.lease`, less a
    /// millisecond: as far as an earlier process's lease reaches, short of this one's own (a
    /// lease taken under a longer setting ends by itself). Submissions keep their
    /// leases (the stopped process's generate call may still be under way upstream). Only
    /// storage that one process alone can open knows a lease's holder is gone (sled); storage
    /// shared by instances (PostgreSQL) leaves them to end, since their holder may be running.
    /// How many were released.
    async fn release_leases(&self, now: Timestamp, horizon: Timestamp) -> Result<usize>;

    /// When the earliest job of `kind` is due, if any is pending.
    async fn next_due_at(&self, kind: WorkKind) -> Result<Option<Timestamp>>;

    /// How many jobs of `kind` are due at `now`, counting at most `cap`.
    async fn count_due(&self, kind: WorkKind, now: Timestamp, cap: usize) -> Result<usize>;

    /// Claim up to `limit` deliveries from `queue` that are due at `now`, to destinations with
    /// `room` (a backend may leave that check to the worker).
    async fn claim_due_deliveries(
        &self,
        queue: DeliveryQueue,
        now: Timestamp,
        limit: usize,
        room: Room,
    ) -> Result<Vec<Claimed>>;

    /// When the earliest delivery of `queue` that is not claimed may be claimed. A backend may
    /// leave out deliveries that wait for their destination's room (an attempt that ends makes
    /// room, and the worker claims again then).
    async fn next_delivery_due_at(&self, queue: DeliveryQueue) -> Result<Option<Timestamp>>;

    // --- Deliveries and attempts ---

    /// Store deliveries that no job transition caused (test events, say), queued at once.
    async fn insert_deliveries(&self, deliveries: Vec<Delivery>) -> Result<()>;

    /// Record a claimed delivery's attempt: change it as [`Storage::update_delivery`] does and
    /// end the claim. Answers with what it left stored (`None`: the delivery is gone, or the
    /// change declined).
    async fn update_claimed(
        &self,
        claim: Claimed,
        change: DeliveryChange,
    ) -> Result<Option<Recorded>>;

    /// Change a tenant's delivery atomically against concurrent writers (the worker recording
    /// an attempt), moving its due time: a dead letter retried by hand, say.
    async fn update_delivery(
        &self,
        tenant: &Tenant,
        id: &DeliveryId,
        change: DeliveryChange,
    ) -> Result<DeliveryUpdate>;

    async fn delivery(&self, tenant: &Tenant, id: &DeliveryId) -> Result<Option<Delivery>>;

    /// A tenant's deliveries, newest first, optionally in one state, after the cursor.
    async fn list_deliveries(
        &self,
        tenant: &Tenant,
        state: Option<DeliveryState>,
        after: Option<&DeliveryId>,
        limit: usize,
    ) -> Result<DeliveryPage>;

    /// Every delivery of a job's events, oldest first.
    async fn deliveries_of_job(&self, job: &JobId) -> Result<Vec<Delivery>>;

    /// A subscription's failed deliveries (its dead letters), oldest first.
    async fn failed_deliveries_of_subscription(
        &self,
        sub: &SubscriptionId,
    ) -> Result<Vec<Delivery>>;

    // --- Subscriptions and secrets ---

    /// Store a subscription and its indexes in one write.
    async fn save_subscription(&self, sub: &Subscription) -> Result<()>;

    async fn subscription(
        &self,
        tenant: &Tenant,
        id: &SubscriptionId,
    ) -> Result<Option<Subscription>>;

    /// A tenant's subscriptions, oldest first.
    async fn list_subscriptions(&self, tenant: &Tenant) -> Result<Vec<Subscription>>;

    /// Remove a tenant's subscription with its indexes; `false` if there was none.
    async fn delete_subscription(&self, tenant: &Tenant, id: &SubscriptionId) -> Result<bool>;

    /// Change a subscription in place, atomically against concurrent changes. Returns the
    /// updated subscription, or `None` when it no longer exists.
    async fn update_subscription(
        &self,
        id: &SubscriptionId,
        change: SubscriptionChange,
    ) -> Result<Option<Subscription>>;

    /// The tenant's callback secrets, created with `generate` on first use.
    async fn callback_secrets(
        &self,
        tenant: &Tenant,
        generate: fn() -> String,
    ) -> Result<SecretSet>;

    /// Change the tenant's callback secrets atomically against concurrent changes (two
    /// rotations at once must not lose a secret one of them handed out). Answers with what is
    /// stored now, or `None` when the change declined (nothing written).
    async fn update_callback_secrets(
        &self,
        tenant: &Tenant,
        change: SecretsChange,
    ) -> Result<Option<SecretSet>>;

    // --- Upstream push ---

    /// Claim one pending `processing` job for a status read now, wherever it is queued (a
    /// push made it due), leased until `lease_until`. `None` when the job is unknown, ended,
    /// or not polled yet.
    async fn claim_job_for_poll(&self, id: &JobId, lease_until: Timestamp) -> Result<Option<Job>>;

    /// Move up to `limit` polls due after `later_than` to the time `to` gives each (at the
    /// latest `later_than`): the slowed cadence undone when pushes stop. Returns how many.
    async fn pull_in_polls(
        &self,
        later_than: Timestamp,
        limit: usize,
        to: JobTime,
    ) -> Result<usize>;

    /// agenthook's own webhook registration with bitHuman, if it made one.
    async fn upstream_webhook(&self) -> Result<Option<UpstreamWebhook>>;

    /// Keep the registration (its secret cannot be asked for again).
    async fn save_upstream_webhook(&self, webhook: &UpstreamWebhook) -> Result<()>;

    // --- Operations ---

    /// Stored counts for metrics, read in constant time.
    async fn counts(&self) -> Result<Counts>;

    /// Whether the backend answers (a cheap probe for `/readyz`).
    async fn is_healthy(&self) -> bool;

    /// Make everything written so far durable and let go of the backend (shutdown).
    async fn close(&self) -> Result<()>;

    /// Make the backend ready to serve before anything else uses it: PostgreSQL connects and
    /// applies its migrations (under an advisory lock, so several instances may start at
    /// once). An embedded backend has nothing to do.
    async fn prepare(&self) -> Result<()> {
        Ok(())
    }

    /// Call `wake` whenever any process sharing this backend writes work (new deliveries, due
    /// jobs), so that the workers of every instance pick it up at once. A backend that only
    /// one process opens never calls it: its writers wake their own workers.
    fn watch_wakeups(&self, wake: WakeFn) {
        let _ = wake;
    }

    /// Whether several processes share this store, and with it the upstream budgets (then
    /// [`Storage::take_budget`] grants every request).
    fn shares_budgets(&self) -> bool {
        false
    }

    /// Grant up to `want` requests of the budget `name` at `now`, from one budget shared by
    /// every process on this store: requests are granted `spacing` apart, with at most `burst`
    /// ahead (a GCRA). Returns how many were granted (0: none before the next spacing). A store
    /// that no one else shares grants nothing ([`Storage::shares_budgets`] is false).
    async fn take_budget(
        &self,
        name: &str,
        now: Timestamp,
        spacing: std::time::Duration,
        burst: u32,
        want: u32,
    ) -> Result<u32> {
        let _ = (name, now, spacing, burst, want);
        Ok(0)
    }

    // --- Retention and storage faults ---

    /// Delete finished jobs (ready, failed, cancelled) that ended before `cutoff`, each with its
    /// events, its deliveries and their attempts, and every index and listing entry, in one
    /// write: at most `limit` jobs, looking at jobs created after the cursor `after` (the
    /// report's `next`; `None`: from the oldest). Pending work is never deleted: a job still
    /// submitting or processing, or with a delivery still pending, stays whatever its age.
    async fn purge_finished_before(
        &self,
        cutoff: Timestamp,
        after: Option<&JobId>,
        limit: usize,
    ) -> Result<PurgeReport>;

    /// What is stored, for `/metrics`: records of each kind and the bytes on disk. It may scan
    /// (housekeeping calls it now and then, a scrape only reads the gauges it sets).
    async fn stored_totals(&self) -> Result<StoredTotals>;

    /// Whether a write would land now, found with a small durable write (or the backend's
    /// equivalent). `Err` while storage still fails; [`Writable::AfterRestart`] when the medium
    /// works again but this backend only recovers in a fresh process.
    async fn check_writable(&self) -> Result<Writable>;

    /// The storage failure in progress, as a health tracker wrapped around the backend sees it
    /// (see [`health`]); a backend alone answers `None`.
    fn current_fault(&self) -> Option<String> {
        None
    }
}

/// What one [`Storage::purge_finished_before`] call deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PurgeReport {
    pub jobs: usize,
    pub deliveries: usize,
    /// Where the next call goes on from; `None` once every job that could have ended before
    /// the cutoff has been looked at.
    pub next: Option<JobId>,
}

/// Stored records and the space they take, for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoredTotals {
    pub jobs: u64,
    pub deliveries: u64,
    pub events: u64,
    /// What the data takes on disk (sled: its files; a database: its tables).
    pub bytes: u64,
}

/// What [`Storage::check_writable`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writable {
    /// Writes land again.
    Yes,
    /// The medium takes writes again, but this backend keeps its error until it is reopened in
    /// a fresh process: the service drains and exits non-zero for its supervisor.
    AfterRestart,
}

/// The enabled subscriptions of a tenant that want this event type.
pub async fn subscriptions_for(
    store: &dyn Storage,
    tenant: &Tenant,
    event_type: EventType,
) -> Result<Vec<Subscription>> {
    Ok(store
        .list_subscriptions(tenant)
        .await?
        .into_iter()
        .filter(|s| s.wants(event_type))
        .collect())
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::{SledStore, Store};

    /// A store in a fresh temporary directory, kept alive by the returned guard.
    pub fn temp_store() -> (Store, tempfile::TempDir) {
        let (store, dir) = super::sled::test_support::temp_store();
        (std::sync::Arc::new(store) as std::sync::Arc<SledStore>, dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destination_key_is_fnv_1a_and_never_changes() {
        // Stored in sled's queue entries: keys of another function would name destinations
        // with nothing in flight, and claims would read those entries to learn where they go.
        // FNV-1a's published 64-bit vectors.
        assert_eq!(DestinationKey::of("").0, 0xcbf2_9ce4_8422_2325);
        assert_eq!(DestinationKey::of("a").0, 0xaf63_dc4c_8601_ec8c);
        assert_eq!(DestinationKey::of("foobar").0, 0x8594_4171_f739_67e8);
    }

    #[test]
    fn room_is_counted_per_destination_and_idle_ones_have_the_full_limit() {
        let mut room = Room::new(2, [("http://a", 1), ("http://b", 0)]);
        let (a, b, c) = (
            DestinationKey::of("http://a"),
            DestinationKey::of("http://b"),
            DestinationKey::of("http://c"),
        );
        assert_eq!((room.of(a), room.of(b), room.of(c)), (1, 0, 2));
        assert!(room.take(a));
        assert!(!room.take(a));
        assert!(!room.take(b));
        assert!(room.take(c) && room.take(c) && !room.take(c));
    }
}
