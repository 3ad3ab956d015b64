//! What an operator relies on: metrics, logs without secrets, a graceful stop that loses nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

/// A receiver that answers every request `200 ok` after `delay`, counting requests.
async fn plain_receiver(delay: Duration) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut seen = Vec::new();
                loop {
                    let Ok(n) = socket.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    // Requests are small: answer once the headers and declared body are in.
                    if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&seen[..end]).to_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if seen.len() >= end + 4 + len {
                            seen.drain(..end + 4 + len);
                            tokio::time::sleep(delay).await;
                            counter.fetch_add(1, Ordering::SeqCst);
                            let _ = socket
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                .await;
                        }
                    }
                }
            });
        }
    });
    (url, count)
}

#[tokio::test]
async fn metrics_report_jobs_upstream_calls_queues_and_latencies() {
    let app = spawn_app().await;
    let (_, job) = app.create_job(KEY_A, json!({"prompt": "measure me"})).await;
    app.wait_for_status(KEY_A, job["id"].as_str().unwrap(), "ready")
        .await;
    let res = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    for needle in [
        "agenthook_upstream_requests_total{endpoint=\"generate\",outcome=\"200\"}",
        "agenthook_upstream_requests_total{endpoint=\"status\",outcome=\"200\"}",
        "agenthook_upstream_request_duration_seconds_bucket",
        "agenthook_jobs_completed_total{status=\"ready\"}",
        "agenthook_jobs_submitted_total{outcome=\"accepted\"}",
        "agenthook_jobs{status=\"processing\"}",
        "agenthook_queue_depth{queue=\"poll_due\"}",
        "agenthook_queue_depth{queue=\"deliveries_retry\"}",
        "agenthook_upstream_budget_tokens{bucket=\"read\"}",
        "agenthook_http_requests_total{method=\"POST\",route=\"/v1/jobs\",status=\"202\"}",
        "agenthook_http_requests_total{method=\"GET\",route=\"/v1/jobs/{id}\",status=\"200\"}",
        "agenthook_http_request_duration_seconds_bucket{route=\"/v1/jobs/{id}\",",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
}

#[tokio::test]
async fn a_full_run_logs_json_with_request_ids_and_never_a_secret() {
    const UPSTREAM_SECRET: &str = "upstream-secret-Zx81QmTq0Lw";
    const API_KEY: &str = "api-key-secret-Pq77RtYu33Vb";
    let dir = tempfile::tempdir().unwrap();
    let sim_port = free_port();
    let port = free_port();
    let sim_bind = format!("127.0.0.1:{sim_port}");
    let mut sim = Process::start(
        &[
            "sim",
            "--bind",
            &sim_bind,
            "--time-to-ready",
            "500ms",
            "--api-secret",
            UPSTREAM_SECRET,
            "--generate-per-minute",
            "600",
            "--read-per-minute",
            "6000",
        ],
        |_| {},
    );
    let config = dir.path().join("agenthook.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
bind = "127.0.0.1:{port}"
[storage]
path = "{data}"
[upstream]
base_url = "http://127.0.0.1:{sim_port}"
generate_per_minute = 600
read_per_minute = 6000
[poller]
first_poll_after = "100ms"
interval = "100ms"
max_interval = "200ms"
[delivery]
allow_private_networks = true
[log]
format = "json"
level = "debug"
[[auth.keys]]
name = "ops"
key = "{API_KEY}"
"#,
            data = dir.path().join("data").display()
        ),
    )
    .unwrap();
    let log_path = dir.path().join("service.log");
    let base = format!("http://127.0.0.1:{port}");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut service = Process::start_ready(
        &["serve", "--config", config.to_str().unwrap()],
        |c| {
            c.env("BITHUMAN_API_SECRET", UPSTREAM_SECRET)
                .env_remove("RUST_LOG")
                .stderr(log_file);
        },
        &format!("{base}/readyz"),
    )
    .await;
    let client = reqwest::Client::new();
    let (receiver, received) = plain_receiver(Duration::ZERO).await;
    let sub: Value = client
        .post(format!("{base}/v1/subscriptions"))
        .bearer_auth(API_KEY)
        .json(&json!({"url": receiver}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sub_secret = sub["secret"].as_str().unwrap().to_owned();
    let callback: Value = client
        .get(format!("{base}/v1/callback-secret"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let callback_secret = callback["secret"].as_str().unwrap().to_owned();
    let job: Value = client
        .post(format!("{base}/v1/jobs"))
        .bearer_auth(API_KEY)
        .header("x-request-id", "req-trace-0001")
        .json(&json!({"prompt": "log me", "callback_url": receiver}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job_id = job["id"].as_str().unwrap().to_owned();
    // A failed authentication attempt with the upstream secret as the key.
    client
        .get(format!("{base}/v1/jobs"))
        .bearer_auth(UPSTREAM_SECRET)
        .send()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while received.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "webhooks never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    service.terminate();
    assert_eq!(
        service.wait_exit(Duration::from_secs(20)).await.code(),
        Some(0)
    );
    sim.kill();

    let logs = std::fs::read_to_string(&log_path).unwrap();
    for secret in [
        UPSTREAM_SECRET,
        API_KEY,
        sub_secret.as_str(),
        callback_secret.as_str(),
    ] {
        assert!(!logs.contains(secret), "a secret appears in the logs");
        // Nor the key material of a whsec_ secret on its own.
        if let Some(raw) = secret.strip_prefix("whsec_") {
            assert!(
                !logs.contains(raw),
                "a secret's key material appears in the logs"
            );
        }
    }
    let lines: Vec<Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not a JSON log line: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["request_id"] == "req-trace-0001" && l["path"] == "/v1/jobs"),
        "the request was not logged with its request id"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "delivery attempt" && l["job_id"] == job_id.as_str()),
        "no delivery attempt logged with its job id"
    );
}

#[tokio::test]
async fn a_stop_during_a_burst_of_deliveries_loses_nothing_and_leaves_nothing_leased() {
    let (receiver, received) = plain_receiver(Duration::from_millis(300)).await;
    let app = spawn_app_with(fast_sim_config(), |s| {
        s.delivery.concurrency = 8;
        s.delivery.per_destination_concurrency = 8;
        s.server.shutdown_grace = Duration::from_secs(5);
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let (status, job) = app
            .create_job(
                KEY_A,
                json!({"prompt": format!("burst {i}"), "callback_url": receiver}),
            )
            .await;
        assert_eq!(status, 202);
        ids.push(agenthook::domain::JobId::parse(job["id"].as_str().unwrap()).unwrap());
    }
    // Wait until deliveries are in flight, then stop as SIGTERM would.
    let deadline = Instant::now() + Duration::from_secs(20);
    while received.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no delivery started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopped_at = chrono::Utc::now();
    let (_, dir, _) = app.stop().await;
    let store = open_store(dir.path()).await;
    let mut deliveries = Vec::new();
    for id in &ids {
        let job = store.job_by_id(id).await.unwrap().expect("no job is lost");
        if job.status == agenthook::domain::JobStatus::Ready {
            let of_job = store.deliveries_of_job(id).await.unwrap();
            assert_eq!(of_job.len(), 1, "a ready job has its callback delivery");
            deliveries.extend(of_job);
        }
    }
    let sent = received.load(Ordering::SeqCst);
    let succeeded = deliveries
        .iter()
        .filter(|d| d.state == agenthook::domain::DeliveryState::Succeeded)
        .count();
    assert_eq!(
        succeeded, sent,
        "every POST the receiver answered was recorded before exit"
    );
    for d in deliveries
        .iter()
        .filter(|d| d.state == agenthook::domain::DeliveryState::Pending)
    {
        assert!(
            d.attempts.is_empty(),
            "a failed attempt during shutdown: {d:?}"
        );
        let next = d.next_attempt_at.expect("pending deliveries are queued");
        assert!(
            next <= stopped_at + chrono::Duration::seconds(1),
            "delivery {} is still leased until {next}",
            d.id
        );
    }
}

#[tokio::test]
async fn each_api_key_is_rate_limited_on_its_own_with_429_and_retry_after() {
    let app = spawn_app_with(fast_sim_config(), |s| s.auth.requests_per_minute = 60).await;
    let mut limited = None;
    for _ in 0..20 {
        let res = app.get("/v1/jobs", KEY_A).send().await.unwrap();
        if res.status() == 429 {
            limited = Some(res);
            break;
        }
        assert_eq!(res.status(), 200);
    }
    let res = limited.expect("tenant A was never limited");
    let retry_after: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "RATE_LIMITED");
    assert_eq!(
        app.get("/v1/jobs", KEY_B).send().await.unwrap().status(),
        200,
        "tenant B is unaffected"
    );
}
