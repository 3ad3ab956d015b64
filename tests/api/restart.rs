//! Crash safety with the real binaries: `agenthook sim` and `agenthook serve` as processes,
//! the service killed with SIGKILL mid-run and started again on the same data directory.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{free_port, wait_ready, Process};

const KEY: &str = "restart-test-key-0123456789";

/// The poller's lease and upstream's timeout in a test's config.
#[derive(Clone, Copy)]
struct Timing {
    lease: &'static str,
    upstream_timeout: &'static str,
}

/// Short enough for a test to wait out a lease.
const QUICK: Timing = Timing {
    lease: "4s",
    upstream_timeout: "3s",
};

fn write_config(path: &Path, port: u16, sim_port: u16, data: &Path, timing: Timing) {
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
timeout = "{timeout}"
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
        data = data.display(),
        lease = timing.lease,
        timeout = timing.upstream_timeout,
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
    client: reqwest::Client,
}

impl Setup {
    async fn new(time_to_ready: &str, timing: Timing) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let (sim_port, port) = (free_port(), free_port());
        let config = dir.path().join("agenthook.toml");
        write_config(&config, port, sim_port, &dir.path().join("data"), timing);
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
            client: reqwest::Client::new(),
            _dir: dir,
            _sim: sim,
        };
        wait_ready(&format!("{}/_sim/health", setup.sim)).await;
        setup
    }

    /// `POST` to the service's `path` with the test's key: the status and the JSON answer.
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let res = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// `POST` to the simulator's control route `path` (`/_sim/...`); it must succeed.
    async fn steer(&self, path: &str, body: Value) {
        let res = self
            .client
            .post(format!("{}{path}", self.sim))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "{path}: {}", res.status());
    }

    /// `POST /v1/jobs` with `body`, answered 202: the job.
    async fn create_job(&self, body: Value) -> Value {
        let (status, job) = self.post("/v1/jobs", body).await;
        assert_eq!(status, 202, "create a job: {job}");
        job
    }

    /// `GET` the service's `path` with the test's key: the JSON answer.
    async fn get(&self, path: &str) -> Value {
        let res = self.client.get(format!("{}{path}", self.base));
        res.bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Wait until every job of `ids` is `ready`; panics once `deadline` has passed.
    async fn wait_all_ready(&self, ids: &[String], deadline: Instant) {
        for id in ids {
            loop {
                let job = self.get(&format!("/v1/jobs/{id}")).await;
                if job["status"] == "ready" {
                    break;
                }
                assert!(Instant::now() < deadline, "job {id} stuck: {job}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// `agenthook serve` on the directory, once it is ready.
    async fn serve(&self) -> Process {
        let ready = format!("{}/readyz", self.base);
        Process::start_ready(&["serve", "--config", &self.config], |_| {}, &ready).await
    }
}

#[tokio::test]
async fn after_kill_9_every_pending_job_resumes_and_finishes_exactly_once() {
    let setup = Setup::new("3s", QUICK).await;
    let client = &setup.client;
    let sim = &setup.sim;
    let mut service = setup.serve().await;

    let mut ids = Vec::new();
    for i in 0..10 {
        let job = setup
            .create_job(json!({"prompt": format!("accepted {i}")}))
            .await;
        assert_eq!(job["status"], "processing");
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    // Upstream goes down: these wait in `submitting`.
    setup.steer("/_sim/outage", json!({"on": true})).await;
    for i in 0..5 {
        let job = setup
            .create_job(json!({"prompt": format!("deferred {i}")}))
            .await;
        assert_eq!(job["status"], "submitting");
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Crash, with jobs mid-poll and mid-submission.
    service.kill();
    setup.steer("/_sim/outage", json!({"on": false})).await;
    drop(service);
    let _service = setup.serve().await;

    setup
        .wait_all_ready(&ids, Instant::now() + Duration::from_secs(60))
        .await;
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
    let setup = Setup::new("1h", QUICK).await;
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
        let (status, _) = setup.post("/v1/subscriptions", json!({ "url": url })).await;
        assert_eq!(status, 201, "create a subscription");
    }
    let mut agents = Vec::new();
    for i in 0..JOBS {
        let job = setup
            .create_job(json!({ "prompt": format!("fan-out {i}") }))
            .await;
        let agent = job["agent_id"].as_str().expect("submitted upstream");
        agents.push(agent.to_owned());
    }
    for agent in &agents {
        setup
            .steer(&format!("/_sim/agents/{agent}"), json!({"status": "ready"}))
            .await;
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
        let pending = setup.get("/v1/deliveries?state=pending&limit=1").await;
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
    let setup = Setup::new(
        "1h",
        Timing {
            lease: "60s",
            upstream_timeout: "30s",
        },
    )
    .await;
    let mut service = setup.serve().await;
    let mut jobs = Vec::new();
    for i in 0..JOBS {
        let job = setup
            .create_job(json!({ "prompt": format!("leased {i}") }))
            .await;
        let agent = job["agent_id"]
            .as_str()
            .expect("submitted upstream")
            .to_owned();
        jobs.push((job["id"].as_str().unwrap().to_owned(), agent));
    }
    // Status reads hang (20 s, inside the upstream timeout of 30 s): the next poll round
    // holds its jobs' leases (60 s) and waits. Wait until a job shows one.
    setup.steer("/_sim/config", json!({"latency": "20s"})).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    'leased: loop {
        for (id, _) in &jobs {
            let job = setup.get(&format!("/v1/jobs/{id}")).await;
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
    setup.steer("/_sim/config", json!({"latency": "0s"})).await;
    for (_, agent) in &jobs {
        setup
            .steer(&format!("/_sim/agents/{agent}"), json!({"status": "ready"}))
            .await;
    }

    // Well inside the minute the lease would have held its job.
    let deadline = Instant::now() + Duration::from_secs(20);
    let _service = setup.serve().await;
    let ids: Vec<String> = jobs.into_iter().map(|(id, _)| id).collect();
    setup.wait_all_ready(&ids, deadline).await;
}
