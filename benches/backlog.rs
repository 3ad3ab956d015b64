//! A backlog the size of a receiver down for a day, measured on the real binary (issue 15,
//! point 4): one million pending deliveries, start-up, memory, fresh events to a healthy
//! receiver while the backlog is due, and the drain when the receiver returns.
//!
//! `cargo bench --bench backlog` (about 10 minutes with the default knobs). Everything is on
//! 127.0.0.0/8.
//!
//! 1. `build`: the store is opened in this process through its public API and `BBENCH_N`
//!    (1,000,000) deliveries are inserted, `BBENCH_BATCH` (1,000) per write, four writes at a
//!    time: each of its own `agent.ready` event (a body of ~560 bytes), to one of
//!    `BBENCH_HOSTS` (1) subscriptions whose receiver is down (`127.0.0.2`, `.3`, ... on a port
//!    where nothing listens), created over the last day, tried once and failed (`connect`), its
//!    next attempt due now: the whole backlog due at once, the worst a day's outage leaves.
//!    The store is closed, then opened again in this process (timed: what opening costs).
//! 2. `start`: the real binary (`agenthook serve --config ...`, default delivery settings:
//!    64 fresh slots, 32 retry slots, 8 per destination) on that directory; spawn → `/readyz`
//!    answering 200, and its RSS (`VmRSS` of `/proc/<pid>/status`) then.
//! 3. `down` (`BBENCH_DOWN_SECS`, 20 s): the backlog is retried against the down receiver
//!    (refused connections; each retried delivery is due again 5-6 minutes later, the default
//!    schedule's third step). Meanwhile test events (`POST /v1/subscriptions/{id}/test`) go to
//!    a healthy receiver (`127.0.0.20`) at `BBENCH_FRESH_RATE` (100) per second: request →
//!    receipt p50/p99. The service's retried attempts come from its `/metrics`; RSS is sampled
//!    every 250 ms.
//! 4. `drain`: a receiver is started on the down addresses (204 to everything, each
//!    `webhook-id` counted). The deliveries still due arrive: timed from the start of the
//!    receiver to the last receipt before 3 s without any; deliveries per second and the
//!    service's CPU (`utime + stime` of `/proc/<pid>/stat`) per delivery. Test events keep
//!    going at the same rate.
//! 5. `rest` (unless `BBENCH_WAIT_ALL=0`): the deliveries retried while the receiver was down
//!    come due again 5-6 minutes later and are waited for; then every backlog delivery must
//!    have arrived, each `webhook-id` exactly once.
//!
//! Other knobs: `BBENCH_BINARY` (another build of the service, for before/after),
//! `BBENCH_CACHE_BYTES` (the service's `storage.cache_bytes`; default setting's
//! 32 MiB when unset).

mod common;

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agenthook::domain::{
    Attempt, Delivery, DeliveryState, Destination, ErrorClass, Event, EventId, EventType, Format,
    SecretSet, Subscription, SubscriptionId, Tenant,
};
use agenthook::store::Store;
use common::fixtures::{free_port, spawn_sim};
use common::receivers::{self, Received};
use common::{child_cpu, child_rss, env_usize, mib, percentile};
use serde_json::{json, Value};

const KEY: &str = "backlog-bench-key-0123456789abcdef";
const TENANT: &str = "bench";
/// The healthy receiver's address.
const HEALTHY: &str = "127.0.0.20";
/// Any wait longer than this has stalled.
const DEADLINE: Duration = Duration::from_secs(600);

// ---------------------------------------------------------------------------------------------
// Receivers

// ---------------------------------------------------------------------------------------------
// The backlog

/// The body of an `agent.ready` event of a job with a little metadata.
fn ready_event(tenant: &Tenant, i: usize, at: agenthook::clock::Timestamp) -> Event {
    Event {
        id: EventId::generate(),
        tenant: tenant.clone(),
        event_type: EventType::AgentReady,
        timestamp: at,
        data: json!({
            "job_id": format!("job_01JDX{i:021}"),
            "agent_id": format!("A{i:09}"),
            "status": "ready",
            "model_url": format!("https://models.example.invalid/agents/A{i:09}/model.imx"),
            "name": "Museum guide",
            "image_url": format!("https://media.example.invalid/agents/A{i:09}.png"),
            "video_url": null,
            "system_prompt": "You are a friendly museum guide who explains each exhibit briefly.",
            "error_code": null,
            "error_message": null,
            "metadata": {"order": i},
            "created_at": at,
            "completed_at": at,
        }),
    }
}

struct Built {
    subscriptions: Vec<Subscription>,
    elapsed: Duration,
}

/// `n` pending deliveries to `subs` (round robin), as a day's outage leaves them.
async fn build(store: &Store, n: usize, batch: usize, subs: Vec<Subscription>) -> Built {
    let tenant = Tenant::parse(TENANT).unwrap();
    for sub in &subs {
        store
            .save_subscription(sub)
            .await
            .expect("save subscription");
    }
    let started = Instant::now();
    let now = chrono::Utc::now();
    let day = chrono::Duration::days(1);
    let next = Arc::new(AtomicUsize::new(0));
    let subs = Arc::new(subs);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (store, next, subs, tenant) =
            (store.clone(), next.clone(), subs.clone(), tenant.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let first = next.fetch_add(batch, Ordering::SeqCst);
                if first >= n {
                    return;
                }
                let deliveries: Vec<Delivery> = (first..(first + batch).min(n))
                    .map(|i| {
                        // Created over the last day, in order; due now, in the same order.
                        let created = now - day + day * (i as i32) / (n as i32);
                        let due = now - chrono::Duration::seconds(60)
                            + chrono::Duration::seconds(60) * (i as i32) / (n as i32);
                        let sub = &subs[i % subs.len()];
                        let event = ready_event(&tenant, i, created);
                        let mut d =
                            Delivery::new(&event, None, Destination::subscription(sub), created);
                        d.state = DeliveryState::Pending;
                        d.attempts.push(Attempt {
                            at: created,
                            status_code: None,
                            error: Some(ErrorClass::Connect),
                            duration_ms: 0,
                            response_body: None,
                        });
                        d.next_attempt_at = Some(due);
                        d.updated_at = created;
                        d
                    })
                    .collect();
                store.insert_deliveries(deliveries).await.expect("insert");
            }
        }));
    }
    for task in tasks {
        task.await.expect("insert task");
    }
    store.close().await.expect("flush");
    Built {
        subscriptions: Arc::try_unwrap(subs).unwrap_or_else(|s| (*s).clone()),
        elapsed: started.elapsed(),
    }
}

fn subscription(tenant: &Tenant, url: String) -> Subscription {
    let now = chrono::Utc::now();
    Subscription {
        id: SubscriptionId::generate(),
        tenant: tenant.clone(),
        url,
        event_types: vec![EventType::AgentReady, EventType::AgentFailed],
        format: Format::Standard,
        description: Some("down for a day".into()),
        enabled: true,
        disabled_reason: None,
        secrets: SecretSet::new(agenthook::delivery::signature::SigningSecret::generate()),
        // Failing since the outage began: a day is within `disable_after` (5 days).
        failing_since: Some(now - chrono::Duration::days(1)),
        rate_limit_per_second: None,
        created_at: now - chrono::Duration::days(2),
        updated_at: now - chrono::Duration::days(1),
    }
}

// ---------------------------------------------------------------------------------------------
// The service

struct Service {
    child: Child,
    base: String,
    client: reqwest::Client,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    /// Start the binary on `config` and wait for `/readyz`; a start that exits at once (the
    /// store's previous user still letting go of its lock) is tried again. The time from the
    /// spawn that became ready to its first 200.
    async fn start(config: &str, port: u16) -> (Service, Duration, usize) {
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .unwrap();
        for attempt in 1..=20 {
            let spawned = Instant::now();
            let binary = std::env::var_os("BBENCH_BINARY")
                .unwrap_or_else(|| env!("CARGO_BIN_EXE_agenthook").into());
            let mut child = Command::new(binary)
                .args(["serve", "--config", config])
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start the agenthook binary");
            loop {
                if let Ok(res) = client.get(format!("{base}/readyz")).send().await {
                    if res.status().is_success() {
                        let ready = spawned.elapsed();
                        return (
                            Service {
                                child,
                                base,
                                client,
                            },
                            ready,
                            attempt,
                        );
                    }
                }
                if child.try_wait().expect("wait").is_some() {
                    break;
                }
                assert!(spawned.elapsed() < Duration::from_secs(120), "never ready");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the service did not start");
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn rss(&self) -> u64 {
        child_rss(self.pid())
    }

    fn cpu(&self) -> Duration {
        child_cpu(self.pid())
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        common::post_json(&self.client, format!("{}{path}", self.base), KEY, &body).await
    }

    /// The sum of the samples of `name` whose labels contain every one of `labels`.
    async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let text = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
            .filter(|l| l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn du_mib(path: &std::path::Path) -> f64 {
    let out = Command::new("du")
        .args(["-sk", &path.display().to_string()])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.split_whitespace()
        .next()
        .and_then(|k| k.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// The largest RSS seen while the sampler ran, per phase.
#[derive(Default)]
struct RssSampler {
    phase: Mutex<String>,
    max: Mutex<Vec<(String, u64)>>,
}

impl RssSampler {
    fn enter(&self, phase: &str) {
        *self.phase.lock().unwrap() = phase.into();
    }

    fn note(&self, rss: u64) {
        let phase = self.phase.lock().unwrap().clone();
        let mut max = self.max.lock().unwrap();
        match max.iter_mut().find(|(p, _)| *p == phase) {
            Some((_, m)) => *m = (*m).max(rss),
            None => max.push((phase, rss)),
        }
    }

    fn max_of(&self, phase: &str) -> u64 {
        self.max
            .lock()
            .unwrap()
            .iter()
            .find(|(p, _)| p == phase)
            .map_or(0, |(_, m)| *m)
    }
}

/// Test events to `sub` at `rate` per second until `stop`: each with its request instant.
fn fresh_events(
    service: &Service,
    sub: &str,
    rate: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(String, Instant, Duration)>> {
    let client = service.client.clone();
    let url = format!("{}/v1/subscriptions/{sub}/test", service.base);
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    tokio::spawn(async move {
        let mut sent = Vec::new();
        let mut next = Instant::now();
        let mut inflight = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let (client, url) = (client.clone(), url.clone());
            inflight.push(tokio::spawn(async move {
                let t0 = Instant::now();
                let res = client.post(&url).bearer_auth(KEY).send().await.ok()?;
                let api = t0.elapsed();
                if res.status().as_u16() != 202 {
                    return None;
                }
                let body: Value = res.json().await.ok()?;
                Some((body["webhook_id"].as_str()?.to_owned(), t0, api))
            }));
            next += period;
            tokio::time::sleep_until(next.into()).await;
        }
        for task in inflight {
            if let Ok(Some(one)) = task.await {
                sent.push(one);
            }
        }
        sent
    })
}

/// Request → receipt of the test events `sent`, once they have arrived (at most 30 s more).
async fn fresh_report(label: &str, sent: &[(String, Instant, Duration)], rx: &Received) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while sent.iter().any(|(id, _, _)| rx.arrival(id).is_none()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut timed: Vec<(Duration, Instant)> = sent
        .iter()
        .filter_map(|(id, t0, _)| Some((rx.arrival(id)?.saturating_duration_since(*t0), *t0)))
        .collect();
    let start = sent.iter().map(|(_, t0, _)| *t0).min();
    timed.sort_by_key(|t| std::cmp::Reverse(t.0));
    let slowest: Vec<String> = timed
        .iter()
        .take(5)
        .map(|(took, t0)| {
            let at = start.map_or(Duration::ZERO, |s| t0.saturating_duration_since(s));
            format!("{} at +{:.1} s", ms(*took), at.as_secs_f64())
        })
        .collect();
    let mut receipt: Vec<Duration> = timed.iter().map(|(took, _)| *took).collect();
    let mut api: Vec<Duration> = sent.iter().map(|(_, _, api)| *api).collect();
    receipt.sort();
    api.sort();
    println!(
        "  fresh events to a healthy receiver {label}: {} sent, {} received; request -> receipt p50 {} p90 {} p99 {} max {}; API p99 {}",
        sent.len(),
        receipt.len(),
        ms(percentile(&receipt, 50.0)),
        ms(percentile(&receipt, 90.0)),
        ms(percentile(&receipt, 99.0)),
        ms(receipt.last().copied().unwrap_or_default()),
        ms(percentile(&api, 99.0)),
    );
    println!("    slowest: {}", slowest.join(", "));
}

fn main() {
    let n = env_usize("BBENCH_N", 1_000_000);
    let batch = env_usize("BBENCH_BATCH", 1_000).max(1);
    let hosts = env_usize("BBENCH_HOSTS", 1).clamp(1, 16);
    let down_secs = env_usize("BBENCH_DOWN_SECS", 20) as u64;
    let fresh_rate = env_usize("BBENCH_FRESH_RATE", 100);
    let wait_all = std::env::var("BBENCH_WAIT_ALL").map_or(true, |v| v != "0");
    let cache_bytes = std::env::var("BBENCH_CACHE_BYTES").ok();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench")
        .enable_all()
        .build()
        .unwrap();
    println!(
        "backlog bench: {n} pending deliveries to a receiver that is down ({hosts} address{}), default delivery settings",
        if hosts == 1 { "" } else { "es" }
    );
    println!("  load average at start: {}", load_average());

    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        // `BBENCH_BUILD_ONLY=path`: build the backlog there and stop (to try the service on
        // copies of it by hand).
        let build_only = std::env::var_os("BBENCH_BUILD_ONLY").map(std::path::PathBuf::from);
        let data = build_only.clone().unwrap_or_else(|| dir.path().join("data"));
        let tenant = Tenant::parse(TENANT).unwrap();
        let down_port = free_port();
        let down_addrs: Vec<SocketAddr> = (0..hosts)
            .map(|h| format!("127.0.0.{}:{down_port}", h + 2).parse().unwrap())
            .collect();
        let subs: Vec<Subscription> = down_addrs
            .iter()
            .enumerate()
            .map(|(h, addr)| subscription(&tenant, format!("http://{addr}/hooks/{h}")))
            .collect();

        // 1. build
        let store: Store = common::open_store_retrying(&data, 32 << 20);
        let built = build(&store, n, batch, subs).await;
        drop(store);
        if build_only.is_some() {
            println!("built {n} deliveries in {:.1} s at {}; subscriptions: {:?}", built.elapsed.as_secs_f64(), data.display(), built.subscriptions.iter().map(|s| s.url.clone()).collect::<Vec<_>>());
            return;
        }
        println!(
            "build: {n} deliveries inserted in {:.1} s ({:.0}/s), data directory {:.0} MiB",
            built.elapsed.as_secs_f64(),
            n as f64 / built.elapsed.as_secs_f64(),
            du_mib(&data)
        );
        let opening = Instant::now();
        let reopened = common::open_store_retrying(&data, 32 << 20);
        let open_time = opening.elapsed();
        let counts = reopened.counts().await.expect("counts");
        println!(
            "  opened again in this process in {} (waiting for the writer to let go included); retry queue {}",
            ms(open_time),
            counts.deliveries_retry
        );
        assert_eq!(counts.deliveries_retry as usize, n, "every delivery queued");
        drop(reopened);

        // 2. start
        let sim = spawn_sim(agenthook::sim::SimConfig::default());
        let port = free_port();
        let config = dir.path().join("backlog.toml");
        let mut file = std::fs::File::create(&config).expect("config file");
        write!(
            file,
            r#"
[server]
bind = "127.0.0.1:{port}"
[storage]
path = "{data}"
{cache}
[upstream]
base_url = "{upstream}"
api_secret = "{secret}"
[delivery]
allow_private_networks = true
[auth]
requests_per_minute = 0
[[auth.keys]]
name = "{TENANT}"
key = "{KEY}"
[log]
level = "warn"
"#,
            data = data.display(),
            cache = cache_bytes
                .as_deref()
                .map(|c| format!("cache_bytes = {c}"))
                .unwrap_or_default(),
            upstream = sim.base_url,
            secret = sim.state.config().api_secret,
        )
        .expect("write config");
        drop(file);
        let healthy_port = free_port();
        let healthy_rx = Arc::new(Received::default());
        receivers::spawn(
            vec![format!("{HEALTHY}:{healthy_port}").parse().unwrap()],
            healthy_rx.clone(),
        );
        let (service, ready, attempts) = Service::start(&config.display().to_string(), port).await;
        let service = Arc::new(service);
        println!(
            "start: spawn -> /readyz 200 in {} ({} spawn{}); RSS then {:.1} MiB",
            ms(ready),
            attempts,
            if attempts == 1 { "" } else { "s, the first ones finding the directory still locked" },
            mib(service.rss())
        );
        let sampler = Arc::new(RssSampler::default());
        sampler.enter("down");
        let sampling = Arc::new(AtomicBool::new(true));
        {
            let (sampler, sampling, pid) = (sampler.clone(), sampling.clone(), service.pid());
            tokio::spawn(async move {
                while sampling.load(Ordering::Relaxed) {
                    sampler.note(child_rss(pid));
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            });
        }
        let (status, body) = service
            .post(
                "/v1/subscriptions",
                json!({"url": format!("http://{HEALTHY}:{healthy_port}/fresh")}),
            )
            .await;
        assert_eq!(status, 201, "create the healthy subscription: {body}");
        let healthy_sub = body["id"].as_str().expect("id").to_owned();

        // 3. down
        let cpu_down = service.cpu();
        let retried_before = service
            .metric("agenthook_delivery_attempts_total", &["outcome=\"retrying\""])
            .await;
        let stop = Arc::new(AtomicBool::new(false));
        let fresh = fresh_events(&service, &healthy_sub, fresh_rate, stop.clone());
        let down_started = Instant::now();
        let mut rss_line = Vec::new();
        for _ in 0..down_secs {
            tokio::time::sleep(Duration::from_secs(1)).await;
            rss_line.push(format!("{:.0}", mib(service.rss())));
        }
        stop.store(true, Ordering::Relaxed);
        let sent_down = fresh.await.expect("fresh events");
        let down_elapsed = down_started.elapsed();
        let retried = service
            .metric("agenthook_delivery_attempts_total", &["outcome=\"retrying\""])
            .await
            - retried_before;
        let cpu = service.cpu().saturating_sub(cpu_down);
        println!(
            "down ({down_secs} s, load average {}): {retried:.0} retries against the down receiver ({:.0}/s), service CPU {:.0} % of a core ({:.1} µs per retry)",
            load_average(),
            retried / down_elapsed.as_secs_f64(),
            100.0 * cpu.as_secs_f64() / down_elapsed.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / retried.max(1.0),
        );
        println!("  RSS MiB each second: {}", rss_line.join(" "));
        fresh_report("while the backlog is due", &sent_down, &healthy_rx).await;

        // 4. drain
        sampler.enter("drain");
        let backlog_rx = Arc::new(Received::default());
        let still_due = service
            .metric("agenthook_queue_depth", &["queue=\"deliveries_retry\""])
            .await;
        let cpu_drain = service.cpu();
        let up = Instant::now();
        *backlog_rx.origin.lock().unwrap() = Some(up);
        receivers::spawn(down_addrs.clone(), backlog_rx.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let fresh = fresh_events(&service, &healthy_sub, fresh_rate, stop.clone());
        let mut quiet_since = Instant::now();
        let mut seen = 0;
        let deadline = Instant::now() + DEADLINE;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let count = backlog_rx.count.load(Ordering::SeqCst);
            if count != seen {
                seen = count;
                quiet_since = Instant::now();
            }
            if count >= n || (count > 0 && quiet_since.elapsed() > Duration::from_secs(3)) {
                break;
            }
            assert!(Instant::now() < deadline, "the drain stalled at {count}");
        }
        let last = backlog_rx.last.lock().unwrap().expect("a receipt");
        let drained = backlog_rx.count.load(Ordering::SeqCst);
        let cpu = service.cpu().saturating_sub(cpu_drain);
        stop.store(true, Ordering::Relaxed);
        let sent_drain = fresh.await.expect("fresh events");
        let elapsed = last.saturating_duration_since(up);
        println!(
            "drain (load average {}): {drained} backlog deliveries received in {:.2} s = {:.0}/s (retry queue, due or not, {still_due:.0} when the receiver came up); service CPU {:.1} µs per delivery",
            load_average(),
            elapsed.as_secs_f64(),
            drained as f64 / elapsed.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / drained.max(1) as f64,
        );
        let per_second: Vec<String> = backlog_rx
            .timeline
            .lock()
            .unwrap()
            .chunks(10)
            .map(|s| s.iter().sum::<u32>().to_string())
            .collect();
        println!("  receipts each second: {}", per_second.join(" "));
        println!(
            "  RSS max: down {:.1} MiB, drain {:.1} MiB; now {:.1} MiB",
            mib(sampler.max_of("down")),
            mib(sampler.max_of("drain")),
            mib(service.rss())
        );
        fresh_report("during the drain", &sent_drain, &healthy_rx).await;

        // 5. rest
        if wait_all {
            sampler.enter("rest");
            let waiting = Instant::now();
            while backlog_rx.count.load(Ordering::SeqCst) < n {
                assert!(
                    waiting.elapsed() < DEADLINE,
                    "{} of {n} backlog deliveries received",
                    backlog_rx.count.load(Ordering::SeqCst)
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            // A duplicate would come right after: give it a moment.
            tokio::time::sleep(Duration::from_secs(2)).await;
            println!(
                "rest: the {} retried while down arrived {:.0} s later",
                n - drained,
                waiting.elapsed().as_secs_f64()
            );
        }
        let (distinct, dups, count) = (
            backlog_rx.distinct(),
            backlog_rx.duplicates(),
            backlog_rx.count.load(Ordering::SeqCst),
        );
        println!(
            "check: {count} received, {distinct} distinct webhook-ids, {dups} came more than once{}",
            if wait_all { "" } else { " (BBENCH_WAIT_ALL=0: not waiting for the rest)" }
        );
        assert_eq!(dups, 0, "a backlog delivery arrived twice");
        if wait_all {
            assert_eq!(distinct, n, "every backlog delivery arrived");
        }
        sampling.store(false, Ordering::Relaxed);
        println!(
            "end: RSS {:.1} MiB (max while waiting {:.1} MiB); load average {}",
            mib(service.rss()),
            mib(sampler.max_of("rest")),
            load_average()
        );
    });
}
