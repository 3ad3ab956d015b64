//! The receivers that have rules of their own (issue 16): Zapier REST Hooks, Slack and Discord
//! incoming webhooks, and subscriptions with a rate limit. Every receiver is a real HTTP server
//! on 127.0.0.1 (`receiver.rs`) answering as the platform does. Timing is checked on a manual
//! clock, the delivery worker driven with `step()`; a few tests run the whole service.

use std::time::{Duration, Instant};

use agenthook::clock::Clock;
use agenthook::delivery::signature::SigningSecret;
use agenthook::delivery::worker::{AttemptReport, DeliveryWorker};
use agenthook::domain::{
    Delivery, DeliveryId, DeliveryState, Destination, Event, EventType, Format, SecretSet,
    Subscription, SubscriptionId, Tenant,
};
use serde_json::{json, Value};

use crate::helpers::*;
use crate::receiver::{Receiver, Reply};

const WAIT: Duration = Duration::from_secs(8);

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

// ---------------------------------------------------------------------------------------------
// A worker on a manual clock
// ---------------------------------------------------------------------------------------------

/// The delivery worker and storage on a manual clock, without the HTTP server or background
/// loops: the test moves time and calls `step()`.
struct Rig {
    h: Harness,
    worker: DeliveryWorker,
}

fn tenant() -> Tenant {
    Tenant::parse("tenant-a").unwrap()
}

impl Rig {
    /// Three attempts per delivery, all due at once, so only the receivers' answers and the
    /// pacing decide when the next one goes.
    fn new() -> Rig {
        Rig::with(|_| {})
    }

    fn with(tweak: impl FnOnce(&mut agenthook::config::Settings)) -> Rig {
        let h = harness(fast_sim_config(), |s| {
            s.delivery.retry_schedule = vec![ms(0), ms(0), ms(0)];
            tweak(s);
        });
        let worker = h.services.delivery_worker().expect("worker");
        Rig { h, worker }
    }

    async fn subscribe(&self, url: &str, format: Format, rate_limit: Option<u32>) -> Subscription {
        let now = self.h.clock.now();
        let sub = Subscription {
            id: SubscriptionId::generate(),
            tenant: tenant(),
            url: url.to_owned(),
            event_types: vec![EventType::AgentReady, EventType::AgentFailed],
            format,
            description: None,
            enabled: true,
            disabled_reason: None,
            secrets: SecretSet::new(SigningSecret::generate()),
            failing_since: None,
            rate_limit_per_second: rate_limit,
            created_at: now,
            updated_at: now,
        };
        self.h.services.store.save_subscription(&sub).await.unwrap();
        sub
    }

    /// Queue a `webhook.test` event to `sub`, as `POST /v1/subscriptions/{id}/test` does.
    async fn queue(&self, sub: &Subscription) -> DeliveryId {
        self.queue_due(sub, Duration::ZERO).await
    }

    /// `n` of [`Rig::queue`].
    async fn queue_n(&self, sub: &Subscription, n: usize) -> Vec<DeliveryId> {
        self.queue_n_due(sub, n, Duration::ZERO).await
    }

    /// `n` of [`Rig::queue_due`].
    async fn queue_n_due(&self, sub: &Subscription, n: usize, ago: Duration) -> Vec<DeliveryId> {
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            ids.push(self.queue_due(sub, ago).await);
        }
        ids
    }

    /// [`Rig::queue`], made and due `ago` before now (ahead of those queued now).
    async fn queue_due(&self, sub: &Subscription, ago: Duration) -> DeliveryId {
        let now = self.h.clock.now() - chrono::Duration::from_std(ago).unwrap();
        let event = Event::test(tenant(), now);
        let delivery = Delivery::new(&event, None, Destination::subscription(sub), now);
        self.h
            .services
            .store
            .insert_deliveries(vec![delivery.clone()])
            .await
            .unwrap();
        delivery.id
    }

    async fn step(&self) -> Vec<AttemptReport> {
        self.worker.step().await.expect("step")
    }

    /// Move the clock by `by` and step once; the attempts made.
    async fn after(&self, by: Duration) -> Vec<AttemptReport> {
        self.h.clock.advance(by);
        self.step().await
    }

    async fn delivery(&self, id: &DeliveryId) -> Delivery {
        self.h
            .services
            .store
            .delivery(&tenant(), id)
            .await
            .unwrap()
            .expect("the delivery exists")
    }

    async fn subscription(&self, sub: &Subscription) -> Subscription {
        self.h
            .services
            .store
            .subscription(&tenant(), &sub.id)
            .await
            .unwrap()
            .expect("the subscription still exists")
    }
}

/// How many of `reports` went to deliveries in `ids`.
fn count_for(reports: &[AttemptReport], ids: &[DeliveryId]) -> usize {
    reports
        .iter()
        .filter(|r| ids.iter().any(|id| id.as_str() == r.delivery_id))
        .count()
}

// ---------------------------------------------------------------------------------------------
// Slack
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn slack_gets_one_message_per_second_per_url_queued_not_dropped_and_others_never_wait() {
    let rig = Rig::new();
    let rx = Receiver::start().await;
    let slack_a = rig
        .subscribe(&rx.url("/slack/a"), Format::Slack, None)
        .await;
    let slack_b = rig
        .subscribe(&rx.url("/slack/b"), Format::Slack, None)
        .await;
    let standard = rig
        .subscribe(&rx.url("/standard"), Format::Standard, None)
        .await;
    let to_a: Vec<DeliveryId> = rig.queue_n(&slack_a, 3).await;
    let to_b = vec![rig.queue(&slack_b).await];
    let to_standard: Vec<DeliveryId> = rig.queue_n(&standard, 3).await;

    // At once: one message to each Slack URL, and everything to the other destination.
    let first = rig.step().await;
    assert_eq!(count_for(&first, &to_a), 1, "{first:?}");
    assert_eq!(count_for(&first, &to_b), 1, "{first:?}");
    assert_eq!(count_for(&first, &to_standard), 3, "{first:?}");
    assert_eq!(rx.requests_to("/slack/a").len(), 1);
    assert_eq!(rx.requests_to("/standard").len(), 3);

    // The next message to Slack URL a waits a whole second, then one per second.
    assert!(rig.step().await.is_empty());
    assert!(rig.after(ms(999)).await.is_empty());
    assert_eq!(count_for(&rig.after(ms(1)).await, &to_a), 1);
    assert!(rig.after(ms(999)).await.is_empty());
    assert_eq!(count_for(&rig.after(ms(1)).await, &to_a), 1);
    assert!(rig.after(ms(5000)).await.is_empty(), "nothing is left");

    // Queued, never dropped: each was sent once and succeeded.
    let sent = rx.requests_to("/slack/a");
    assert_eq!(sent.len(), 3);
    let mut ids: Vec<&str> = sent.iter().map(|r| r.header("webhook-id")).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3, "three different messages");
    for id in &to_a {
        assert_eq!(rig.delivery(id).await.state, DeliveryState::Succeeded);
        assert_eq!(rig.delivery(id).await.attempts.len(), 1);
    }
}

#[tokio::test]
async fn a_slack_backlog_larger_than_the_worker_s_room_does_not_stand_in_front_of_others() {
    // Two request slots for first attempts, and ten Slack messages queued ahead of a message
    // to another destination: the waiting Slack messages take no slot, so it goes at once.
    let rig = Rig::with(|s| s.delivery.concurrency = 2);
    let rx = Receiver::start().await;
    let slack = rig.subscribe(&rx.url("/slack"), Format::Slack, None).await;
    let standard = rig
        .subscribe(&rx.url("/standard"), Format::Standard, None)
        .await;
    let backlog: Vec<DeliveryId> = rig.queue_n_due(&slack, 10, ms(1000)).await;
    let other = rig.queue(&standard).await;
    let first = rig.step().await;
    assert_eq!(count_for(&first, &backlog), 1, "{first:?}");
    assert_eq!(
        count_for(&first, std::slice::from_ref(&other)),
        1,
        "{first:?}"
    );
    // The backlog then leaves at Slack's pace, every message in turn.
    for _ in 0..9 {
        assert_eq!(count_for(&rig.after(ms(1000)).await, &backlog), 1);
    }
    assert!(rig.after(ms(5000)).await.is_empty());
    assert_eq!(rx.requests_to("/slack").len(), 10);
}

#[tokio::test]
async fn two_subscriptions_to_one_slack_url_share_its_pace() {
    let rig = Rig::new();
    let rx = Receiver::start().await;
    let one = rig
        .subscribe(&rx.url("/slack/shared"), Format::Slack, None)
        .await;
    let two = rig
        .subscribe(&rx.url("/slack/shared"), Format::Slack, None)
        .await;
    let ids = vec![rig.queue(&one).await, rig.queue(&two).await];
    assert_eq!(count_for(&rig.step().await, &ids), 1);
    assert!(rig.after(ms(999)).await.is_empty());
    assert_eq!(count_for(&rig.after(ms(1)).await, &ids), 1);
    assert_eq!(rx.requests_to("/slack/shared").len(), 2);
}

#[tokio::test]
async fn slack_payload_errors_are_dead_letters_at_once_and_the_subscription_stays() {
    for error in ["invalid_payload", "no_text"] {
        let rig = Rig::new();
        let rx = Receiver::start().await;
        rx.script(vec![Reply::status(400).body(error)]);
        let sub = rig.subscribe(&rx.url("/slack"), Format::Slack, None).await;
        let id = rig.queue(&sub).await;
        let reports = rig.step().await;
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].state, DeliveryState::Failed, "{error}");
        // Not retried, however long we wait, though the schedule has two more attempts.
        assert!(rig.after(ms(10_000)).await.is_empty(), "{error}");
        let dead = rig.delivery(&id).await;
        assert_eq!(dead.state, DeliveryState::Failed);
        assert_eq!(dead.attempts.len(), 1);
        assert_eq!(dead.attempts[0].status_code, Some(400));
        assert_eq!(dead.attempts[0].response_body.as_deref(), Some(error));
        assert_eq!(rx.requests().len(), 1);
        // The channel itself is fine: the subscription stays enabled and gets the next one.
        assert!(rig.subscription(&sub).await.enabled, "{error}");
        let next = rig.queue(&sub).await;
        assert_eq!(
            count_for(&rig.after(ms(1000)).await, std::slice::from_ref(&next)),
            1
        );
        assert_eq!(rig.delivery(&next).await.state, DeliveryState::Succeeded);
    }
}

#[tokio::test]
async fn slack_dead_channel_answers_disable_the_subscription_with_that_reason() {
    for (status, error) in [
        (403, "action_prohibited"),
        (404, "channel_not_found"),
        (410, "channel_is_archived"),
    ] {
        let rig = Rig::new();
        let rx = Receiver::start().await;
        rx.script(vec![Reply::status(status).body(error)]);
        let sub = rig.subscribe(&rx.url("/slack"), Format::Slack, None).await;
        let first = rig.queue(&sub).await;
        rig.step().await;
        // Queued before the answer came back, it waits in the queue.
        let second = rig.queue(&sub).await;
        let disabled = rig.subscription(&sub).await;
        assert!(!disabled.enabled, "{status} {error}");
        assert_eq!(
            disabled.disabled_reason.as_deref(),
            Some(format!("Slack answered {status} {error}").as_str())
        );
        let dead = rig.delivery(&first).await;
        assert_eq!(dead.state, DeliveryState::Failed);
        assert_eq!(dead.attempts.len(), 1);
        // The message queued behind it is not sent to the dead channel.
        rig.after(ms(1000)).await;
        assert_eq!(rig.delivery(&second).await.state, DeliveryState::Failed);
        assert!(rig.delivery(&second).await.attempts.is_empty());
        assert_eq!(rx.requests().len(), 1, "{status} {error}");
    }
}

#[tokio::test]
async fn slack_429_holds_every_message_to_that_url_until_retry_after() {
    let rig = Rig::new();
    let rx = Receiver::start().await;
    rx.script(vec![Reply::status(429)
        .header("retry-after", "30")
        .body("rate_limited")]);
    let sub = rig.subscribe(&rx.url("/slack"), Format::Slack, None).await;
    let limited = rig.queue(&sub).await;
    let other = rig.subscribe(&rx.url("/other"), Format::Slack, None).await;

    let first = rig.step().await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].status_code, Some(429));
    assert_eq!(first[0].state, DeliveryState::Pending);
    let behind = rig.queue(&sub).await;
    // Another Slack URL is not held up.
    let elsewhere = rig.queue(&other).await;
    assert_eq!(
        count_for(&rig.after(ms(1000)).await, std::slice::from_ref(&elsewhere)),
        1
    );
    // Nothing more goes to the rate-limited URL for 30 s.
    assert!(rig.after(ms(28_999)).await.is_empty());
    let at_30s = rig.after(ms(1)).await;
    assert_eq!(at_30s.len(), 1, "{at_30s:?}");
    // ...then one per second again.
    assert!(rig.after(ms(999)).await.is_empty());
    assert_eq!(rig.after(ms(1)).await.len(), 1);
    for id in [&limited, &behind] {
        assert_eq!(rig.delivery(id).await.state, DeliveryState::Succeeded);
    }
    assert_eq!(rig.delivery(&limited).await.attempts.len(), 2);
    assert_eq!(rx.requests_to("/slack").len(), 3);
    assert!(rig.subscription(&sub).await.enabled);
}

#[tokio::test]
async fn slack_5xx_is_retried() {
    let rig = Rig::new();
    let rx = Receiver::start().await;
    rx.script(vec![Reply::status(500).body("internal_error")]);
    let sub = rig.subscribe(&rx.url("/slack"), Format::Slack, None).await;
    let id = rig.queue(&sub).await;
    assert_eq!(rig.step().await[0].state, DeliveryState::Pending);
    // The retry keeps Slack's pace too.
    assert!(rig.after(ms(999)).await.is_empty());
    assert_eq!(rig.after(ms(1)).await[0].state, DeliveryState::Succeeded);
    let done = rig.delivery(&id).await;
    let codes: Vec<Option<u16>> = done.attempts.iter().map(|a| a.status_code).collect();
    assert_eq!(codes, [Some(500), Some(200)]);
    assert!(rig.subscription(&sub).await.enabled);
}

// ---------------------------------------------------------------------------------------------
// Discord
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn discord_429_waits_for_the_body_retry_after_when_it_is_longer_than_the_header() {
    let rig = Rig::new();
    let rx = Receiver::start().await;
    rx.script(vec![Reply::status(429)
        .header("content-type", "application/json")
        .header("retry-after", "1")
        .body(
            r#"{"message": "You are being rate limited.", "retry_after": 2.5, "global": false}"#,
        )]);
    let sub = rig
        .subscribe(&rx.url("/discord"), Format::Discord, None)
        .await;
    let id = rig.queue(&sub).await;
    let first = rig.step().await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].status_code, Some(429));
    assert_eq!(first[0].state, DeliveryState::Pending);
    // 2.5 s (fractional, from the body) beats 1 s from the header.
    assert!(rig.after(ms(2499)).await.is_empty());
    assert_eq!(
        count_for(&rig.after(ms(1)).await, std::slice::from_ref(&id)),
        1
    );
    assert_eq!(rig.delivery(&id).await.state, DeliveryState::Succeeded);
    assert!(rig.subscription(&sub).await.enabled);
}

#[tokio::test]
async fn discord_429_header_longer_than_the_body_is_honoured() {
    let rig = Rig::new();
    let rx = Receiver::start().await;
    rx.script(vec![Reply::status(429)
        .header("content-type", "application/json")
        .header("retry-after", "3")
        .body(
            r#"{"message": "You are being rate limited.", "retry_after": 0.25, "global": false}"#,
        )]);
    let sub = rig
        .subscribe(&rx.url("/discord"), Format::Discord, None)
        .await;
    let id = rig.queue(&sub).await;
    assert_eq!(rig.step().await[0].status_code, Some(429));
    assert!(rig.after(ms(2999)).await.is_empty());
    assert_eq!(
        count_for(&rig.after(ms(1)).await, std::slice::from_ref(&id)),
        1
    );
    assert_eq!(rig.delivery(&id).await.state, DeliveryState::Succeeded);
}

#[tokio::test]
async fn discord_429_pauses_every_message_to_that_webhook() {
    let rig = Rig::new();
    let rx = Receiver::start().await;
    rx.script(vec![Reply::status(429)
        .header("content-type", "application/json")
        .body(
            r#"{"message": "You are being rate limited.", "retry_after": 1.5, "global": false}"#,
        )]);
    let sub = rig
        .subscribe(&rx.url("/discord"), Format::Discord, None)
        .await;
    rig.queue(&sub).await;
    assert_eq!(rig.step().await.len(), 1);
    // Queued after the 429: it waits for the pause too.
    rig.queue(&sub).await;
    assert!(rig.after(ms(1499)).await.is_empty());
    assert_eq!(rig.after(ms(1)).await.len(), 2);
    assert_eq!(rx.requests().len(), 3);
}

#[tokio::test]
async fn discord_unknown_webhook_disables_the_subscription() {
    let rig = Rig::new();
    let rx = Receiver::start().await;
    rx.script(vec![Reply::status(404)
        .header("content-type", "application/json")
        .body(r#"{"message": "Unknown Webhook", "code": 10015}"#)]);
    let sub = rig
        .subscribe(&rx.url("/discord"), Format::Discord, None)
        .await;
    let id = rig.queue(&sub).await;
    let reports = rig.step().await;
    assert_eq!(reports[0].state, DeliveryState::Failed);
    let disabled = rig.subscription(&sub).await;
    assert!(!disabled.enabled);
    assert_eq!(
        disabled.disabled_reason.as_deref(),
        Some("Discord answered 404 Unknown Webhook (code 10015)")
    );
    assert_eq!(rig.delivery(&id).await.attempts.len(), 1);
    // Nothing more is sent to it.
    let later = rig.queue(&sub).await;
    rig.after(ms(1000)).await;
    assert!(rig.delivery(&later).await.attempts.is_empty());
    assert_eq!(rx.requests().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// rate_limit_per_second
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_rate_limit_spaces_deliveries_to_its_subscription_and_never_delays_others() {
    let rig = Rig::new();
    let rx = Receiver::start().await;
    let limited = rig
        .subscribe(&rx.url("/limited"), Format::Standard, Some(2))
        .await;
    let free = rig
        .subscribe(&rx.url("/free"), Format::Standard, None)
        .await;
    let to_limited: Vec<DeliveryId> = rig.queue_n(&limited, 4).await;
    let to_free: Vec<DeliveryId> = rig.queue_n(&free, 4).await;

    let first = rig.step().await;
    assert_eq!(count_for(&first, &to_limited), 1, "{first:?}");
    assert_eq!(count_for(&first, &to_free), 4, "{first:?}");
    // Two per second: one every 500 ms.
    for _ in 0..3 {
        assert!(rig.after(ms(499)).await.is_empty());
        assert_eq!(count_for(&rig.after(ms(1)).await, &to_limited), 1);
    }
    assert!(rig.after(ms(5000)).await.is_empty());
    for id in to_limited.iter().chain(&to_free) {
        assert_eq!(rig.delivery(id).await.state, DeliveryState::Succeeded);
    }
    assert_eq!(rx.requests_to("/limited").len(), 4);
}

#[tokio::test]
async fn a_rate_limit_changed_or_removed_applies_to_what_is_still_queued() {
    let rig = Rig::new();
    let rx = Receiver::start().await;
    let sub = rig
        .subscribe(&rx.url("/limited"), Format::Standard, Some(1))
        .await;
    let ids: Vec<DeliveryId> = rig.queue_n(&sub, 3).await;
    assert_eq!(count_for(&rig.step().await, &ids), 1);
    // The owner removes the limit: the queued ones go at their kept time, then no pacing.
    rig.h
        .services
        .store
        .update_subscription(&sub.id, Box::new(|s| s.rate_limit_per_second = None))
        .await
        .unwrap();
    assert!(rig.after(ms(500)).await.is_empty());
    let rest = rig.after(ms(1500)).await;
    assert_eq!(count_for(&rest, &ids), 2, "{rest:?}");
    let more: Vec<DeliveryId> = rig.queue_n(&sub, 3).await;
    assert_eq!(count_for(&rig.step().await, &more), 3);
}

// ---------------------------------------------------------------------------------------------
// Through the HTTP API
// ---------------------------------------------------------------------------------------------

async fn json_of(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    let body = res.json().await.unwrap_or(Value::Null);
    (status, body)
}

async fn post_json(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    json_of(app.post(path, KEY_A).json(&body).send().await.unwrap()).await
}

async fn patch_json(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    json_of(
        app.http
            .patch(app.url(path))
            .bearer_auth(KEY_A)
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn get_json(app: &TestApp, path: &str) -> (u16, Value) {
    json_of(app.get(path, KEY_A).send().await.unwrap()).await
}

/// Poll `GET path` until `done` holds; the last answer.
async fn wait_for_json(app: &TestApp, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, body) = get_json(app, path).await;
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "waited for GET {path}: {body:#}");
        tokio::time::sleep(ms(20)).await;
    }
}

fn id_of(value: &Value) -> String {
    value["id"].as_str().expect("an id").to_owned()
}

#[tokio::test]
async fn rate_limit_per_second_is_created_read_changed_and_removed_through_the_api() {
    let app = spawn_app().await;
    let (status, sub) = post_json(
        &app,
        "/v1/subscriptions",
        json!({"url": "http://127.0.0.1:9/hook", "rate_limit_per_second": 5}),
    )
    .await;
    assert_eq!(status, 201, "{sub}");
    assert_eq!(sub["rate_limit_per_second"], 5);
    let path = format!("/v1/subscriptions/{}", id_of(&sub));
    assert_eq!(get_json(&app, &path).await.1["rate_limit_per_second"], 5);

    let (status, changed) = patch_json(&app, &path, json!({"rate_limit_per_second": 20})).await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["rate_limit_per_second"], 20);
    // A patch that does not name it keeps it.
    let (_, kept) = patch_json(&app, &path, json!({"description": "x"})).await;
    assert_eq!(kept["rate_limit_per_second"], 20);
    let (_, removed) = patch_json(&app, &path, json!({"rate_limit_per_second": null})).await;
    assert!(removed["rate_limit_per_second"].is_null(), "{removed}");
    assert!(get_json(&app, &path).await.1["rate_limit_per_second"].is_null());

    let (_, unlimited) = post_json(
        &app,
        "/v1/subscriptions",
        json!({"url": "http://127.0.0.1:9/other"}),
    )
    .await;
    assert!(unlimited["rate_limit_per_second"].is_null(), "{unlimited}");
}

#[tokio::test]
async fn a_bad_rate_limit_is_a_400_naming_the_field() {
    let app = spawn_app().await;
    let (_, sub) = post_json(
        &app,
        "/v1/subscriptions",
        json!({"url": "http://127.0.0.1:9/hook"}),
    )
    .await;
    let path = format!("/v1/subscriptions/{}", id_of(&sub));
    for bad in [
        json!(0),
        json!(-1),
        json!(1.5),
        json!("5"),
        json!(1001),
        json!(true),
    ] {
        let (status, body) = post_json(
            &app,
            "/v1/subscriptions",
            json!({"url": "http://127.0.0.1:9/hook", "rate_limit_per_second": bad}),
        )
        .await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["code"], "BAD_REQUEST");
        assert_eq!(body["details"], "rate_limit_per_second", "{bad}: {body}");
        let (status, body) = patch_json(&app, &path, json!({"rate_limit_per_second": bad})).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["details"], "rate_limit_per_second", "{bad}: {body}");
    }
}

#[tokio::test]
async fn slack_messages_through_the_running_service_arrive_a_second_apart_and_others_at_once() {
    let app = spawn_app().await;
    let rx = Receiver::start().await;
    let (_, slack) = post_json(
        &app,
        "/v1/subscriptions",
        json!({"url": rx.url("/slack"), "format": "slack"}),
    )
    .await;
    let (_, standard) = post_json(&app, "/v1/subscriptions", json!({"url": rx.url("/std")})).await;
    let started = Instant::now();
    for _ in 0..3 {
        let (status, _) = post_json(
            &app,
            &format!("/v1/subscriptions/{}/test", id_of(&slack)),
            json!({}),
        )
        .await;
        assert_eq!(status, 202);
    }
    let (status, _) = post_json(
        &app,
        &format!("/v1/subscriptions/{}/test", id_of(&standard)),
        json!({}),
    )
    .await;
    assert_eq!(status, 202);
    let to_std = rx.wait_for_path("/std", 1, WAIT).await;
    assert!(
        to_std[0].at - started < ms(900),
        "the other destination waited {:?}",
        to_std[0].at - started
    );
    let to_slack = rx.wait_for_path("/slack", 3, WAIT).await;
    // Sends start a full second apart (exactly so on the manual clock, tests above); on a
    // loaded machine one request may take longer than the next to arrive.
    for pair in to_slack.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= ms(900), "two Slack messages {gap:?} apart");
    }
    let span = to_slack[2].at - to_slack[0].at;
    assert!(span >= ms(1900), "three Slack messages within {span:?}");
}

// ---------------------------------------------------------------------------------------------
// Zapier REST Hooks
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn zapier_subscribes_with_target_url_and_event_and_unsubscribes_with_delete() {
    let app = spawn_app().await;
    let rx = Receiver::start().await;
    let (status, sub) = post_json(
        &app,
        "/v1/subscriptions",
        json!({"target_url": rx.url("/zap"), "event": "agent.ready"}),
    )
    .await;
    assert_eq!(status, 201, "{sub}");
    let id = id_of(&sub);
    assert!(id.starts_with("sub_"), "{sub}");
    assert_eq!(sub["url"], rx.url("/zap"));
    assert_eq!(sub["event_types"], json!(["agent.ready"]));
    assert_eq!(sub["format"], "standard");
    assert_eq!(sub["enabled"], true);

    // The Zap gets agent.ready events (and not agent.failed ones).
    let (_, failed) = app
        .create_job(
            KEY_A,
            json!({"prompt": "please [fail]", "callback_url": rx.url("/cb")}),
        )
        .await;
    app.wait_for_status(KEY_A, &id_of(&failed), "failed").await;
    let (_, job) = app.create_job(KEY_A, json!({"prompt": "hello"})).await;
    let got = rx.wait_for_path("/zap", 1, WAIT).await;
    let event = got[0].json();
    assert_eq!(event["type"], "agent.ready");
    assert_eq!(event["data"]["job_id"], job["id"]);
    rx.wait_for_path("/cb", 1, WAIT).await;
    assert_eq!(rx.requests_to("/zap").len(), 1);

    // Zapier unsubscribes with DELETE (it may send a body; it is ignored).
    let res = app
        .delete(&format!("/v1/subscriptions/{id}"), KEY_A)
        .json(&json!({"id": id}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let (status, _) = get_json(&app, &format!("/v1/subscriptions/{id}")).await;
    assert_eq!(status, 404);
    let (_, later) = app
        .create_job(
            KEY_A,
            json!({"prompt": "again", "callback_url": rx.url("/cb")}),
        )
        .await;
    app.wait_for_status(KEY_A, &id_of(&later), "ready").await;
    rx.wait_for_path("/cb", 2, WAIT).await;
    assert_eq!(
        rx.requests_to("/zap").len(),
        1,
        "nothing after unsubscribing"
    );
}

#[tokio::test]
async fn a_bad_zapier_subscribe_body_is_a_400_naming_the_field() {
    let app = spawn_app().await;
    for (body, field) in [
        (
            json!({"target_url": "not a url", "event": "agent.ready"}),
            "target_url",
        ),
        (json!({"target_url": 42}), "target_url"),
        (
            json!({"target_url": "http://127.0.0.1:9/z", "event": "agent.paused"}),
            "event",
        ),
        (
            json!({"target_url": "http://127.0.0.1:9/z", "url": "http://127.0.0.1:9/z"}),
            "url",
        ),
    ] {
        let (status, answer) = post_json(&app, "/v1/subscriptions", body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["code"], "BAD_REQUEST");
        assert_eq!(answer["details"], field, "{body}: {answer}");
    }
}

#[tokio::test]
async fn a_410_from_a_zapier_target_disables_the_subscription_and_deletes_nothing() {
    let app = spawn_app_with(fast_sim_config(), |s| {
        s.delivery.retry_schedule = vec![ms(0), ms(100), ms(100)];
    })
    .await;
    let rx = Receiver::start().await;
    rx.set_default(Reply::status(410));
    let (_, sub) = post_json(
        &app,
        "/v1/subscriptions",
        json!({"target_url": rx.url("/zap"), "event": "agent.ready"}),
    )
    .await;
    let path = format!("/v1/subscriptions/{}", id_of(&sub));
    app.create_job(KEY_A, json!({"prompt": "hello"})).await;
    let disabled = wait_for_json(&app, &path, |s| s["enabled"] == false).await;
    assert!(
        disabled["disabled_reason"]
            .as_str()
            .is_some_and(|r| r.contains("410")),
        "{disabled:#}"
    );
    // Still there, with its delivery as a dead letter of one attempt.
    assert_eq!(disabled["id"], sub["id"]);
    // (The subscription is written first, then the attempt.)
    let dead = wait_for_json(&app, "/v1/deliveries?state=failed", |page| {
        page["data"].as_array().is_some_and(|d| !d.is_empty())
    })
    .await;
    let dead = dead["data"].as_array().unwrap().clone();
    assert_eq!(dead.len(), 1, "{dead:#?}");
    let (_, detail) = get_json(&app, &format!("/v1/deliveries/{}", id_of(&dead[0]))).await;
    let attempts = detail["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "a 410 is not retried: {detail:#}");
    assert_eq!(attempts[0]["status_code"], 410);
    assert_eq!(rx.requests_to("/zap").len(), 1);
}

/// Every key of `value`, nested objects as `a.b`, sorted.
fn key_paths(value: &Value, prefix: &str, out: &mut Vec<String>) {
    if let Value::Object(map) = value {
        for (key, inner) in map {
            let path = format!("{prefix}{key}");
            out.push(path.clone());
            // Metadata is the client's own; its keys are not part of the shape.
            if key != "metadata" {
                key_paths(inner, &format!("{path}."), out);
            }
        }
    }
    out.sort();
}

fn shape(value: &Value) -> Vec<String> {
    let mut keys = Vec::new();
    key_paths(value, "", &mut keys);
    keys
}

#[tokio::test]
async fn zapier_samples_have_exactly_the_shape_of_live_events() {
    let app = spawn_app().await;
    let rx = Receiver::start().await;

    // Before any job: one made-up sample of each type asked for.
    let (status, samples) = get_json(&app, "/v1/events/sample?type=agent.ready").await;
    assert_eq!(status, 200, "{samples}");
    let samples = samples.as_array().expect("an array").clone();
    assert_eq!(samples.len(), 1);
    assert_eq!(samples[0]["type"], "agent.ready");
    let (_, both) = get_json(&app, "/v1/events/sample").await;
    let made_up = both.as_array().unwrap().clone();
    let types: Vec<&str> = made_up
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["agent.ready", "agent.failed"]);

    // Live events of both types, as a receiver gets them.
    for prompt in ["hello", "please [fail]"] {
        let (_, job) = app
            .create_job(
                KEY_A,
                json!({"prompt": prompt, "callback_url": rx.url("/live"), "metadata": {"order": 7}}),
            )
            .await;
        let status = if prompt == "hello" { "ready" } else { "failed" };
        app.wait_for_status(KEY_A, &id_of(&job), status).await;
    }
    let live = rx.wait_for_path("/live", 2, WAIT).await;
    for received in &live {
        let event = received.json();
        let event_type = event["type"].as_str().unwrap();
        let (status, samples) =
            get_json(&app, &format!("/v1/events/sample?type={event_type}")).await;
        assert_eq!(status, 200);
        let sample = &samples.as_array().unwrap()[0];
        // The newest real one comes first, as the receiver got it.
        assert_eq!(shape(sample), shape(&event), "{event_type}");
        assert_eq!(sample["type"], event["type"]);
        assert_eq!(sample["data"], event["data"], "{event_type}");
        // The made-up sample had the live shape too.
        let made_up = made_up.iter().find(|e| e["type"] == event["type"]).unwrap();
        assert_eq!(shape(made_up), shape(&event), "{event_type}");
    }
    let live_ready = live
        .iter()
        .map(|r| r.json())
        .find(|e| e["type"] == "agent.ready")
        .unwrap();

    // Another tenant sees none of tenant A's jobs in its samples.
    let other: Value = app
        .get("/v1/events/sample?type=agent.ready", KEY_B)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(other[0]["data"]["job_id"], live_ready["data"]["job_id"]);
}

#[tokio::test]
async fn the_sample_route_refuses_unknown_types_and_needs_a_key() {
    let app = spawn_app().await;
    let (status, body) = get_json(&app, "/v1/events/sample?type=agent.paused").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["details"], "type");
    let (status, body) = get_json(&app, "/v1/events/sample?kind=agent.ready").await;
    assert_eq!(status, 400, "{body}");
    let res = app
        .http
        .get(app.url("/v1/events/sample"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}
