//! bitHuman's own webhooks (`POST /v1/upstream/webhooks`): the signature, duplicates, unknown
//! agents, early pushes, cancelled jobs, registration across restarts, and the polling cadence
//! while pushes arrive and after they stop. The simulator sends real signed webhooks over
//! loopback where a test needs them to come from upstream.

use std::time::Duration;

use agenthook::clock::{after, Clock};
use agenthook::domain::{Job, JobId, Tenant};
use agenthook::push::PushOutcome;
use agenthook::sim::SimConfig;
use agenthook::upstream::push::{self as wire, PushEvent};
use serde_json::{json, Map, Value};

use crate::helpers::*;
use crate::receiver::Receiver;

const SECRET: &str = "whsec_test_0123456789";

fn with_secret(s: &mut agenthook::config::Settings) {
    s.upstream.webhooks.secret = agenthook::config::Secret::new(SECRET);
    // Routine polls far apart: anything sooner is the push's doing.
    s.poller.first_poll_after = Duration::from_secs(60);
    s.poller.interval = Duration::from_secs(60);
    s.poller.max_interval = Duration::from_secs(60);
}

fn slow_agents() -> SimConfig {
    SimConfig {
        time_to_ready: Duration::from_secs(3600),
        ..fast_sim_config()
    }
}

fn body(event: &str, agent_id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": "evt_body", "event": event, "created": 1,
        "data": {"agent_id": agent_id, "code": agent_id}
    }))
    .unwrap()
}

/// Send a push as bitHuman would, signed with `secret` at `timestamp`.
async fn push_as(
    app: &TestApp,
    secret: &str,
    timestamp: i64,
    delivery: &str,
    event: &str,
    agent_id: &str,
) -> (u16, Value) {
    let body = body(event, agent_id);
    let res = app
        .http
        .post(app.url("/v1/upstream/webhooks"))
        .header("content-type", "application/json")
        .header("X-BitHuman-Event", event)
        .header("X-BitHuman-Delivery", delivery)
        .header("X-BitHuman-Timestamp", timestamp.to_string())
        .header("X-BitHuman-Signature", wire::sign(secret, timestamp, &body))
        .body(body)
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

async fn push(app: &TestApp, delivery: &str, event: &str, agent_id: &str) -> (u16, Value) {
    push_as(
        app,
        SECRET,
        chrono::Utc::now().timestamp(),
        delivery,
        event,
        agent_id,
    )
    .await
}

async fn processing_job(app: &TestApp, extra: Value) -> Value {
    let mut request = json!({"prompt": "push me"});
    request
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().cloned().unwrap_or_default());
    let (status, job) = app.create_job(KEY_A, request).await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["status"], "processing", "{job}");
    job
}

async fn metrics(app: &TestApp) -> String {
    app.http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_pushed_agent_ready_makes_the_callback_leave_long_before_the_next_routine_poll() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(
        SimConfig {
            time_to_ready: Duration::from_millis(500),
            ..fast_sim_config()
        },
        with_secret,
    )
    .await;
    let hook = app.url("/v1/upstream/webhooks");
    app.sim.state.update(|c| {
        c.webhook_url = Some(hook);
        c.webhook_secret = SECRET.into();
    });
    let job = processing_job(&app, json!({"callback_url": receiver.url("/cb")})).await;
    let started = std::time::Instant::now();
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].json()["type"], "agent.ready");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the callback waited for a routine poll"
    );
    let (_, stored) = app.job(KEY_A, job["id"].as_str().unwrap()).await;
    assert_eq!(stored["status"], "ready");
    assert_eq!(stored["polls"], 1, "one status read, the push's: {stored}");
    assert_eq!(app.sim.state.status_calls(), 1);
    assert_eq!(app.sim.state.webhook_stats().delivered, 1);
    let text = metrics(&app).await;
    assert!(
        text.contains("agenthook_upstream_pushes_total{outcome=\"accepted\"}"),
        "{text}"
    );
    assert!(text.contains("agenthook_upstream_push_to_callback_seconds"));
}

#[tokio::test]
async fn wrong_stale_and_missing_signatures_are_refused_with_401_in_the_error_shape() {
    let app = spawn_app_with(slow_agents(), with_secret).await;
    let now = chrono::Utc::now().timestamp();
    let (status, ok) = push_as(&app, SECRET, now, "evt_ok", "ping", "").await;
    assert_eq!((status, ok["outcome"].as_str()), (200, Some("ignored")));

    let (status, wrong) = push_as(&app, "whsec_other", now, "evt_w", "ping", "").await;
    assert_eq!(status, 401);
    assert_eq!(wrong["code"], "UNAUTHORIZED");
    assert!(wrong["error"].is_string() && wrong["details"].is_string());

    let (status, stale) = push_as(&app, SECRET, now - 400, "evt_s", "ping", "").await;
    assert_eq!(status, 401);
    assert_eq!(stale["code"], "UNAUTHORIZED");
    assert!(stale["details"].as_str().unwrap().contains("5 minutes"));
    let (status, _) = push_as(&app, SECRET, now + 400, "evt_f", "ping", "").await;
    assert_eq!(status, 401, "a timestamp far ahead is refused too");

    let res = app
        .http
        .post(app.url("/v1/upstream/webhooks"))
        .header("content-type", "application/json")
        .body(body("ping", ""))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    let missing: Value = res.json().await.unwrap();
    assert_eq!(missing["code"], "UNAUTHORIZED");

    // The body signed is the body checked: a changed byte fails.
    let signed = body("ping", "");
    let res = app
        .http
        .post(app.url("/v1/upstream/webhooks"))
        .header("X-BitHuman-Timestamp", now.to_string())
        .header("X-BitHuman-Signature", wire::sign(SECRET, now, &signed))
        .body(body("pong", ""))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);

    let text = metrics(&app).await;
    for outcome in ["bad_signature", "stale"] {
        assert!(
            text.contains(&format!(
                "agenthook_upstream_pushes_total{{outcome=\"{outcome}\"}}"
            )),
            "{outcome}: {text}"
        );
    }
    assert!(
        !text.contains(SECRET),
        "the secret never appears in metrics"
    );
}

#[tokio::test]
async fn without_a_secret_the_route_is_off() {
    let app = spawn_app_with(slow_agents(), |_| {}).await;
    let (status, body) = push(&app, "evt_1", "ping", "").await;
    assert_eq!(status, 404);
    assert_eq!(body["code"], "NOT_FOUND");
}

#[tokio::test]
async fn a_replayed_delivery_id_is_answered_200_and_reads_nothing_more() {
    let app = spawn_app_with(slow_agents(), with_secret).await;
    let job = processing_job(&app, json!({})).await;
    let id = job["id"].as_str().unwrap();
    let agent = job["agent_id"].as_str().unwrap();
    app.sim
        .state
        .set_agent_outcome(agent, agenthook::sim::Outcome::Ready);
    let (status, first) = push(&app, "evt_same", "agent.ready", agent).await;
    assert_eq!((status, first["outcome"].as_str()), (200, Some("accepted")));
    app.wait_for_status(KEY_A, id, "ready").await;
    let (status, again) = push(&app, "evt_same", "agent.ready", agent).await;
    assert_eq!(
        (status, again["outcome"].as_str()),
        (200, Some("duplicate"))
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.sim.state.status_calls(), 1, "one read in all");
}

#[tokio::test]
async fn the_status_read_decides_and_a_push_ahead_of_its_status_is_checked_again_soon() {
    let app = spawn_app_with(slow_agents(), with_secret).await;
    let job = processing_job(&app, json!({})).await;
    let id = job["id"].as_str().unwrap();
    let agent = job["agent_id"].as_str().unwrap();
    // The push says ready; upstream's status still says processing.
    let (status, answer) = push(&app, "evt_ahead", "agent.ready", agent).await;
    assert_eq!(
        (status, answer["outcome"].as_str()),
        (200, Some("accepted"))
    );
    wait_until(|| app.sim.state.status_calls() == 1).await;
    let (_, stored) = app.job(KEY_A, id).await;
    assert_eq!(
        stored["status"], "processing",
        "the read decides, not the push"
    );
    // The status catches up: the job ends within seconds, not at the routine poll a minute on.
    app.sim
        .state
        .set_agent_outcome(agent, agenthook::sim::Outcome::Ready);
    let started = std::time::Instant::now();
    app.wait_for_status(KEY_A, id, "ready").await;
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn an_unknown_agent_and_a_ping_are_answered_200_and_change_nothing() {
    let app = spawn_app_with(slow_agents(), with_secret).await;
    let job = processing_job(&app, json!({})).await;
    let (status, unknown) = push(&app, "evt_u", "agent.ready", "A00NOPE0000").await;
    assert_eq!(
        (status, unknown["outcome"].as_str()),
        (200, Some("unknown_agent"))
    );
    let (status, ping) = push(&app, "evt_p", "ping", "").await;
    assert_eq!((status, ping["outcome"].as_str()), (200, Some("ignored")));
    let (status, other) = push(&app, "evt_v", "video.completed", "V1").await;
    assert_eq!((status, other["outcome"].as_str()), (200, Some("ignored")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.sim.state.status_calls(), 0);
    let (_, stored) = app.job(KEY_A, job["id"].as_str().unwrap()).await;
    assert_eq!(stored["polls"], 0);
}

#[tokio::test]
async fn a_push_that_arrives_before_its_job_is_stored_is_applied_when_it_is() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(
        SimConfig {
            time_to_ready: Duration::ZERO,
            ..fast_sim_config()
        },
        with_secret,
    )
    .await;
    // Upstream is fast: the agent's push comes before agenthook has stored the job.
    let (status, early) = push(&app, "evt_early", "agent.ready", "FAST-AGENT-1").await;
    assert_eq!(
        (status, early["outcome"].as_str()),
        (200, Some("unknown_agent"))
    );
    let job = processing_job(
        &app,
        json!({"agent_id": "FAST-AGENT-1", "callback_url": receiver.url("/cb")}),
    )
    .await;
    assert_eq!(job["agent_id"], "FAST-AGENT-1");
    // The first routine poll is a minute away; the early push makes the read happen now.
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].json()["type"], "agent.ready");
    let (_, stored) = app.job(KEY_A, job["id"].as_str().unwrap()).await;
    assert_eq!(stored["status"], "ready");
    assert_eq!(stored["polls"], 1);
}

#[tokio::test]
async fn a_push_for_a_cancelled_job_does_nothing() {
    let receiver = Receiver::start().await;
    let app = spawn_app_with(slow_agents(), with_secret).await;
    let job = processing_job(&app, json!({"callback_url": receiver.url("/cb")})).await;
    let id = job["id"].as_str().unwrap();
    let res = app
        .delete(&format!("/v1/jobs/{id}"), KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let agent = job["agent_id"].as_str().unwrap();
    app.sim
        .state
        .set_agent_outcome(agent, agenthook::sim::Outcome::Ready);
    let (status, answer) = push(&app, "evt_c", "agent.ready", agent).await;
    assert_eq!(
        (status, answer["outcome"].as_str()),
        (200, Some("job_ended"))
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.sim.state.status_calls(),
        0,
        "no read for a cancelled job"
    );
    let (_, stored) = app.job(KEY_A, id).await;
    assert_eq!(stored["status"], "cancelled");
    assert!(receiver.requests().is_empty(), "no callback");
}

#[tokio::test]
async fn registration_is_made_once_and_found_again_after_a_restart() {
    let public_url = "http://127.0.0.1:9/v1/upstream/webhooks".to_owned();
    let url = public_url.clone();
    let app = spawn_app_with(slow_agents(), move |s| {
        s.upstream.webhooks.public_url = url;
    })
    .await;
    let registrations = app.sim.state.webhook_registrations();
    assert_eq!(registrations.len(), 1);
    assert_eq!(registrations[0].url, public_url);
    assert_eq!(
        registrations[0].events,
        vec!["agent.ready".to_owned(), "agent.failed".to_owned()]
    );
    let secret = registrations[0].secret.clone();
    let now = chrono::Utc::now().timestamp();
    let (status, _) = push_as(&app, &secret, now, "evt_r1", "ping", "").await;
    assert_eq!(status, 200, "the registration's secret verifies pushes");

    let (sim, dir, settings) = app.stop().await;
    let app = start(sim, dir, settings, agenthook::clock::system()).await;
    let registrations = app.sim.state.webhook_registrations();
    assert_eq!(registrations.len(), 1, "no second registration");
    let posts = app
        .sim
        .state
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/v1/webhooks")
        .count();
    assert_eq!(posts, 1);
    let (status, _) = push_as(&app, &secret, now, "evt_r2", "ping", "").await;
    assert_eq!(status, 200, "the stored secret is used after the restart");
    let stored = open_store_after(app).await;
    let kept = stored.upstream_webhook().await.unwrap().unwrap();
    assert_eq!(kept.id, registrations[0].id);
    assert_eq!(kept.secret, secret);
}

async fn open_store_after(app: TestApp) -> agenthook::store::Store {
    let (_sim, dir, _) = app.stop().await;
    let store = open_store(dir.path()).await;
    std::mem::forget(dir);
    store
}

#[tokio::test]
async fn the_simulator_retries_a_push_at_two_and_five_seconds_and_drops_its_share() {
    let receiver = Receiver::start().await;
    receiver.set_default(crate::receiver::Reply::status(500));
    let sim = spawn_sim(SimConfig {
        time_to_ready: Duration::ZERO,
        webhook_url: Some(receiver.url("/hook")),
        ..fast_sim_config()
    });
    let http = reqwest::Client::new();
    let generate = |id: &str| {
        http.post(format!("{}/v1/agent/generate", sim.base_url))
            .header("api-secret", "sim-secret")
            .json(&json!({"prompt": "x", "agent_id": id}))
            .send()
    };
    assert!(generate("RETRY-1").await.unwrap().status().is_success());
    let got = receiver.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 3);
    let gap = |a: &crate::receiver::Received, b: &crate::receiver::Received| {
        b.at.duration_since(a.at).as_secs_f64()
    };
    assert!(
        (1.8..3.0).contains(&gap(&got[0], &got[1])),
        "{}",
        gap(&got[0], &got[1])
    );
    assert!(
        (4.8..6.0).contains(&gap(&got[0], &got[2])),
        "{}",
        gap(&got[0], &got[2])
    );
    for request in &got {
        let ts: i64 = request.header("x-bithuman-timestamp").parse().unwrap();
        let signature = request.header("x-bithuman-signature");
        assert_eq!(signature, wire::sign("whsec_sim", ts, &request.body));
        assert_eq!(request.header("x-bithuman-event"), "agent.ready");
        assert_eq!(
            request.header("x-bithuman-delivery"),
            got[0].header("x-bithuman-delivery")
        );
        assert_eq!(request.json()["data"]["agent_id"], "RETRY-1");
    }
    wait_until(|| sim.state.webhook_stats().failed == 1).await;

    sim.state.update(|c| c.webhook_drop_ratio = 1.0);
    assert!(generate("DROPPED-1").await.unwrap().status().is_success());
    wait_until(|| sim.state.webhook_stats().dropped == 1).await;
    assert_eq!(sim.state.webhook_stats().queued, 1);
}

async fn wait_until(done: impl Fn() -> bool) {
    for _ in 0..400 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("condition not met within 10 s");
}

// ---------------------------------------------------------------------------------------------
// The cadence, on a manual clock, driven with `step()`.

fn tenant() -> Tenant {
    Tenant::parse("tenant-a").unwrap()
}

async fn held_job(h: &Harness) -> Job {
    let mut request = Map::new();
    request.insert("prompt".into(), Value::String("cadence".into()));
    let job = Job::new(tenant(), request, None, Map::new(), h.clock.now());
    h.services.store.hold_job(&job, None).await.unwrap();
    job
}

/// A push as the route records it once its signature has passed.
async fn arrive(h: &Harness, n: usize) {
    let outcome = h
        .services
        .lifecycle
        .push
        .receive(
            Some(&format!("evt_ping_{n}")),
            &PushEvent::Ping,
            h.clock.now(),
            |_| async { None },
        )
        .await;
    assert_eq!(outcome, PushOutcome::Ignored);
}

/// Step the poller every second for `secs`, with a push every `push_every` seconds if given.
/// Returns the status reads made meanwhile.
async fn run(h: &Harness, job: &JobId, secs: u64, push_every: Option<u64>, n: &mut usize) -> u32 {
    let poller = h.services.poller();
    let before = h
        .services
        .store
        .job_by_id(job)
        .await
        .unwrap()
        .unwrap()
        .polls;
    for s in 0..secs {
        if push_every.is_some_and(|every| s % every == 0) {
            *n += 1;
            arrive(h, *n).await;
        }
        h.clock.advance(Duration::from_secs(1));
        poller.step().await.unwrap();
    }
    h.services
        .store
        .job_by_id(job)
        .await
        .unwrap()
        .unwrap()
        .polls
        - before
}

#[tokio::test]
async fn routine_polls_slow_while_pushes_arrive_and_return_to_normal_after_they_stop() {
    let h = harness(
        SimConfig {
            time_to_ready: Duration::from_secs(1_000_000),
            ..fast_sim_config()
        },
        |s| {
            s.poller.first_poll_after = Duration::from_secs(5);
            s.poller.interval = Duration::from_secs(5);
            s.poller.max_interval = Duration::from_secs(60);
            s.poller.max_interval_with_webhooks = Duration::from_secs(600);
            s.poller.max_age = Duration::from_secs(1_000_000);
        },
    );
    let job = held_job(&h).await;
    let mut n = 0;
    // No pushes: every 5 s while young.
    let normal = run(&h, &job.id, 60, None, &mut n).await;
    assert!(normal >= 10, "{normal} reads in the first minute");
    // Pushes arriving (other agents' pings): the routine poll waits ten minutes.
    let slowed = run(&h, &job.id, 900, Some(60), &mut n).await;
    assert!(
        slowed <= 2,
        "{slowed} reads in 15 minutes while pushes arrived"
    );
    let next = h
        .services
        .store
        .job_by_id(&job.id)
        .await
        .unwrap()
        .unwrap()
        .next_poll_at
        .unwrap();
    assert!(
        next > after(h.clock.now(), Duration::from_secs(60)),
        "slowed: {next}"
    );
    // Pushes stop: within the health window (10 min after the last) and one normal interval,
    // polls are back at the normal cadence (60 s for a job this old).
    // (At the normal cadence these ten minutes would take ten reads; the slowed one takes at
    // most two: its ten-minute poll, and the pull-in when health lapses.)
    let waiting = run(&h, &job.id, 600, None, &mut n).await;
    assert!(waiting <= 2, "{waiting}");
    let recovered = run(&h, &job.id, 61, None, &mut n).await;
    assert!(
        recovered >= 1,
        "polling did not come back after pushes stopped"
    );
    let after_recovery = run(&h, &job.id, 300, None, &mut n).await;
    assert!(
        (4..=6).contains(&after_recovery),
        "{after_recovery} reads in 5 minutes at the normal 60 s cadence"
    );
    assert!(!h.services.lifecycle.push.is_healthy(h.clock.now()));
}

#[tokio::test]
async fn with_its_own_registration_the_service_asks_for_pings_and_verifies_them() {
    let sim = spawn_sim(slow_agents());
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut settings = test_settings(dir.path(), &sim);
    settings.upstream.webhooks.public_url = format!(
        "http://{}/v1/upstream/webhooks",
        listener.local_addr().unwrap()
    );
    let app = agenthook::app::Application::build_on(settings, agenthook::clock::system(), listener)
        .await
        .unwrap();
    let stop = app.stop_handle();
    let task = tokio::spawn(app.run());
    let id = sim.state.webhook_registrations()[0].id.clone();
    // The heartbeat asks upstream for a ping at start; it arrives, signed with the secret the
    // registration returned, and is answered 2xx.
    wait_until(|| sim.state.webhook_stats().delivered >= 1).await;
    assert!(sim
        .state
        .requests()
        .iter()
        .any(|r| r.method == "POST" && r.path == format!("/v1/webhooks/{id}/test")));
    assert_eq!(sim.state.webhook_stats().failed, 0);
    stop.stop().await;
    let _ = task.await;
}
