//! Bench: the status scheduler.
//!
//! `cargo bench --bench scheduler`
//!
//! (a) 100,000 pending jobs (status `processing`, each with an agent id, due one every 36 ms
//!     over an hour that starts ten minutes from now): resident memory, idle CPU of the real
//!     `Poller::run` loop, the time of one scheduling round with nothing due and with 1,000
//!     due, and start-up (open the store + first `next_due_at`). The jobs are written by a
//!     child process (this binary, re-run with `--populate`), so that the measuring process
//!     starts as a restarted service would: with a full directory and nothing in memory. The
//!     simulator runs in another child (`--serve-sim`): its memory and CPU are not agenthook's.
//! (b) 1,000 pending jobs against the simulator with a read budget of R per minute, on a manual
//!     clock advanced 10 ms per step for ten simulated minutes: the achieved read rate as a
//!     share of R, and the busiest 60 seconds as the simulator counted them (must be <= R).
//!
//! Environment: `BENCH_JOBS` (100000), `BENCH_IDLE_SECS` (10), `BENCH_SIM_MINUTES` (10),
//! `BENCH_BUDGETS` (comma-separated R values, default "120,720,2880").

mod common;

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agenthook::app::Services;
use agenthook::clock::{Clock, ManualClock, Timestamp};
use agenthook::config::Settings;
use agenthook::domain::{Job, Tenant};
use agenthook::lifecycle::Lifecycle;
use agenthook::poller::Poller;
use agenthook::sim::SimConfig;
use agenthook::store::{Store, WorkKind};
use chrono::Utc;
use common::fixtures::{spawn_sim, spawn_sim_with_clock, SettingsBuilder};
use common::*;
use serde_json::{json, Map};

/// Jobs of part (a) fall due one every this many milliseconds, from `base`.
const SPACING_MS: i64 = 36;
/// Part (a)'s first job is due this long after the bench starts: nothing is due before.
const LEAD: Duration = Duration::from_secs(600);
const DEFAULT_CACHE: u64 = 32 * 1024 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--serve-sim") {
        serve_sim();
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--populate") {
        let dir = Path::new(&args[i + 1]);
        let n: usize = args[i + 2].parse().expect("job count");
        let base_ms: i64 = args[i + 3].parse().expect("base millis");
        populate(dir, n, base_ms);
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--measure") {
        let dir = Path::new(&args[i + 1]);
        let base_ms: i64 = args[i + 2].parse().expect("base millis");
        let idle = Duration::from_secs(args[i + 3].parse().expect("idle seconds"));
        let base = chrono::DateTime::from_timestamp_millis(base_ms).expect("base");
        let a = measure(dir, base, idle);
        println!("RESULT {}", serde_json::to_string(&a).expect("json"));
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--startup") {
        let dir = Path::new(&args[i + 1]);
        let t = Instant::now();
        let store = agenthook::store::SledStore::open(dir, DEFAULT_CACHE).expect("open");
        let open = t.elapsed();
        let t = Instant::now();
        store.next_due_at(WorkKind::Poll).expect("next due");
        store.next_due_at(WorkKind::Submit).expect("next due");
        let resume = t.elapsed();
        println!(
            "RESULT {}",
            serde_json::to_string(&(open, resume, rss_bytes())).expect("json")
        );
        return;
    }
    let jobs = env_usize("BENCH_JOBS", 100_000);
    let idle = env_secs("BENCH_IDLE_SECS", 10);
    let minutes = env_usize("BENCH_SIM_MINUTES", 10);
    let budgets: Vec<u32> = std::env::var("BENCH_BUDGETS")
        .unwrap_or_else(|_| "120,720,2880".into())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();

    println!("agenthook bench: status scheduler");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let a = part_a(jobs, idle);
    let b: Vec<BudgetRun> = budgets.iter().map(|&r| part_b(&rt, r, minutes)).collect();
    report(&a, &b, jobs, minutes);
}

// ---------------------------------------------------------------------------------------------
// Clocks

/// Real time plus an offset, or a fixed instant: the idle loop sees time pass as in
/// production, and a round can still be run at the moment exactly 1,000 jobs are due.
#[derive(Debug, Default)]
struct BenchClock {
    fixed: Mutex<Option<Timestamp>>,
}

impl BenchClock {
    fn fix_at(&self, t: Timestamp) {
        *self.fixed.lock().unwrap() = Some(t);
    }
}

impl Clock for BenchClock {
    fn now(&self) -> Timestamp {
        self.fixed.lock().unwrap().unwrap_or_else(Utc::now)
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures

fn tenant() -> Tenant {
    Tenant::parse("bench").expect("tenant")
}

/// A job as it looks after upstream took it and the poller asked about it once.
fn pending_job(agent_id: String, created_at: Timestamp, next_poll_at: Timestamp) -> Job {
    let mut job = Job::new(
        tenant(),
        Map::new(),
        Some("https://hooks.example.com/agenthook/ready".into()),
        json!({"order": "ord_0123456789", "customer": "cus_42"})
            .as_object()
            .cloned()
            .unwrap(),
        created_at,
    );
    job.accepted(agent_id.clone(), next_poll_at, created_at);
    job.polls = 1;
    job.agent = Some(json!({
        "agent_id": agent_id,
        "status": "processing",
        "progress": 0.35,
        "current_step": "generating",
        "created_at": created_at,
    }));
    job
}

fn agent_for(i: usize) -> String {
    format!("bench-agent-{i:06}")
}

/// Child process: write `n` pending jobs, due one every [`SPACING_MS`] from `base_ms`.
fn populate(dir: &Path, n: usize, base_ms: i64) {
    let store: Store = std::sync::Arc::new(
        agenthook::store::SledStore::open(dir, DEFAULT_CACHE).expect("open store"),
    );
    let base = chrono::DateTime::from_timestamp_millis(base_ms).expect("base");
    let created = Utc::now();
    // Many writers at once, so the store's writer puts many jobs in each round.
    let writers = 128;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let tasks: Vec<_> = (0..writers)
            .map(|t| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in (t..n).step_by(writers) {
                        let due = base + chrono::Duration::milliseconds(i as i64 * SPACING_MS);
                        let job = pending_job(agent_for(i), created, due);
                        store.hold_job(&job, None).await.expect("store job");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("writer task");
        }
    });
    rt.block_on(store.close()).expect("flush");
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => dir_size(&e.path()),
                    _ => e.metadata().map(|m| m.len()).unwrap_or(0),
                })
                .sum()
        })
        .unwrap_or(0)
}

fn settings_for(dir: &Path, base_url: &str, secret: &str) -> Settings {
    SettingsBuilder::new(dir)
        .upstream(base_url, secret, Duration::from_secs(10))
        .build()
}

/// The simulator of part (a), generous and slow to finish agents.
fn roomy_sim_config() -> SimConfig {
    SimConfig {
        generate_per_minute: 10_000_000,
        read_per_minute: 10_000_000,
        time_to_ready: Duration::from_secs(1000 * 3600),
        ..SimConfig::default()
    }
}

/// Child process: serve the simulator on its own clock, print its URL, stop when stdin closes.
fn serve_sim() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let sim = rt.block_on(async { spawn_sim(roomy_sim_config()) });
    println!("{}", sim.base_url);
    let _ = std::io::stdout().flush();
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    drop(sim);
}

/// The simulator in a child process, so that its memory and CPU are not counted as ours.
struct SimChild {
    child: std::process::Child,
    base_url: String,
}

impl SimChild {
    fn start() -> SimChild {
        let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
            .arg("--serve-sim")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the simulator child");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("simulator URL");
        SimChild {
            child,
            base_url: line.trim().to_owned(),
        }
    }
}

impl Drop for SimChild {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// Create agents in the simulator with the given ids, through agenthook's upstream client.
async fn create_agents(services: &Services, ids: impl Iterator<Item = String>) {
    let upstream = &services.lifecycle.upstream;
    let mut pending = Vec::new();
    for id in ids {
        pending.push(async move {
            let body = json!({"prompt": "bench agent", "agent_id": id})
                .as_object()
                .cloned()
                .unwrap();
            upstream
                .generate(&body, &format!("create-{id}"))
                .await
                .expect("simulator creates the agent")
        });
        if pending.len() == 32 {
            futures_util::future::join_all(std::mem::take(&mut pending)).await;
        }
    }
    futures_util::future::join_all(pending).await;
}

/// A poller over the same services with another `concurrency` (jobs per round).
fn poller_with_concurrency(services: &Services, concurrency: usize) -> Poller {
    let mut lifecycle: Lifecycle = services.lifecycle.clone();
    lifecycle.settings.concurrency = concurrency;
    Poller::new(lifecycle, services.signals.clone())
}

// ---------------------------------------------------------------------------------------------
// (a)

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct PartA {
    populate: Duration,
    disk_bytes: u64,
    rss_before_open: u64,
    rss_after_open: u64,
    rss_after_idle_rounds: u64,
    rss_after_idle_loop: u64,
    rss_after_agents: u64,
    read_all: usize,
    read_all_time: Duration,
    rss_after_read_all: u64,
    reopen: Duration,
    reopen_resume: Duration,
    reopen_rss: u64,
    rss_after_first_round: u64,
    rss_after_drain_16: u64,
    rss_after_wide_round: u64,
    idle_threads: Vec<(String, f64)>,
    peak_rss: u64,
    open: Duration,
    resume: Duration,
    queued: usize,
    first_idle_step: Duration,
    idle_step_p50_us: u64,
    idle_step_max_us: u64,
    idle_wall: Duration,
    idle_cpu: Duration,
    idle_machine_busy_pct: f64,
    round_1000: Duration,
    round_1000_polled: usize,
    drain_16: Duration,
    drain_16_steps: usize,
    drain_16_polled: usize,
    drain_16_step_max: Duration,
}

/// Run this binary with `args` and parse the `RESULT` line it prints.
fn child<T: serde::de::DeserializeOwned>(args: &[String]) -> T {
    let out = std::process::Command::new(std::env::current_exe().expect("current exe"))
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run a child");
    assert!(out.status.success(), "child {args:?} failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .expect("a RESULT line");
    serde_json::from_str(line).expect("child result")
}

/// Part (a), each step in a fresh process as a real service would be: one writes the jobs,
/// one starts on them and measures, one starts again.
fn part_a(jobs: usize, idle: Duration) -> PartA {
    let dir = tempfile::Builder::new()
        .prefix("agenthook-bench-scheduler")
        .tempdir()
        .expect("tempdir");
    let path = dir.path().display().to_string();
    let base = Utc::now() + chrono::Duration::from_std(LEAD).unwrap();
    eprintln!("(a) writing {jobs} pending jobs in a child process ...");
    let t = Instant::now();
    let status = std::process::Command::new(std::env::current_exe().expect("current exe"))
        .arg("--populate")
        .arg(dir.path())
        .arg(jobs.to_string())
        .arg(base.timestamp_millis().to_string())
        .status()
        .expect("run the populating child");
    assert!(status.success(), "populating failed");
    let populate = t.elapsed();
    let disk_bytes = dir_size(dir.path());

    let mut a: PartA = child(&[
        "--measure".into(),
        path.clone(),
        base.timestamp_millis().to_string(),
        idle.as_secs().to_string(),
    ]);
    a.populate = populate;
    a.disk_bytes = disk_bytes;
    eprintln!("(a) start-up again ...");
    let (open, resume, rss): (Duration, Duration, u64) = child(&["--startup".into(), path]);
    a.reopen = open;
    a.reopen_resume = resume;
    a.reopen_rss = rss;
    a
}

/// The measuring child of part (a).
fn measure(dir: &Path, base: Timestamp, idle: Duration) -> PartA {
    let mut a = PartA::default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let rt = &rt;
    let clock = Arc::new(BenchClock::default());
    let sim = SimChild::start();
    let mut settings = settings_for(dir, &sim.base_url, &roomy_sim_config().api_secret);
    settings.storage.cache_bytes = DEFAULT_CACHE;
    settings.upstream.generate_per_minute = 10_000_000;
    settings.upstream.read_per_minute = 10_000_000;
    // Polled jobs come back in two hours: each round below sees only its own 1,000.
    settings.poller.interval = Duration::from_secs(7200);
    settings.poller.max_interval = Duration::from_secs(7200);
    std::thread::sleep(Duration::from_millis(200));
    let mut groups = ThreadGroups::new("bench main + tokio runtime");
    a.rss_before_open = rss_bytes();

    // Start-up: open, then what the poller needs to resume (when is the next job due).
    eprintln!("(a) start-up ...");
    let t = Instant::now();
    let services = Services::build(settings, clock.clone()).expect("open");
    a.open = t.elapsed();
    groups.claim_new("store (sled) threads started by open");
    let t = Instant::now();
    let next_poll = rt
        .block_on(services.store.next_due_at(WorkKind::Poll))
        .expect("next due");
    let next_submit = rt
        .block_on(services.store.next_due_at(WorkKind::Submit))
        .expect("next due");
    a.resume = t.elapsed();
    assert!(next_poll.is_some() && next_submit.is_none());
    a.rss_after_open = rss_bytes();

    // A scheduling round with nothing due.
    let poller = services.poller();
    let t = Instant::now();
    let report = rt.block_on(poller.step()).expect("step");
    a.first_idle_step = t.elapsed();
    assert_eq!(report.polled + report.submitted, 0);
    a.rss_after_first_round = rss_bytes();
    let mut samples = Vec::new();
    for _ in 0..500 {
        let t = Instant::now();
        rt.block_on(poller.step()).expect("step");
        samples.push(t.elapsed().as_micros() as u64);
    }
    let l = Latency::of(&mut samples);
    a.idle_step_p50_us = l.p50_us;
    a.idle_step_max_us = l.max_us;
    a.rss_after_idle_rounds = rss_bytes();

    // The real loop, nothing due, for `idle`.
    eprintln!("(a) idle loop for {}s ...", idle.as_secs());
    let running = rt.spawn(services.poller().run());
    std::thread::sleep(Duration::from_millis(200));
    let cpu0 = process_cpu();
    let (busy0, total0) = machine_jiffies();
    let snap0 = groups.snapshot();
    let t = Instant::now();
    std::thread::sleep(idle);
    a.idle_wall = t.elapsed();
    a.idle_cpu = process_cpu() - cpu0;
    a.idle_threads = cpu_shares(&snap0, &groups.snapshot(), a.idle_wall);
    let (busy1, total1) = machine_jiffies();
    a.idle_machine_busy_pct = 100.0 * (busy1 - busy0) as f64 / (total1 - total0).max(1) as f64;
    services.signals.begin_shutdown();
    rt.block_on(running).expect("poller stops");
    a.rss_after_idle_loop = rss_bytes();

    // Rounds with 1,000 due, against the simulator (its agents exist and stay processing).
    eprintln!("(a) rounds with 1,000 due ...");
    rt.block_on(create_agents(&services, (0..2000).map(agent_for)));
    a.rss_after_agents = rss_bytes();
    let due_at = |i: i64| base + chrono::Duration::milliseconds(i * SPACING_MS + SPACING_MS / 2);

    // The default concurrency (16 per round): rounds until the first 1,000 are done.
    // (Exactly 1,000 are due now by construction; counting them would walk the whole queue and
    // warm the cache for the memory figures.)
    clock.fix_at(due_at(999));
    let poller = services.poller();
    let t = Instant::now();
    loop {
        let s = Instant::now();
        let report = rt.block_on(poller.step()).expect("step");
        a.drain_16_step_max = a.drain_16_step_max.max(s.elapsed());
        if report.polled == 0 {
            break;
        }
        a.drain_16_steps += 1;
        a.drain_16_polled += report.polled;
    }
    a.drain_16 = t.elapsed();
    a.rss_after_drain_16 = rss_bytes();

    // The worst case for the cache: read every job once, a page of 100 at a time.
    let t = Instant::now();
    let mut after = None;
    loop {
        let page = rt
            .block_on(
                services
                    .store
                    .list_jobs(&tenant(), None, after.as_ref(), 100),
            )
            .expect("list");
        a.read_all += page.jobs.len();
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    a.read_all_time = t.elapsed();
    a.rss_after_read_all = rss_bytes();

    // The next 1,000 in one round: concurrency 1,000 (1,000 upstream connections at once).
    clock.fix_at(due_at(1999));
    let wide = poller_with_concurrency(&services, 1000);
    let t = Instant::now();
    let report = rt.block_on(wide.step()).expect("step");
    a.round_1000 = t.elapsed();
    a.round_1000_polled = report.polled;
    a.rss_after_wide_round = rss_bytes();
    a.queued = rt
        .block_on(services.store.counts())
        .expect("count")
        .jobs_processing as usize;
    a.peak_rss = peak_rss_bytes();
    rt.block_on(services.store.close()).expect("flush");
    drop(sim);
    a
}

// ---------------------------------------------------------------------------------------------
// (b)

struct BudgetRun {
    per_minute: u32,
    steps: usize,
    wall: Duration,
    reads: usize,
    rate_limited: usize,
    max_in_any_60s: usize,
    polled_by_poller: usize,
    still_processing: usize,
}

fn part_b(rt: &tokio::runtime::Runtime, per_minute: u32, minutes: usize) -> BudgetRun {
    eprintln!("(b) R = {per_minute}/min over {minutes} simulated minutes ...");
    let clock = ManualClock::starting_now();
    let sim = rt.block_on(async {
        spawn_sim_with_clock(
            SimConfig {
                read_per_minute: per_minute,
                ..roomy_sim_config()
            },
            clock.clone(),
        )
    });
    let dir = tempfile::Builder::new()
        .prefix("agenthook-bench-budget")
        .tempdir()
        .expect("tempdir");
    let mut settings = settings_for(dir.path(), &sim.base_url, &sim.state.config().api_secret);
    settings.upstream.generate_per_minute = 10_000_000;
    settings.upstream.read_per_minute = per_minute;
    // Every job wants a poll every 5 s: 12,000 reads a minute, more than any budget here.
    settings.poller.interval = Duration::from_secs(5);
    settings.poller.max_interval = Duration::from_secs(5);
    let services = Services::build(settings, clock.clone()).expect("services");
    let n = 1000;
    rt.block_on(create_agents(&services, (0..n).map(agent_for)));
    let now = clock.now();
    rt.block_on(async {
        for i in 0..n {
            let job = pending_job(agent_for(i), now, now);
            services
                .store
                .hold_job(&job, None)
                .await
                .expect("store job");
        }
    });
    let reads_before = sim.state.stats().buckets["read"].requests;
    assert_eq!(reads_before, 0);

    let poller = services.poller();
    let step = Duration::from_millis(10);
    let steps = minutes * 60 * 100;
    let mut polled = 0;
    let t = Instant::now();
    for _ in 0..steps {
        polled += rt.block_on(poller.step()).expect("step").polled;
        clock.advance(step);
    }
    let wall = t.elapsed();
    let stats = sim.state.stats();
    let read = &stats.buckets["read"];
    let still_processing = rt
        .block_on(services.store.counts())
        .expect("count")
        .jobs_processing as usize;
    drop(services);
    rt.block_on(sim.stop());
    BudgetRun {
        per_minute,
        steps,
        wall,
        reads: read.requests,
        rate_limited: read.rate_limited,
        max_in_any_60s: read.max_in_any_60s,
        polled_by_poller: polled,
        still_processing,
    }
}

// ---------------------------------------------------------------------------------------------
// Report

fn report(a: &PartA, b: &[BudgetRun], jobs: usize, minutes: usize) {
    let rss_target = 100.0;
    let idle_pct = 100.0 * a.idle_cpu.as_secs_f64() / a.idle_wall.as_secs_f64();
    let startup = a.open + a.resume;
    println!();
    println!("(a) {jobs} pending jobs, storage.cache_bytes = 32 MiB (default)");
    println!(
        "    written by a child process in {:.1} s; {} queued; {:.1} MiB on disk",
        a.populate.as_secs_f64(),
        a.queued,
        mib(a.disk_bytes)
    );
    println!("| measure | value | target | verdict |");
    println!("|---|---:|---:|---|");
    println!(
        "| RSS before opening the store (tokio runtime, HTTP client) | {:.1} MiB | | |",
        mib(a.rss_before_open)
    );
    println!(
        "| RSS after opening | {:.1} MiB | < {rss_target} MiB | {} |",
        mib(a.rss_after_open),
        verdict(mib(a.rss_after_open) < rss_target)
    );
    println!(
        "| RSS after one round with nothing due | {:.1} MiB | < {rss_target} MiB | {} |",
        mib(a.rss_after_first_round),
        verdict(mib(a.rss_after_first_round) < rss_target)
    );
    println!(
        "| RSS after 501 rounds with nothing due | {:.1} MiB | < {rss_target} MiB | {} |",
        mib(a.rss_after_idle_rounds),
        verdict(mib(a.rss_after_idle_rounds) < rss_target)
    );
    println!(
        "| RSS after the idle loop | {:.1} MiB | < {rss_target} MiB | {} |",
        mib(a.rss_after_idle_loop),
        verdict(mib(a.rss_after_idle_loop) < rss_target)
    );
    println!(
        "| RSS after creating 2,000 agents upstream | {:.1} MiB | < {rss_target} MiB | {} |",
        mib(a.rss_after_agents),
        verdict(mib(a.rss_after_agents) < rss_target)
    );
    println!(
        "| RSS after 1,000 due, rounds of 16 (default) | {:.1} MiB | < {rss_target} MiB | {} |",
        mib(a.rss_after_drain_16),
        verdict(mib(a.rss_after_drain_16) < rss_target)
    );
    println!(
        "| RSS after reading all {} jobs once ({:.1} s) | {:.1} MiB | < {rss_target} MiB | {} |",
        a.read_all,
        a.read_all_time.as_secs_f64(),
        mib(a.rss_after_read_all),
        verdict(mib(a.rss_after_read_all) < rss_target)
    );
    println!(
        "| RSS after a further 1,000 due in one round of 1,000 | {:.1} MiB | < {rss_target} MiB | {} |",
        mib(a.rss_after_wide_round),
        verdict(mib(a.rss_after_wide_round) < rss_target)
    );
    println!("| peak RSS (VmHWM) | {:.1} MiB | | |", mib(a.peak_rss));
    println!(
        "| idle CPU, `Poller::run` for {:.1} s, nothing due (whole process) | {:.3} % of a core ({:.1} ms) | < 1 % | {} |",
        a.idle_wall.as_secs_f64(),
        idle_pct,
        a.idle_cpu.as_secs_f64() * 1e3,
        verdict(idle_pct < 1.0)
    );
    println!(
        "| start-up: open the store | {:.0} ms | | |",
        a.open.as_secs_f64() * 1e3
    );
    println!(
        "| start-up: resume (first `next_due_at`, both kinds) | {:.3} ms | | |",
        a.resume.as_secs_f64() * 1e3
    );
    println!(
        "| start-up total (first open after the jobs were written: replays the log) | {:.0} ms | < 1 s | {} |",
        startup.as_secs_f64() * 1e3,
        verdict(startup < Duration::from_secs(1))
    );
    let restart = a.reopen + a.reopen_resume;
    println!(
        "| start-up again, new process, after the rounds (open {:.0} ms + resume {:.3} ms; RSS then {:.1} MiB) | {:.0} ms | < 1 s | {} |",
        a.reopen.as_secs_f64() * 1e3,
        a.reopen_resume.as_secs_f64() * 1e3,
        mib(a.reopen_rss),
        restart.as_secs_f64() * 1e3,
        verdict(restart < Duration::from_secs(1))
    );
    println!(
        "| `step()` nothing due: first / p50 / max of 500 | {:.3} ms / {:.3} ms / {:.3} ms | | |",
        a.first_idle_step.as_secs_f64() * 1e3,
        a.idle_step_p50_us as f64 / 1e3,
        a.idle_step_max_us as f64 / 1e3
    );
    println!(
        "| `step()` with 1,000 due, concurrency 1,000: one round | {:.0} ms, {} polled | | |",
        a.round_1000.as_secs_f64() * 1e3,
        a.round_1000_polled
    );
    println!(
        "| 1,000 due, default concurrency 16: rounds to drain | {} rounds, {} polled, {:.0} ms ({:.1} ms/round, max {:.1} ms) | | |",
        a.drain_16_steps,
        a.drain_16_polled,
        a.drain_16.as_secs_f64() * 1e3,
        a.drain_16.as_secs_f64() * 1e3 / a.drain_16_steps.max(1) as f64,
        a.drain_16_step_max.as_secs_f64() * 1e3
    );
    println!(
        "(machine busy during the idle loop, all processes: {:.0} % of all cores)",
        a.idle_machine_busy_pct
    );
    println!("idle CPU by thread group (% of one core, groups under 0.05 % left out):");
    for (group, pct) in &a.idle_threads {
        println!("    {group:<45} {pct:6.2} %");
    }
    if a.idle_threads.is_empty() {
        println!("    (every group under 0.05 %)");
    }

    println!();
    println!("(b) 1,000 pending jobs, manual clock, 10 ms per step, {minutes} simulated minutes");
    println!("| R (reads/min) | reads seen by the simulator | share of R x minutes | busiest 60 s (<= R) | 429s | wall time | verdict (>= 95 %, <= R, no 429) |");
    println!("|---:|---:|---:|---:|---:|---:|---|");
    for run in b {
        let allowed = run.per_minute as f64 * minutes as f64;
        let share = 100.0 * run.reads as f64 / allowed;
        let ok =
            share >= 95.0 && run.max_in_any_60s <= run.per_minute as usize && run.rate_limited == 0;
        println!(
            "| {} | {} | {:.1} % | {} | {} | {:.1} s | {} |",
            run.per_minute,
            run.reads,
            share,
            run.max_in_any_60s,
            run.rate_limited,
            run.wall.as_secs_f64(),
            verdict(ok)
        );
        debug_assert!(run.steps > 0);
        if run.polled_by_poller != run.reads || run.still_processing != 1000 {
            println!(
                "    note: the poller counted {} polls; {} jobs still queued",
                run.polled_by_poller, run.still_processing
            );
        }
    }
}
