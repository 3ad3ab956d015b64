//! Several instances on one PostgreSQL database (the throwaway cluster of `pg`): claims that
//! outlive their lease, idempotency keys across instances, wake-ups by NOTIFY, and two whole
//! services sharing the work of one simulator.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agenthook::app::{Application, Services};
use agenthook::clock::{self, after};
use agenthook::config::{Settings, StorageBackend};
use agenthook::domain::{Delivery, Destination, Event, Job, Tenant};
use agenthook::store::{
    Admission, DeliveryQueue, IdempotencyKey, PgStore, Room, Storage, WorkKind,
};
use serde_json::{json, Map};

use crate::helpers::{fast_sim_config, spawn_sim, test_settings, KEY_A};
use crate::receiver::Receiver;

fn now() -> agenthook::clock::Timestamp {
    chrono::DateTime::from_timestamp_millis(chrono::Utc::now().timestamp_millis()).unwrap()
}

/// A second instance on the same database.
fn second(url: &str, lease: Duration) -> Arc<PgStore> {
    Arc::new(PgStore::open(url, 4, lease).expect("open"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_claim_whose_lease_ran_out_goes_to_the_next_instance_and_the_first_writes_nothing(
) {
    let Some((a, url)) = crate::pg::pg_store().await else {
        return;
    };
    let b = second(&url, Duration::from_secs(120));
    let acme = Tenant::parse("acme").unwrap();
    let t = now();
    let event = Event::test(acme.clone(), t);
    let delivery = Delivery::new(
        &event,
        None,
        Destination::Callback {
            url: "http://127.0.0.1:9/x".into(),
        },
        t,
    );
    a.insert_deliveries(vec![delivery.clone()]).await.unwrap();

    // A claims it and "dies" holding it: its claim is never released.
    let mut claimed = a
        .claim_due_deliveries(DeliveryQueue::Fresh, t, 10, Room::unlimited())
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let stale = claimed.pop().unwrap();
    // Before A's lease (120 s) ends, B cannot take it.
    let soon = after(t, Duration::from_secs(60));
    assert!(b
        .claim_due_deliveries(DeliveryQueue::Fresh, soon, 10, Room::unlimited())
        .await
        .unwrap()
        .is_empty());
    // After it, B does.
    let later = after(t, Duration::from_secs(121));
    let mut taken = b
        .claim_due_deliveries(DeliveryQueue::Fresh, later, 10, Room::unlimited())
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].delivery.message_id, delivery.message_id);

    // A comes back and records its attempt: its token no longer matches, nothing is written.
    let written = a
        .update_claimed(
            stale,
            Box::new(|d| {
                d.state = agenthook::domain::DeliveryState::Failed;
                d.next_attempt_at = None;
                true
            }),
        )
        .await
        .unwrap();
    assert_eq!(written, None, "a lost claim must write nothing");
    // B's attempt is what is stored.
    let recorded = b
        .update_claimed(
            taken.pop().unwrap(),
            Box::new(|d| {
                d.state = agenthook::domain::DeliveryState::Succeeded;
                d.next_attempt_at = None;
                true
            }),
        )
        .await
        .unwrap()
        .expect("the current claim writes");
    assert_eq!(recorded.state, agenthook::domain::DeliveryState::Succeeded);
    let stored = a.delivery(&acme, &delivery.id).await.unwrap().unwrap();
    assert_eq!(stored.state, agenthook::domain::DeliveryState::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_claim_whose_lease_ran_out_cannot_overwrite_the_next_owner() {
    let Some((a, url)) = crate::pg::pg_store().await else {
        return;
    };
    let b = second(&url, Duration::from_secs(120));
    let acme = Tenant::parse("acme").unwrap();
    let t = now();
    let mut job = Job::new(acme.clone(), Map::new(), None, Map::new(), t);
    job.accepted("agent-x".into(), t, t);
    assert!(a.accept_job(job.clone(), false, None).await.unwrap());

    let lease = after(t, Duration::from_secs(30));
    let mine = a
        .claim_due_jobs(WorkKind::Poll, t, 10, lease)
        .await
        .unwrap();
    assert_eq!(mine.len(), 1);
    let at_end = after(t, Duration::from_secs(31));
    let theirs = b
        .claim_due_jobs(
            WorkKind::Poll,
            at_end,
            10,
            after(at_end, Duration::from_secs(30)),
        )
        .await
        .unwrap();
    assert_eq!(theirs.len(), 1);

    let mut b_saw = theirs[0].clone();
    let b_next = after(at_end, Duration::from_secs(7));
    b_saw.next_poll_at = Some(b_next);
    assert!(b.save_job(&b_saw).await.unwrap());
    let mut a_saw = mine[0].clone();
    a_saw.next_poll_at = Some(after(t, Duration::from_secs(999)));
    assert!(
        !a.save_job(&a_saw).await.unwrap(),
        "the instance whose lease ran out must not overwrite"
    );
    assert_eq!(a.next_due_at(WorkKind::Poll).await.unwrap(), Some(b_next));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_held_on_one_instance_is_in_flight_on_the_other() {
    let Some((a, url)) = crate::pg::pg_store().await else {
        return;
    };
    let b = second(&url, Duration::from_secs(120));
    let acme = Tenant::parse("acme").unwrap();
    let t = now();
    let key = IdempotencyKey {
        key: "k1".into(),
        fingerprint: "f1".into(),
    };
    let ttl = Duration::from_secs(86_400);
    let first = Job::new(acme.clone(), Map::new(), None, Map::new(), t);
    let Admission::Created(hold) = a.begin_job(&first, Some(&key), ttl).await.unwrap() else {
        panic!("the first request is admitted");
    };
    let retry = Job::new(acme.clone(), Map::new(), None, Map::new(), t);
    match b.begin_job(&retry, Some(&key), ttl).await.unwrap() {
        Admission::InFlight { job_id, .. } => assert_eq!(job_id, first.id),
        other => panic!("expected in flight on the other instance, got {other:?}"),
    }
    // A holder that dies lets go after the hold's bound.
    std::mem::forget(hold);
    let much_later = Job::new(
        acme.clone(),
        Map::new(),
        None,
        Map::new(),
        after(t, agenthook::store::KEY_HOLD + Duration::from_secs(1)),
    );
    assert!(matches!(
        b.begin_job(&much_later, Some(&key), ttl).await.unwrap(),
        Admission::Created(_)
    ));
}

fn pg_settings(url: &str, base: Settings) -> Settings {
    let mut settings = base;
    settings.storage.backend = StorageBackend::Postgres;
    settings.storage.postgres.url = url.to_owned();
    settings.storage.postgres.max_connections = 8;
    settings.storage.postgres.delivery_lease = Duration::from_secs(30);
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_written_by_one_instance_is_sent_at_once_by_another() {
    let Some(url) = crate::pg::fresh_database().await else {
        return;
    };
    let sim = spawn_sim(fast_sim_config());
    let dir = tempfile::tempdir().unwrap();
    let settings = pg_settings(&url, test_settings(dir.path(), &sim));
    // B serves with its workers; A only writes (its workers are not running).
    let b = Application::build(settings.clone(), clock::system())
        .await
        .expect("start B");
    let b_stop = b.stop_handle();
    let b_task = tokio::spawn(async move { b.run().await.expect("B ran") });
    let a = Services::build(settings, clock::system()).expect("A");
    a.prepare_storage().await.expect("A migrates");
    let rx = Receiver::start().await;
    // Let B's worker go idle (it sleeps until woken: its fallback is 1 s).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut latencies = Vec::new();
    for i in 0..5 {
        let acme = Tenant::parse("tenant-a").unwrap();
        let event = Event::test(acme, now());
        let d = Delivery::new(
            &event,
            None,
            Destination::Callback {
                url: rx.url(&format!("/n{i}")),
            },
            now(),
        );
        let started = Instant::now();
        a.store.insert_deliveries(vec![d]).await.unwrap();
        let got = rx
            .wait_for(i + 1, Duration::from_secs(5))
            .await
            .pop()
            .unwrap();
        latencies.push(got.at.duration_since(started));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("written by A, received from B after: {latencies:?}");
    let worst = latencies.iter().max().unwrap();
    assert!(
        *worst < Duration::from_millis(500),
        "B must be woken by NOTIFY, not by its 1 s fallback: {latencies:?}"
    );
    b_stop.stop().await;
    let _ = tokio::time::timeout(Duration::from_secs(10), b_task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_work_and_every_job_ends_once_with_one_webhook_id() {
    let Some(url) = crate::pg::fresh_database().await else {
        return;
    };
    let sim = spawn_sim(fast_sim_config());
    let dir = tempfile::tempdir().unwrap();
    let settings = pg_settings(&url, test_settings(dir.path(), &sim));
    let mut stops = Vec::new();
    let mut tasks = Vec::new();
    let mut bases = Vec::new();
    for _ in 0..2 {
        let app = Application::build(settings.clone(), clock::system())
            .await
            .expect("start an instance");
        bases.push(format!("http://{}", app.addr()));
        stops.push(app.stop_handle());
        tasks.push(tokio::spawn(async move { app.run().await.expect("ran") }));
    }
    let rx = Receiver::start().await;
    let http = reqwest::Client::new();
    const JOBS: usize = 30;
    let mut ids = Vec::new();
    for i in 0..JOBS {
        let base = &bases[i % 2];
        let res = http
            .post(format!("{base}/v1/jobs"))
            .bearer_auth(KEY_A)
            .header("Idempotency-Key", format!("job-{i}"))
            .json(&json!({"prompt": format!("p{i}"), "callback_url": rx.url("/hook")}))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "{}", res.status());
        let body: serde_json::Value = res.json().await.unwrap();
        ids.push(body["id"].as_str().unwrap().to_owned());
        // The same key on the other instance answers with the same job.
        let again: serde_json::Value = http
            .post(format!("{}/v1/jobs", bases[(i + 1) % 2]))
            .bearer_auth(KEY_A)
            .header("Idempotency-Key", format!("job-{i}"))
            .json(&json!({"prompt": format!("p{i}"), "callback_url": rx.url("/hook")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(again["id"], body["id"], "a replay on the other instance");
    }
    let received = rx.wait_for(JOBS, Duration::from_secs(60)).await;
    // Let any duplicate arrive before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = if rx.requests().len() > received.len() {
        rx.requests()
    } else {
        received
    };
    let mut by_job: HashMap<String, HashSet<String>> = HashMap::new();
    let mut repeats = 0;
    let mut seen = HashSet::new();
    for r in &received {
        let body = r.json();
        let job = body["data"]["job_id"]
            .as_str()
            .or_else(|| body["data"]["id"].as_str())
            .unwrap_or_default()
            .to_owned();
        let id = r.header("webhook-id").to_owned();
        if !seen.insert(id.clone()) {
            repeats += 1;
        }
        by_job.entry(job).or_default().insert(id);
    }
    eprintln!(
        "{} deliveries received for {JOBS} jobs, {repeats} repeats of a webhook-id",
        received.len()
    );
    assert_eq!(seen.len(), JOBS, "one webhook-id per job and destination");
    assert!(by_job.values().all(|ids| ids.len() == 1));
    assert_eq!(
        sim.state.accepted_generates(),
        JOBS,
        "no agent created twice upstream"
    );
    for (i, id) in ids.iter().enumerate() {
        let job: serde_json::Value = http
            .get(format!("{}/v1/jobs/{id}", bases[i % 2]))
            .bearer_auth(KEY_A)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(job["status"], "ready", "{job}");
    }
    for stop in stops {
        stop.stop().await;
    }
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_one_budget_never_above_it_and_use_at_least_95_percent() {
    use agenthook::upstream::{budget::CREDIT_TTL, Budget};
    let Some((a, url)) = crate::pg::pg_store().await else {
        return;
    };
    let b = second(&url, Duration::from_secs(120));
    let stores: [Arc<dyn Storage>; 2] = [a, b];
    for per_minute in [120u32, 720] {
        let name: &'static str = if per_minute == 120 {
            "read120"
        } else {
            "read720"
        };
        let (spacing, burst) = Budget::grant_spacing(per_minute);
        // Two greedy instances asking every 50 ms of simulated time for 3 minutes.
        let start = now();
        let mut grants = Vec::new();
        let mut t = start;
        while t < after(start, Duration::from_secs(180)) {
            for store in &stores {
                let n = store.take_budget(name, t, spacing, burst, 3).await.unwrap();
                grants.extend(std::iter::repeat_n(t, n as usize));
            }
            t = after(t, Duration::from_millis(50));
        }
        // A grant is used within CREDIT_TTL of it: the busiest 60 s of use holds at most the
        // grants of 60 s + CREDIT_TTL.
        let span = Duration::from_secs(60) + CREDIT_TTL;
        let mut busiest = 0;
        for (i, first) in grants.iter().enumerate() {
            let end = after(*first, span);
            busiest = busiest.max(grants[i..].iter().take_while(|g| **g < end).count());
        }
        let used = grants.len() as f64 / (3.0 * f64::from(per_minute));
        eprintln!(
            "{per_minute}/min shared by 2: {} grants in 3 min ({:.1} %), busiest 61 s: {busiest}",
            grants.len(),
            used * 100.0
        );
        assert!(busiest <= per_minute as usize, "{busiest} > {per_minute}");
        assert!(used >= 0.95, "only {:.1} % used", used * 100.0);
    }
}

/// Run `agenthook store copy`; tried again while the stopped service's threads still hold the
/// sled directory's lock (they let go of it a moment after `stop` returns).
fn store_copy(from: &std::path::Path, url: &str, force: bool) -> std::process::Output {
    for _ in 0..200 {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_agenthook"));
        command
            .args(["store", "copy", "--from"])
            .arg(format!("sled:{}", from.display()))
            .arg("--to")
            .arg(format!("postgres:{url}"));
        if force {
            command.arg("--force");
        }
        let output = command.output().expect("run agenthook store copy");
        let said = String::from_utf8_lossy(&output.stderr);
        if output.status.success() || !said.contains("could not acquire lock") {
            return output;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("the sled directory {} stayed locked", from.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_copy_moves_pending_work_from_sled_and_a_postgres_instance_finishes_it() {
    use crate::helpers::{spawn_app_with, KEY_A};
    use crate::receiver::Reply;
    let Some(url) = crate::pg::fresh_database().await else {
        return;
    };
    // On sled: three jobs end and their first attempts fail (retries pending), three more are
    // still with upstream when the service stops.
    let app = spawn_app_with(fast_sim_config(), |_| {}).await;
    let rx = Receiver::start().await;
    rx.set_default(Reply::status(503));
    let mut ended = Vec::new();
    for i in 0..3 {
        let (status, job) = app
            .create_job(
                KEY_A,
                json!({"prompt": format!("a{i}"), "callback_url": rx.url("/done")}),
            )
            .await;
        assert_eq!(status, 202, "{job}");
        ended.push(job["id"].as_str().unwrap().to_owned());
    }
    rx.wait_for(3, Duration::from_secs(20)).await;
    app.sim
        .state
        .update(|c| c.time_to_ready = Duration::from_secs(3));
    let mut pending = Vec::new();
    for i in 0..3 {
        let (status, job) = app
            .create_job(
                KEY_A,
                json!({"prompt": format!("b{i}"), "callback_url": rx.url("/later")}),
            )
            .await;
        assert_eq!(status, 202, "{job}");
        pending.push(job["id"].as_str().unwrap().to_owned());
    }
    let (sim, dir, settings) = app.stop().await;
    let data = settings.storage.path.clone();

    let copied = store_copy(&data, &url, false);
    let said = String::from_utf8_lossy(&copied.stdout).into_owned();
    assert!(
        copied.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&copied.stderr)
    );
    eprintln!("{said}");
    assert!(said.contains("6 jobs (3 pending)"), "{said}");
    assert!(said.contains("3 deliveries (3 pending)"), "{said}");

    // A second copy into the now non-empty database is refused, unless forced.
    let again = store_copy(&data, &url, false);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("not empty"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(store_copy(&data, &url, true).status.success());

    // An instance on PostgreSQL finishes the work: the retries and the pending jobs' events.
    rx.set_default(Reply::ok());
    let pg = Application::build(pg_settings(&url, settings), clock::system())
        .await
        .expect("start on PostgreSQL");
    let stop = pg.stop_handle();
    let task = tokio::spawn(async move { pg.run().await.expect("ran") });
    rx.wait_for_path("/later", 3, Duration::from_secs(30)).await;
    let done = rx.wait_for_path("/done", 6, Duration::from_secs(30)).await;
    // The retries keep their webhook-id: three ids on /done, each sent twice (503, then 200).
    let ids: HashSet<&str> = done.iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!(ids.len(), 3);
    stop.stop().await;
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    drop((sim, dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_lost_while_running_gives_503_and_everything_resumes_when_it_returns() {
    use crate::helpers::KEY_A;
    if crate::pg::cluster().is_none() {
        return;
    }
    let cluster = crate::pg::Cluster::private().expect("a private cluster");
    crate::pg::sqlx_admin(&cluster, "CREATE DATABASE agenthook")
        .await
        .unwrap();
    let url = cluster.url("agenthook");
    let sim = spawn_sim(fast_sim_config());
    let dir = tempfile::tempdir().unwrap();
    let mut settings = pg_settings(&url, test_settings(dir.path(), &sim));
    // Work claimed when the database went away waits for its lease: keep them short here.
    settings.poller.lease = Duration::from_secs(6);
    settings.storage.postgres.delivery_lease = Duration::from_secs(3);
    let app = Application::build(settings, clock::system())
        .await
        .expect("start");
    let base = format!("http://{}", app.addr());
    let stop = app.stop_handle();
    let task = tokio::spawn(async move { app.run().await.expect("ran") });
    let rx = Receiver::start().await;
    let http = reqwest::Client::new();
    let submit = |i: usize| {
        http.post(format!("{base}/v1/jobs"))
            .bearer_auth(KEY_A)
            .json(&json!({"prompt": format!("p{i}"), "callback_url": rx.url("/hook")}))
            .send()
    };
    let mut accepted = HashSet::new();
    for i in 0..3 {
        let res = submit(i).await.unwrap();
        assert_eq!(res.status(), 202);
        let body: serde_json::Value = res.json().await.unwrap();
        accepted.insert(body["id"].as_str().unwrap().to_owned());
    }

    cluster.stop();
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "readyz while the database is gone");
    let refused = submit(100).await.unwrap();
    assert_eq!(refused.status(), 503, "a write while the database is gone");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "UNAVAILABLE", "{body}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.restart();

    // Back by itself: new jobs are accepted, and every accepted job's event arrives.
    let mut i = 3;
    while accepted.len() < 6 {
        let res = submit(i).await.unwrap();
        if res.status() == 202 {
            let body: serde_json::Value = res.json().await.unwrap();
            accepted.insert(body["id"].as_str().unwrap().to_owned());
            i += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let got = rx.wait_for(6, Duration::from_secs(60)).await;
    let jobs: HashSet<String> = got
        .iter()
        .map(|r| {
            r.json()["data"]["job_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(jobs, accepted, "every accepted job's event arrived");
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    stop.stop().await;
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
}
