//! Crash safety with the real binaries: `agenthook sim` and `agenthook serve` as processes,
//! the service killed with SIGKILL mid-run and started again on the same data directory.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{free_port, wait_ready, Process};

const KEY: &str = "restart-test-key-0123456789";

fn write_config(path: &Path, port: u16, sim_port: u16, data: &Path) {
    let config = format!(
        r#"
[server]
bind = "127.0.0.1:{port}"
[storage]
path = "{data}"
[upstream]
base_url = "http://127.0.0.1:{sim_port}"
api_secret = "sim-secret"
generate_per_minute = 6000
read_per_minute = 60000
timeout = "3s"
[poller]
first_poll_after = "200ms"
interval = "200ms"
max_interval = "500ms"
submit_retry_after = "200ms"
lease = "4s"
[delivery]
allow_private_networks = true
[[auth.keys]]
name = "restart"
key = "{KEY}"
"#,
        data = data.display()
    );
    std::fs::write(path, config).unwrap();
}

#[tokio::test]
async fn after_kill_9_every_pending_job_resumes_and_finishes_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let sim_port = free_port();
    let port = free_port();
    let config = dir.path().join("agenthook.toml");
    write_config(&config, port, sim_port, &dir.path().join("data"));
    let sim_addr = format!("127.0.0.1:{sim_port}");
    let _sim = Process::start(
        &[
            "sim",
            "--bind",
            &sim_addr,
            "--time-to-ready",
            "3s",
            "--generate-per-minute",
            "6000",
            "--read-per-minute",
            "60000",
        ],
        |_| {},
    );
    let client = reqwest::Client::new();
    let sim = format!("http://{sim_addr}");
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&format!("{sim}/_sim/health")).await;

    let config_arg = config.to_str().unwrap();
    let ready = format!("{base}/readyz");
    let mut service =
        Process::start_ready(&["serve", "--config", config_arg], |_| {}, &ready).await;

    let mut ids = Vec::new();
    for i in 0..10 {
        let job: Value = client
            .post(format!("{base}/v1/jobs"))
            .bearer_auth(KEY)
            .json(&json!({"prompt": format!("accepted {i}")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(job["status"], "processing");
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    // Upstream goes down: these wait in `submitting`.
    client
        .post(format!("{sim}/_sim/outage"))
        .json(&json!({"on": true}))
        .send()
        .await
        .unwrap();
    for i in 0..5 {
        let job: Value = client
            .post(format!("{base}/v1/jobs"))
            .bearer_auth(KEY)
            .json(&json!({"prompt": format!("deferred {i}")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(job["status"], "submitting");
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Crash, with jobs mid-poll and mid-submission.
    service.kill();
    client
        .post(format!("{sim}/_sim/outage"))
        .json(&json!({"on": false}))
        .send()
        .await
        .unwrap();
    drop(service);
    let _service = Process::start_ready(&["serve", "--config", config_arg], |_| {}, &ready).await;

    let deadline = Instant::now() + Duration::from_secs(60);
    for id in &ids {
        loop {
            let job: Value = client
                .get(format!("{base}/v1/jobs/{id}"))
                .bearer_auth(KEY)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if job["status"] == "ready" {
                break;
            }
            assert!(Instant::now() < deadline, "job {id} stuck: {job}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let stats: Value = client
        .get(format!("{sim}/_sim/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        stats["accepted_generates"], 15,
        "one agent per job: {stats}"
    );
}
