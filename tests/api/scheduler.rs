//! The status scheduler, driven step by step on a manual clock against the simulator (which
//! shares the clock, so simulated minutes pass instantly).

use std::time::Duration;

use agenthook::domain::{Job, JobStatus, Tenant};
use agenthook::sim::{Outcome, SimConfig};
use serde_json::{json, Map, Value};

use crate::helpers::*;

fn tenant() -> Tenant {
    Tenant::parse("tenant-a").unwrap()
}

/// Store a new job as the API would, due for submission now.
async fn new_job(h: &Harness, prompt: &str, callback: Option<&str>) -> Job {
    let mut request = Map::new();
    request.insert("prompt".into(), Value::String(prompt.into()));
    let job = Job::new(
        tenant(),
        request,
        callback.map(str::to_owned),
        Map::new(),
        h.clock.now_ts(),
    );
    h.services.store.hold_job(&job, None).await.unwrap();
    job
}

async fn stored(h: &Harness, job: &Job) -> Job {
    h.services.store.job_by_id(&job.id).await.unwrap().unwrap()
}

/// Advance the clock in `tick` steps for `total`, stepping the poller after each.
async fn run_for(h: &Harness, total: Duration, tick: Duration) {
    let poller = h.services.poller();
    let mut elapsed = Duration::ZERO;
    while elapsed < total {
        h.clock.advance(tick);
        elapsed += tick;
        poller.step().await.unwrap();
    }
}

fn slow_sim() -> SimConfig {
    SimConfig {
        time_to_ready: Duration::from_secs(100),
        generate_per_minute: 10_000,
        read_per_minute: 100_000,
        ..SimConfig::default()
    }
}

trait NowTs {
    fn now_ts(&self) -> agenthook::clock::Timestamp;
}

impl NowTs for agenthook::clock::ManualClock {
    fn now_ts(&self) -> agenthook::clock::Timestamp {
        use agenthook::clock::Clock;
        self.now()
    }
}

#[tokio::test]
async fn traps_never_end_a_job_and_ready_does() {
    let h = harness(slow_sim(), |s| {
        s.poller.interval = Duration::from_secs(1);
        s.poller.max_interval = Duration::from_secs(1);
        s.poller.first_poll_after = Duration::from_secs(1);
    });
    let job = new_job(&h, "watch the traps", None).await;
    let poller = h.services.poller();
    let mut seen = Vec::new();
    for _ in 0..130 {
        h.clock.advance(Duration::from_secs(1));
        poller.step().await.unwrap();
        let current = stored(&h, &job).await;
        if let Some(status) = current.agent.as_ref().and_then(|a| a["status"].as_str()) {
            if seen.last().map(String::as_str) != Some(status) {
                seen.push(status.to_owned());
            }
            if status != "ready" {
                assert!(current.is_pending(), "ended on {status}: {seen:?}");
            }
        }
        if current.status == JobStatus::Ready {
            break;
        }
    }
    assert!(seen.contains(&"completed".to_owned()), "{seen:?}");
    assert!(seen.contains(&"success".to_owned()), "{seen:?}");
    assert_eq!(seen.last().map(String::as_str), Some("ready"), "{seen:?}");
    assert_eq!(stored(&h, &job).await.status, JobStatus::Ready);
}

async fn run_to_end(h: &Harness, job: &Job) -> Job {
    let poller = h.services.poller();
    for _ in 0..2000 {
        h.clock.advance(Duration::from_secs(1));
        poller.step().await.unwrap();
        let current = stored(h, job).await;
        if !current.is_pending() {
            return current;
        }
    }
    panic!("job never ended: {:?}", stored(h, job).await);
}

#[tokio::test]
async fn success_at_full_progress_is_ready_and_a_null_model_url_is_still_success() {
    let h = harness(
        SimConfig {
            time_to_ready: Duration::from_secs(20),
            ..slow_sim()
        },
        |_| {},
    );
    let success = new_job(&h, "[success-final] finish oddly", None).await;
    let null_model = new_job(&h, "[null-model] no model", None).await;
    let success = run_to_end(&h, &success).await;
    assert_eq!(success.status, JobStatus::Ready);
    assert_eq!(success.agent.as_ref().unwrap()["status"], "success");
    let null_model = run_to_end(&h, &null_model).await;
    assert_eq!(null_model.status, JobStatus::Ready);
    assert!(null_model.agent.as_ref().unwrap()["model_url"].is_null());
}

#[tokio::test]
async fn an_upstream_failure_fails_the_job_with_its_message() {
    let h = harness(
        SimConfig {
            time_to_ready: Duration::from_secs(20),
            ..slow_sim()
        },
        |_| {},
    );
    let job = new_job(&h, "[fail] please", None).await;
    let done = run_to_end(&h, &job).await;
    assert_eq!(done.status, JobStatus::Failed);
    let error = done.error.unwrap();
    assert_eq!(error.code, "GENERATION_FAILED");
    assert!(
        error.message.contains("simulated failure"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn the_read_budget_is_shared_never_exceeded_used_fully_and_fair() {
    const READ_PER_MINUTE: u32 = 120;
    let h = harness(
        SimConfig {
            time_to_ready: Duration::from_secs(100_000),
            read_per_minute: READ_PER_MINUTE,
            generate_per_minute: 100_000,
            ..SimConfig::default()
        },
        |s| {
            s.upstream.read_per_minute = READ_PER_MINUTE;
            s.upstream.generate_per_minute = 100_000;
            s.poller.first_poll_after = Duration::from_secs(5);
            s.poller.interval = Duration::from_secs(5);
            s.poller.max_interval = Duration::from_secs(60);
            s.poller.max_age = Duration::from_secs(100_000);
        },
    );
    // Far more jobs than the budget: 300 jobs polled every 5 s would need 3,600 polls a minute.
    let mut jobs: Vec<Job> = Vec::new();
    for i in 0..300 {
        jobs.push(new_job(&h, &format!("job {i}"), None).await);
    }
    run_for(&h, Duration::from_secs(5), Duration::from_millis(100)).await;
    let reads_before = h.sim.state.status_calls();
    run_for(&h, Duration::from_secs(300), Duration::from_millis(100)).await;
    let stats = h.sim.state.stats();
    let read = &stats.buckets["read"];
    assert_eq!(read.rate_limited, 0, "upstream had to refuse us: {read:?}");
    assert!(read.max_in_any_60s <= READ_PER_MINUTE as usize, "{read:?}");
    let used = h.sim.state.status_calls() - reads_before;
    let share = used as f64 / (READ_PER_MINUTE as f64 * 5.0);
    assert!(
        share >= 0.95,
        "only {:.1}% of the budget used",
        share * 100.0
    );
    let mut never_polled = 0;
    for job in &jobs {
        never_polled += usize::from(stored(&h, job).await.polls == 0);
    }
    assert_eq!(never_polled, 0, "some jobs starved");
}

#[tokio::test]
async fn a_429_pauses_the_bucket_for_retry_after() {
    let h = harness(slow_sim(), |s| {
        s.poller.interval = Duration::from_secs(1);
        s.poller.max_interval = Duration::from_secs(1);
        s.poller.first_poll_after = Duration::from_secs(1);
    });
    let job = new_job(&h, "rate limited", None).await;
    run_for(&h, Duration::from_secs(2), Duration::from_millis(500)).await;
    assert_eq!(stored(&h, &job).await.status, JobStatus::Processing);
    h.sim.state.fail_next(1, 429);
    run_for(&h, Duration::from_secs(2), Duration::from_millis(500)).await;
    let after_429 = h.sim.state.status_calls();
    // The simulator's Retry-After for an injected 429 is at least a second; nothing is sent
    // while the pause lasts, and polling resumes afterwards.
    let paused = h
        .services
        .lifecycle
        .upstream
        .budgets()
        .read
        .is_paused(h.clock.now_ts());
    assert!(paused || h.sim.state.status_calls() == after_429);
    run_for(&h, Duration::from_secs(90), Duration::from_secs(1)).await;
    assert!(
        h.sim.state.status_calls() > after_429,
        "polling never resumed"
    );
    assert!(stored(&h, &job).await.transient_errors >= 1);
}

#[tokio::test]
async fn a_job_past_its_maximum_age_fails_with_timeout() {
    let h = harness(
        SimConfig {
            time_to_ready: Duration::from_secs(100_000),
            ..slow_sim()
        },
        |s| {
            s.poller.max_age = Duration::from_secs(600);
            s.poller.max_interval = Duration::from_secs(60);
        },
    );
    let job = new_job(&h, "too slow", None).await;
    let done = run_to_end(&h, &job).await;
    assert_eq!(done.status, JobStatus::Failed);
    assert_eq!(done.error.unwrap().code, "TIMEOUT");
    assert!(done.completed_at.unwrap() - done.created_at >= chrono::Duration::seconds(600));
}

#[tokio::test]
async fn repeated_404s_fail_the_job_with_not_found() {
    let h = harness(slow_sim(), |s| s.poller.max_not_found = 5);
    let job = new_job(&h, "vanishing", None).await;
    run_for(&h, Duration::from_secs(1), Duration::from_millis(100)).await;
    let agent_id = stored(&h, &job).await.agent_id.unwrap();
    assert!(h.sim.state.forget_agent(&agent_id));
    let done = run_to_end(&h, &job).await;
    assert_eq!(done.status, JobStatus::Failed);
    assert_eq!(done.error.unwrap().code, "NOT_FOUND");
    assert_eq!(done.not_found_streak, 5);
}

#[tokio::test]
async fn a_submission_deferred_by_an_outage_goes_through_afterwards() {
    let h = harness(slow_sim(), |_| {});
    h.sim.state.set_outage(true);
    let job = new_job(&h, "outage", None).await;
    run_for(&h, Duration::from_secs(5), Duration::from_millis(500)).await;
    let during = stored(&h, &job).await;
    assert_eq!(during.status, JobStatus::Submitting);
    assert!(during.submit_attempts >= 1);
    h.sim.state.set_outage(false);
    run_for(&h, Duration::from_secs(120), Duration::from_secs(1)).await;
    let after = stored(&h, &job).await;
    assert_ne!(after.status, JobStatus::Submitting);
    assert!(after.agent_id.is_some());
    assert_eq!(
        h.sim.state.accepted_generates(),
        1,
        "one agent, however many attempts"
    );
}

#[tokio::test]
async fn a_permanent_refusal_in_the_background_fails_the_job() {
    let h = harness(slow_sim(), |_| {});
    h.sim.state.fail_next(1, 503);
    h.sim.state.fail_next(1, 402);
    let job = new_job(&h, "no credits", None).await;
    let done = run_to_end(&h, &job).await;
    assert_eq!(done.status, JobStatus::Failed);
    assert_eq!(done.error.unwrap().code, "INSUFFICIENT_BALANCE");
}

#[tokio::test]
async fn the_terminal_transition_and_its_deliveries_are_written_together() {
    use agenthook::domain::{EventType, Format, SecretSet, Subscription, SubscriptionId};
    let h = harness(
        SimConfig {
            time_to_ready: Duration::from_secs(10),
            ..slow_sim()
        },
        |_| {},
    );
    let now = h.clock.now_ts();
    let subscription = |types: Vec<EventType>| Subscription {
        id: SubscriptionId::generate(),
        tenant: tenant(),
        url: "http://127.0.0.1:9/sub".into(),
        event_types: types,
        format: Format::Standard,
        description: None,
        enabled: true,
        disabled_reason: None,
        secrets: SecretSet::new(agenthook::delivery::signature::SigningSecret::generate()),
        failing_since: None,
        rate_limit_per_second: None,
        created_at: now,
        updated_at: now,
    };
    let wants_ready = subscription(vec![EventType::AgentReady]);
    let wants_failed = subscription(vec![EventType::AgentFailed]);
    h.services
        .store
        .save_subscription(&wants_ready)
        .await
        .unwrap();
    h.services
        .store
        .save_subscription(&wants_failed)
        .await
        .unwrap();
    let job = new_job(&h, "outbox", Some("http://127.0.0.1:9/callback")).await;

    let poller = h.services.poller();
    loop {
        h.clock.advance(Duration::from_secs(1));
        poller.step().await.unwrap();
        let current = stored(&h, &job).await;
        let deliveries = h.services.store.deliveries_of_job(&job.id).await.unwrap();
        // Never one without the other.
        assert_eq!(current.is_pending(), deliveries.is_empty(), "{current:?}");
        if !current.is_pending() {
            break;
        }
    }
    let deliveries = h.services.store.deliveries_of_job(&job.id).await.unwrap();
    assert_eq!(
        deliveries.len(),
        2,
        "the callback and the one matching subscription"
    );
    let urls: Vec<&str> = deliveries.iter().map(|d| d.destination.url()).collect();
    assert!(
        urls.contains(&"http://127.0.0.1:9/callback") && urls.contains(&"http://127.0.0.1:9/sub")
    );
    assert!(deliveries
        .iter()
        .all(|d| d.event_type == EventType::AgentReady));
    assert!(deliveries
        .iter()
        .all(|d| d.payload["data"]["job_id"] == json!(job.id)));
    assert_ne!(deliveries[0].message_id, deliveries[1].message_id);
    assert_eq!(deliveries[0].event_id, deliveries[1].event_id);

    // A second completion of an ended job writes nothing.
    let mut again = stored(&h, &job).await;
    again.status = JobStatus::Failed;
    assert_eq!(h.services.lifecycle.complete(&again).await.unwrap(), None);
    assert_eq!(
        h.services
            .store
            .deliveries_of_job(&job.id)
            .await
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn claimed_jobs_are_leased_and_come_back_when_the_lease_expires() {
    use agenthook::store::WorkKind;
    let h = harness(slow_sim(), |s| s.poller.lease = Duration::from_secs(60));
    let job = new_job(&h, "lease", None).await;
    let store = &h.services.store;
    let now = h.clock.now_ts();
    let lease_until = agenthook::clock::after(now, Duration::from_secs(60));
    let first = store
        .claim_due_jobs(WorkKind::Submit, now, 10, lease_until)
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    assert!(store
        .claim_due_jobs(WorkKind::Submit, now, 10, lease_until)
        .await
        .unwrap()
        .is_empty());
    // The claimer died; after the lease the job is due again.
    let later = agenthook::clock::after(now, Duration::from_secs(61));
    let again = store
        .claim_due_jobs(
            WorkKind::Submit,
            later,
            10,
            agenthook::clock::after(later, Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, job.id);
}

#[tokio::test]
async fn forcing_an_outcome_in_the_simulator_is_seen_on_the_next_poll() {
    let h = harness(slow_sim(), |_| {});
    let job = new_job(&h, "forced", None).await;
    run_for(&h, Duration::from_secs(1), Duration::from_millis(100)).await;
    let agent_id = stored(&h, &job).await.agent_id.unwrap();
    h.sim.state.set_agent_outcome(
        &agent_id,
        Outcome::Failed {
            error_message: Some("boom".into()),
        },
    );
    let done = run_to_end(&h, &job).await;
    assert_eq!(done.status, JobStatus::Failed);
    assert_eq!(done.error.unwrap().message, "boom");
}

#[tokio::test]
async fn idempotency_keys_are_purged_by_housekeeping_once_their_day_is_over() {
    use agenthook::store::{Admission, IdempotencyKey, IdempotentResponse, IDEMPOTENCY_TTL};
    let h = harness(slow_sim(), |_| {});
    let store = &h.services.store;
    let key = IdempotencyKey {
        key: "order-42".into(),
        fingerprint: "body".into(),
    };
    let job = Job::new(tenant(), Map::new(), None, Map::new(), h.clock.now_ts());
    let Admission::Created(hold) = store
        .begin_job(&job, Some(&key), IDEMPOTENCY_TTL)
        .await
        .unwrap()
    else {
        panic!("a new key admits its request");
    };
    let response = IdempotentResponse {
        status: 202,
        body: json!({"id": job.id}),
    };
    store
        .accept_job(job.clone(), false, Some((key.clone(), response)))
        .await
        .unwrap();
    drop(hold);
    let housekeeping = h.services.maintenance();

    h.clock.advance(Duration::from_secs(23 * 3600));
    assert_eq!(
        housekeeping.step().await.unwrap().idempotency_keys,
        0,
        "a live key stays"
    );
    let retry = Job::new(tenant(), Map::new(), None, Map::new(), h.clock.now_ts());
    assert!(matches!(
        store
            .begin_job(&retry, Some(&key), IDEMPOTENCY_TTL)
            .await
            .unwrap(),
        Admission::Replay(_)
    ));

    h.clock.advance(Duration::from_secs(2 * 3600));
    assert_eq!(
        housekeeping.step().await.unwrap().idempotency_keys,
        1,
        "an expired key goes"
    );
    assert_eq!(
        housekeeping.step().await.unwrap().idempotency_keys,
        0,
        "and only once"
    );
    assert!(
        store.job_by_id(&job.id).await.unwrap().is_some(),
        "the job stays"
    );
}
