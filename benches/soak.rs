//! Soak: a steady job load through the API for a long while with a short retention, to show
//! that the data directory and the service's memory level off instead of growing for ever.
//!
//! The real binary runs as a child process (its RSS is its own), against the simulator and a
//! callback receiver in this process, all on 127.0.0.1. Every job carries 1 KiB of metadata
//! and a callback. Every `SOAK_SAMPLE` it prints the data directory's size (bytes allocated on
//! disk), the child's RSS, the stored totals from `/metrics` and the callbacks received.
//!
//! `cargo bench --bench soak`; `SOAK_MINUTES` (default 12), `SOAK_RATE` jobs/s (default 40),
//! `SOAK_RETENTION` (default "1m"), `SOAK_SAMPLE` seconds (default 30).

mod common;

use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use agenthook::sim::SimConfig;
use common::fixtures::{free_port, spawn_sim, Process};
use common::{child_rss, mib};
use serde_json::json;

/// Seconds, accepted, callbacks, stored jobs, disk MiB, RSS MiB, sled's size MiB, jobs/s.
type Row = (u64, u64, u64, f64, f64, f64, f64, f64);

const KEY: &str = "soak-key-0123456789abcdef";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Bytes allocated on disk under `dir` (what `du` counts).
fn disk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            total += if meta.is_dir() {
                disk_bytes(&entry.path())
            } else {
                meta.blocks() * 512
            };
        }
    }
    total
}

/// A gauge's value from Prometheus text, by its full series name.
fn gauge(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[actix_web::main]
async fn main() {
    let minutes: u64 = env_or("SOAK_MINUTES", 12);
    let rate: u64 = env_or("SOAK_RATE", 40);
    let retention: String = env_or("SOAK_RETENTION", "1m".to_owned());
    let sample = Duration::from_secs(env_or("SOAK_SAMPLE", 30));

    let sim = spawn_sim(SimConfig {
        time_to_ready: Duration::from_secs(2),
        generate_per_minute: 100_000,
        read_per_minute: 1_000_000,
        ..SimConfig::default()
    });
    let received = Arc::new(AtomicU64::new(0));
    let receiver = {
        let received = received.clone();
        let server = HttpServer::new(move || {
            let received = received.clone();
            App::new().default_service(web::to(move || {
                received.fetch_add(1, Ordering::Relaxed);
                async { HttpResponse::Ok().finish() }
            }))
        })
        .workers(1)
        .bind("127.0.0.1:0")
        .expect("bind the receiver");
        let addr = server.addrs()[0];
        actix_web::rt::spawn(server.run());
        format!("http://{addr}/cb")
    };

    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let port = free_port();
    let config = dir.path().join("soak.toml");
    let mut file = std::fs::File::create(&config).expect("config file");
    write!(
        file,
        r#"
[server]
bind = "127.0.0.1:{port}"
[storage]
path = "{data}"
retention = "{retention}"
[upstream]
base_url = "{upstream}"
api_secret = "{secret}"
generate_per_minute = 100000
read_per_minute = 1000000
[poller]
first_poll_after = "2s"
interval = "2s"
[delivery]
allow_private_networks = true
[auth]
requests_per_minute = 0
[[auth.keys]]
name = "soak"
key = "{KEY}"
[log]
level = "warn"
"#,
        data = data.display(),
        upstream = sim.base_url,
        secret = sim.state.config().api_secret,
    )
    .expect("write config");
    drop(file);
    let base = format!("http://127.0.0.1:{port}");
    let service = Process::start_ready(
        &["serve", "--config", config.to_str().expect("utf-8 path")],
        |_| {},
        &format!("{base}/readyz"),
    )
    .await;
    let pid = service.id();

    println!(
        "soak: {rate} jobs/s for {minutes} min, 1 KiB metadata and a callback each, \
         storage.retention = {retention}"
    );
    println!(
        "{:>6} {:>9} {:>10} {:>9} {:>9} {:>9} {:>11} {:>10}",
        "t (s)", "accepted", "callbacks", "stored", "disk MiB", "RSS MiB", "sled MiB", "jobs/s"
    );
    let http = reqwest::Client::new();
    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let padding = "x".repeat(1000);
    let started = Instant::now();
    let end = started + Duration::from_secs(minutes * 60);
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_sample = started + sample;
    let mut last_accepted = 0;
    let mut rows: Vec<Row> = Vec::new();
    while Instant::now() < end {
        tick.tick().await;
        let (client, ok_count, failed_count) = (http.clone(), accepted.clone(), refused.clone());
        let body = json!({
            "prompt": "You are a friendly museum guide.",
            "callback_url": receiver,
            "metadata": {"padding": padding},
        });
        let url = format!("{base}/v1/jobs");
        tokio::spawn(async move {
            let ok = client
                .post(url)
                .bearer_auth(KEY)
                .json(&body)
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ok { ok_count } else { failed_count }.fetch_add(1, Ordering::Relaxed);
        });
        if Instant::now() >= next_sample {
            next_sample += sample;
            let metrics = match http.get(format!("{base}/metrics")).send().await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            let stored =
                gauge(&metrics, "agenthook_stored_records{kind=\"jobs\"}").unwrap_or(f64::NAN);
            let sled = gauge(&metrics, "agenthook_storage_size_bytes").unwrap_or(f64::NAN);
            let now_accepted = accepted.load(Ordering::Relaxed);
            let row = (
                started.elapsed().as_secs(),
                now_accepted,
                received.load(Ordering::Relaxed),
                stored,
                mib(disk_bytes(&data)),
                mib(child_rss(pid)),
                sled / (1024.0 * 1024.0),
                (now_accepted - last_accepted) as f64 / sample.as_secs_f64(),
            );
            last_accepted = now_accepted;
            println!(
                "{:>6} {:>9} {:>10} {:>9} {:>9.1} {:>9.1} {:>11.1} {:>10.1}",
                row.0, row.1, row.2, row.3, row.4, row.5, row.6, row.7
            );
            rows.push(row);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let failed = refused.load(Ordering::Relaxed);
    println!(
        "done: {} accepted, {failed} refused or failed, {} callbacks received",
        accepted.load(Ordering::Relaxed),
        received.load(Ordering::Relaxed)
    );
    // Levelling off: the second half of the run against the first half's peak.
    let half = rows.len() / 2;
    if half > 0 {
        let peak = |f: fn(&Row) -> f64, rows: &[Row]| rows.iter().map(f).fold(0.0, f64::max);
        println!(
            "disk MiB: first-half max {:.1}, second-half max {:.1}; RSS MiB: first-half max {:.1}, second-half max {:.1}",
            peak(|r| r.4, &rows[..half]),
            peak(|r| r.4, &rows[half..]),
            peak(|r| r.5, &rows[..half]),
            peak(|r| r.5, &rows[half..]),
        );
    }
    drop(service);
}
