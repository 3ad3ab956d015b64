//! A full or failing disk: no agent without a job, 503s that say what is wrong, `/readyz`,
//! healing without a restart, no webhook before its outbox write, nothing lost after a restart.
//!
//! Two ways to make storage fail:
//! - [`FailingDisk`]: the real sled store behind a wrapper that fails on demand as a full disk
//!   does (`StoreError::Unavailable("no space left on device")`), writes only, reads still
//!   answer, or whose writes never come back, as on a disk that hangs. It injects the disk's
//!   failure; everything above it is the real service, in this process.
//! - a real 6 MiB `tmpfs` that fills up (as root; skipped with a message where mounting is not
//!   permitted), with the real binary and sled on it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agenthook::app::{Application, Services, StartError};
use agenthook::clock::{self, Timestamp};
use agenthook::domain::{
    Delivery, DeliveryId, DeliveryState, Job, JobId, JobStatus, SecretSet, Subscription,
    SubscriptionId, Tenant,
};
use agenthook::sim::SimConfig;
use agenthook::store::{
    Admission, Cancellation, Claimed, Counts, DeliveryChange, DeliveryPage, DeliveryQueue,
    DeliveryUpdate, IdempotencyKey, IdempotentResponse, JobPage, PurgeReport, Recorded, Room,
    SecretsChange, Storage, Store, StoreError, StoredTotals, SubscriptionChange, WorkKind,
    Writable,
};
use serde_json::{json, Value};

use crate::helpers::{fast_sim_config, free_port, spawn_sim, test_settings, Process, KEY_A};
use crate::receiver::Receiver;

const ENOSPC: &str = "no space left on device";

/// The real sled store, with a disk that can be made to refuse writes.
#[derive(Debug)]
struct FailingDisk {
    inner: Store,
    /// Every write fails while set.
    full: AtomicBool,
    /// Only the writes that store a job upstream accepted fail while set.
    full_for_accepts: AtomicBool,
    /// Writes never come back while set, as on a disk that hangs.
    hung: AtomicBool,
    /// The next this many attempt records fail.
    failing_attempt_records: AtomicUsize,
    /// Writes tried (failed or not) and claims made, to see that nothing spins.
    writes: AtomicUsize,
    claims: AtomicUsize,
}

impl FailingDisk {
    fn new(inner: Store) -> Arc<FailingDisk> {
        Arc::new(FailingDisk {
            inner,
            full: AtomicBool::new(false),
            full_for_accepts: AtomicBool::new(false),
            hung: AtomicBool::new(false),
            failing_attempt_records: AtomicUsize::new(0),
            writes: AtomicUsize::new(0),
            claims: AtomicUsize::new(0),
        })
    }

    fn fill(&self, full: bool) {
        self.full.store(full, Ordering::SeqCst);
    }

    async fn write(&self) -> Result<(), StoreError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        if self.hung.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.full.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable(ENOSPC.into()));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Storage for FailingDisk {
    async fn begin_job(
        &self,
        job: &Job,
        idempotency: Option<&IdempotencyKey>,
        key_ttl: Duration,
    ) -> Result<Admission, StoreError> {
        self.inner.begin_job(job, idempotency, key_ttl).await
    }
    async fn hold_job(
        &self,
        job: &Job,
        idempotency: Option<&IdempotencyKey>,
    ) -> Result<(), StoreError> {
        self.write().await?;
        self.inner.hold_job(job, idempotency).await
    }
    async fn accept_job(
        &self,
        job: Job,
        held: bool,
        idempotency: Option<(IdempotencyKey, IdempotentResponse)>,
    ) -> Result<bool, StoreError> {
        self.write().await?;
        if self.full_for_accepts.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable(ENOSPC.into()));
        }
        self.inner.accept_job(job, held, idempotency).await
    }
    async fn refuse_job(
        &self,
        job: &Job,
        idempotency: Option<&IdempotencyKey>,
        response: Option<&IdempotentResponse>,
    ) -> Result<(), StoreError> {
        self.write().await?;
        self.inner.refuse_job(job, idempotency, response).await
    }
    async fn save_job(&self, job: &Job) -> Result<bool, StoreError> {
        self.write().await?;
        self.inner.save_job(job).await
    }
    async fn complete_job(&self, job: &Job, deliveries: Vec<Delivery>) -> Result<bool, StoreError> {
        self.write().await?;
        self.inner.complete_job(job, deliveries).await
    }
    async fn cancel_job(
        &self,
        tenant: &Tenant,
        id: &JobId,
        now: Timestamp,
    ) -> Result<Cancellation, StoreError> {
        self.write().await?;
        self.inner.cancel_job(tenant, id, now).await
    }
    async fn job(&self, tenant: &Tenant, id: &JobId) -> Result<Option<Job>, StoreError> {
        self.inner.job(tenant, id).await
    }
    async fn job_by_id(&self, id: &JobId) -> Result<Option<Job>, StoreError> {
        self.inner.job_by_id(id).await
    }
    async fn job_by_agent(&self, agent_id: &str) -> Result<Option<Job>, StoreError> {
        self.inner.job_by_agent(agent_id).await
    }
    async fn list_jobs(
        &self,
        tenant: &Tenant,
        status: Option<JobStatus>,
        after: Option<&JobId>,
        limit: usize,
    ) -> Result<JobPage, StoreError> {
        self.inner.list_jobs(tenant, status, after, limit).await
    }
    async fn purge_idempotency(
        &self,
        now: Timestamp,
        ttl: Duration,
        limit: usize,
    ) -> Result<usize, StoreError> {
        self.write().await?;
        self.inner.purge_idempotency(now, ttl, limit).await
    }
    async fn claim_due_jobs(
        &self,
        kind: WorkKind,
        now: Timestamp,
        limit: usize,
        lease_until: Timestamp,
    ) -> Result<Vec<Job>, StoreError> {
        self.claims.fetch_add(1, Ordering::SeqCst);
        self.write().await?;
        self.inner
            .claim_due_jobs(kind, now, limit, lease_until)
            .await
    }
    async fn release_leases(
        &self,
        now: Timestamp,
        horizon: Timestamp,
    ) -> Result<usize, StoreError> {
        self.write().await?;
        self.inner.release_leases(now, horizon).await
    }
    async fn next_due_at(&self, kind: WorkKind) -> Result<Option<Timestamp>, StoreError> {
        self.inner.next_due_at(kind).await
    }
    async fn count_due(
        &self,
        kind: WorkKind,
        now: Timestamp,
        cap: usize,
    ) -> Result<usize, StoreError> {
        self.inner.count_due(kind, now, cap).await
    }
    async fn claim_due_deliveries(
        &self,
        queue: DeliveryQueue,
        now: Timestamp,
        limit: usize,
        room: Room,
    ) -> Result<Vec<Claimed>, StoreError> {
        self.claims.fetch_add(1, Ordering::SeqCst);
        self.inner
            .claim_due_deliveries(queue, now, limit, room)
            .await
    }
    async fn next_delivery_due_at(
        &self,
        queue: DeliveryQueue,
    ) -> Result<Option<Timestamp>, StoreError> {
        self.inner.next_delivery_due_at(queue).await
    }
    async fn insert_deliveries(&self, deliveries: Vec<Delivery>) -> Result<(), StoreError> {
        self.write().await?;
        self.inner.insert_deliveries(deliveries).await
    }
    async fn update_claimed(
        &self,
        claim: Claimed,
        change: DeliveryChange,
    ) -> Result<Option<Recorded>, StoreError> {
        self.write().await?;
        let take_one = |n: usize| n.checked_sub(1);
        if self
            .failing_attempt_records
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, take_one)
            .is_ok()
        {
            // The claim is let go, as a backend's failed write lets it go.
            drop(claim);
            return Err(StoreError::Unavailable(ENOSPC.into()));
        }
        self.inner.update_claimed(claim, change).await
    }
    async fn update_delivery(
        &self,
        tenant: &Tenant,
        id: &DeliveryId,
        change: DeliveryChange,
    ) -> Result<DeliveryUpdate, StoreError> {
        self.write().await?;
        self.inner.update_delivery(tenant, id, change).await
    }
    async fn delivery(
        &self,
        tenant: &Tenant,
        id: &DeliveryId,
    ) -> Result<Option<Delivery>, StoreError> {
        self.inner.delivery(tenant, id).await
    }
    async fn list_deliveries(
        &self,
        tenant: &Tenant,
        state: Option<DeliveryState>,
        after: Option<&DeliveryId>,
        limit: usize,
    ) -> Result<DeliveryPage, StoreError> {
        self.inner
            .list_deliveries(tenant, state, after, limit)
            .await
    }
    async fn deliveries_of_job(&self, job: &JobId) -> Result<Vec<Delivery>, StoreError> {
        self.inner.deliveries_of_job(job).await
    }
    async fn failed_deliveries_of_subscription(
        &self,
        sub: &SubscriptionId,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.inner.failed_deliveries_of_subscription(sub).await
    }
    async fn save_subscription(&self, sub: &Subscription) -> Result<(), StoreError> {
        self.write().await?;
        self.inner.save_subscription(sub).await
    }
    async fn subscription(
        &self,
        tenant: &Tenant,
        id: &SubscriptionId,
    ) -> Result<Option<Subscription>, StoreError> {
        self.inner.subscription(tenant, id).await
    }
    async fn list_subscriptions(&self, tenant: &Tenant) -> Result<Vec<Subscription>, StoreError> {
        self.inner.list_subscriptions(tenant).await
    }
    async fn delete_subscription(
        &self,
        tenant: &Tenant,
        id: &SubscriptionId,
    ) -> Result<bool, StoreError> {
        self.write().await?;
        self.inner.delete_subscription(tenant, id).await
    }
    async fn update_subscription(
        &self,
        id: &SubscriptionId,
        change: SubscriptionChange,
    ) -> Result<Option<Subscription>, StoreError> {
        self.write().await?;
        self.inner.update_subscription(id, change).await
    }
    async fn callback_secrets(
        &self,
        tenant: &Tenant,
        generate: fn() -> String,
    ) -> Result<SecretSet, StoreError> {
        self.inner.callback_secrets(tenant, generate).await
    }
    async fn update_callback_secrets(
        &self,
        tenant: &Tenant,
        change: SecretsChange,
    ) -> Result<Option<SecretSet>, StoreError> {
        self.write().await?;
        self.inner.update_callback_secrets(tenant, change).await
    }
    async fn claim_job_for_poll(
        &self,
        id: &JobId,
        lease_until: Timestamp,
    ) -> Result<Option<Job>, StoreError> {
        self.write().await?;
        self.inner.claim_job_for_poll(id, lease_until).await
    }
    async fn pull_in_polls(
        &self,
        later_than: Timestamp,
        limit: usize,
        to: agenthook::store::JobTime,
    ) -> Result<usize, StoreError> {
        self.write().await?;
        self.inner.pull_in_polls(later_than, limit, to).await
    }
    async fn upstream_webhook(
        &self,
    ) -> Result<Option<agenthook::store::UpstreamWebhook>, StoreError> {
        self.inner.upstream_webhook().await
    }
    async fn save_upstream_webhook(
        &self,
        webhook: &agenthook::store::UpstreamWebhook,
    ) -> Result<(), StoreError> {
        self.write().await?;
        self.inner.save_upstream_webhook(webhook).await
    }
    async fn counts(&self) -> Result<Counts, StoreError> {
        self.inner.counts().await
    }
    async fn is_healthy(&self) -> bool {
        self.inner.is_healthy().await
    }
    async fn close(&self) -> Result<(), StoreError> {
        // The final flush is a write: it hangs with the others.
        self.write().await?;
        self.inner.close().await
    }
    async fn purge_finished_before(
        &self,
        cutoff: Timestamp,
        after: Option<&JobId>,
        limit: usize,
    ) -> Result<PurgeReport, StoreError> {
        self.write().await?;
        self.inner.purge_finished_before(cutoff, after, limit).await
    }
    async fn stored_totals(&self) -> Result<StoredTotals, StoreError> {
        self.inner.stored_totals().await
    }
    async fn check_writable(&self) -> Result<Writable, StoreError> {
        self.write().await?;
        if self.full_for_accepts.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable(ENOSPC.into()));
        }
        self.inner.check_writable().await
    }
}

/// The service, in this process, on the real sled store behind a [`FailingDisk`].
struct App {
    base: String,
    http: reqwest::Client,
    disk: Arc<FailingDisk>,
    sim: agenthook::sim::SimServer,
    _dir: tempfile::TempDir,
    stop: agenthook::app::StopHandle,
    running: Option<tokio::task::JoinHandle<Result<(), StartError>>>,
}

impl Drop for App {
    fn drop(&mut self) {
        let stop = self.stop.clone();
        tokio::spawn(async move { stop.stop().await });
    }
}

async fn spawn_on_failing_disk(sim_config: SimConfig) -> App {
    spawn_on_failing_disk_with(sim_config, |_| {}).await
}

async fn spawn_on_failing_disk_with(
    sim_config: SimConfig,
    tweak: impl FnOnce(&mut agenthook::config::Settings),
) -> App {
    let sim = spawn_sim(sim_config);
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path(), &sim);
    tweak(&mut settings);
    let sled = agenthook::store::SledStore::open(dir.path(), 8 << 20).unwrap();
    let disk = FailingDisk::new(Arc::new(sled));
    let services = Services::with_store(settings, clock::system(), disk.clone());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let app = Application::start(services, listener).unwrap();
    let base = format!("http://{}", app.addr());
    let stop = app.stop_handle();
    let running = tokio::spawn(app.run());
    App {
        base,
        http: reqwest::Client::new(),
        disk,
        sim,
        _dir: dir,
        stop,
        running: Some(running),
    }
}

impl App {
    async fn post_job(&self, body: Value) -> (u16, Value) {
        let res = self
            .http
            .post(format!("{}/v1/jobs", self.base))
            .bearer_auth(KEY_A)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(KEY_A)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Wait until `/readyz` answers `status`; its body.
    async fn readyz_becomes(&self, status: u16, within: Duration) -> Value {
        let started = Instant::now();
        loop {
            let (got, body) = self.get("/readyz").await;
            if got == status {
                return body;
            }
            assert!(
                started.elapsed() < within,
                "/readyz stayed {got} ({body}), not {status}, for {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_for_job_status(&self, id: &str, status: &str, within: Duration) -> Value {
        let started = Instant::now();
        loop {
            let (_, job) = self.get(&format!("/v1/jobs/{id}")).await;
            if job["status"] == status {
                return job;
            }
            assert!(
                started.elapsed() < within,
                "job {id} is {}, not {status}",
                job["status"]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The health gauge as `/metrics` shows it.
fn healthy_gauge(metrics: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix("agenthook_storage_healthy ")?
            .trim()
            .parse()
            .ok()
    })
}

fn assert_storage_unavailable(status: u16, body: &Value) {
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "UNAVAILABLE", "{body}");
    let message = body["error"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("storage unavailable: {ENOSPC}")),
        "the message says what is wrong: {message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_storage_fails_new_jobs_get_503_before_upstream_is_called_and_readyz_follows() {
    let app = spawn_on_failing_disk(fast_sim_config()).await;
    app.readyz_becomes(200, Duration::from_secs(10)).await;
    let (status, _) = app.post_job(json!({"prompt": "before"})).await;
    assert_eq!(status, 202);

    app.disk.fill(true);
    // The tracker's probe notices within seconds, with no request needed.
    let ready = app.readyz_becomes(503, Duration::from_secs(10)).await;
    assert!(
        ready["error"].as_str().unwrap_or_default().contains(ENOSPC),
        "{ready}"
    );
    assert_eq!(healthy_gauge(&app.metrics().await), Some(0.0));
    let generates = app.sim.state.generate_calls();
    for i in 0..5 {
        let (status, body) = app
            .post_job(json!({"prompt": format!("refused {i}")}))
            .await;
        assert_storage_unavailable(status, &body);
    }
    assert_eq!(
        app.sim.state.generate_calls(),
        generates,
        "no generate call for a job that cannot be stored"
    );

    // Room again: writes land within seconds, without a restart.
    app.disk.fill(false);
    app.readyz_becomes(200, Duration::from_secs(5)).await;
    assert_eq!(healthy_gauge(&app.metrics().await), Some(1.0));
    let (status, body) = app.post_job(json!({"prompt": "after"})).await;
    assert_eq!(status, 202, "{body}");
    let (_, page) = app.get("/v1/jobs?limit=100").await;
    let stored = page["data"].as_array().unwrap().len();
    assert_eq!(stored, 2);
    assert_eq!(
        app.sim.state.accepted_generates(),
        stored,
        "every agent upstream has its job"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_upstream_accepted_whose_write_failed_is_stored_once_storage_heals() {
    let app = spawn_on_failing_disk(fast_sim_config()).await;
    app.readyz_becomes(200, Duration::from_secs(10)).await;
    // Storage fails between the admission check and the write of the accepted job.
    app.disk.full_for_accepts.store(true, Ordering::SeqCst);
    let (status, body) = app
        .http
        .post(format!("{}/v1/jobs", app.base))
        .bearer_auth(KEY_A)
        .header("Idempotency-Key", "order-7")
        .json(&json!({"prompt": "slipped through"}))
        .send()
        .await
        .map(|r| (r.status().as_u16(), r))
        .unwrap();
    let body: Value = body.json().await.unwrap();
    assert_storage_unavailable(status, &body);
    assert_eq!(
        app.sim.state.accepted_generates(),
        1,
        "upstream made the agent"
    );
    let message = body["error"].as_str().unwrap();
    let job_id = message
        .split_whitespace()
        .find(|w| w.starts_with("job_"))
        .expect("the answer names the job")
        .to_owned();

    // The same request again while it is not stored: no second agent.
    let again = app
        .http
        .post(format!("{}/v1/jobs", app.base))
        .bearer_auth(KEY_A)
        .header("Idempotency-Key", "order-7")
        .json(&json!({"prompt": "slipped through"}))
        .send()
        .await
        .unwrap();
    assert_ne!(again.status().as_u16(), 202);
    assert_eq!(app.sim.state.accepted_generates(), 1);

    app.disk.full_for_accepts.store(false, Ordering::SeqCst);
    let job = app
        .wait_for_job_status(&job_id, "ready", Duration::from_secs(20))
        .await;
    assert!(job["agent_id"].is_string());
    let (_, page) = app.get("/v1/jobs?limit=100").await;
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    assert_eq!(app.sim.state.accepted_generates(), 1, "one agent, one job");
    // The key now replays the stored answer.
    let replay = app
        .http
        .post(format!("{}/v1/jobs", app.base))
        .bearer_auth(KEY_A)
        .header("Idempotency-Key", "order-7")
        .json(&json!({"prompt": "slipped through"}))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status().as_u16(), 202);
    let replayed: Value = replay.json().await.unwrap();
    assert_eq!(replayed["id"], job_id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_webhook_is_sent_before_its_outbox_write_and_nothing_spins_meanwhile() {
    let receiver = Receiver::start().await;
    let app = spawn_on_failing_disk(SimConfig {
        time_to_ready: Duration::from_millis(1500),
        ..fast_sim_config()
    })
    .await;
    let (status, job) = app
        .post_job(json!({"prompt": "p", "callback_url": receiver.url("/cb")}))
        .await;
    assert_eq!(status, 202);
    let id = job["id"].as_str().unwrap().to_owned();
    app.disk.fill(true);
    app.readyz_becomes(503, Duration::from_secs(10)).await;
    let (writes, claims) = (
        app.disk.writes.load(Ordering::SeqCst),
        app.disk.claims.load(Ordering::SeqCst),
    );
    // The agent is ready upstream meanwhile; its result cannot be stored.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        receiver.requests().is_empty(),
        "no webhook without its outbox write"
    );
    let (_, stored) = app.get(&format!("/v1/jobs/{id}")).await;
    assert_ne!(stored["status"], "ready");
    let tried = app.disk.writes.load(Ordering::SeqCst) - writes;
    let claimed = app.disk.claims.load(Ordering::SeqCst) - claims;
    assert!(
        tried <= 12 && claimed <= 12,
        "backs off while storage fails: {tried} writes and {claimed} claims in 3 s"
    );

    app.disk.fill(false);
    let calls = receiver.wait_for(1, Duration::from_secs(15)).await;
    app.wait_for_job_status(&id, "ready", Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.requests().len(), 1, "{calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_whose_attempt_record_failed_is_sent_again_with_the_same_webhook_id() {
    let receiver = Receiver::start().await;
    let app = spawn_on_failing_disk(fast_sim_config()).await;
    app.disk.failing_attempt_records.store(1, Ordering::SeqCst);
    let (status, job) = app
        .post_job(json!({"prompt": "p", "callback_url": receiver.url("/cb")}))
        .await;
    assert_eq!(status, 202);
    let calls = receiver.wait_for(2, Duration::from_secs(20)).await;
    assert_eq!(
        calls[0].header("webhook-id"),
        calls[1].header("webhook-id"),
        "the same message, sent again"
    );
    let id = job["id"].as_str().unwrap();
    let started = Instant::now();
    loop {
        let (_, page) = app.get("/v1/deliveries?limit=10").await;
        let deliveries = page["data"].as_array().cloned().unwrap_or_default();
        let ours: Vec<_> = deliveries.iter().filter(|d| d["job_id"] == id).collect();
        if ours.len() == 1 && ours[0]["state"] == "succeeded" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The stall timeout of the tests below.
const STALL: Duration = Duration::from_secs(2);

/// A service with a stall timeout of [`STALL`] and a grace period far longer (stopping must
/// not wait for what storage holds), one job written, then its disk hung: no write comes back.
async fn on_a_disk_that_hangs() -> App {
    let app = spawn_on_failing_disk_with(fast_sim_config(), |s| {
        s.storage.stall_timeout = STALL;
        s.server.shutdown_grace = Duration::from_secs(60);
    })
    .await;
    let (status, _) = app.post_job(json!({"prompt": "before"})).await;
    assert_eq!(status, 202);
    app.disk.hung.store(true, Ordering::SeqCst);
    app
}

/// Wait for `app` to end with [`StartError::StorageStalled`], not before [`STALL`] from `since`.
async fn ends_stalled(app: &mut App, since: Instant, why: &str) {
    let running = app.running.take().unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(15), running)
        .await
        .expect(why)
        .unwrap();
    assert!(matches!(exit, Err(StartError::StorageStalled)), "{exit:?}");
    let took = since.elapsed();
    assert!(took >= STALL, "not before the stall timeout: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_writes_stop_coming_back_the_service_stops_at_once_and_says_why() {
    let mut app = on_a_disk_that_hangs().await;
    let stuck = {
        let post = app
            .http
            .post(format!("{}/v1/jobs", app.base))
            .bearer_auth(KEY_A)
            .json(&json!({"prompt": "never answered"}));
        tokio::spawn(post.send())
    };
    let hung_at = Instant::now();
    ends_stalled(&mut app, hung_at, "the service stops once its writes stall").await;
    let answer = tokio::time::timeout(Duration::from_secs(5), stuck)
        .await
        .expect("the held request ends with the service")
        .unwrap();
    assert!(
        answer.is_err(),
        "a request whose write never came back is not answered as if it had: {answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_that_waits_on_stalled_storage_ends_at_the_stall_timeout_not_the_grace() {
    let mut app = on_a_disk_that_hangs().await;
    let stopping = Instant::now();
    app.stop.stop().await;
    let why = "the stop ends with the stall, long before the 60 s grace";
    ends_stalled(&mut app, stopping, why).await;
}

/// A `tmpfs` of `size` mounted on a fresh temporary directory, unmounted when dropped (even
/// if the test fails). `None` when mounting is not permitted here.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().ok()?;
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        mounted.then_some(SmallDisk { dir })
    }

    /// Give the filesystem more room, as an operator freeing space would.
    fn grow(&self, size: &str) {
        let grown = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .expect("run mount");
        assert!(grown.success(), "remount {size}");
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// The real binary on a real full disk (a small `tmpfs`), as a supervisor runs it: sled on a
/// full disk keeps its I/O error until reopened, and once in a while leaves a flush waiting
/// forever; either way the process exits 1, and the next one finds every job it accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_full_disk_no_agent_is_made_without_a_job_and_a_restart_finds_every_job() {
    let Some(disk) = SmallDisk::mount("6m") else {
        assert_ne!(
            std::env::var("AGENTHOOK_DISK_TESTS").as_deref(),
            Ok("required"),
            "AGENTHOOK_DISK_TESTS=required, but a small tmpfs cannot be mounted here"
        );
        eprintln!("skipped: mounting a small tmpfs is not permitted here (run as root)");
        return;
    };
    let sim = spawn_sim(SimConfig {
        time_to_ready: Duration::from_secs(3600),
        ..fast_sim_config()
    });
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("agenthook.toml");
    let log = config_dir.path().join("service.log");
    let port = free_port();
    std::fs::write(
        &config,
        format!(
            r#"
[server]
bind = "127.0.0.1:{port}"
shutdown_grace = "5s"
[storage]
path = "{data}"
cache_bytes = 8388608
stall_timeout = "5s"
[upstream]
base_url = "{upstream}"
api_secret = "{secret}"
generate_per_minute = 600
read_per_minute = 6000
timeout = "3s"
[poller]
first_poll_after = "50ms"
interval = "50ms"
max_interval = "200ms"
submit_retry_after = "100ms"
# A job held by a request the first process never finished comes back after this.
lease = "4s"
[delivery]
allow_private_networks = true
[[auth.keys]]
name = "tenant-a"
key = "{KEY_A}"
"#,
            data = disk.path().join("data").display(),
            upstream = sim.base_url,
            secret = sim.state.config().api_secret,
        ),
    )
    .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let serve = || async {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        Process::start_ready(
            &["serve", "--config", config.to_str().unwrap()],
            |command| {
                command.stderr(log.try_clone().unwrap()).stdout(log);
            },
            &format!("{base}/readyz"),
        )
        .await
    };
    let log_tail = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(80)..].join("\n")
    };
    let mut service = serve().await;
    // A request's own deadline: one the service never answers fails the test rather than
    // hanging it.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let metadata = json!({"notes": "m".repeat(12 * 1024)});
    let post = |i: usize| {
        http.post(format!("{base}/v1/jobs"))
            .bearer_auth(KEY_A)
            .json(&json!({"prompt": format!("job {i}"), "metadata": metadata}))
            .send()
    };

    // Fill the disk. The service answers 503 once it is full, or, should sled's flush never
    // come back, stops within its stall timeout (the request then gets no answer).
    let mut accepted = 0;
    let mut unanswered = 0;
    let mut first_refusal = None;
    for i in 0..5000 {
        let res = match post(i).await {
            Ok(res) => res,
            Err(e) => {
                eprintln!(
                    "no answer ({e}); the service stopped: {:?}",
                    service.exited()
                );
                unanswered += 1;
                break;
            }
        };
        let status = res.status().as_u16();
        if status == 202 {
            accepted += 1;
            continue;
        }
        let body: Value = res.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 503, "a full disk is 503, never {status}: {body}");
        first_refusal = Some(body);
        break;
    }
    assert!(accepted > 0, "{}", log_tail());
    eprintln!("disk full after {accepted} jobs: {first_refusal:?}");
    let agents_when_full = sim.state.accepted_generates();
    if first_refusal.is_some() {
        for i in 0..20 {
            let Ok(res) = post(10_000 + i).await else {
                unanswered += 1;
                break;
            };
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap_or(Value::Null);
            assert_eq!(status, 503, "{body}");
            assert_eq!(body["code"], "UNAVAILABLE");
        }
        // Unless the service has stopped meanwhile (its writes stalled): then nothing answers.
        if let Ok(ready) = http.get(format!("{base}/readyz")).send().await {
            assert_eq!(ready.status().as_u16(), 503);
        }
    }
    assert!(
        sim.state.accepted_generates() <= agents_when_full + unanswered,
        "no agent for the jobs refused while the disk is full"
    );

    // Room again: sled keeps its I/O error until reopened, so the service drains and exits 1
    // for its supervisor (or has already, if its writes stalled).
    disk.grow("64m");
    let grown = Instant::now();
    let exit = service.wait_exit(Duration::from_secs(40)).await;
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(exit.code(), Some(1), "{}", log_tail());
    let stalled = log_text.contains("storage stalled");
    eprintln!(
        "the service exited 1 ({}) {:?} after the disk had room",
        if stalled {
            "its writes stalled"
        } else {
            "to reopen storage"
        },
        grown.elapsed()
    );
    assert!(
        log_text.contains("storage must be reopened") || log_text.contains("storage stalled"),
        "the log says why it stopped: {}",
        log_tail()
    );

    // The supervisor starts it again: every job upstream accepted is there.
    let _service = serve().await;
    // A job whose write failed after upstream had accepted it (answered 503 naming it) is
    // logged at error level with its agent when the process gives up; any other is stored.
    let slipped = usize::from(
        first_refusal
            .as_ref()
            .and_then(|r| r["error"].as_str())
            .unwrap_or_default()
            .contains("was accepted upstream"),
    );
    let started = Instant::now();
    let (stored, with_agent, submitting) = loop {
        let (mut stored, mut with_agent, mut submitting) = (0, 0, Vec::new());
        let mut after: Option<String> = None;
        loop {
            let url = match &after {
                Some(a) => format!("{base}/v1/jobs?limit=100&after={a}"),
                None => format!("{base}/v1/jobs?limit=100"),
            };
            let page: Value = http
                .get(url)
                .bearer_auth(KEY_A)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let jobs = page["data"].as_array().unwrap();
            stored += jobs.len();
            with_agent += jobs.iter().filter(|j| j["agent_id"].is_string()).count();
            submitting.extend(jobs.iter().filter(|j| j["status"] == "submitting").cloned());
            after = page["next"].as_str().map(str::to_owned);
            if after.is_none() {
                break;
            }
        }
        // Jobs deferred before the disk filled are submitted by the restarted service.
        if submitting.is_empty() || started.elapsed() > Duration::from_secs(30) {
            break (stored, with_agent, submitting);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "{stored} jobs stored, {with_agent} with an agent, {:?} after the restart",
        started.elapsed()
    );
    let about_them: Vec<String> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter(|line| {
            submitting
                .iter()
                .any(|j| line.contains(j["id"].as_str().unwrap_or("?")))
        })
        .map(str::to_owned)
        .collect();
    assert!(
        submitting.is_empty(),
        "every job is submitted after the restart: {submitting:?}\n{about_them:#?}"
    );
    // A request that got no answer may or may not have been stored.
    assert!(
        (accepted..=accepted + unanswered).contains(&stored),
        "every job answered 202 is there after the restart: {stored} stored, {accepted} accepted, {unanswered} unanswered"
    );
    let agents = sim.state.accepted_generates();
    assert!(
        agents >= with_agent + slipped && agents <= with_agent + slipped + unanswered,
        "no agent upstream without its job: {agents} agents, {with_agent} jobs with one, {slipped} slipped, {unanswered} unanswered"
    );
    let res = http
        .post(format!("{base}/v1/jobs"))
        .bearer_auth(KEY_A)
        .json(&json!({"prompt": "after the restart"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 202, "writes again after the restart");
}
