//! Delivery benchmark: how fast the real `DeliveryWorker` gets signed webhooks out, against a
//! plain HTTP client posting the same bodies to the same local receiver in the same run.
//!
//! `cargo bench --bench delivery` (a plain program, `harness = false`). Everything stays on
//! 127.0.0.1; each phase has its own sled database in a temporary directory.
//!
//! 1. end to end: a backlog of N callback deliveries, drained by `DeliveryWorker::run`
//!    (claim → sign → POST → attempt recorded durably), timed until the receiver has every
//!    one and the store has recorded (and flushed) every attempt;
//! 2. baseline: the worker's HTTP client (`policy::delivery_client_for`) POSTing the same
//!    bodies with the same concurrency, no storage, no signing; the ratio (1)/(2) is reported
//!    per round, with the process CPU per delivery of each (steadier on a shared machine);
//! 3. latency: one delivery inserted every 5 ms, event → receipt at the receiver (run first:
//!    right after the bulk runs the kernel is still writing their data back, which shows in
//!    the fsyncs of a steady 200/s);
//! 4. fan-out: events to 100 subscriptions each, drained like (1), in every round next to (1)
//!    (taking turns going first), its rate compared with (1)'s of the same round.
//!
//! 5. storage floor: sled alone doing what recording an attempt needs at the least (read the
//!    record, remove its queue entry, write it back, in one transaction per group of 64, one
//!    flush per group), on records of the size the store writes; its CPU per record next to the
//!    baseline's CPU per POST bounds the ratio any sled-backed worker can reach here.
//!
//! Knobs (environment): `DBENCH_N` deliveries per throughput run (20000), `DBENCH_ROUNDS`
//! baseline/end-to-end rounds (3), `DBENCH_EVENTS` fan-out events (200), `DBENCH_LATENCY_SECS`
//! (10), `DBENCH_CONCURRENCY` (64), `DBENCH_RECEIVER_WORKERS` (1), `DBENCH_PHASES` (which
//! runs: `baseline,e2e,fanout,latency,floor`), `DBENCH_CACHE_BYTES` (the store's page cache;
//! the default setting's 32 MiB), `DBENCH_FLOOR_GROUP` (records per transaction in the
//! floor, 64).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Map};

use agenthook::app::Services;
use agenthook::clock;
use agenthook::config::Settings;
use agenthook::delivery::{format, policy, signature};
use agenthook::domain::{
    Delivery, DeliveryState, Destination, Event, Format, Job, JobStatus, SecretSet, Subscription,
    SubscriptionId, Tenant,
};
use agenthook::store::Store;
use common::fixtures::SettingsBuilder;
use common::{env_usize, median, percentile, process_cpu};

/// Deliveries are inserted in transactions of this many (a poller round's worth).
const INSERT_BATCH: usize = 500;
/// Subscriptions per event in the fan-out run.
const FAN_OUT: usize = 100;
/// The steady rate of the latency run: one event every 5 ms.
const LATENCY_PERIOD: Duration = Duration::from_millis(5);
/// Any run taking longer than this has stalled: the benchmark stops with an error.
const RUN_DEADLINE: Duration = Duration::from_secs(60);

struct Knobs {
    n: usize,
    rounds: usize,
    events: usize,
    latency_secs: u64,
    concurrency: usize,
    receiver_workers: usize,
    /// Which runs to make, comma-separated: `baseline`, `e2e`, `fanout`, `latency`, `floor`.
    phases: String,
}

impl Knobs {
    fn runs(&self, phase: &str) -> bool {
        self.phases.split(',').any(|p| p.trim() == phase)
    }
}

impl Knobs {
    fn from_env() -> Knobs {
        Knobs {
            n: env_usize("DBENCH_N", 20_000),
            rounds: env_usize("DBENCH_ROUNDS", 3).max(1),
            events: env_usize("DBENCH_EVENTS", 200),
            latency_secs: env_usize("DBENCH_LATENCY_SECS", 10) as u64,
            concurrency: env_usize("DBENCH_CONCURRENCY", 64).max(1),
            receiver_workers: env_usize("DBENCH_RECEIVER_WORKERS", 1).max(1),
            phases: std::env::var("DBENCH_PHASES")
                .unwrap_or_else(|_| "baseline,e2e,fanout,latency,floor".into()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The receiver: actix-web on its own thread and runtime, answering 200 at once.

/// One request kept whole, to check that what the worker sent verifies.
#[derive(Clone)]
struct Sample {
    id: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
}

#[derive(Default)]
struct ReceiverState {
    count: AtomicUsize,
    /// While set, every `webhook-id` is recorded with its arrival instant.
    recording: AtomicBool,
    arrivals: Mutex<Vec<(String, Instant)>>,
    sample: Mutex<Option<Sample>>,
}

async fn receive(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<ReceiverState>,
) -> HttpResponse {
    let at = Instant::now();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    if state.recording.load(Ordering::Relaxed) {
        state
            .arrivals
            .lock()
            .unwrap()
            .push((header("webhook-id"), at));
    }
    {
        let mut sample = state.sample.lock().unwrap();
        if sample.is_none() {
            *sample = Some(Sample {
                id: header("webhook-id"),
                timestamp: header("webhook-timestamp"),
                signature: header("webhook-signature"),
                body: body.to_vec(),
            });
        }
    }
    state.count.fetch_add(1, Ordering::SeqCst);
    HttpResponse::Ok().body("ok")
}

struct Receiver {
    addr: SocketAddr,
    state: Arc<ReceiverState>,
}

impl Receiver {
    fn start(workers: usize) -> Receiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
        let addr = listener.local_addr().expect("receiver address");
        let state = Arc::new(ReceiverState::default());
        let data = web::Data::from(state.clone());
        let (ready, started) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("receiver".into())
            .spawn(move || {
                actix_web::rt::System::new().block_on(async move {
                    let server = HttpServer::new(move || {
                        App::new()
                            .app_data(data.clone())
                            .default_service(web::to(receive))
                    })
                    .workers(workers)
                    .backlog(4096)
                    .disable_signals()
                    .shutdown_timeout(0)
                    .listen(listener)
                    .expect("receiver listens")
                    .run();
                    ready.send(()).expect("bench waits for the receiver");
                    server.await
                })
            })
            .expect("spawn the receiver thread");
        started.recv().expect("receiver started");
        Receiver { addr, state }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn count(&self) -> usize {
        self.state.count.load(Ordering::SeqCst)
    }

    fn take_sample(&self) -> Option<Sample> {
        self.state.sample.lock().unwrap().take()
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures.

fn settings(dir: &std::path::Path, knobs: &Knobs) -> Settings {
    SettingsBuilder::new(dir)
        .with(|s| {
            s.delivery.concurrency = knobs.concurrency;
            s.delivery.per_destination_concurrency = knobs.concurrency;
            s.delivery.timeout = Duration::from_secs(5);
            if let Ok(Ok(bytes)) = std::env::var("DBENCH_CACHE_BYTES").map(|v| v.parse()) {
                s.storage.cache_bytes = bytes;
            }
        })
        .build()
}

fn services(knobs: &Knobs) -> (Services, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = settings(dir.path(), knobs);
    // DBENCH_POSTGRES_URL: the same runs on the PostgreSQL backend, on that database (emptied
    // before each run).
    let postgres = std::env::var("DBENCH_POSTGRES_URL").ok();
    if let Some(url) = &postgres {
        settings.storage.backend = agenthook::config::StorageBackend::Postgres;
        settings.storage.postgres.url = url.clone();
        settings.storage.postgres.max_connections = 32;
    }
    let services = Services::build(settings, clock::system()).expect("services");
    if let Some(url) = postgres {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                services.prepare_storage().await.expect("migrate");
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
                sqlx::query(
                    "TRUNCATE jobs, deliveries, events, idempotency, subscriptions, secrets, budgets",
                )
                .execute(&mut conn)
                .await
                .expect("empty the database");
            })
        });
    }
    (services, dir)
}

fn tenant() -> Tenant {
    Tenant::parse("bench").expect("tenant")
}

/// An `agent.ready` event as the poller makes it: the real body shape and size.
fn ready_event(tenant: &Tenant, i: usize) -> Event {
    let now = chrono::Utc::now();
    let mut metadata = Map::new();
    metadata.insert("order".into(), json!(format!("ord_{i:08}")));
    let mut request = Map::new();
    request.insert("prompt".into(), json!("A friendly support agent"));
    let mut job = Job::new(
        tenant.clone(),
        request,
        Some("http://127.0.0.1/hook".into()),
        metadata,
        now,
    );
    job.accepted(format!("A{i:08}"), now, now);
    job.agent = Some(json!({
        "agent_id": format!("A{i:08}"),
        "status": "ready",
        "name": "Support agent",
        "model_url": format!("https://cdn.example.com/models/A{i:08}.imx"),
        "image_url": format!("https://cdn.example.com/images/A{i:08}.jpg"),
        "video_url": null,
        "system_prompt": "You are a friendly support agent for an online shop.",
    }));
    job.finish(JobStatus::Ready, None, now);
    Event::for_job(&job, now).expect("a ready job has an event")
}

fn callback_deliveries(tenant: &Tenant, url: &str, n: usize) -> Vec<Delivery> {
    let now = chrono::Utc::now();
    (0..n)
        .map(|i| {
            Delivery::new(
                &ready_event(tenant, i),
                None,
                Destination::Callback { url: url.into() },
                now,
            )
        })
        .collect()
}

async fn insert(store: &Store, deliveries: &[Delivery]) {
    for batch in deliveries.chunks(INSERT_BATCH) {
        store
            .insert_deliveries(batch.to_vec())
            .await
            .expect("insert deliveries");
    }
}

/// No queue entry left, claimed or not: every attempt is recorded (a recorded success removes
/// its entry in the same transaction). Counts the entries: call it only near the end.
async fn queue_empty(store: &Store) -> bool {
    let counts = store.counts().await.expect("counts");
    counts.deliveries_fresh + counts.deliveries_retry == 0
}

/// Every delivery succeeded after exactly one attempt.
async fn check_succeeded(store: &Store, deliveries: &[Delivery]) -> Result<(), String> {
    for d in deliveries {
        let stored = store
            .delivery(&d.tenant, &d.id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("delivery {} is lost", d.id))?;
        if stored.state != DeliveryState::Succeeded || stored.attempts.len() != 1 {
            return Err(format!(
                "delivery {} is {} after {} attempts",
                d.id,
                stored.state.as_str(),
                stored.attempts.len()
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Runs.

struct Throughput {
    count: usize,
    elapsed: Duration,
    /// CPU time of the whole process (worker, receiver, storage threads) over the run.
    cpu: Duration,
}

impl Throughput {
    fn per_sec(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }

    /// Process CPU per delivery, in microseconds: on a shared machine, the steadier measure.
    fn cpu_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.count as f64
    }
}

/// Drain `deliveries` (already inserted) with the real worker; timed from its start until the
/// receiver has them all and every attempt is recorded and on disk.
async fn drain(services: &Services, receiver: &Receiver, deliveries: &[Delivery]) -> Throughput {
    let store = &services.store;
    let before = receiver.count();
    let worker = services.delivery_worker().expect("worker");
    let cpu = process_cpu();
    let started = Instant::now();
    let task = tokio::spawn(worker.run(Duration::from_secs(5)));
    let target = before + deliveries.len();
    loop {
        if receiver.count() >= target && queue_empty(store).await {
            break;
        }
        assert!(
            started.elapsed() < RUN_DEADLINE,
            "stalled: {} of {} received",
            receiver.count() - before,
            deliveries.len()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    let cpu = process_cpu().saturating_sub(cpu);
    services.signals.begin_shutdown();
    task.await.expect("worker stops");
    let received = receiver.count() - before;
    assert_eq!(
        received,
        deliveries.len(),
        "the receiver got each delivery once"
    );
    check_succeeded(store, deliveries)
        .await
        .expect("every delivery recorded as succeeded");
    Throughput {
        count: deliveries.len(),
        elapsed,
        cpu,
    }
}

async fn end_to_end(knobs: &Knobs, receiver: &Receiver) -> Throughput {
    let (services, _dir) = services(knobs);
    let tenant = tenant();
    let deliveries = callback_deliveries(&tenant, &receiver.url("/hook"), knobs.n);
    insert(&services.store, &deliveries).await;
    let result = drain(&services, receiver, &deliveries).await;
    if let Some(sample) = receiver.take_sample() {
        let secrets = services
            .store
            .callback_secrets(&tenant, signature::SigningSecret::generate)
            .await
            .expect("callback secrets");
        verify_sample(&sample, &secrets.current);
    }
    result
}

fn verify_sample(sample: &Sample, secret: &str) {
    let secret = signature::SigningSecret::parse(secret).expect("secret");
    signature::verify(
        &secret,
        &sample.id,
        &sample.timestamp,
        &sample.signature,
        &sample.body,
        chrono::Utc::now().timestamp(),
        signature::DEFAULT_TOLERANCE_SECS,
    )
    .expect("a delivery received by the benchmark verifies");
}

/// The same bodies and headers, POSTed by the delivery client with the same concurrency;
/// nothing stored, nothing signed (one signature value is reused).
async fn baseline(knobs: &Knobs, receiver: &Receiver) -> Throughput {
    // Built as the worker builds its own.
    let client = policy::delivery_client_for(Duration::from_secs(5), true, knobs.concurrency)
        .expect("client");
    let tenant = tenant();
    let url = reqwest::Url::parse(&receiver.url("/hook")).expect("url");
    let deliveries = callback_deliveries(&tenant, url.as_str(), knobs.n);
    let requests: Arc<Vec<(String, Vec<u8>)>> = Arc::new(
        deliveries
            .iter()
            .map(|d| {
                (
                    d.message_id.as_str().to_owned(),
                    format::render_payload(Format::Standard, &d.payload),
                )
            })
            .collect(),
    );
    let secret = signature::SigningSecret::parse(&signature::SigningSecret::generate()).unwrap();
    let timestamp = chrono::Utc::now().timestamp();
    let signature =
        signature::signature_header(&[secret], &requests[0].0, timestamp, &requests[0].1);
    let before = receiver.count();
    let next = Arc::new(AtomicUsize::new(0));
    let cpu = process_cpu();
    let started = Instant::now();
    let tasks: Vec<_> = (0..knobs.concurrency)
        .map(|_| {
            let (client, url, next, requests, signature) = (
                client.clone(),
                url.clone(),
                next.clone(),
                requests.clone(),
                signature.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((id, body)) = requests.get(i) else {
                        return;
                    };
                    let mut response = client
                        .post(url.clone())
                        .header("content-type", "application/json")
                        .header("webhook-id", id.as_str())
                        .header("webhook-timestamp", timestamp.to_string())
                        .header("webhook-signature", signature.as_str())
                        .body(body.clone())
                        .send()
                        .await
                        .expect("baseline POST");
                    assert!(response.status().is_success());
                    while let Some(_chunk) = response.chunk().await.expect("response body") {}
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("baseline task");
    }
    let elapsed = started.elapsed();
    let cpu = process_cpu().saturating_sub(cpu);
    assert_eq!(receiver.count() - before, knobs.n);
    let _ = receiver.take_sample();
    Throughput {
        count: knobs.n,
        elapsed,
        cpu,
    }
}

/// `events` events, each to the same 100 subscriptions (one transaction per event, as a job's
/// completion writes them), drained by the worker.
async fn fan_out(knobs: &Knobs, receiver: &Receiver) -> Throughput {
    let (services, _dir) = services(knobs);
    let store = &services.store;
    let tenant = tenant();
    let now = chrono::Utc::now();
    let subscriptions: Vec<Subscription> = (0..FAN_OUT)
        .map(|i| Subscription {
            id: SubscriptionId::generate(),
            tenant: tenant.clone(),
            url: receiver.url(&format!("/subscriber/{i}")),
            event_types: vec![agenthook::domain::EventType::AgentReady],
            format: Format::Standard,
            description: None,
            enabled: true,
            disabled_reason: None,
            secrets: SecretSet::new(signature::SigningSecret::generate()),
            failing_since: None,
            rate_limit_per_second: None,
            created_at: now,
            updated_at: now,
        })
        .collect();
    for sub in &subscriptions {
        store
            .save_subscription(sub)
            .await
            .expect("save subscription");
    }
    let mut all = Vec::with_capacity(knobs.events * FAN_OUT);
    for e in 0..knobs.events {
        let event = ready_event(&tenant, e);
        let deliveries: Vec<Delivery> = subscriptions
            .iter()
            .map(|sub| Delivery::new(&event, None, Destination::subscription(sub), now))
            .collect();
        store
            .insert_deliveries(deliveries.clone())
            .await
            .expect("insert");
        all.extend(deliveries);
    }
    let _ = receiver.take_sample();
    let result = drain(&services, receiver, &all).await;
    if let Some(sample) = receiver.take_sample() {
        let delivery = all
            .iter()
            .find(|d| d.message_id.as_str() == sample.id)
            .expect("the sample is one of ours");
        let sub = subscriptions
            .iter()
            .find(|s| Some(&s.id) == delivery.destination.subscription_id())
            .expect("its subscription");
        verify_sample(&sample, &sub.secrets.current);
    }
    result
}

struct Latency {
    sent: usize,
    received: usize,
    sorted: Vec<Duration>,
    /// How long each event's insert (its transaction) took, sorted: the part of the latency
    /// spent before the worker is woken.
    inserts: Vec<Duration>,
}

impl Latency {
    fn percentile(&self, p: f64) -> Duration {
        percentile(&self.sorted, p)
    }
}

/// One delivery inserted every 5 ms with the worker running; event → receipt at the receiver.
async fn latency(knobs: &Knobs, receiver: &Receiver) -> Latency {
    let (services, _dir) = services(knobs);
    let store = services.store.clone();
    let tenant = tenant();
    let url = receiver.url("/latency");
    let worker = services.delivery_worker().expect("worker");
    let task = tokio::spawn(worker.run(Duration::from_secs(5)));
    receiver.state.arrivals.lock().unwrap().clear();
    receiver.state.recording.store(true, Ordering::SeqCst);
    let total = (knobs.latency_secs * 1000 / LATENCY_PERIOD.as_millis() as u64) as usize;
    let mut inserted: HashMap<String, Instant> = HashMap::with_capacity(total);
    let mut inserts = Vec::with_capacity(total);
    let mut ticks = tokio::time::interval(LATENCY_PERIOD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for i in 0..total {
        ticks.tick().await;
        let at = Instant::now();
        let delivery = Delivery::new(
            &ready_event(&tenant, i),
            None,
            Destination::Callback { url: url.clone() },
            chrono::Utc::now(),
        );
        inserted.insert(delivery.message_id.as_str().to_owned(), at);
        let insert_started = Instant::now();
        store
            .insert_deliveries(vec![delivery.clone()])
            .await
            .expect("insert");
        inserts.push(insert_started.elapsed());
        services.signals.delivery_wake.notify_one();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while receiver.state.arrivals.lock().unwrap().len() < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    receiver.state.recording.store(false, Ordering::SeqCst);
    services.signals.begin_shutdown();
    task.await.expect("worker stops");
    let arrivals = std::mem::take(&mut *receiver.state.arrivals.lock().unwrap());
    let mut sorted: Vec<Duration> = arrivals
        .iter()
        .filter_map(|(id, at)| inserted.get(id).map(|sent| at.duration_since(*sent)))
        .collect();
    sorted.sort();
    let _ = receiver.take_sample();
    inserts.sort();
    Latency {
        sent: total,
        received: sorted.len(),
        sorted,
        inserts,
    }
}

/// Records recorded per transaction (and flush) in the storage floor run.
const FLOOR_GROUP: usize = 64;

/// The storage floor: sled alone, with no agenthook code, doing the least that recording an
/// attempt takes (read the record, remove its queue entry, write the record back; one
/// transaction and one flush per group). Records are `record_len` bytes, as the store writes
/// them. Returns the process CPU per record.
fn storage_floor(n: usize, record_len: usize, group: usize) -> Throughput {
    use sled::transaction::ConflictableTransactionError;
    use sled::Transactional;
    type Tx = Result<(), ConflictableTransactionError<()>>;

    let dir = tempfile::tempdir().expect("tempdir");
    let db = sled::Config::new()
        .path(dir.path())
        .mode(sled::Mode::HighThroughput)
        .open()
        .expect("open sled");
    let records = db.open_tree("records").expect("tree");
    let queue = db.open_tree("queue").expect("tree");
    let id = |i: usize| format!("dlv_{i:026}");
    let entry = |i: usize| format!("f{:08}{}", i / 100, id(i));
    let record = vec![b'x'; record_len];
    let ids: Vec<usize> = (0..n).collect();
    for chunk in ids.chunks(INSERT_BATCH) {
        (&records, &queue)
            .transaction(|(records, queue)| {
                for &i in chunk {
                    records.insert(id(i).as_bytes(), record.as_slice())?;
                    queue.insert(entry(i).as_bytes(), &[])?;
                }
                Tx::Ok(())
            })
            .expect("insert");
    }
    db.flush().expect("flush");
    let cpu = process_cpu();
    let started = Instant::now();
    for chunk in ids.chunks(group) {
        (&records, &queue)
            .transaction(|(records, queue)| {
                for &i in chunk {
                    let stored = records.get(id(i).as_bytes())?;
                    assert!(stored.is_some());
                    queue.remove(entry(i).as_bytes())?;
                    records.insert(id(i).as_bytes(), record.as_slice())?;
                }
                Tx::Ok(())
            })
            .expect("record");
        db.flush().expect("flush");
    }
    Throughput {
        count: n,
        elapsed: started.elapsed(),
        cpu: process_cpu().saturating_sub(cpu),
    }
}

// ---------------------------------------------------------------------------------------------

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn rate(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:.0}"))
}

fn two(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{v:.2}"))
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "-",
    }
}

fn main() {
    let knobs = Knobs::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let receiver = Receiver::start(knobs.receiver_workers);
    let sample = &callback_deliveries(&tenant(), "http://127.0.0.1/hook", 1)[0];
    println!(
        "delivery benchmark: {} deliveries per run, {}-byte bodies, concurrency {}, {} round(s), receiver {} worker(s), {} cores",
        knobs.n,
        format::render_payload(Format::Standard, &sample.payload).len(),
        knobs.concurrency,
        knobs.rounds,
        knobs.receiver_workers,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut base_cpus: Vec<f64> = Vec::new();
    runtime.block_on(async {
        // Warm the receiver and the loopback path.
        let warm = Knobs {
            n: 2_000,
            ..Knobs::from_env()
        };
        baseline(&warm, &receiver).await;

        if knobs.runs("latency") {
            let lat = latency(&knobs, &receiver).await;
            let p99 = lat.percentile(99.0);
            println!();
            println!(
                "latency event -> receipt at {}/s for {} s: {} of {} received; p50 {}, p90 {}, p99 {}, max {} (target p99 < 5 ms: {})",
                1000 / LATENCY_PERIOD.as_millis(),
                knobs.latency_secs,
                lat.received,
                lat.sent,
                ms(lat.percentile(50.0)),
                ms(lat.percentile(90.0)),
                ms(p99),
                ms(lat.sorted.last().copied().unwrap_or_default()),
                verdict(Some(p99 < Duration::from_millis(5) && lat.received == lat.sent))
            );
            println!(
                "  of which the event's insert (a sled transaction, before the worker is woken): p50 {}, p99 {}, max {}",
                ms(percentile(&lat.inserts, 50.0)),
                ms(percentile(&lat.inserts, 99.0)),
                ms(lat.inserts.last().copied().unwrap_or_default()),
            );
        }

        if knobs.runs("baseline") || knobs.runs("e2e") || knobs.runs("fanout") {
            println!();
            println!(
                "{:<7} {:>15} {:>12} {:>15} {:>12} {:>7} {:>9} {:>10} {:>12} {:>9}",
                "round",
                "baseline POST/s",
                "CPU us/POST",
                "end-to-end /s",
                "CPU us/dlv",
                "ratio",
                "CPU ratio",
                "fan-out /s",
                "CPU us/dlv",
                "fan/e2e"
            );
            let mut columns: [Vec<f64>; 6] = Default::default();
            for round in 1..=knobs.rounds {
                let base = if knobs.runs("baseline") {
                    Some(baseline(&knobs, &receiver).await)
                } else {
                    None
                };
                // End to end and fan-out take turns going first: the second one of a round
                // runs while the kernel still writes back the first one's data.
                let fan_first = round % 2 == 0;
                let mut fan = None;
                if fan_first && knobs.runs("fanout") {
                    fan = Some(fan_out(&knobs, &receiver).await);
                }
                let e2e = if knobs.runs("e2e") {
                    Some(end_to_end(&knobs, &receiver).await)
                } else {
                    None
                };
                if !fan_first && knobs.runs("fanout") {
                    fan = Some(fan_out(&knobs, &receiver).await);
                }
                let pair = |a: Option<&Throughput>, b: Option<&Throughput>, f: fn(&Throughput, &Throughput) -> f64| {
                    a.zip(b).map(|(a, b)| f(a, b))
                };
                let ratio = pair(base.as_ref(), e2e.as_ref(), |b, e| e.per_sec() / b.per_sec());
                let cpu_ratio = pair(base.as_ref(), e2e.as_ref(), |b, e| b.cpu_us() / e.cpu_us());
                let fan_ratio = pair(e2e.as_ref(), fan.as_ref(), |e, f| f.per_sec() / e.per_sec());
                println!(
                    "{:<7} {:>15} {:>12} {:>15} {:>12} {:>7} {:>9} {:>10} {:>12} {:>9}",
                    round,
                    rate(base.as_ref().map(Throughput::per_sec)),
                    rate(base.as_ref().map(Throughput::cpu_us)),
                    rate(e2e.as_ref().map(Throughput::per_sec)),
                    rate(e2e.as_ref().map(Throughput::cpu_us)),
                    two(ratio),
                    two(cpu_ratio),
                    rate(fan.as_ref().map(Throughput::per_sec)),
                    rate(fan.as_ref().map(Throughput::cpu_us)),
                    two(fan_ratio),
                );
                let values = [
                    base.as_ref().map(Throughput::per_sec),
                    e2e.as_ref().map(Throughput::per_sec),
                    ratio,
                    cpu_ratio,
                    fan.as_ref().map(Throughput::per_sec),
                    fan_ratio,
                ];
                for (column, value) in columns.iter_mut().zip(values) {
                    column.extend(value);
                }
                base_cpus.extend(base.as_ref().map(Throughput::cpu_us));
            }
            let [base_rates, e2e_rates, ratios, cpu_ratios, fan_rates, fan_ratios] = columns;
            let ratio = median(ratios);
            let fan_ratio = median(fan_ratios);
            println!(
                "{:<7} {:>15} {:>12} {:>15} {:>12} {:>7} {:>9} {:>10} {:>12} {:>9}",
                "median",
                rate(median(base_rates)),
                "",
                rate(median(e2e_rates)),
                "",
                two(ratio),
                two(median(cpu_ratios)),
                rate(median(fan_rates)),
                "",
                two(fan_ratio),
            );
            println!(
                "target end to end >= 0.50 x baseline: {}; fan-out ({} events x {} subscriptions) no slower per delivery than single deliveries (fan/e2e >= 0.95, noise allowed): {}",
                verdict(ratio.map(|r| r >= 0.5)),
                knobs.events,
                FAN_OUT,
                verdict(fan_ratio.map(|r| r >= 0.95)),
            );
        }
    });

    if knobs.runs("floor") {
        // A recorded delivery as the store writes it: an event's only delivery, so its record
        // holds the event body, with one attempt.
        let mut recorded = sample.clone();
        recorded.state = DeliveryState::Succeeded;
        recorded.next_attempt_at = None;
        recorded.attempts.push(agenthook::domain::Attempt {
            at: chrono::Utc::now(),
            status_code: Some(200),
            error: None,
            duration_ms: 1,
            response_body: Some("ok".into()),
        });
        let record_len = agenthook::store::delivery_record_len(&recorded);
        let group = env_usize("DBENCH_FLOOR_GROUP", FLOOR_GROUP).max(1);
        let floor = storage_floor(knobs.n, record_len, group);
        let base_cpu = median(base_cpus);
        println!();
        println!(
            "storage floor (sled alone: read + queue-entry remove + write of a {record_len}-byte record, {group} per transaction and flush): {:.0} records/s, CPU {:.1} us per record",
            floor.per_sec(),
            floor.cpu_us(),
        );
        if let Some(base_cpu) = base_cpu {
            println!(
                "  with the baseline's {base_cpu:.0} us CPU per POST, the best CPU ratio a worker recording on sled can reach here: {:.2}",
                base_cpu / (base_cpu + floor.cpu_us())
            );
        }
    }
}
