//! Crash safety with the real binaries: `agenthook sim` and `agenthook serve` as processes,
//! the service killed with SIGKILL mid-run and started again on the same data directory.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{free_port, wait_ready, Process};

const KEY: &str = "restart-test-key-0123456789";

fn write_config(path: &Path, port: u16, sim_port: u16, data: &Path, lease: &str) {
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
lease = "{lease}"
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

/// The simulator as a process (agents ready `time_to_ready` after they are made) and a
/// service's config file and data directory pointing at it, for services started and killed in
/// turn.
struct Setup {
    _sim: Process,
    _dir: tempfile::TempDir,
    config: String,
    /// The simulator's base URL.
    sim: String,
    /// The service's base URL.
    base: String,
}

impl Setup {
    /// With `poller.lease` at `lease`.
    async fn new(time_to_ready: &str, lease: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let (sim_port, port) = (free_port(), free_port());
        let config = dir.path().join("agenthook.toml");
        write_config(&config, port, sim_port, &dir.path().join("data"), lease);
        let sim_addr = format!("127.0.0.1:{sim_port}");
        let sim = Process::start(
            &[
                "sim",
                "--bind",
                &sim_addr,
                "--time-to-ready",
                time_to_ready,
                "--generate-per-minute",
                "6000",
                "--read-per-minute",
                "60000",
            ],
            |_| {},
        );
        let setup = Setup {
            config: config.display().to_string(),
            sim: format!("http://{sim_addr}"),
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
            _sim: sim,
        };
        wait_ready(&format!("{}/_sim/health", setup.sim)).await;
        setup
    }

    /// `agenthook serve` on the directory, once it is ready.
    async fn serve(&self) -> Process {
        let ready = format!("{}/readyz", self.base);
        Process::start_ready(&["serve", "--config", &self.config], |_| {}, &ready).await
    }
}

#[tokio::test]
async fn after_kill_9_every_pending_job_resumes_and_finishes_exactly_once() {
    let setup = Setup::new("3s", "4s").await;
    let client = reqwest::Client::new();
    let (sim, base) = (&setup.sim, &setup.base);
    let mut service = setup.serve().await;

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
    let _service = setup.serve().await;

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

/// Issue 15's check, as a user would run it: completions fanned out to subscriptions on several
/// loopback addresses, the service killed with SIGKILL twice mid-drain and started again on the
/// same directory. At each kill every destination host holds as many requests as the service
/// sends it at once, unanswered. Every (event, subscription) pair arrives, every receipt of one
/// pair carries the same `webhook-id`, the requests cut off by a kill are sent again, and no
/// process sends a pair more than once.
#[tokio::test]
async fn killed_mid_fan_out_every_delivery_arrives_with_one_webhook_id_per_event_and_destination() {
    use std::collections::{BTreeMap, BTreeSet};
    use std::net::Ipv4Addr;

    use crate::receiver::{Receiver, Reply};

    const JOBS: usize = 60;
    const SUBS: usize = 12;
    const HOSTS: u8 = 4;
    const EXPECTED: usize = JOBS * SUBS;
    /// `delivery.per_destination_concurrency` (the default): requests to one host at once.
    const PER_HOST: usize = 8;
    const KILLS: usize = 2;
    /// (event, destination) → the webhook-ids it arrived with, and how many times.
    type Pairs = BTreeMap<(String, String), (BTreeSet<String>, usize)>;

    let answer = Reply::status(204).delay(Duration::from_millis(40));
    let hang = Reply::status(204).delay(Duration::from_secs(30));
    // Agents are ready only when told: the fan-out starts once every job exists.
    let setup = Setup::new("1h", "4s").await;
    let client = reqwest::Client::new();
    let base = &setup.base;
    let mut receivers = Vec::new();
    for host in 2..2 + HOSTS {
        let receiver = Receiver::start_on(Ipv4Addr::new(127, 0, 0, host)).await;
        receiver.set_default(answer.clone());
        receivers.push(receiver);
    }
    let arrived = |receivers: &[Receiver], from: &[usize]| {
        let mut pairs = Pairs::new();
        for (receiver, &from) in receivers.iter().zip(from) {
            for request in receiver.requests().into_iter().skip(from) {
                let event = request.json();
                assert_eq!(event["type"], "agent.ready", "{event}");
                let job = event["data"]["job_id"].as_str().expect("job_id").to_owned();
                let destination = format!("{}{}", receiver.addr, request.path);
                let (ids, times) = pairs.entry((job, destination)).or_default();
                ids.insert(request.header("webhook-id").to_owned());
                *times += 1;
            }
        }
        pairs
    };
    let all = [0; HOSTS as usize];

    let mut service = setup.serve().await;
    for i in 0..SUBS {
        let url = receivers[i % receivers.len()].url(&format!("/hooks/{i}"));
        let res = client
            .post(format!("{base}/v1/subscriptions"))
            .bearer_auth(KEY)
            .json(&json!({ "url": url }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 201, "create a subscription");
    }
    let mut agents = Vec::new();
    for i in 0..JOBS {
        let job: Value = client
            .post(format!("{base}/v1/jobs"))
            .bearer_auth(KEY)
            .json(&json!({ "prompt": format!("fan-out {i}") }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let agent = job["agent_id"].as_str().expect("submitted upstream");
        agents.push(agent.to_owned());
    }
    for agent in &agents {
        let res = client
            .post(format!("{}/_sim/agents/{agent}", setup.sim))
            .json(&json!({"status": "ready"}))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "make {agent} ready");
    }

    let mut cut_off = BTreeSet::new();
    for kill in 1..=KILLS {
        // Mid-drain: some pairs have arrived, most have not.
        let target = EXPECTED * kill / (KILLS + 2);
        let deadline = Instant::now() + Duration::from_secs(60);
        while arrived(&receivers, &all).len() < target {
            assert!(Instant::now() < deadline, "stalled before kill {kill}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Every host stops answering until it holds as many requests as it is sent at once.
        let before: Vec<usize> = receivers.iter().map(Receiver::count).collect();
        for receiver in &receivers {
            receiver.set_default(hang.clone());
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while receivers
            .iter()
            .zip(&before)
            .any(|(r, &before)| r.count() - before < PER_HOST)
        {
            assert!(
                Instant::now() < deadline,
                "hosts never held {PER_HOST} requests each before kill {kill}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        service.kill();
        let held = arrived(&receivers, &before);
        assert!(
            held.len() >= PER_HOST * HOSTS as usize,
            "kill {kill} cut off {} requests",
            held.len()
        );
        cut_off.extend(held.into_keys());
        eprintln!(
            "kill {kill}: {} of {EXPECTED} pairs arrived, {} cut off so far",
            arrived(&receivers, &all).len(),
            cut_off.len()
        );
        for receiver in &receivers {
            receiver.set_default(answer.clone());
        }
        service = setup.serve().await;
    }

    let deadline = Instant::now() + Duration::from_secs(90);
    while arrived(&receivers, &all).len() < EXPECTED {
        assert!(
            Instant::now() < deadline,
            "only {} of {EXPECTED} (event, subscription) pairs arrived",
            arrived(&receivers, &all).len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Once no delivery is pending, nothing more may arrive.
    loop {
        let pending: Value = client
            .get(format!("{base}/v1/deliveries?state=pending&limit=1"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if pending["data"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "deliveries still pending: {pending}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pairs = arrived(&receivers, &all);
    assert_eq!(
        pairs.len(),
        EXPECTED,
        "no pair beyond the jobs and subscriptions"
    );
    let jobs: BTreeSet<&String> = pairs.keys().map(|(job, _)| job).collect();
    assert_eq!(jobs.len(), JOBS, "every job's event");
    let mut repeats = 0;
    for (pair, (ids, times)) in &pairs {
        assert_eq!(ids.len(), 1, "{pair:?} arrived with webhook-ids {ids:?}");
        // Each process sends a pair at most once (the receivers answer 2xx).
        assert!(*times <= KILLS + 1, "{pair:?} arrived {times} times");
        repeats += times - 1;
    }
    for pair in &cut_off {
        assert!(
            pairs[pair].1 >= 2,
            "{pair:?} was cut off by a kill and never sent again"
        );
    }
    eprintln!(
        "{EXPECTED} pairs; {repeats} repeats, {} of them cut off by a kill",
        cut_off.len()
    );
}

/// A poll in flight when the process is killed: its job is leased for a minute to a process
/// that is gone. The next start polls it at once, not when the lease ends.
#[tokio::test]
async fn after_kill_9_a_job_the_dead_process_was_polling_is_polled_at_once_not_after_its_lease() {
    const JOBS: usize = 5;
    let setup = Setup::new("1h", "60s").await;
    let (sim, base) = (&setup.sim, &setup.base);
    let client = reqwest::Client::new();
    let mut service = setup.serve().await;
    let mut jobs = Vec::new();
    for i in 0..JOBS {
        let job: Value = client
            .post(format!("{base}/v1/jobs"))
            .bearer_auth(KEY)
            .json(&json!({ "prompt": format!("leased {i}") }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let agent = job["agent_id"]
            .as_str()
            .expect("submitted upstream")
            .to_owned();
        jobs.push((job["id"].as_str().unwrap().to_owned(), agent));
    }
    // Status reads hang: the next poll round holds its jobs' leases (60 s) and waits. Wait
    // until a job shows one.
    client
        .post(format!("{sim}/_sim/config"))
        .json(&json!({"latency": "20s"}))
        .send()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    'leased: loop {
        for (id, _) in &jobs {
            let job: Value = client
                .get(format!("{base}/v1/jobs/{id}"))
                .bearer_auth(KEY)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let next: chrono::DateTime<chrono::Utc> =
                job["next_poll_at"].as_str().unwrap().parse().unwrap();
            if next - chrono::Utc::now() > chrono::Duration::seconds(30) {
                break 'leased;
            }
        }
        assert!(Instant::now() < deadline, "no poll was ever in flight");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    service.kill();
    client
        .post(format!("{sim}/_sim/config"))
        .json(&json!({"latency": "0s"}))
        .send()
        .await
        .unwrap();
    for (_, agent) in &jobs {
        client
            .post(format!("{sim}/_sim/agents/{agent}"))
            .json(&json!({"status": "ready"}))
            .send()
            .await
            .unwrap();
    }

    let restarted = Instant::now();
    let _service = setup.serve().await;
    for (id, _) in &jobs {
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
            // Well inside the minute the leases would have held them.
            assert!(
                restarted.elapsed() < Duration::from_secs(20),
                "job {id} waited for its lease: {job}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
