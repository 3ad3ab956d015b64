//! Bench: upstream push (bitHuman's own webhooks) against polling alone.
//!
//! `cargo bench --bench push` (about 13 minutes of wall time: the phases run side by side, and
//! the one with dropped pushes waits for the slowed safety-net polls of ten minutes)
//!
//! Each phase runs the real service (default poller cadence, read budget 120/min as on the Free
//! plan, system clock), the simulator (its read bucket 120/min too) and a local callback
//! receiver, all on loopback, in this process, with their own data directories. 60 jobs are
//! created at once through `POST /v1/jobs`, their agents taking 40 to 120 s (evenly spread).
//! Measured per job: from the agent becoming ready upstream (the simulator's `updated_at` of
//! the ready status) to the signed callback arriving at the receiver; and the status reads the
//! simulator served, per job.
//!
//! Phases: `all` (every push sent), `drop10` (10 % of pushes never sent), `none` (no webhooks:
//! polling alone, as before). The generate budget is raised (6,000/min on both sides) so that
//! submission does not spread the jobs out: the read budget is what is measured.
//!
//! Environment: `PBENCH_PHASES` ("all,drop10,none"), `PBENCH_JOBS` (60),
//! `PBENCH_SEQUENTIAL` (unset: phases run side by side).

mod common;

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use agenthook::app::Application;
use agenthook::clock;
use agenthook::config::{ApiKey, Secret, Settings};
use agenthook::sim::{self, webhooks, SimConfig};
use chrono::{DateTime, Utc};
use common::*;
use serde_json::{json, Value};

const KEY: &str = "bench-key-0123456789abcdef";
const SEED: u64 = 7;

#[derive(Clone, Copy, Debug)]
struct Phase {
    name: &'static str,
    /// `None`: no webhooks at all; else the share never sent.
    drop: Option<f64>,
}

const PHASES: [Phase; 3] = [
    Phase {
        name: "all",
        drop: Some(0.0),
    },
    Phase {
        name: "drop10",
        drop: Some(0.1),
    },
    Phase {
        name: "none",
        drop: None,
    },
];

struct Outcome {
    phase: Phase,
    jobs: usize,
    /// Ready upstream → callback received, milliseconds, every job.
    latency_ms: Vec<u64>,
    /// The same for jobs whose push was never sent (drop phase).
    dropped_ms: Vec<u64>,
    reads: usize,
    rate_limited: usize,
    pushes: webhooks::WebhookStats,
    missing: usize,
    wall: Duration,
}

fn main() {
    let jobs = env_usize("PBENCH_JOBS", 60);
    let wanted = std::env::var("PBENCH_PHASES").unwrap_or_else(|_| "all,drop10,none".into());
    let phases: Vec<Phase> = PHASES
        .into_iter()
        .filter(|p| wanted.split(',').any(|w| w.trim() == p.name))
        .collect();
    let sequential = std::env::var("PBENCH_SEQUENTIAL").is_ok();
    println!("agenthook bench: upstream push ({jobs} jobs of 40-120 s, read budget 120/min)");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let outcomes: Vec<Outcome> = rt.block_on(async {
        if sequential {
            let mut all = Vec::new();
            for phase in phases {
                all.push(run_phase(phase, jobs).await);
            }
            all
        } else {
            futures_util::future::join_all(phases.into_iter().map(|p| run_phase(p, jobs))).await
        }
    });
    report(&outcomes);
}

/// Callback arrival times by job index.
type Arrivals = Arc<Mutex<HashMap<usize, DateTime<Utc>>>>;

fn start_receiver() -> (String, Arrivals, actix_web::dev::ServerHandle) {
    let arrivals: Arrivals = Arc::default();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
    let addr = listener.local_addr().expect("addr");
    let seen = arrivals.clone();
    let server = HttpServer::new(move || {
        let seen = seen.clone();
        App::new().route(
            "/cb/{i}",
            web::post().to(move |i: web::Path<usize>| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().entry(*i).or_insert_with(Utc::now);
                    HttpResponse::Ok().finish()
                }
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .expect("listen")
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    (format!("http://{addr}"), arrivals, handle)
}

fn settings(dir: &std::path::Path, sim: &sim::SimServer) -> Settings {
    let mut s = Settings::load_with_env(None, Vec::<(String, String)>::new()).expect("defaults");
    s.server.bind = "127.0.0.1:0".parse().unwrap();
    s.storage.path = dir.to_path_buf();
    s.upstream.base_url = sim.base_url.parse().unwrap();
    s.upstream.api_secret = Secret::new(sim.state.config().api_secret);
    s.upstream.generate_per_minute = 6000;
    s.upstream.read_per_minute = 120;
    s.delivery.allow_private_networks = true;
    s.auth.keys = vec![ApiKey {
        name: "bench".into(),
        key: Secret::new(KEY),
    }];
    s
}

/// The agent times, 40 to 120 s evenly spread, in a shuffled order.
fn time_to_ready(i: usize, n: usize) -> Duration {
    let slot = (i * 37) % n;
    Duration::from_millis(40_000 + (80_000 * slot as u64) / (n.max(2) as u64 - 1))
}

async fn run_phase(phase: Phase, n: usize) -> Outcome {
    let started = Instant::now();
    let (receiver, arrivals, receiver_handle) = start_receiver();
    let sim = sim::spawn(
        TcpListener::bind("127.0.0.1:0").expect("bind sim"),
        SimConfig {
            generate_per_minute: 6000,
            read_per_minute: 120,
            webhook_drop_ratio: phase.drop.unwrap_or(0.0),
            seed: SEED,
            ..SimConfig::default()
        },
    )
    .expect("simulator");
    let dir = tempfile::Builder::new()
        .prefix("agenthook-bench-push")
        .tempdir()
        .expect("tempdir");
    // With pushes, the service registers its URL at start, as a deployment with
    // `upstream.webhooks.public_url` does (and asks for a heartbeat ping).
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind service");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let mut settings = settings(dir.path(), &sim);
    if phase.drop.is_some() {
        settings.upstream.webhooks.public_url = format!("{base}/v1/upstream/webhooks");
    }
    let app = Application::build_on(settings, clock::system(), listener)
        .await
        .expect("service");
    let stop = app.stop_handle();
    let service = tokio::spawn(app.run());
    let http = reqwest::Client::new();
    let mut agents = Vec::with_capacity(n);
    for i in 0..n {
        let ttr = time_to_ready(i, n);
        // Applies to the next generate; each agent keeps the time it was created with.
        sim.state.update(|c| c.time_to_ready = ttr);
        let job: Value = http
            .post(format!("{base}/v1/jobs"))
            .bearer_auth(KEY)
            .json(&json!({"prompt": format!("bench job {i}"), "callback_url": format!("{receiver}/cb/{i}")}))
            .send()
            .await
            .expect("create job")
            .json()
            .await
            .expect("job body");
        assert_eq!(job["status"], "processing", "{job}");
        agents.push(job["agent_id"].as_str().expect("agent id").to_owned());
    }
    eprintln!("[{}] {n} jobs created", phase.name);
    let deadline = Instant::now() + Duration::from_secs(20 * 60);
    while arrivals.lock().unwrap().len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let arrived = arrivals.lock().unwrap().clone();
    let mut latency_ms = Vec::new();
    let mut dropped_ms = Vec::new();
    for (i, agent) in agents.iter().enumerate() {
        let Some(received) = arrived.get(&i) else {
            continue;
        };
        let status = sim.state.agent_status(agent).expect("agent");
        let ready_at: DateTime<Utc> = status["updated_at"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .expect("updated_at")
            .into();
        let ms = (*received - ready_at).num_milliseconds().max(0) as u64;
        latency_ms.push(ms);
        if phase
            .drop
            .is_some_and(|r| webhooks::dropped(SEED, agent, r))
        {
            dropped_ms.push(ms);
        }
    }
    let stats = sim.state.stats();
    let outcome = Outcome {
        phase,
        jobs: n,
        missing: n - latency_ms.len(),
        latency_ms,
        dropped_ms,
        reads: sim.state.status_calls(),
        rate_limited: stats.buckets["read"].rate_limited,
        pushes: sim.state.webhook_stats(),
        wall: started.elapsed(),
    };
    eprintln!(
        "[{}] done in {:.0} s",
        phase.name,
        outcome.wall.as_secs_f64()
    );
    stop.stop().await;
    let _ = service.await;
    receiver_handle.stop(false).await;
    sim.stop().await;
    outcome
}

fn secs(ms: u64) -> String {
    format!("{:.2} s", ms as f64 / 1000.0)
}

fn report(outcomes: &[Outcome]) {
    println!();
    println!("| phase | callbacks | ready → callback p50 | p90 | max | status reads per job | 429s | pushes queued / dropped / delivered / attempts | wall |");
    println!("|---|---:|---:|---:|---:|---:|---:|---|---:|");
    for o in outcomes {
        let mut ms: Vec<u64> = o.latency_ms.iter().map(|m| m * 1000).collect();
        let l = Latency::of(&mut ms);
        println!(
            "| {} | {}/{} | {} | {} | {} | {:.2} | {} | {} / {} / {} / {} | {:.0} s |",
            o.phase.name,
            o.jobs - o.missing,
            o.jobs,
            secs(l.p50_us / 1000),
            secs(l.p90_us / 1000),
            secs(l.max_us / 1000),
            o.reads as f64 / o.jobs as f64,
            o.rate_limited,
            o.pushes.queued,
            o.pushes.dropped,
            o.pushes.delivered,
            o.pushes.attempts,
            o.wall.as_secs_f64()
        );
    }
    for o in outcomes.iter().filter(|o| !o.pushes.answer_us.is_empty()) {
        let mut us = o.pushes.answer_us.clone();
        let l = Latency::of(&mut us);
        println!(
            "  {}: agenthook answered the simulator's pushes in p50 {}, p99 {}, max {} ({} answers, pings included)",
            o.phase.name,
            ms(l.p50_us),
            ms(l.p99_us),
            ms(l.max_us),
            us.len()
        );
    }
    for o in outcomes.iter().filter(|o| !o.dropped_ms.is_empty()) {
        let mut ms: Vec<u64> = o.dropped_ms.iter().map(|m| m * 1000).collect();
        let l = Latency::of(&mut ms);
        println!(
            "  {}: {} jobs whose push was never sent, caught by polling: p50 {}, max {}",
            o.phase.name,
            o.dropped_ms.len(),
            secs(l.p50_us / 1000),
            secs(l.max_us / 1000)
        );
    }
    println!();
    for o in outcomes.iter().filter(|o| o.phase.drop.is_some()) {
        let mut ms: Vec<u64> = o.latency_ms.iter().map(|m| m * 1000).collect();
        let l = Latency::of(&mut ms);
        let reads = o.reads as f64 / o.jobs as f64;
        let pushed: Vec<u64> = {
            let mut rest = o.latency_ms.clone();
            for d in &o.dropped_ms {
                if let Some(i) = rest.iter().position(|m| m == d) {
                    rest.remove(i);
                }
            }
            rest
        };
        let mut pushed_us: Vec<u64> = pushed.iter().map(|m| m * 1000).collect();
        let lp = Latency::of(&mut pushed_us);
        println!(
            "{}: p90 < 2 s (pushed jobs: {}): {}; every callback arrived: {}",
            o.phase.name,
            secs(lp.p90_us / 1000),
            verdict(lp.p90_us < 2_000_000 && o.missing == 0),
            verdict(o.missing == 0)
        );
        if o.phase.drop == Some(0.0) {
            println!(
                "{}: reads per job <= 2 ({reads:.2}): {}; overall p90 {}",
                o.phase.name,
                verdict(reads <= 2.0),
                secs(l.p90_us / 1000)
            );
        }
    }
}
