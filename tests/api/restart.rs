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

/// The simulator as a process (agents ready `time_to_ready` after they are made) and a
/// service's config file and data directory pointing at it, for services started and killed in
/// turn.
struct Setup {
    _dir: tempfile::TempDir,
    _sim: Process,
    config: String,
    /// The simulator's base URL.
    sim: String,
    /// The service's base URL.
    base: String,
}

impl Setup {
    async fn new(time_to_ready: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let (sim_port, port) = (free_port(), free_port());
        let config = dir.path().join("agenthook.toml");
        write_config(&config, port, sim_port, &dir.path().join("data"));
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
    let setup = Setup::new("3s").await;
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
/// same directory. Every (event, subscription) pair arrives, every receipt of one pair carries
/// the same `webhook-id`, and the only repeats are what was in flight at a kill.
#[tokio::test]
async fn killed_mid_fan_out_every_delivery_arrives_with_one_webhook_id_per_event_and_destination() {
    use std::collections::{BTreeMap, BTreeSet};
    use std::net::Ipv4Addr;

    use crate::receiver::{Receiver, Reply};

    const JOBS: usize = 60;
    const SUBS: usize = 12;
    const EXPECTED: usize = JOBS * SUBS;
    /// `delivery.concurrency` (the default): attempts in flight at once.
    const IN_FLIGHT: usize = 64;
    const KILLS: usize = 2;

    let setup = Setup::new("1s").await;
    let client = reqwest::Client::new();
    let base = &setup.base;
    // Four destination hosts, each answering after 40 ms: at 8 requests per host at once the
    // drain takes seconds, so the kills land in the middle of it.
    let mut receivers = Vec::new();
    for host in 2..6 {
        let receiver = Receiver::start_on(Ipv4Addr::new(127, 0, 0, host)).await;
        receiver.set_default(Reply::status(204).delay(Duration::from_millis(40)));
        receivers.push(receiver);
    }
    let received = |receivers: &[Receiver]| receivers.iter().map(Receiver::count).sum::<usize>();

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
    for i in 0..JOBS {
        let res = client
            .post(format!("{base}/v1/jobs"))
            .bearer_auth(KEY)
            .json(&json!({ "prompt": format!("fan-out {i}") }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 202, "create a job");
    }

    for kill in 1..=KILLS {
        // Mid-drain: some of the deliveries have arrived, most have not.
        let target = EXPECTED * kill / (KILLS + 2);
        let deadline = Instant::now() + Duration::from_secs(60);
        while received(&receivers) < target {
            assert!(
                Instant::now() < deadline,
                "deliveries stalled at {} of {target} before kill {kill}",
                received(&receivers)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        service.kill();
        let at_kill = received(&receivers);
        assert!(
            at_kill < EXPECTED,
            "kill {kill} came after the drain ({at_kill} received)"
        );
        eprintln!("kill {kill}: {at_kill} of {EXPECTED} received");
        service = setup.serve().await;
    }

    // Every (event, subscription) pair, with the webhook-ids it arrived with.
    let arrived = || {
        let mut pairs: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
        let mut total = 0;
        for receiver in &receivers {
            for request in receiver.requests() {
                let event = request.json();
                assert_eq!(event["type"], "agent.ready", "{event}");
                let job = event["data"]["job_id"].as_str().expect("job_id").to_owned();
                let destination = format!("{}{}", receiver.addr, request.path);
                pairs
                    .entry((job, destination))
                    .or_default()
                    .insert(request.header("webhook-id").to_owned());
                total += 1;
            }
        }
        (pairs, total)
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let (pairs, total) = loop {
        let (pairs, total) = arrived();
        if pairs.len() >= EXPECTED {
            break (pairs, total);
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {EXPECTED} (event, subscription) pairs arrived",
            pairs.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        pairs.len(),
        EXPECTED,
        "no pair beyond the jobs and subscriptions"
    );
    let jobs: BTreeSet<&String> = pairs.keys().map(|(job, _)| job).collect();
    assert_eq!(jobs.len(), JOBS, "every job's event");
    for ((job, destination), ids) in &pairs {
        assert_eq!(
            ids.len(),
            1,
            "{job} to {destination} arrived with more than one webhook-id: {ids:?}"
        );
    }
    // A repeat is an attempt in flight (or answered, its record not yet on disk) when the
    // process was killed: at most the worker's slots' worth, twice over, per kill.
    let repeats = total - EXPECTED;
    eprintln!("{EXPECTED} pairs, {total} receipts, {repeats} repeats");
    assert!(
        repeats <= KILLS * 2 * IN_FLIGHT,
        "{repeats} repeats after {KILLS} kills"
    );
    // Nothing more arrives once the drain is over.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        arrived().1,
        total,
        "a delivery was sent again after it was recorded"
    );
}
