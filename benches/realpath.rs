//! The path an event really takes, measured as a user would: the real binary, its public API,
//! the simulator upstream, receivers on several loopback addresses.
//!
//! `cargo bench --bench realpath` (about a minute). The service runs as a child process (its
//! CPU time is its own, read from `/proc`), on sled in a temporary directory, with the default
//! delivery settings (64 in flight, 8 per destination host). The simulator and the receivers
//! run in this process. Receivers: one actix-web server on each of 127.0.0.2 … 127.0.0.9,
//! answering 204 and keeping every `webhook-id` with its arrival instant.
//!
//! Each phase's service CPU per delivery is given whole and, in brackets, the part of it spent on
//! the service's HTTP worker threads ("API threads": reading, routing, authenticating and
//! answering the API's requests), which a fan-out shares among all of a job's deliveries and a
//! test event or a manual retry spends on each. It is a lower bound of what a request costs:
//! the reads and writes a request hands to storage's threads count in the rest.
//!
//! The service logs at its default level (`info`: a line per attempt) into a sink;
//! `RBENCH_LOG=warn` leaves the per-attempt lines out.
//!
//! `RBENCH_BINARY=path/to/agenthook` runs another build of the service (an earlier commit's,
//! for a before/after in the same sitting).
//!
//! Phases (`RBENCH_PHASES`, comma-separated, all by default):
//!
//! 1. `baseline`: a bare client (reqwest, one pool, 64 in flight, 8 per receiver address) POSTs
//!    as many bodies of the size of a ready event to the same receivers: what the machine does
//!    without the service.
//! 2. `fanout`: `RBENCH_SUBS` subscriptions (100) spread over the receivers; `RBENCH_JOBS` jobs
//!    (200) created through `POST /v1/jobs`, their agents ready upstream; the poller finds them
//!    ready and each completion writes its event and one delivery per subscription (the
//!    outbox), which the worker sends. Timed from the first job's `completed_at` to the last
//!    receipt; the service's CPU over that window divided by the deliveries is the CPU per
//!    delivery, creation included. Checked: every (event, subscription) received, each
//!    `webhook-id` exactly once. Run `RBENCH_ROUNDS` times (3), each on a fresh service; the
//!    median is reported.
//! 3. `recover`: `RBENCH_RECOVER` (10,000) dead letters (test events to receivers answering 500,
//!    a one-attempt retry schedule), then `POST /v1/subscriptions/{id}/recover` for the 8
//!    subscriptions at once with the receivers back: the API's answer time, the rate from the
//!    first request to the last receipt, the service's CPU per delivery.
//! 4. `retry64`: as many dead letters, each sent again by its own
//!    `POST /v1/deliveries/{id}/retry`, from 64 clients: the same figures, and the API's p50/p99.
//! 5. `latency`: `POST /v1/subscriptions/{id}/test` at 200 events/s (`RBENCH_LATENCY_SECS`,
//!    10): from sending the request to the receipt of its delivery, p50/p90/p99.
//! 6. `test64`: 64 clients creating test events as fast as the API answers
//!    (`RBENCH_TEST_SECS`, 10): created-and-delivered per second, the service's CPU per
//!    delivery, the API's p50/p99.

mod common;

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use agenthook::sim::{SimConfig, SimServer};
use common::fixtures::{free_port, spawn_sim, wait_ready, Process};
use common::receivers::{self, Received};
use common::{child_cpu, child_rss, child_threads_cpu, env_usize, mib, percentile};
use serde_json::{json, Value};

const KEY: &str = "realpath-key-0123456789abcdef";
/// Receiver addresses: 127.0.0.2 … 127.0.0.(1 + HOSTS).
const HOSTS: usize = 8;
/// Any phase taking longer than this has stalled.
const DEADLINE: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// Receivers

// ---------------------------------------------------------------------------------------------
// The service

struct Service {
    process: Process,
    base: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Service {
    /// The service with `delivery` (more TOML under `[delivery]`) added to the bench's settings.
    async fn start(sim: &SimServer, delivery: &str) -> Service {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = dir.path().join("realpath.toml");
        let mut file = std::fs::File::create(&config).expect("config file");
        write!(
            file,
            r#"
[server]
bind = "127.0.0.1:{port}"
[storage]
path = "{data}"
[upstream]
base_url = "{upstream}"
api_secret = "{secret}"
generate_per_minute = 1000000
read_per_minute = 1000000
[poller]
first_poll_after = "4s"
interval = "1s"
concurrency = 64
[delivery]
allow_private_networks = true
{delivery}
[auth]
requests_per_minute = 0
[[auth.keys]]
name = "bench"
key = "{KEY}"
[log]
level = "{log}"
"#,
            log = std::env::var("RBENCH_LOG").unwrap_or_else(|_| "info".into()),
            data = dir.path().join("data").display(),
            upstream = sim.base_url,
            secret = sim.state.config().api_secret,
        )
        .expect("write config");
        drop(file);
        let base = format!("http://127.0.0.1:{port}");
        let config = config.display().to_string();
        // Its log (one line per attempt at the default level) goes to a sink, as to a log
        // pipeline; `RBENCH_SERVICE_STDERR=1` shows it.
        let configure = |c: &mut std::process::Command| {
            if std::env::var_os("RBENCH_SERVICE_STDERR").is_some() {
                c.stderr(Stdio::inherit());
            }
        };
        let args = ["serve", "--config", config.as_str()];
        let process = match std::env::var_os("RBENCH_BINARY") {
            Some(program) => Process::start_program(program.as_ref(), &args, configure),
            None => Process::start(&args, configure),
        };
        wait_ready(&format!("{base}/readyz")).await;
        Service {
            process,
            base,
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(128)
                .build()
                .unwrap(),
            _dir: dir,
        }
    }

    /// User plus system CPU time the service has used: all of it, and its API's share.
    fn cpu(&self) -> Cpu {
        let pid = self.process.id();
        Cpu {
            total: child_cpu(pid),
            api: child_threads_cpu(pid, API_THREADS),
        }
    }

    fn rss(&self) -> u64 {
        child_rss(self.process.id())
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        common::post_json(&self.client, format!("{}{path}", self.base), KEY, &body).await
    }

    async fn get(&self, path: &str) -> Value {
        self.client
            .get(format!("{}{path}", self.base))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("request the service")
            .json()
            .await
            .expect("a JSON answer")
    }

    /// `n` subscriptions to every event, spread over the receivers; their ids.
    async fn subscribe(&self, n: usize, receivers: &[SocketAddr]) -> Vec<String> {
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let addr = receivers[i % receivers.len()];
            let (status, body) = self
                .post(
                    "/v1/subscriptions",
                    json!({"url": format!("http://{addr}/hooks/{i}")}),
                )
                .await;
            assert_eq!(status, 201, "create a subscription: {body}");
            ids.push(body["id"].as_str().expect("subscription id").to_owned());
        }
        ids
    }
}

// ---------------------------------------------------------------------------------------------
// Phases

/// The name (as `/proc` shows it, cut to 15 bytes) of the service's HTTP worker threads
/// (actix's `actix-server worker N`), which read, route, authenticate and answer the API's
/// requests. Storage and deliveries run on threads of their own (the writer, the blocking pool,
/// the runtime's workers): these threads' CPU is the requests' own work, without the reads and
/// writes they hand over.
const API_THREADS: &str = "actix-server w";

/// CPU time of the service: all of it, and that of its API request threads.
#[derive(Clone, Copy)]
struct Cpu {
    total: Duration,
    api: Duration,
}

impl Cpu {
    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            total: self.total.saturating_sub(before.total),
            api: self.api.saturating_sub(before.api),
        }
    }

    /// Microseconds per delivery: all, and the API requests' part.
    fn per(self, deliveries: usize) -> (f64, f64) {
        let us = |d: Duration| d.as_secs_f64() * 1e6 / deliveries.max(1) as f64;
        (us(self.total), us(self.api))
    }
}

struct Rate {
    deliveries: usize,
    elapsed: Duration,
    cpu: Option<Duration>,
    /// CPU of the service's API request threads, within `cpu`.
    api_cpu: Option<Duration>,
}

impl Rate {
    fn per_second(&self) -> f64 {
        self.deliveries as f64 / self.elapsed.as_secs_f64()
    }

    fn cpu_us(&self) -> Option<f64> {
        self.cpu
            .map(|c| c.as_secs_f64() * 1e6 / self.deliveries.max(1) as f64)
    }

    /// The API request threads' CPU per delivery.
    fn api_us(&self) -> f64 {
        self.api_cpu
            .map(|c| c.as_secs_f64() * 1e6 / self.deliveries.max(1) as f64)
            .unwrap_or_default()
    }
}

/// A body of the size of a ready event with its agent.
fn event_body() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "type": "agent.ready",
        "timestamp": "2026-12-07T08:00:00.000Z",
        "data": {
            "job_id": "job_01JC0000000000000000000000",
            "agent_id": "A12345678",
            "status": "ready",
            "metadata": {},
            "agent": {"agent_id": "A12345678", "status": "ready", "model_url": "https://example.invalid/m.imx"},
            "created_at": "2026-12-07T08:00:00.000Z",
            "completed_at": "2026-12-07T08:00:40.000Z"
        }
    }))
    .unwrap()
}

async fn baseline(n: usize, receivers: &[SocketAddr], rx: &Received) -> Rate {
    rx.reset();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(8)
        .build()
        .unwrap();
    let body = bytes::Bytes::from(event_body());
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let cpu = common::process_cpu();
    let mut tasks = Vec::new();
    for lane in 0..64 {
        let (client, body, next) = (client.clone(), body.clone(), next.clone());
        let url = format!("http://{}/hooks/{lane}", receivers[lane % receivers.len()]);
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let res = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("webhook-id", format!("msg_base_{i}"))
                    .body(body.clone())
                    .send()
                    .await
                    .expect("POST to a receiver");
                assert!(res.status().is_success());
            }
        }));
    }
    futures_util::future::join_all(tasks).await;
    Rate {
        deliveries: rx.count.load(Ordering::SeqCst),
        elapsed: started.elapsed(),
        // This process hosts the receivers too: its CPU is the client's and the receivers'.
        cpu: Some(common::process_cpu().saturating_sub(cpu)),
        api_cpu: None,
    }
}

fn parse_time(raw: &Value) -> Option<SystemTime> {
    let at = chrono::DateTime::parse_from_rfc3339(raw.as_str()?).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_millis(at.timestamp_millis() as u64))
}

/// An `Instant` for a wall-clock time in the recent past.
fn instant_of(at: SystemTime) -> Instant {
    let ago = SystemTime::now().duration_since(at).unwrap_or_default();
    Instant::now() - ago
}

async fn fanout(jobs: usize, subs: usize, receivers: &[SocketAddr], rx: &Received) -> Rate {
    let sim = spawn_sim(SimConfig {
        time_to_ready: Duration::from_secs(1),
        generate_per_minute: 1_000_000,
        read_per_minute: 1_000_000,
        ..SimConfig::default()
    });
    let service = Service::start(&sim, "").await;
    service.subscribe(subs, receivers).await;
    rx.reset();
    let created = Instant::now();
    // Created 32 at a time, as a burst of users would: their completions come close together.
    let mut ids = Vec::with_capacity(jobs);
    for chunk in (0..jobs).collect::<Vec<_>>().chunks(32) {
        let answers = futures_util::future::join_all(
            chunk
                .iter()
                .map(|i| service.post("/v1/jobs", json!({"prompt": format!("agent {i}")}))),
        )
        .await;
        for (status, body) in answers {
            assert_eq!(status, 202, "create a job: {body}");
            ids.push(body["id"].as_str().expect("job id").to_owned());
        }
    }
    let creating = created.elapsed();
    println!("  {jobs} jobs created through the API in {}", ms(creating));
    // The first polls come 4 s after each job's creation: the service is idle until then.
    tokio::time::sleep(Duration::from_millis(3_500).saturating_sub(creating)).await;
    let cpu_before = service.cpu();
    let expected = jobs * subs;
    let deadline = Instant::now() + DEADLINE;
    while rx.count.load(Ordering::SeqCst) < expected {
        assert!(
            Instant::now() < deadline,
            "fan-out stalled at {} of {expected}",
            rx.count.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let last = rx.last.lock().unwrap().expect("a receipt");
    let cpu = service.cpu().since(cpu_before);
    // The first completion, as the service recorded it.
    let mut completions = Vec::with_capacity(jobs);
    for id in &ids {
        let job = service.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(job["status"], "ready", "{job}");
        completions.push(instant_of(
            parse_time(&job["completed_at"]).expect("completed_at"),
        ));
    }
    completions.sort();
    let first = completions[0];
    let first_receipt = rx
        .ids
        .lock()
        .unwrap()
        .values()
        .map(|(_, at)| *at)
        .min()
        .expect("a receipt");
    // Anything more would be a duplicate: give it a moment to show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = rx.count.load(Ordering::SeqCst);
    let distinct = rx.ids.lock().unwrap().len();
    assert_eq!(
        distinct, expected,
        "one webhook-id per event and subscription"
    );
    assert_eq!(
        received,
        expected,
        "{} webhook-ids came twice",
        rx.duplicates()
    );
    println!(
        "  fan-out: {jobs} jobs x {subs} subscriptions = {expected} deliveries, every one received once; service RSS {:.1} MiB",
        mib(service.rss())
    );
    println!(
        "  completions over {} (median at +{}); first receipt at +{}, last at +{}",
        ms(completions[completions.len() - 1].saturating_duration_since(first)),
        ms(completions[completions.len() / 2].saturating_duration_since(first)),
        ms(first_receipt.saturating_duration_since(first)),
        ms(last.saturating_duration_since(first)),
    );
    if std::env::var_os("RBENCH_TIMELINE").is_some() {
        // Receipts per 100 ms from the first completion, and completions in the same slots.
        let mut slots = vec![
            (0usize, 0usize);
            1 + last.saturating_duration_since(first).as_millis() as usize / 100
        ];
        for (_, at) in rx.ids.lock().unwrap().values() {
            slots[at.saturating_duration_since(first).as_millis() as usize / 100].0 += 1;
        }
        for at in &completions {
            if let Some(slot) =
                slots.get_mut(at.saturating_duration_since(first).as_millis() as usize / 100)
            {
                slot.1 += 1;
            }
        }
        let line: Vec<String> = slots.iter().map(|(r, c)| format!("{r}/{c}")).collect();
        println!("  receipts/completions per 100 ms: {}", line.join(" "));
    }
    Rate {
        deliveries: expected,
        elapsed: last.saturating_duration_since(first),
        cpu: Some(cpu.total),
        api_cpu: Some(cpu.api),
    }
}

struct Timed {
    sent: usize,
    api: Vec<Duration>,
    receipt: Vec<Duration>,
    elapsed: Duration,
    cpu: Cpu,
}

/// Test events through the API from `clients` tasks, each waiting `period` between requests
/// (zero: as fast as the API answers), for `secs`.
async fn test_events(
    service: &Service,
    subs: &[String],
    rx: &Arc<Received>,
    clients: usize,
    period: Duration,
    secs: u64,
) -> Timed {
    rx.reset();
    let stop = Arc::new(AtomicBool::new(false));
    let cpu_before = service.cpu();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for lane in 0..clients {
        let client = service.client.clone();
        let url = format!(
            "{}/v1/subscriptions/{}/test",
            service.base,
            subs[lane % subs.len()]
        );
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let res = client
                    .post(&url)
                    .bearer_auth(KEY)
                    .send()
                    .await
                    .expect("create a test event");
                let api = t0.elapsed();
                assert_eq!(res.status().as_u16(), 202);
                let body: Value = res.json().await.expect("its delivery");
                let id = body["webhook_id"].as_str().expect("webhook_id").to_owned();
                sent.push((id, t0, api));
                if !period.is_zero() {
                    next += period;
                    tokio::time::sleep_until(next.into()).await;
                }
            }
            sent
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let sent: Vec<_> = futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .flat_map(|r| r.expect("client task"))
        .collect();
    let deadline = Instant::now() + DEADLINE;
    while rx.count.load(Ordering::SeqCst) < sent.len() {
        assert!(Instant::now() < deadline, "test events stalled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = rx.last.lock().unwrap().expect("a receipt") - started;
    let cpu = service.cpu().since(cpu_before);
    assert_eq!(rx.duplicates(), 0, "a test event was received twice");
    let mut api: Vec<Duration> = sent.iter().map(|(_, _, api)| *api).collect();
    let mut receipt: Vec<Duration> = sent
        .iter()
        .map(|(id, t0, _)| {
            rx.arrival(id)
                .expect("every test event received")
                .saturating_duration_since(*t0)
        })
        .collect();
    api.sort();
    receipt.sort();
    Timed {
        sent: sent.len(),
        api,
        receipt,
        elapsed,
        cpu,
    }
}

/// How dead letters are sent again.
#[derive(Clone, Copy, PartialEq)]
enum Resend {
    /// `POST /v1/subscriptions/{id}/recover` for each subscription, all at once.
    Recover,
    /// `POST /v1/deliveries/{id}/retry` for each dead letter, from 64 clients.
    RetryEach,
}

/// `n` dead letters (one attempt each, to receivers answering 500) over one subscription per
/// receiver address; then sent again (`how`) with the receivers answering 204: the API's answer
/// times, and from the first request to the last receipt, with the service's CPU per delivery.
async fn resend(
    n: usize,
    how: Resend,
    receivers: &[SocketAddr],
    rx: &Arc<Received>,
) -> (Rate, Vec<Duration>) {
    let sim = spawn_sim(SimConfig::default());
    let service = Service::start(&sim, "retry_schedule = [\"0s\"]").await;
    let mut subs = Vec::new();
    for (i, addr) in receivers.iter().enumerate() {
        let (status, body) = service
            .post(
                "/v1/subscriptions",
                json!({"url": format!("http://{addr}/fail/{i}")}),
            )
            .await;
        assert_eq!(status, 201, "create a subscription: {body}");
        subs.push(body["id"].as_str().expect("subscription id").to_owned());
    }
    let since = chrono::Utc::now() - chrono::Duration::seconds(1);
    rx.reset();
    rx.failing.store(true, Ordering::SeqCst);
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..64)
        .map(|lane| {
            let (client, next) = (service.client.clone(), next.clone());
            let url = format!(
                "{}/v1/subscriptions/{}/test",
                service.base,
                subs[lane % subs.len()]
            );
            tokio::spawn(async move {
                let mut ids = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    let res = client
                        .post(&url)
                        .bearer_auth(KEY)
                        .send()
                        .await
                        .expect("test event");
                    assert_eq!(res.status().as_u16(), 202);
                    let body: Value = res.json().await.expect("the queued delivery");
                    ids.push(body["id"].as_str().expect("delivery id").to_owned());
                }
                ids
            })
        })
        .collect();
    let dead_letters: Vec<String> = futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .flat_map(|ids| ids.expect("a client"))
        .collect();
    // Every one attempted once, refused, and recorded a dead letter.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let failed: usize = {
            let metrics = service
                .client
                .get(format!("{}/metrics", service.base))
                .send()
                .await
                .expect("metrics")
                .text()
                .await
                .unwrap_or_default();
            metrics
                .lines()
                .filter(|l| {
                    l.starts_with("agenthook_delivery_attempts_total{")
                        && l.contains("outcome=\"dead_lettered\"")
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as usize
        };
        if failed >= n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dead letters stalled at {failed} of {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rx.reset();
    rx.failing.store(false, Ordering::SeqCst);
    let cpu_before = service.cpu();
    let started = Instant::now();
    let answers = match how {
        Resend::Recover => recover_each(&service, &subs, since).await,
        Resend::RetryEach => retry_each(&service, dead_letters).await,
    };
    let recovered: usize = answers.iter().map(|(_, r)| r).sum();
    assert_eq!(recovered, n, "every dead letter sent again");
    while rx.count.load(Ordering::SeqCst) < n {
        assert!(
            Instant::now() < deadline + DEADLINE,
            "resent deliveries stalled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let last = rx.last.lock().unwrap().expect("a receipt");
    let cpu = service.cpu().since(cpu_before);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        rx.count.load(Ordering::SeqCst),
        n,
        "each resent delivery sent once"
    );
    let mut api: Vec<Duration> = answers.into_iter().map(|(t, _)| t).collect();
    api.sort();
    (
        Rate {
            deliveries: n,
            elapsed: last.saturating_duration_since(started),
            cpu: Some(cpu.total),
            api_cpu: Some(cpu.api),
        },
        api,
    )
}

/// `POST /v1/subscriptions/{id}/recover` for every subscription at once: each answer's time and
/// how many it recovered.
async fn recover_each(
    service: &Service,
    subs: &[String],
    since: chrono::DateTime<chrono::Utc>,
) -> Vec<(Duration, usize)> {
    futures_util::future::join_all(subs.iter().map(|id| {
        let service = &service;
        async move {
            let t0 = Instant::now();
            let (status, body) = service
                .post(
                    &format!("/v1/subscriptions/{id}/recover"),
                    json!({"since": since.to_rfc3339()}),
                )
                .await;
            assert_eq!(status, 202, "recover: {body}");
            (
                t0.elapsed(),
                body["recovered"].as_u64().unwrap_or(0) as usize,
            )
        }
    }))
    .await
}

/// `POST /v1/deliveries/{id}/retry` for each of `ids`, from 64 clients: each answer's time
/// (and 1, the delivery it queued).
async fn retry_each(service: &Service, ids: Vec<String>) -> Vec<(Duration, usize)> {
    let ids = Arc::new(std::sync::Mutex::new(ids));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (client, base, ids) = (service.client.clone(), service.base.clone(), ids.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                loop {
                    let Some(id) = ids.lock().unwrap().pop() else {
                        break;
                    };
                    let t0 = Instant::now();
                    let res = client
                        .post(format!("{base}/v1/deliveries/{id}/retry"))
                        .bearer_auth(KEY)
                        .send()
                        .await
                        .expect("retry");
                    assert_eq!(res.status().as_u16(), 202, "retry {id}");
                    answers.push((t0.elapsed(), 1));
                }
                answers
            })
        })
        .collect();
    futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .flat_map(|answers| answers.expect("a client"))
        .collect()
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let phases = std::env::var("RBENCH_PHASES")
        .unwrap_or_else(|_| "baseline,fanout,recover,retry64,latency,test64".into());
    let runs = |p: &str| phases.split(',').any(|x| x.trim() == p);
    let jobs = env_usize("RBENCH_JOBS", 200);
    let subs = env_usize("RBENCH_SUBS", 100);
    let latency_secs = env_usize("RBENCH_LATENCY_SECS", 10) as u64;
    let test_secs = env_usize("RBENCH_TEST_SECS", 10) as u64;
    let rounds = env_usize("RBENCH_ROUNDS", 3).max(1);

    let rx = Arc::new(Received::default());
    let port = free_port();
    let receivers = receivers::spawn(
        (0..HOSTS)
            .map(|host| SocketAddr::from(([127, 0, 0, host as u8 + 2], port)))
            .collect(),
        rx.clone(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench")
        .enable_all()
        .build()
        .unwrap();
    println!(
        "realpath bench: {HOSTS} receivers on 127.0.0.2-{}",
        HOSTS + 1
    );

    rt.block_on(async {
        let mut base = None;
        if runs("baseline") {
            let rate = baseline(jobs * subs, &receivers, &rx).await;
            println!(
                "baseline (bare client, 64 in flight): {} POSTs in {} = {:.0}/s; CPU of client + receivers {:.1} µs per POST",
                rate.deliveries,
                ms(rate.elapsed),
                rate.per_second(),
                rate.cpu_us().unwrap_or_default()
            );
            base = Some(rate.per_second());
        }
        if runs("fanout") {
            let mut rates = Vec::new();
            let mut cpus = Vec::new();
            let mut apis = Vec::new();
            for round in 1..=rounds {
                let rate = fanout(jobs, subs, &receivers, &rx).await;
                println!(
                    "fanout {round}/{rounds} (first completion -> last receipt): {} deliveries in {} = {:.0}/s{}; service CPU {:.1} µs per delivery (creation included; API threads {:.1})",
                    rate.deliveries,
                    ms(rate.elapsed),
                    rate.per_second(),
                    base.map(|b| format!(" (ratio to bare client {:.2})", rate.per_second() / b))
                        .unwrap_or_default(),
                    rate.cpu_us().unwrap_or_default(),
                    rate.api_us()
                );
                rates.push(rate.per_second());
                cpus.push(rate.cpu_us().unwrap_or_default());
                apis.push(rate.api_us());
            }
            println!(
                "fanout median of {rounds}: {:.0} deliveries/s, {:.1} µs of service CPU per delivery (API threads {:.1})",
                common::median(rates).unwrap_or_default(),
                common::median(cpus).unwrap_or_default(),
                common::median(apis).unwrap_or_default(),
            );
        }
        if runs("recover") {
            let n = env_usize("RBENCH_RECOVER", 10_000);
            let (rate, api) = resend(n, Resend::Recover, &receivers, &rx).await;
            println!(
                "recover ({n} dead letters over {HOSTS} subscriptions, recovered at once): {} in {} = {:.0}/s; service CPU {:.1} µs per delivery (API threads {:.1}); recover API answered in {} to {}",
                rate.deliveries,
                ms(rate.elapsed),
                rate.per_second(),
                rate.cpu_us().unwrap_or_default(),
                rate.api_us(),
                ms(api[0]),
                ms(*api.last().unwrap()),
            );
        }
        if runs("retry64") {
            let n = env_usize("RBENCH_RECOVER", 10_000);
            let (rate, api) = resend(n, Resend::RetryEach, &receivers, &rx).await;
            println!(
                "retry64 ({n} dead letters, each retried by its own request from 64 clients): {} in {} = {:.0}/s; service CPU {:.1} µs per delivery (API threads {:.1}); API p50 {} p99 {}",
                rate.deliveries,
                ms(rate.elapsed),
                rate.per_second(),
                rate.cpu_us().unwrap_or_default(),
                rate.api_us(),
                ms(percentile(&api, 0.50)),
                ms(percentile(&api, 0.99)),
            );
        }
        if runs("latency") || runs("test64") {
            let sim = spawn_sim(SimConfig::default());
            let service = Service::start(&sim, "").await;
            let ids = service.subscribe(HOSTS, &receivers).await;
            if runs("latency") {
                let t = test_events(&service, &ids, &rx, 1, Duration::from_millis(5), latency_secs)
                    .await;
                println!(
                    "latency (test events at 200/s, {} sent): request -> receipt p50 {} p90 {} p99 {} max {}; API p99 {}",
                    t.sent,
                    ms(percentile(&t.receipt, 0.50)),
                    ms(percentile(&t.receipt, 0.90)),
                    ms(percentile(&t.receipt, 0.99)),
                    ms(*t.receipt.last().unwrap()),
                    ms(percentile(&t.api, 0.99)),
                );
            }
            if runs("test64") {
                let t = test_events(&service, &ids, &rx, 64, Duration::ZERO, test_secs).await;
                let (cpu_us, api_us) = t.cpu.per(t.sent);
                println!(
                    "test64 (64 clients, test events as fast as answered): {} created and delivered in {} = {:.0}/s; service CPU {:.1} µs per delivery (API threads {:.1}); API p50 {} p99 {}; request -> receipt p99 {}",
                    t.sent,
                    ms(t.elapsed),
                    t.sent as f64 / t.elapsed.as_secs_f64(),
                    cpu_us,
                    api_us,
                    ms(percentile(&t.api, 0.50)),
                    ms(percentile(&t.api, 0.99)),
                    ms(percentile(&t.receipt, 0.99)),
                );
            }
        }
    });
}
