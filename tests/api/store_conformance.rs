//! The contract of the storage API, stated once for every backend. Each test takes a fresh,
//! empty store from the backend's factory; a second backend runs the whole suite by adding one
//! `conformance!` line at the bottom.

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use agenthook::clock::{after, Timestamp};
use agenthook::domain::{
    Delivery, DeliveryState, Destination, Event, EventType, Format, Job, JobStatus, SecretSet,
    Subscription, SubscriptionId, Tenant,
};
use agenthook::store::{
    Admission, Cancellation, DeliveryQueue, DeliveryUpdate, IdempotencyKey, IdempotentResponse,
    PurgeReport, Room, Store, WorkKind, Writable,
};
use serde_json::{json, Map};

/// A fresh, empty store of one backend, kept alive with whatever the backend needs (a
/// directory, a database).
pub struct Fixture {
    pub store: Store,
    _keep: Box<dyn Send + Sync>,
}

pub fn sled_store() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = agenthook::store::SledStore::open(dir.path(), 8 << 20).expect("open sled");
    Fixture {
        store: std::sync::Arc::new(store),
        _keep: Box::new(dir),
    }
}

/// A fresh PostgreSQL database of the test run's throwaway cluster (`None`, said plainly, when
/// PostgreSQL is not installed).
pub fn pg_store() -> Option<Fixture> {
    let (store, _url) = tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(crate::pg::pg_store())
    })?;
    Some(Fixture {
        store,
        _keep: Box::new(()),
    })
}

fn tenant(name: &str) -> Tenant {
    Tenant::parse(name).unwrap()
}

/// Now, to the millisecond (what every backend keeps of a due time).
fn now() -> Timestamp {
    chrono::DateTime::from_timestamp_millis(chrono::Utc::now().timestamp_millis()).unwrap()
}

/// A pending job of `owner` that upstream accepted, due for a poll at `due`.
async fn stored_job(store: &Store, owner: &Tenant, due: Timestamp) -> Job {
    let mut job = Job::new(
        owner.clone(),
        Map::new(),
        Some("http://127.0.0.1:9/cb".into()),
        Map::new(),
        due,
    );
    job.accepted(format!("agent-{}", job.id), due, due);
    assert!(store.accept_job(job.clone(), false, None).await.unwrap());
    job
}

fn subscription(owner: &Tenant, url: &str) -> Subscription {
    let at = now();
    Subscription {
        id: SubscriptionId::generate(),
        tenant: owner.clone(),
        url: url.into(),
        event_types: vec![EventType::AgentReady],
        format: Format::Standard,
        description: None,
        enabled: true,
        disabled_reason: None,
        secrets: SecretSet::new("whsec_dGVzdHRlc3R0ZXN0dGVzdHRlc3R0ZXN0dGVzdA==".into()),
        failing_since: None,
        rate_limit_per_second: None,
        created_at: at,
        updated_at: at,
    }
}

/// `n` deliveries of one test event of `owner`, due at `at`.
fn deliveries(owner: &Tenant, n: usize, at: Timestamp) -> Vec<Delivery> {
    let event = Event::test(owner.clone(), at);
    (0..n)
        .map(|i| {
            let url = format!("http://127.0.0.1:9/r{i}");
            Delivery::new(&event, None, Destination::Callback { url }, at)
        })
        .collect()
}

fn ready(job: &Job, at: Timestamp) -> Job {
    let mut done = job.clone();
    done.finish(JobStatus::Ready, None, at);
    done
}

pub async fn outbox_a_job_is_terminal_if_and_only_if_its_deliveries_exist(store: Store) {
    let acme = tenant("acme");
    let t = now();
    let job = stored_job(&store, &acme, t).await;
    assert!(store.deliveries_of_job(&job.id).await.unwrap().is_empty());

    let done = ready(&job, t);
    let event = Event::for_job(&done, t).expect("a ready job has an event");
    let fan_out: Vec<Delivery> = (0..3)
        .map(|i| {
            let url = format!("http://127.0.0.1:9/o{i}");
            Delivery::new(
                &event,
                Some(job.id.clone()),
                Destination::Callback { url },
                t,
            )
        })
        .collect();
    assert!(store.complete_job(&done, fan_out.clone()).await.unwrap());
    let stored = store.job(&acme, &job.id).await.unwrap().unwrap();
    assert_eq!(stored.status, JobStatus::Ready);
    assert_eq!(store.deliveries_of_job(&job.id).await.unwrap().len(), 3);

    // A second completion (another outcome, more deliveries) writes nothing.
    let mut again = job.clone();
    again.finish(JobStatus::Failed, None, t);
    let more = deliveries(&acme, 2, t);
    assert!(!store.complete_job(&again, more.clone()).await.unwrap());
    assert_eq!(
        store.job(&acme, &job.id).await.unwrap().unwrap().status,
        JobStatus::Ready
    );
    assert_eq!(store.deliveries_of_job(&job.id).await.unwrap().len(), 3);
    assert!(store.delivery(&acme, &more[0].id).await.unwrap().is_none());

    // A cancelled job cannot be completed either.
    let other = stored_job(&store, &acme, t).await;
    assert!(matches!(
        store.cancel_job(&acme, &other.id, t).await.unwrap(),
        Cancellation::Cancelled(_)
    ));
    assert!(!store
        .complete_job(&ready(&other, t), deliveries(&acme, 1, t))
        .await
        .unwrap());
    assert!(store.deliveries_of_job(&other.id).await.unwrap().is_empty());
    let counts = store.counts().await.unwrap();
    assert_eq!(counts.jobs_processing, 0, "{counts:?}");
    assert_eq!(counts.deliveries_fresh, 3, "{counts:?}");
}

pub async fn a_subscription_and_its_index_are_one_write(store: Store) {
    let (acme, globex) = (tenant("acme"), tenant("globex"));
    let sub = subscription(&acme, "http://127.0.0.1:9/s");
    store.save_subscription(&sub).await.unwrap();
    let listed = store.list_subscriptions(&acme).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, sub.id);
    assert!(store.subscription(&acme, &sub.id).await.unwrap().is_some());
    let wanting = agenthook::store::subscriptions_for(&*store, &acme, EventType::AgentReady)
        .await
        .unwrap();
    assert_eq!(wanting.len(), 1);

    // Another tenant sees nothing and removes nothing.
    assert!(store.list_subscriptions(&globex).await.unwrap().is_empty());
    assert!(store
        .subscription(&globex, &sub.id)
        .await
        .unwrap()
        .is_none());
    assert!(!store.delete_subscription(&globex, &sub.id).await.unwrap());

    let changed = store
        .update_subscription(&sub.id, Box::new(|s| s.enabled = false))
        .await
        .unwrap()
        .unwrap();
    assert!(!changed.enabled);
    assert!(
        !store
            .subscription(&acme, &sub.id)
            .await
            .unwrap()
            .unwrap()
            .enabled
    );

    assert!(store.delete_subscription(&acme, &sub.id).await.unwrap());
    assert!(store.list_subscriptions(&acme).await.unwrap().is_empty());
    assert!(store.subscription(&acme, &sub.id).await.unwrap().is_none());
    assert!(store
        .update_subscription(&sub.id, Box::new(|s| s.enabled = true))
        .await
        .unwrap()
        .is_none());
}

pub async fn one_request_at_a_time_holds_an_idempotency_key(store: Store) {
    let acme = tenant("acme");
    let t = now();
    let key = IdempotencyKey {
        key: "same-key".into(),
        fingerprint: "body-1".into(),
    };
    let ttl = Duration::from_secs(86_400);
    let attempts = (0..16).map(|_| {
        let (store, key) = (store.clone(), key.clone());
        let job = Job::new(acme.clone(), Map::new(), None, Map::new(), t);
        tokio::spawn(async move {
            let admission = store.begin_job(&job, Some(&key), ttl).await.unwrap();
            (job, admission)
        })
    });
    let mut created = Vec::new();
    let mut in_flight = 0;
    for outcome in futures_util::future::join_all(attempts).await {
        match outcome.unwrap() {
            (job, Admission::Created(hold)) => created.push((job, hold)),
            (_, Admission::InFlight { .. }) => in_flight += 1,
            (_, other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(created.len(), 1, "exactly one request admitted");
    assert_eq!(in_flight, 15);

    let (job, hold) = created.pop().unwrap();
    let response = IdempotentResponse {
        status: 202,
        body: json!({"id": job.id}),
    };
    let mut accepted = job.clone();
    accepted.accepted("agent-1".into(), t, t);
    assert!(store
        .accept_job(accepted, false, Some((key.clone(), response.clone())))
        .await
        .unwrap());
    drop(hold);

    let retry = Job::new(acme.clone(), Map::new(), None, Map::new(), t);
    match store.begin_job(&retry, Some(&key), ttl).await.unwrap() {
        Admission::Replay(replayed) => assert_eq!(replayed, response),
        other => panic!("expected a replay, got {other:?}"),
    }
    let changed = IdempotencyKey {
        fingerprint: "body-2".into(),
        ..key.clone()
    };
    assert!(matches!(
        store.begin_job(&retry, Some(&changed), ttl).await.unwrap(),
        Admission::Mismatch
    ));
    // Keys are a tenant's own.
    let other = Job::new(tenant("globex"), Map::new(), None, Map::new(), t);
    assert!(matches!(
        store.begin_job(&other, Some(&key), ttl).await.unwrap(),
        Admission::Created(_)
    ));

    // Expired keys are purged, and then admit a new request.
    let later = after(t, ttl + Duration::from_secs(1));
    assert_eq!(store.purge_idempotency(later, ttl, 100).await.unwrap(), 1);
    let fresh = Job::new(acme.clone(), Map::new(), None, Map::new(), later);
    assert!(matches!(
        store.begin_job(&fresh, Some(&key), ttl).await.unwrap(),
        Admission::Created(_)
    ));
}

pub async fn two_claimers_never_get_the_same_job(store: Store) {
    let acme = tenant("acme");
    let t = now();
    let mut ids = HashSet::new();
    for _ in 0..40 {
        ids.insert(stored_job(&store, &acme, t).await.id);
    }
    let lease = after(t, Duration::from_secs(60));
    let claimers = (0..4).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let batch = store
                    .claim_due_jobs(WorkKind::Poll, t, 3, lease)
                    .await
                    .unwrap();
                if batch.is_empty() {
                    return mine;
                }
                mine.extend(batch.into_iter().map(|j| j.id));
            }
        })
    });
    let mut seen = HashSet::new();
    for claimed in futures_util::future::join_all(claimers).await {
        for id in claimed.unwrap() {
            assert!(seen.insert(id), "a job was claimed twice");
        }
    }
    assert_eq!(seen, ids);
}

pub async fn a_job_whose_lease_ends_goes_to_the_next_claimer(store: Store) {
    let acme = tenant("acme");
    let t = now();
    let job = stored_job(&store, &acme, t).await;
    let lease = after(t, Duration::from_secs(30));
    let first = store
        .claim_due_jobs(WorkKind::Poll, t, 10, lease)
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(
        store.next_due_at(WorkKind::Poll).await.unwrap(),
        Some(lease),
        "due again when the lease ends"
    );
    let before_end = after(t, Duration::from_secs(29));
    assert!(store
        .claim_due_jobs(WorkKind::Poll, before_end, 10, lease)
        .await
        .unwrap()
        .is_empty());
    let at_end = after(t, Duration::from_secs(31));
    let second = store
        .claim_due_jobs(
            WorkKind::Poll,
            at_end,
            10,
            after(at_end, Duration::from_secs(30)),
        )
        .await
        .unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].id, job.id);
    // Saving the job's progress ends the lease: it is due when the job says.
    let mut polled = second[0].clone();
    let next = after(at_end, Duration::from_secs(5));
    polled.next_poll_at = Some(next);
    assert!(store.save_job(&polled).await.unwrap());
    assert_eq!(store.next_due_at(WorkKind::Poll).await.unwrap(), Some(next));
}

pub async fn two_claimers_never_get_the_same_delivery(store: Store) {
    let acme = tenant("acme");
    let t = now();
    let all = deliveries(&acme, 60, t);
    store.insert_deliveries(all.clone()).await.unwrap();
    assert_eq!(store.counts().await.unwrap().deliveries_fresh, 60);
    let claimers = (0..4).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let batch = store
                    .claim_due_deliveries(DeliveryQueue::Fresh, t, 4, Room::unlimited())
                    .await
                    .unwrap();
                if batch.is_empty() {
                    return held;
                }
                held.extend(batch);
            }
        })
    });
    let mut seen = HashSet::new();
    let mut held = Vec::new();
    for claimed in futures_util::future::join_all(claimers).await {
        for claim in claimed.unwrap() {
            assert!(seen.insert(claim.delivery.id.clone()), "claimed twice");
            held.push(claim);
        }
    }
    assert_eq!(seen.len(), 60);

    // A claim let go is due again; a recorded success leaves the queue.
    let released = held.pop().unwrap();
    let released_id = released.delivery.id.clone();
    drop(released);
    let again = store
        .claim_due_deliveries(DeliveryQueue::Fresh, t, 10, Room::unlimited())
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].delivery.id, released_id);
    let recorded = store
        .update_claimed(
            again.into_iter().next().unwrap(),
            Box::new(|d| {
                d.state = DeliveryState::Succeeded;
                d.next_attempt_at = None;
                true
            }),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(recorded.state, DeliveryState::Succeeded);
    assert_eq!(store.counts().await.unwrap().deliveries_fresh, 59);

    // Put back until a time: not claimed before it.
    let later = after(t, Duration::from_secs(10));
    let back = held.pop().unwrap();
    let back_id = back.delivery.id.clone();
    back.put_back(later);
    drop(held);
    let before = store
        .claim_due_deliveries(DeliveryQueue::Fresh, t, 100, Room::unlimited())
        .await
        .unwrap();
    assert_eq!(before.len(), 58, "all but the one put back");
    assert!(before.iter().all(|c| c.delivery.id != back_id));
    let at = store
        .claim_due_deliveries(DeliveryQueue::Fresh, later, 100, Room::unlimited())
        .await
        .unwrap();
    assert_eq!(at.len(), 1);
    assert_eq!(at[0].delivery.id, back_id);
}

pub async fn pages_are_newest_first_and_cursors_cover_everything_once(store: Store) {
    let acme = tenant("acme");
    let t = now();
    let mut jobs = HashSet::new();
    for _ in 0..7 {
        jobs.insert(stored_job(&store, &acme, t).await.id);
    }
    let _other = stored_job(&store, &tenant("globex"), t).await;
    let mut seen = Vec::new();
    let mut after_id = None;
    loop {
        let page = store
            .list_jobs(&acme, None, after_id.as_ref(), 3)
            .await
            .unwrap();
        assert!(page.jobs.len() <= 3);
        seen.extend(page.jobs.iter().map(|j| j.id.clone()));
        match page.next {
            Some(next) => after_id = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7, "each job once: {seen:?}");
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), jobs);
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.as_str().cmp(a.as_str()));
    assert_eq!(seen, sorted, "newest (largest id) first");
    let processing = store
        .list_jobs(&acme, Some(JobStatus::Ready), None, 10)
        .await
        .unwrap();
    assert!(processing.jobs.is_empty(), "the status filter holds");

    let all = deliveries(&acme, 5, t);
    store.insert_deliveries(all).await.unwrap();
    let mut seen = Vec::new();
    let mut after_id = None;
    loop {
        let page = store
            .list_deliveries(&acme, None, after_id.as_ref(), 2)
            .await
            .unwrap();
        seen.extend(page.deliveries.iter().map(|d| d.id.clone()));
        match page.next {
            Some(next) => after_id = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.as_str().cmp(a.as_str()));
    assert_eq!(seen, sorted);
}

pub async fn every_read_and_change_is_scoped_to_its_tenant(store: Store) {
    let (acme, globex) = (tenant("acme"), tenant("globex"));
    let t = now();
    let job = stored_job(&store, &acme, t).await;
    let delivery = deliveries(&acme, 1, t).remove(0);
    store
        .insert_deliveries(vec![delivery.clone()])
        .await
        .unwrap();

    assert!(store.job(&globex, &job.id).await.unwrap().is_none());
    assert!(store
        .list_jobs(&globex, None, None, 10)
        .await
        .unwrap()
        .jobs
        .is_empty());
    assert!(matches!(
        store.cancel_job(&globex, &job.id, t).await.unwrap(),
        Cancellation::NotFound
    ));
    assert!(store
        .job(&acme, &job.id)
        .await
        .unwrap()
        .unwrap()
        .is_pending());

    assert!(store
        .delivery(&globex, &delivery.id)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .list_deliveries(&globex, None, None, 10)
        .await
        .unwrap()
        .deliveries
        .is_empty());
    assert!(matches!(
        store
            .update_delivery(&globex, &delivery.id, Box::new(|_| true))
            .await
            .unwrap(),
        DeliveryUpdate::NotFound
    ));
    assert!(store.delivery(&acme, &delivery.id).await.unwrap().is_some());

    let secrets = store
        .callback_secrets(&acme, || "whsec_acme".into())
        .await
        .unwrap();
    let theirs = store
        .callback_secrets(&globex, || "whsec_globex".into())
        .await
        .unwrap();
    assert_eq!(secrets.current, "whsec_acme");
    assert_eq!(theirs.current, "whsec_globex");
    let again = store
        .callback_secrets(&acme, || "whsec_never".into())
        .await
        .unwrap();
    assert_eq!(again.current, "whsec_acme", "created once");
    let until = after(t, Duration::from_secs(60));
    let rotated = store
        .update_callback_secrets(
            &acme,
            Box::new(move |stored| {
                let mut s = stored.cloned().expect("acme has secrets");
                s.rotate("whsec_acme_2".into(), until);
                Some(s)
            }),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rotated.current, "whsec_acme_2");
    assert_eq!(rotated.previous.unwrap().secret, "whsec_acme");
    let declined = store
        .update_callback_secrets(&acme, Box::new(|_| None))
        .await
        .unwrap();
    assert!(declined.is_none());
    assert_eq!(
        store
            .callback_secrets(&globex, || "whsec_never".into())
            .await
            .unwrap()
            .current,
        "whsec_globex"
    );
}

pub async fn a_dead_letter_retried_by_hand_is_queued_again(store: Store) {
    let acme = tenant("acme");
    let t = now();
    let mut dead = deliveries(&acme, 1, t).remove(0);
    dead.state = DeliveryState::Failed;
    dead.next_attempt_at = None;
    store.insert_deliveries(vec![dead.clone()]).await.unwrap();
    assert!(store
        .claim_due_deliveries(DeliveryQueue::Fresh, t, 10, Room::unlimited())
        .await
        .unwrap()
        .is_empty());
    let update = store
        .update_delivery(
            &acme,
            &dead.id,
            Box::new(move |d| {
                d.state = DeliveryState::Pending;
                d.next_attempt_at = Some(t);
                true
            }),
        )
        .await
        .unwrap();
    assert!(matches!(update, DeliveryUpdate::Updated(_)));
    let claimed = store
        .claim_due_deliveries(DeliveryQueue::Fresh, t, 10, Room::unlimited())
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        claimed[0].delivery.message_id, dead.message_id,
        "same webhook-id"
    );
}

/// A job of `owner` created and accepted at `at`, ended (ready) at `at` with a delivery to its
/// callback and one to `sub`, in `states`.
async fn finished_job(
    store: &Store,
    owner: &Tenant,
    sub: &Subscription,
    at: Timestamp,
    states: [DeliveryState; 2],
) -> (Job, Vec<Delivery>) {
    let job = stored_job(store, owner, at).await;
    let done = ready(&job, at);
    let event = Event::for_job(&done, at).expect("a ready job has an event");
    let mut fan_out = vec![
        Delivery::new(
            &event,
            Some(job.id.clone()),
            Destination::Callback {
                url: "http://127.0.0.1:9/cb".into(),
            },
            at,
        ),
        Delivery::new(
            &event,
            Some(job.id.clone()),
            Destination::subscription(sub),
            at,
        ),
    ];
    for (delivery, state) in fan_out.iter_mut().zip(states) {
        delivery.state = state;
        if state != DeliveryState::Pending {
            delivery.next_attempt_at = None;
        }
    }
    assert!(store.complete_job(&done, fan_out.clone()).await.unwrap());
    (done, fan_out)
}

/// Purge everything that ended before `cutoff`, `limit` jobs per call; the calls' reports.
async fn purge_all(store: &Store, cutoff: Timestamp, limit: usize) -> Vec<PurgeReport> {
    let mut reports = Vec::new();
    let mut after = None;
    loop {
        let report = store
            .purge_finished_before(cutoff, after.as_ref(), limit)
            .await
            .unwrap();
        after = report.next.clone();
        reports.push(report);
        if after.is_none() {
            return reports;
        }
        assert!(reports.len() < 1000, "the cursor does not move on");
    }
}

pub async fn retention_deletes_a_finished_job_with_all_it_caused_and_keeps_pending_work(
    store: Store,
) {
    let acme = tenant("acme");
    let sub = subscription(&acme, "http://127.0.0.1:9/sub");
    store.save_subscription(&sub).await.unwrap();
    let t = now();
    let old = t - chrono::Duration::days(10);
    use DeliveryState::{Failed, Pending, Succeeded};
    // Ended long ago: a delivered callback and a dead letter.
    let (gone, gone_deliveries) = finished_job(&store, &acme, &sub, old, [Succeeded, Failed]).await;
    // Ended long ago, but a delivery is still being retried: pending work.
    let (retrying, _) = finished_job(&store, &acme, &sub, old, [Succeeded, Pending]).await;
    // Created long ago and still processing.
    let processing = stored_job(&store, &acme, old).await;
    tokio::time::sleep(Duration::from_millis(3)).await;
    // Ended just now.
    let (recent, _) = finished_job(&store, &acme, &sub, t, [Succeeded, Failed]).await;
    let counts_before = store.counts().await.unwrap();
    let totals_before = store.stored_totals().await.unwrap();
    assert!(totals_before.bytes > 0, "the data takes room on disk");

    let reports = purge_all(&store, t - chrono::Duration::days(1), 100).await;
    let jobs: usize = reports.iter().map(|r| r.jobs).sum();
    let deliveries: usize = reports.iter().map(|r| r.deliveries).sum();
    assert_eq!(
        (jobs, deliveries),
        (1, 2),
        "one job and both its deliveries"
    );

    // Gone from every read, listing and index.
    assert!(store.job(&acme, &gone.id).await.unwrap().is_none());
    assert!(store.job_by_id(&gone.id).await.unwrap().is_none());
    assert!(store
        .job_by_agent(gone.agent_id.as_deref().unwrap())
        .await
        .unwrap()
        .is_none());
    assert!(store.deliveries_of_job(&gone.id).await.unwrap().is_empty());
    for d in &gone_deliveries {
        assert!(store.delivery(&acme, &d.id).await.unwrap().is_none());
    }
    let listed: Vec<_> = store
        .list_jobs(&acme, None, None, 100)
        .await
        .unwrap()
        .jobs
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert!(!listed.contains(&gone.id));
    for kept in [&retrying.id, &processing.id, &recent.id] {
        assert!(listed.contains(kept), "{kept} is listed still");
    }
    let ready_listed = store
        .list_jobs(&acme, Some(JobStatus::Ready), None, 100)
        .await
        .unwrap()
        .jobs;
    assert_eq!(ready_listed.len(), 2, "the retrying job and the recent one");
    let gone_ids: HashSet<_> = gone_deliveries.iter().map(|d| d.id.clone()).collect();
    let listed_deliveries = store
        .list_deliveries(&acme, None, None, 100)
        .await
        .unwrap()
        .deliveries;
    assert_eq!(
        listed_deliveries.len(),
        4,
        "the other jobs' deliveries stay"
    );
    assert!(listed_deliveries.iter().all(|d| !gone_ids.contains(&d.id)));
    let dead_letters = store
        .list_deliveries(&acme, Some(DeliveryState::Failed), None, 100)
        .await
        .unwrap()
        .deliveries;
    assert_eq!(dead_letters.len(), 1, "only the recent job's dead letter");
    // The dead letters `recover` would send again: the recent job's, not the deleted job's.
    let to_sub = store
        .failed_deliveries_of_subscription(&sub.id)
        .await
        .unwrap();
    assert_eq!(to_sub.len(), 1);
    assert!(to_sub.iter().all(|d| !gone_ids.contains(&d.id)));
    assert!(to_sub.iter().all(|d| d.state == DeliveryState::Failed));

    // Pending work untouched, and still due.
    assert_eq!(
        store.deliveries_of_job(&retrying.id).await.unwrap().len(),
        2
    );
    assert_eq!(
        store
            .job_by_id(&processing.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        JobStatus::Processing
    );
    assert_eq!(store.counts().await.unwrap(), counts_before);
    let due = store
        .claim_due_deliveries(DeliveryQueue::Fresh, t, 10, Room::unlimited())
        .await
        .unwrap();
    assert_eq!(due.len(), 1, "the retrying delivery is still queued");
    assert_eq!(due[0].delivery.job_id.as_ref(), Some(&retrying.id));
    drop(due);

    let totals_after = store.stored_totals().await.unwrap();
    assert_eq!(totals_after.jobs, totals_before.jobs - 1);
    assert_eq!(totals_after.deliveries, totals_before.deliveries - 2);
    assert_eq!(totals_after.events, totals_before.events - 1);

    // A second pass finds nothing more.
    let again = purge_all(&store, t - chrono::Duration::days(1), 100).await;
    assert_eq!(again.iter().map(|r| r.jobs).sum::<usize>(), 0);
}

pub async fn retention_goes_in_batches_and_its_cursor_reaches_every_job(store: Store) {
    let acme = tenant("acme");
    let sub = subscription(&acme, "http://127.0.0.1:9/sub");
    store.save_subscription(&sub).await.unwrap();
    let old = now() - chrono::Duration::days(40);
    use DeliveryState::{Failed, Succeeded};
    for _ in 0..7 {
        finished_job(&store, &acme, &sub, old, [Succeeded, Failed]).await;
    }
    let reports = purge_all(&store, now() - chrono::Duration::days(30), 3).await;
    assert!(reports.iter().all(|r| r.jobs <= 3), "{reports:?}");
    assert_eq!(reports.iter().map(|r| r.jobs).sum::<usize>(), 7);
    assert_eq!(reports.iter().map(|r| r.deliveries).sum::<usize>(), 14);
    assert!(store
        .list_jobs(&acme, None, None, 100)
        .await
        .unwrap()
        .jobs
        .is_empty());
    assert_eq!(store.stored_totals().await.unwrap().jobs, 0);
}

pub async fn a_store_that_works_says_it_takes_writes(store: Store) {
    assert_eq!(store.check_writable().await.unwrap(), Writable::Yes);
    assert_eq!(store.current_fault(), None);
}

pub async fn a_pushed_job_is_claimed_at_once_and_slowed_polls_are_pulled_in(store: Store) {
    let acme = tenant("acme");
    let t = now();
    let later = after(t, Duration::from_secs(600));
    let job = stored_job(&store, &acme, later).await;
    let lease = after(t, Duration::from_secs(30));
    let claimed = store.claim_job_for_poll(&job.id, lease).await.unwrap();
    assert_eq!(claimed.map(|j| j.id), Some(job.id.clone()));
    assert_eq!(
        store.next_due_at(WorkKind::Poll).await.unwrap(),
        Some(lease)
    );
    // A job still being submitted is not polled.
    let submitting = Job::new(acme.clone(), Map::new(), None, Map::new(), t);
    store.hold_job(&submitting, None).await.unwrap();
    assert!(store
        .claim_job_for_poll(&submitting.id, lease)
        .await
        .unwrap()
        .is_none());

    // Polls due after the horizon are moved back to it, at the latest.
    let slow = stored_job(&store, &acme, after(t, Duration::from_secs(3600))).await;
    let horizon = after(t, Duration::from_secs(60));
    let soon = after(t, Duration::from_secs(5));
    let moved = store
        .pull_in_polls(horizon, 100, Box::new(move |_| soon))
        .await
        .unwrap();
    assert_eq!(moved, 1, "only the poll due after the horizon");
    let pulled = store.job(&acme, &slow.id).await.unwrap().unwrap();
    assert_eq!(pulled.next_poll_at, Some(soon));

    assert!(store.upstream_webhook().await.unwrap().is_none());
    let registration = agenthook::store::UpstreamWebhook {
        id: "wh_1".into(),
        url: "http://127.0.0.1:9/v1/upstream/webhooks".into(),
        secret: "whsec_upstream".into(),
    };
    store.save_upstream_webhook(&registration).await.unwrap();
    assert_eq!(store.upstream_webhook().await.unwrap(), Some(registration));
}

/// Run one conformance test against a fresh store of a backend.
pub async fn with_store<M, F, Fut>(make: fn() -> M, test: F)
where
    M: Into<Option<Fixture>>,
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    // `None`: the backend is not installed here (its factory said so).
    let Some(fixture) = make().into() else {
        return;
    };
    test(fixture.store.clone()).await;
}

/// The whole suite against the backend that `$make` opens, as a module of tests named `$name`.
macro_rules! conformance {
    ($name:ident, $make:path) => {
        mod $name {
            use super::*;
            conformance!(@tests $make;
                outbox_a_job_is_terminal_if_and_only_if_its_deliveries_exist,
                a_subscription_and_its_index_are_one_write,
                one_request_at_a_time_holds_an_idempotency_key,
                two_claimers_never_get_the_same_job,
                a_job_whose_lease_ends_goes_to_the_next_claimer,
                two_claimers_never_get_the_same_delivery,
                pages_are_newest_first_and_cursors_cover_everything_once,
                every_read_and_change_is_scoped_to_its_tenant,
                a_dead_letter_retried_by_hand_is_queued_again,
                retention_deletes_a_finished_job_with_all_it_caused_and_keeps_pending_work,
                retention_goes_in_batches_and_its_cursor_reaches_every_job,
                a_store_that_works_says_it_takes_writes,
                a_pushed_job_is_claimed_at_once_and_slowed_polls_are_pulled_in,
            );
        }
    };
    (@tests $make:path; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                with_store($make, super::$test).await;
            }
        )*
    };
}

conformance!(sled, sled_store);
conformance!(postgres, pg_store);
