//! Bench: the job acceptance path, `POST /v1/jobs`, against the same load sent straight to the
//! simulator's `POST /v1/agent/generate`.
//!
//! `cargo bench --bench accept`
//!
//! One process, three kinds of threads: the servers (agenthook's and the simulator's actix
//! workers, each server on its own threads, as in production), a small tokio runtime hosting
//! their accept loops and agenthook's poller, and the load generator on its own two-thread
//! tokio runtime. The figure that matters is a ratio against the direct run measured in the
//! same process, seconds apart, on the same (shared, two-core) machine; the direct run is done
//! before and after the agenthook run and both are reported. A last section drives the parts
//! of the acceptance path without the HTTP server in front, to show where the time goes.
//!
//! Afterwards every job that was answered 202 is looked up in a copy of the data directory
//! taken while the service still ran (what a crash would leave), and again after an orderly
//! stop.
//!
//! Environment: `BENCH_SECS` (measured seconds, default 10), `BENCH_WARMUP_SECS` (2),
//! `BENCH_CONCURRENCY` (64), `BENCH_LOG=off` to run agenthook without its per-request log line
//! (by default it is formatted as JSON and discarded, as a production log would cost),
//! `BENCH_ONLY=agenthook` to skip the direct runs (for profiling), `BENCH_PHASES=off` to skip
//! the parts, `BENCH_PHASE_SECS` (3) for each part.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use agenthook::app::Application;
use agenthook::clock;
use agenthook::config::Settings;
use agenthook::domain::JobId;
use agenthook::sim::{SimConfig, SimServer};
use common::fixtures::{spawn_sim, SettingsBuilder};
use common::*;

const API_KEY: &str = "bench-tenant-key-0123456789";
const BODY: &str = r#"{"prompt":"A friendly tutor who explains benchmarks, briefly."}"#;
const P99_TARGET_US: u64 = 10_000;
const RATIO_TARGET: f64 = 0.5;

/// Where the load goes and how a success looks.
#[derive(Clone)]
struct Target {
    name: &'static str,
    url: String,
    headers: Vec<(&'static str, String)>,
    expect: u16,
    /// Send a fresh `Idempotency-Key` per request, as agenthook does upstream.
    idempotency: bool,
    /// Keep the `id` of every success (agenthook's job ids).
    collect_ids: bool,
}

#[derive(Default)]
struct Run {
    name: &'static str,
    window: Duration,
    /// Successes completed inside the measured window.
    ok_in_window: u64,
    /// Everything that was not the expected status, warm-up included.
    errors: u64,
    error_kinds: BTreeMap<String, u64>,
    latencies_us: Vec<u64>,
    /// Ids of every success, warm-up included.
    ids: Vec<String>,
    cpu: Vec<(String, f64)>,
    process_cpu_pct: f64,
    machine_busy_pct: f64,
}

impl Run {
    fn rate(&self) -> f64 {
        self.ok_in_window as f64 / self.window.as_secs_f64()
    }
}

#[derive(Default)]
struct TaskResult {
    ok_in_window: u64,
    errors: u64,
    error_kinds: BTreeMap<String, u64>,
    latencies_us: Vec<u64>,
    ids: Vec<String>,
}

fn main() {
    let concurrency = env_usize("BENCH_CONCURRENCY", 64);
    let warmup = env_secs("BENCH_WARMUP_SECS", 2);
    let measure = env_secs("BENCH_SECS", 10);
    let log = std::env::var("BENCH_LOG").map_or(true, |v| v != "off");
    let with_direct = std::env::var("BENCH_ONLY").map_or(true, |v| v != "agenthook");
    if log {
        // What production pays per request: one JSON log line, formatted, then discarded here.
        let _ = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_writer(std::io::sink)
            .try_init();
    }

    println!("agenthook bench: job acceptance (POST /v1/jobs)");
    println!(
        "  concurrency {concurrency}, warm-up {}s, measured {}s per run, agenthook log lines {}",
        warmup.as_secs(),
        measure.as_secs(),
        if log { "on (JSON, discarded)" } else { "off" }
    );
    println!(
        "  machine: {} CPUs available to this process",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let mut groups = ThreadGroups::new("bench main thread");
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("server-rt")
        .enable_all()
        .build()
        .expect("server runtime");
    groups.claim_new("server runtime (accept loops, poller)");
    let load_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("loadgen")
        .enable_all()
        .build()
        .expect("load runtime");

    let sim_config = SimConfig {
        generate_per_minute: 10_000_000,
        read_per_minute: 10_000_000,
        time_to_ready: Duration::from_secs(24 * 3600),
        ..SimConfig::default()
    };
    let sim = server_rt.block_on(async { spawn_sim(sim_config) });
    std::thread::sleep(Duration::from_millis(300));
    groups.claim_new("simulator (actix workers)");

    let direct = Target {
        name: "direct to simulator",
        url: format!("{}/v1/agent/generate", sim.base_url),
        headers: vec![("api-secret", sim.state.config().api_secret)],
        expect: 200,
        idempotency: true,
        collect_ids: false,
    };

    // 1. Direct, before.
    let direct_before = with_direct.then(|| {
        measure_run(
            &load_rt,
            &groups,
            &direct,
            concurrency,
            warmup,
            measure,
            "direct #1",
        )
    });
    sim.state.reset();

    // 2. agenthook.
    let data = tempfile::Builder::new()
        .prefix("agenthook-bench-accept")
        .tempdir()
        .expect("tempdir");
    let settings = bench_settings(data.path(), &sim);
    let app = server_rt
        .block_on(Application::build(settings.clone(), clock::system()))
        .expect("start agenthook");
    let base = format!("http://{}", app.addr());
    let stop = app.stop_handle();
    let served = server_rt.spawn(async move { app.run().await });
    // actix starts its workers when the server is first polled.
    std::thread::sleep(Duration::from_millis(300));
    groups.claim_new("agenthook (actix workers)");
    let hook = Target {
        name: "agenthook POST /v1/jobs",
        url: format!("{base}/v1/jobs"),
        headers: vec![("authorization", format!("Bearer {API_KEY}"))],
        expect: 202,
        idempotency: false,
        collect_ids: true,
    };
    let agenthook = measure_run(
        &load_rt,
        &groups,
        &hook,
        concurrency,
        warmup,
        measure,
        "agenthook",
    );
    let upstream_generates = sim.state.generate_calls();

    // Durability, as a crash would test it: copy the files while the service still runs, right
    // after the last answer, and look for every accepted job in the copy.
    let copy = tempfile::Builder::new()
        .prefix("agenthook-bench-crashcopy")
        .tempdir()
        .expect("tempdir");
    copy_dir(data.path(), copy.path()).expect("copy the data directory");
    let in_copy = count_present(
        &common::open_store_retrying(copy.path(), 8 << 20),
        &agenthook.ids,
    );

    // Durability after an orderly stop: reopen the store and look for every accepted job.
    server_rt.block_on(async {
        stop.stop().await;
        match tokio::time::timeout(Duration::from_secs(30), served).await {
            Ok(Ok(Ok(()))) => {}
            other => panic!("agenthook did not stop cleanly: {other:?}"),
        }
    });
    let reopened = common::open_store_retrying(data.path(), 8 << 20);
    let after_stop = count_present(&reopened, &agenthook.ids);
    drop(reopened);

    // 3. Direct, after.
    sim.state.reset();
    let direct_after = with_direct.then(|| {
        measure_run(
            &load_rt,
            &groups,
            &direct,
            concurrency,
            warmup,
            measure,
            "direct #2",
        )
    });
    let runs: Vec<&Run> = [
        direct_before.as_ref(),
        Some(&agenthook),
        direct_after.as_ref(),
    ]
    .into_iter()
    .flatten()
    .collect();

    // 4. Where the time goes: the parts of the acceptance path without the HTTP server in
    // front, driven the same way (64 tasks on a two-thread runtime, as actix's two workers).
    let phases = if std::env::var("BENCH_PHASES").map_or(true, |v| v != "off") {
        let phase_secs = env_secs("BENCH_PHASE_SECS", 3);
        sim.state.reset();
        run_phases(&load_rt, &sim, concurrency, phase_secs)
    } else {
        Vec::new()
    };

    // Report.
    println!();
    println!("| run | requests/s | p50 | p90 | p99 | max | errors | process CPU | machine busy |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for run in &runs {
        let mut lat = run.latencies_us.clone();
        let l = Latency::of(&mut lat);
        println!(
            "| {} | {:.0} | {} | {} | {} | {} | {} | {:.0} % | {:.0} % |",
            run.name,
            run.rate(),
            ms(l.p50_us),
            ms(l.p90_us),
            ms(l.p99_us),
            ms(l.max_us),
            run.errors,
            run.process_cpu_pct,
            run.machine_busy_pct,
        );
    }
    println!("(process CPU: % of one core used by this process; machine busy: % of all cores)");
    for run in &runs {
        if !run.error_kinds.is_empty() {
            println!("errors in {}: {:?}", run.name, run.error_kinds);
        }
    }

    println!();
    println!("CPU by thread group during each measured window (% of one core):");
    for run in &runs {
        let per_request = |pct: f64| pct / 100.0 * 1e6 / run.rate().max(1.0);
        println!("  {}:", run.name);
        for (group, pct) in &run.cpu {
            println!(
                "    {group:<45} {pct:6.1} %   ({:.0} µs CPU per request)",
                per_request(*pct)
            );
        }
    }

    let mut lat = agenthook.latencies_us.clone();
    let hook_lat = Latency::of(&mut lat);
    println!();
    if let (Some(before), Some(after)) = (&direct_before, &direct_after) {
        let direct_rate = (before.rate() + after.rate()) / 2.0;
        let ratio = agenthook.rate() / direct_rate;
        println!(
            "ratio agenthook / direct = {:.0} / {:.0} = {ratio:.3}   (against #1 alone {:.3}, #2 alone {:.3})",
            agenthook.rate(),
            direct_rate,
            agenthook.rate() / before.rate(),
            agenthook.rate() / after.rate(),
        );
        println!(
            "target ratio >= {RATIO_TARGET}: {}",
            verdict(ratio >= RATIO_TARGET)
        );
    }
    println!(
        "target p99 < {} at concurrency {concurrency}: {} (p99 {})",
        ms(P99_TARGET_US),
        verdict(hook_lat.p99_us < P99_TARGET_US),
        ms(hook_lat.p99_us)
    );
    println!(
        "upstream generate calls made by agenthook: {upstream_generates} for {} accepted jobs",
        agenthook.ids.len()
    );
    let n = agenthook.ids.len();
    println!(
        "durability: {in_copy}/{n} accepted jobs in a copy of the files taken while running (crash view); \
         {after_stop}/{n} after an orderly stop and reopen: {}",
        verdict(in_copy == n && after_stop == n && n > 0)
    );
    if !phases.is_empty() {
        println!();
        println!(
            "Parts of the path, without agenthook's HTTP server, {concurrency} tasks on two threads:"
        );
        println!("| part | per second | p50 | p99 |");
        println!("|---|---:|---:|---:|");
        for (name, rate, lat) in &phases {
            println!(
                "| {name} | {rate:.0} | {} | {} |",
                ms(lat.p50_us),
                ms(lat.p99_us)
            );
        }
    }
    // The simulator stops when dropped; keep it to the end.
    drop(sim);
}

#[derive(Clone, Copy, PartialEq)]
enum Phase {
    Store,
    StoreDurable,
    Upstream,
    Pipeline,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Store => "store: save_job of a held job, no flush",
            Phase::StoreDurable => "store: accept_job (one durable write)",
            Phase::Upstream => "upstream: generate through agenthook's client",
            Phase::Pipeline => "admit() without HTTP: begin_job + submit + accept_job",
        }
    }
}

fn run_phases(
    rt: &tokio::runtime::Runtime,
    sim: &SimServer,
    concurrency: usize,
    secs: Duration,
) -> Vec<(&'static str, f64, Latency)> {
    let dir = tempfile::Builder::new()
        .prefix("agenthook-bench-phases")
        .tempdir()
        .expect("tempdir");
    let settings = bench_settings(dir.path(), sim);
    let services = agenthook::app::Services::build(settings, clock::system()).expect("services");
    let mut out = Vec::new();
    for phase in [
        Phase::Store,
        Phase::StoreDurable,
        Phase::Upstream,
        Phase::Pipeline,
    ] {
        eprintln!("running part: {} ...", phase.name());
        let end = Instant::now() + secs;
        let tasks: Vec<_> = (0..concurrency)
            .map(|task| {
                let services = services.clone();
                rt.spawn(async move {
                    let lifecycle = &services.lifecycle;
                    let store = &services.store;
                    let tenant = agenthook::domain::Tenant::parse("bench").unwrap();
                    let body: serde_json::Map<String, serde_json::Value> =
                        serde_json::from_str(BODY).unwrap();
                    let mut lat = Vec::new();
                    let mut n = 0u64;
                    while Instant::now() < end {
                        let t0 = Instant::now();
                        let now = lifecycle.clock.now();
                        let mut job = agenthook::domain::Job::new(
                            tenant.clone(),
                            body.clone(),
                            None,
                            serde_json::Map::new(),
                            now,
                        );
                        job.next_poll_at =
                            Some(agenthook::clock::after(now, Duration::from_secs(60)));
                        match phase {
                            Phase::Upstream => {
                                lifecycle
                                    .upstream
                                    .generate(&body, &format!("phase-{task}-{n}"))
                                    .await
                                    .expect("generate");
                            }
                            Phase::Store => {
                                // What a held job costs: stored as pending, then saved.
                                store.hold_job(&job, None).await.expect("hold");
                                job.accepted(
                                    format!("agent-{task}-{n}"),
                                    agenthook::clock::after(now, Duration::from_secs(3600)),
                                    now,
                                );
                                store.save_job(&job).await.expect("save");
                            }
                            _ => {
                                let _hold = store
                                    .begin_job(&job, None, Duration::from_secs(86_400))
                                    .await
                                    .expect("begin");
                                if phase == Phase::Pipeline {
                                    lifecycle.submit(&mut job).await;
                                } else {
                                    job.accepted(
                                        format!("agent-{task}-{n}"),
                                        agenthook::clock::after(now, Duration::from_secs(3600)),
                                        now,
                                    );
                                }
                                store.accept_job(job, false, None).await.expect("accept");
                            }
                        }
                        n += 1;
                        lat.push(t0.elapsed().as_micros() as u64);
                    }
                    lat
                })
            })
            .collect();
        let started = Instant::now();
        let mut lat: Vec<u64> = Vec::new();
        for task in tasks {
            lat.extend(rt.block_on(task).expect("phase task"));
        }
        let wall = started.elapsed().max(secs);
        let rate = lat.len() as f64 / wall.as_secs_f64();
        out.push((phase.name(), rate, Latency::of(&mut lat)));
    }
    out
}

fn bench_settings(dir: &Path, sim: &SimServer) -> Settings {
    SettingsBuilder::new(dir)
        .upstream(
            &sim.base_url,
            &sim.state.config().api_secret,
            Duration::from_secs(10),
        )
        .upstream_budgets(10_000_000, 10_000_000)
        .keys(&[("bench", API_KEY)])
        .with(|s| {
            s.server.shutdown_grace = Duration::from_secs(5);
            s.poller.first_poll_after = Duration::from_secs(3600);
            // The bench is one tenant at full speed: the per-key limit would measure itself.
            s.auth.requests_per_minute = 0;
        })
        .build()
}

#[allow(clippy::too_many_arguments)]
fn measure_run(
    rt: &tokio::runtime::Runtime,
    groups: &ThreadGroups,
    target: &Target,
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
    label: &'static str,
) -> Run {
    eprintln!("running {label}: {} ...", target.name);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let start = Instant::now();
    let measure_start = start + warmup;
    let end = measure_start + measure;

    // Watch CPU over exactly the measured window, from a plain thread.
    let monitor = {
        std::thread::Builder::new()
            .name("monitor".into())
            .spawn(move || {
                sleep_until(measure_start);
                let cpu0 = process_cpu();
                let (busy0, total0) = machine_jiffies();
                let t0 = Instant::now();
                sleep_until(end);
                let wall = t0.elapsed();
                let cpu1 = process_cpu();
                let (busy1, total1) = machine_jiffies();
                let process = 100.0 * (cpu1 - cpu0).as_secs_f64() / wall.as_secs_f64();
                let machine = 100.0 * (busy1 - busy0) as f64 / (total1 - total0).max(1) as f64;
                (process, machine)
            })
            .expect("monitor thread")
    };
    let handles: Vec<_> = (0..concurrency)
        .map(|task| {
            let client = client.clone();
            let target = target.clone();
            rt.spawn(load_task(client, target, task, measure_start, end))
        })
        .collect();
    // Thread CPU snapshots need `groups`, which is not 'static: take them on this thread.
    sleep_until(measure_start);
    let snap0 = groups.snapshot();
    let t0 = Instant::now();
    sleep_until(end);
    let snap1 = groups.snapshot();
    let wall = t0.elapsed();
    let (process_cpu_pct, machine_busy_pct) = monitor.join().expect("monitor");

    let mut run = Run {
        name: label,
        window: measure,
        cpu: cpu_shares(&snap0, &snap1, wall),
        process_cpu_pct,
        machine_busy_pct,
        ..Run::default()
    };
    for handle in handles {
        let r = rt.block_on(handle).expect("load task");
        run.ok_in_window += r.ok_in_window;
        run.errors += r.errors;
        for (k, v) in r.error_kinds {
            *run.error_kinds.entry(k).or_default() += v;
        }
        run.latencies_us.extend(r.latencies_us);
        run.ids.extend(r.ids);
    }
    run
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

async fn load_task(
    client: reqwest::Client,
    target: Target,
    task: usize,
    measure_start: Instant,
    end: Instant,
) -> TaskResult {
    let mut out = TaskResult::default();
    let mut n = 0u64;
    while Instant::now() < end {
        let mut request = client
            .post(&target.url)
            .header("content-type", "application/json")
            .body(BODY);
        for (name, value) in &target.headers {
            request = request.header(*name, value);
        }
        if target.idempotency {
            request = request.header("idempotency-key", format!("bench-{task}-{n}"));
        }
        n += 1;
        let t0 = Instant::now();
        let result = async {
            let response = request.send().await?;
            let status = response.status().as_u16();
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, body))
        }
        .await;
        let t1 = Instant::now();
        let in_window = t1 >= measure_start && t1 <= end;
        match result {
            Ok((status, body)) if status == target.expect => {
                if in_window {
                    out.ok_in_window += 1;
                    out.latencies_us.push((t1 - t0).as_micros() as u64);
                }
                if target.collect_ids {
                    match serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["id"].as_str().map(str::to_owned))
                    {
                        Some(id) => out.ids.push(id),
                        None => {
                            out.errors += 1;
                            *out.error_kinds.entry("no id in body".into()).or_default() += 1;
                        }
                    }
                }
            }
            Ok((status, _)) => {
                out.errors += 1;
                *out.error_kinds.entry(format!("HTTP {status}")).or_default() += 1;
            }
            Err(e) => {
                out.errors += 1;
                let kind = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect"
                } else {
                    "transport"
                };
                *out.error_kinds.entry(kind.into()).or_default() += 1;
            }
        }
    }
    out
}

fn count_present(store: &agenthook::store::Store, ids: &[String]) -> usize {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut present = 0;
        for id in ids.iter().filter_map(|id| JobId::parse(id)) {
            present += usize::from(matches!(store.job_by_id(&id).await, Ok(Some(_))));
        }
        present
    })
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
