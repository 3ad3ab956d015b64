//! Signed webhook delivery: job callbacks, subscriptions and their formats, retries, dead
//! letters, rotation, recovery, fairness between receivers, and the network policy. Every
//! receiver is a real HTTP server on 127.0.0.1 (`receiver.rs`).

use std::time::{Duration, Instant};

use agenthook::clock::Clock;
use agenthook::config::Settings;
use agenthook::delivery::signature::{self, SigningSecret};
use agenthook::delivery::worker::{AttemptReport, DeliveryWorker, RESPONSE_BODY_LIMIT};
use agenthook::domain::{
    Delivery, DeliveryId, DeliveryState, Destination, Event, EventType, Format, SecretSet,
    Subscription, SubscriptionId, Tenant,
};
use serde_json::{json, Value};

use crate::helpers::*;
use crate::receiver::{Received, Receiver, Reply};

/// Long enough for anything that should happen "soon" on a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(8);

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// Retries 100 ms apart: three attempts in all.
fn quick_retries(s: &mut Settings) {
    s.delivery.retry_schedule = vec![ms(0), ms(100), ms(100)];
}

/// One attempt only: a failure is a dead letter at once.
fn single_attempt(s: &mut Settings) {
    s.delivery.retry_schedule = vec![ms(0)];
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

async fn json_of(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    let body = res.json().await.unwrap_or(Value::Null);
    (status, body)
}

async fn get_json(app: &TestApp, key: &str, path: &str) -> Value {
    let (status, body) = json_of(app.get(path, key).send().await.unwrap()).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

async fn callback_secret(app: &TestApp, key: &str) -> String {
    get_json(app, key, "/v1/callback-secret").await["secret"]
        .as_str()
        .expect("a callback secret")
        .to_owned()
}

async fn create_subscription(app: &TestApp, key: &str, body: Value) -> Value {
    let (status, sub) = json_of(
        app.post("/v1/subscriptions", key)
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{sub}");
    assert!(sub["id"].as_str().unwrap().starts_with("sub_"), "{sub}");
    sub
}

fn id_of(value: &Value) -> String {
    value["id"].as_str().expect("an id").to_owned()
}

/// `POST /v1/subscriptions/{id}/test`: the queued delivery.
async fn send_test_event(app: &TestApp, key: &str, sub_id: &str) -> Value {
    let (status, delivery) = json_of(
        app.post(&format!("/v1/subscriptions/{sub_id}/test"), key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 202, "{delivery}");
    delivery
}

async fn job_id_of(app: &TestApp, key: &str, body: Value) -> String {
    let (status, job) = app.create_job(key, body).await;
    assert_eq!(status, 202, "{job}");
    id_of(&job)
}

/// Poll `GET path` until `done` holds; the last answer. Panics after `WAIT`.
async fn wait_for_json(
    app: &TestApp,
    key: &str,
    path: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let body = get_json(app, key, path).await;
        if done(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "waited {WAIT:?} for {what}; last GET {path}: {body:#}"
        );
        tokio::time::sleep(ms(20)).await;
    }
}

async fn wait_for_delivery_state(app: &TestApp, key: &str, id: &str, state: &str) -> Value {
    wait_for_json(
        app,
        key,
        &format!("/v1/deliveries/{id}"),
        &format!("delivery {id} to be {state}"),
        |d| d["state"] == state,
    )
    .await
}

/// Wait until the job has queued its deliveries (it has ended); them.
async fn job_deliveries(app: &TestApp, key: &str, job_id: &str, n: usize) -> Vec<Value> {
    let list = wait_for_json(
        app,
        key,
        &format!("/v1/jobs/{job_id}/deliveries"),
        &format!("{n} deliveries of job {job_id}"),
        |l| l["data"].as_array().is_some_and(|d| d.len() >= n),
    )
    .await;
    list["data"].as_array().unwrap().clone()
}

fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Verify a received webhook with `secret` as a receiver using this crate would.
fn verify(r: &Received, secret: &str) -> Result<(), signature::VerifyError> {
    verify_header(r, secret, r.header("webhook-signature"))
}

fn verify_header(
    r: &Received,
    secret: &str,
    signature_header: &str,
) -> Result<(), signature::VerifyError> {
    signature::verify(
        &SigningSecret::parse(secret).expect("a valid secret"),
        r.header("webhook-id"),
        r.header("webhook-timestamp"),
        signature_header,
        &r.body,
        now_unix(),
        signature::DEFAULT_TOLERANCE_SECS,
    )
}

/// The Standard Webhooks headers, present and well formed, signed by `secret`.
fn assert_signed(r: &Received, secret: &str) {
    assert!(
        r.header("webhook-id").starts_with("msg_"),
        "webhook-id: {:?}",
        r.headers
    );
    let timestamp: i64 = r
        .header("webhook-timestamp")
        .parse()
        .unwrap_or_else(|_| panic!("webhook-timestamp is not an integer: {:?}", r.headers));
    assert!(
        (timestamp - now_unix()).abs() <= 10,
        "webhook-timestamp {timestamp} is not close to now"
    );
    assert!(
        r.header("webhook-signature").starts_with("v1,"),
        "webhook-signature: {:?}",
        r.headers
    );
    assert_eq!(r.header("content-type"), "application/json");
    assert!(
        r.header("user-agent").starts_with("agenthook/"),
        "user-agent: {:?}",
        r.header("user-agent")
    );
    assert_eq!(r.method, "POST");
    verify(r, secret).unwrap_or_else(|e| panic!("the signature does not verify: {e}"));
}

/// Where `standardwebhooks` can be imported from: `None` when `python3` has it already;
/// otherwise it is installed once, from PyPI, into a directory of its own (so a fresh machine
/// needs nothing beyond Python and pip).
fn python_deps() -> Option<std::path::PathBuf> {
    static DEPS: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    DEPS.get_or_init(|| {
        use std::process::Command;
        let has_it = Command::new("python3")
            .args(["-c", "import standardwebhooks"])
            .output()
            .is_ok_and(|o| o.status.success());
        if has_it {
            return None;
        }
        let dir = std::env::temp_dir().join("agenthook-test-python-deps");
        let installed = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
            ])
            .arg(&dir)
            .arg("standardwebhooks==1.1.0")
            .status()
            .is_ok_and(|s| s.success());
        installed.then_some(dir)
    })
    .clone()
}

/// Verify a received webhook with the PyPI `standardwebhooks` package, unchanged, once per
/// secret. `Err` carries what Python said.
async fn python_verify(r: &Received, secrets: &[&str]) -> Result<(), String> {
    use base64::Engine as _;
    const SCRIPT: &str = r#"
import base64, json, sys
try:
    from standardwebhooks.webhooks import Webhook
except ImportError as e:
    print(e)
    sys.exit(3)
given = json.load(sys.stdin)
body = base64.b64decode(given["body"])
for secret in given["secrets"]:
    try:
        Webhook(secret).verify(body, given["headers"])
    except Exception as e:
        print(type(e).__name__, e)
        sys.exit(1)
print("verified")
"#;
    let input = json!({
        "body": base64::engine::general_purpose::STANDARD.encode(&r.body),
        "headers": r.headers,
        "secrets": secrets,
    })
    .to_string();
    let output = tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        use std::process::{Command, Stdio};
        let mut command = Command::new("python3");
        if let Some(deps) = python_deps() {
            command.env("PYTHONPATH", deps);
        }
        let mut child = command
            .args(["-c", SCRIPT])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run python3 ({e}); this test needs Python 3 with standardwebhooks: \
                     python3 -m pip install standardwebhooks==1.1.0"
                )
            });
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    match output.status.code() {
        Some(0) => Ok(()),
        Some(3) => panic!(
            "the Python package standardwebhooks is not installed for python3 ({}); install it \
             with: python3 -m pip install standardwebhooks==1.1.0 (.ci/run does)",
            said.trim()
        ),
        _ => Err(said),
    }
}

fn attempts(delivery: &Value) -> Vec<Value> {
    delivery["attempts"].as_array().expect("attempts").clone()
}

fn webhook_ids(requests: &[Received]) -> Vec<&str> {
    requests.iter().map(|r| r.header("webhook-id")).collect()
}

// ---------------------------------------------------------------------------------------------
// Job callbacks
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_job_callback_receives_a_signed_agent_ready_event() {
    let app = spawn_app().await;
    let rx = Receiver::start().await;
    let metadata = json!({"order": 42, "tags": ["a", "b"], "nested": {"x": null}});
    let (status, job) = app
        .create_job(
            KEY_A,
            json!({"prompt": "You are a friendly assistant", "callback_url": rx.url("/hook"),
                   "metadata": metadata}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let job_id = id_of(&job);

    let got = rx.wait_for(1, WAIT).await;
    let r = &got[0];
    assert_eq!(r.path, "/hook");
    let secret = callback_secret(&app, KEY_A).await;
    assert_signed(r, &secret);
    assert!(
        verify(r, &SigningSecret::generate()).is_err(),
        "another secret must not verify"
    );
    assert!(
        verify(r, &callback_secret(&app, KEY_B).await).is_err(),
        "tenant B's callback secret must not verify tenant A's callbacks"
    );

    let event = r.json();
    assert_eq!(event["type"], "agent.ready", "{event:#}");
    let timestamp = event["timestamp"].as_str().expect("timestamp");
    chrono::DateTime::parse_from_rfc3339(timestamp).expect("an RFC 3339 timestamp");
    let data = &event["data"];
    assert_eq!(data["job_id"], job_id.as_str());
    assert_eq!(data["agent_id"], job["agent_id"]);
    assert_eq!(data["status"], "ready");
    assert_eq!(data["metadata"], metadata);
    assert_eq!(data["system_prompt"], "You are a friendly assistant");
    assert!(data["model_url"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(data["error_message"].is_null());
    for field in [
        "name",
        "image_url",
        "video_url",
        "created_at",
        "completed_at",
    ] {
        assert!(data.get(field).is_some(), "data.{field} missing: {data:#}");
    }
    assert!(!data["completed_at"].is_null());

    let deliveries = job_deliveries(&app, KEY_A, &job_id, 1).await;
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0]["webhook_id"], r.header("webhook-id"));
    assert_eq!(deliveries[0]["event_type"], "agent.ready");
    assert_eq!(deliveries[0]["destination"]["kind"], "callback");
    let id = id_of(&deliveries[0]);
    let delivery = wait_for_delivery_state(&app, KEY_A, &id, "succeeded").await;
    assert_eq!(
        delivery["payload"], event,
        "the stored body is the one sent"
    );
    assert_eq!(attempts(&delivery).len(), 1);
    assert_eq!(rx.requests().len(), 1, "a success is sent once");
}

#[tokio::test]
async fn a_failed_agent_sends_a_signed_agent_failed_event_with_its_error_message() {
    let app = spawn_app().await;
    let rx = Receiver::start().await;
    let job_id = job_id_of(
        &app,
        KEY_A,
        json!({"prompt": "[fail] please", "callback_url": rx.url("/hook"), "metadata": {"k": 1}}),
    )
    .await;
    let got = rx.wait_for(1, WAIT).await;
    assert_signed(&got[0], &callback_secret(&app, KEY_A).await);
    let event = got[0].json();
    assert_eq!(event["type"], "agent.failed", "{event:#}");
    assert_eq!(event["data"]["job_id"], job_id.as_str());
    assert_eq!(event["data"]["status"], "failed");
    assert_eq!(event["data"]["metadata"], json!({"k": 1}));
    assert!(
        event["data"]["error_message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "error_message: {event:#}"
    );
}

// ---------------------------------------------------------------------------------------------
// Interoperability
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_python_standardwebhooks_library_verifies_deliveries_unchanged() {
    let app = spawn_app().await;
    let rx = Receiver::start().await;
    let old = callback_secret(&app, KEY_A).await;
    job_id_of(
        &app,
        KEY_A,
        json!({"prompt": "héllo ✓ \"quoted\"", "callback_url": rx.url("/one"),
               "metadata": {"emoji": "🦀"}}),
    )
    .await;
    let first = rx.wait_for_path("/one", 1, WAIT).await.remove(0);
    python_verify(&first, &[&old])
        .await
        .unwrap_or_else(|e| panic!("standardwebhooks refused the webhook: {e}"));
    assert!(
        python_verify(&first, &[&SigningSecret::generate()])
            .await
            .is_err(),
        "standardwebhooks must refuse a webhook checked with another secret"
    );

    // During a rotation the webhook carries two signatures; receivers holding either secret
    // accept it.
    let (status, rotated) = json_of(
        app.post("/v1/callback-secret/rotate", KEY_A)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_owned();
    job_id_of(
        &app,
        KEY_A,
        json!({"prompt": "p", "callback_url": rx.url("/two")}),
    )
    .await;
    let second = rx.wait_for_path("/two", 1, WAIT).await.remove(0);
    assert_eq!(second.header("webhook-signature").split(' ').count(), 2);
    python_verify(&second, &[&new, &old])
        .await
        .unwrap_or_else(|e| panic!("standardwebhooks refused a rotation-era webhook: {e}"));
}

// ---------------------------------------------------------------------------------------------
// Subscriptions
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_subscription_receives_only_the_event_types_it_asked_for() {
    let app = spawn_app().await;
    let rx = Receiver::start().await;
    let ready = create_subscription(
        &app,
        KEY_A,
        json!({"url": rx.url("/ready"), "event_types": ["agent.ready"]}),
    )
    .await;
    let failed = create_subscription(
        &app,
        KEY_A,
        json!({"url": rx.url("/failed"), "event_types": ["agent.failed"]}),
    )
    .await;
    let ok_job = job_id_of(&app, KEY_A, json!({"prompt": "fine"})).await;
    let bad_job = job_id_of(&app, KEY_A, json!({"prompt": "[fail]"})).await;

    let ok_deliveries = job_deliveries(&app, KEY_A, &ok_job, 1).await;
    let bad_deliveries = job_deliveries(&app, KEY_A, &bad_job, 1).await;
    assert_eq!(ok_deliveries.len(), 1, "{ok_deliveries:#?}");
    assert_eq!(
        ok_deliveries[0]["destination"]["subscription_id"],
        ready["id"]
    );
    assert_eq!(bad_deliveries.len(), 1, "{bad_deliveries:#?}");
    assert_eq!(
        bad_deliveries[0]["destination"]["subscription_id"],
        failed["id"]
    );
    for d in ok_deliveries.iter().chain(&bad_deliveries) {
        wait_for_delivery_state(&app, KEY_A, &id_of(d), "succeeded").await;
    }

    let to_ready = rx.requests_to("/ready");
    let to_failed = rx.requests_to("/failed");
    assert_eq!(to_ready.len(), 1);
    assert_eq!(to_failed.len(), 1);
    assert_eq!(to_ready[0].json()["type"], "agent.ready");
    assert_eq!(to_ready[0].json()["data"]["job_id"], ok_job.as_str());
    assert_eq!(to_failed[0].json()["type"], "agent.failed");
    assert_eq!(to_failed[0].json()["data"]["job_id"], bad_job.as_str());
    assert_signed(&to_ready[0], ready["secret"].as_str().unwrap());
    assert_signed(&to_failed[0], failed["secret"].as_str().unwrap());
    assert!(
        verify(&to_ready[0], failed["secret"].as_str().unwrap()).is_err(),
        "each subscription signs with its own secret"
    );
}

#[tokio::test]
async fn a_subscription_never_receives_another_tenants_events() {
    let app = spawn_app().await;
    let rx = Receiver::start().await;
    let sub_a = create_subscription(&app, KEY_A, json!({"url": rx.url("/a")})).await;
    let sub_b = create_subscription(&app, KEY_B, json!({"url": rx.url("/b")})).await;
    let job_a = job_id_of(&app, KEY_A, json!({"prompt": "a"})).await;
    let job_b = job_id_of(&app, KEY_B, json!({"prompt": "b"})).await;

    let of_a = job_deliveries(&app, KEY_A, &job_a, 1).await;
    let of_b = job_deliveries(&app, KEY_B, &job_b, 1).await;
    assert_eq!(of_a.len(), 1, "{of_a:#?}");
    assert_eq!(of_a[0]["destination"]["subscription_id"], sub_a["id"]);
    assert_eq!(of_b.len(), 1, "{of_b:#?}");
    assert_eq!(of_b[0]["destination"]["subscription_id"], sub_b["id"]);
    wait_for_delivery_state(&app, KEY_A, &id_of(&of_a[0]), "succeeded").await;
    wait_for_delivery_state(&app, KEY_B, &id_of(&of_b[0]), "succeeded").await;

    let to_a = rx.requests_to("/a");
    let to_b = rx.requests_to("/b");
    assert_eq!(to_a.len(), 1);
    assert_eq!(to_b.len(), 1);
    assert_eq!(to_a[0].json()["data"]["job_id"], job_a.as_str());
    assert_eq!(to_b[0].json()["data"]["job_id"], job_b.as_str());

    // Neither tenant sees the other's deliveries or subscriptions.
    let (status, _) = json_of(
        app.get(&format!("/v1/deliveries/{}", id_of(&of_a[0])), KEY_B)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    let listed = get_json(&app, KEY_B, "/v1/deliveries").await;
    let ids: Vec<&Value> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["id"])
        .collect();
    assert_eq!(ids, vec![&of_b[0]["id"]]);
    let (status, _) = json_of(
        app.post(&format!("/v1/subscriptions/{}/test", id_of(&sub_a)), KEY_B)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        status, 404,
        "tenant B cannot send to tenant A's subscription"
    );
}

#[tokio::test]
async fn slack_and_discord_messages_carry_valid_signatures_too() {
    let app = spawn_app().await;
    let rx = Receiver::start().await;
    let slack = create_subscription(
        &app,
        KEY_A,
        json!({"url": rx.url("/slack"), "format": "slack"}),
    )
    .await;
    let discord = create_subscription(
        &app,
        KEY_A,
        json!({"url": rx.url("/discord"), "format": "discord"}),
    )
    .await;
    // A long prompt and metadata: Discord refuses content over 2000 characters.
    let prompt = format!("You are <@everyone> {}", "very ".repeat(1200));
    let job_id = job_id_of(
        &app,
        KEY_A,
        json!({"prompt": prompt, "metadata": {"note": "n".repeat(3000)}}),
    )
    .await;

    let to_slack = rx.wait_for_path("/slack", 1, WAIT).await.remove(0);
    assert_signed(&to_slack, slack["secret"].as_str().unwrap());
    let body = to_slack.json();
    assert!(
        body["text"].as_str().is_some_and(|t| !t.is_empty()),
        "{body:#}"
    );
    assert!(
        body["blocks"].as_array().is_some_and(|b| !b.is_empty()),
        "{body:#}"
    );

    let to_discord = rx.wait_for_path("/discord", 1, WAIT).await.remove(0);
    assert_signed(&to_discord, discord["secret"].as_str().unwrap());
    let body = to_discord.json();
    let content = body["content"].as_str().expect("content");
    assert!(!content.is_empty());
    assert!(
        content.chars().count() <= 2000,
        "discord content has {} characters",
        content.chars().count()
    );
    assert!(
        content.contains(&job_id),
        "the message names the job: {content}"
    );
    assert!(
        to_slack.json().to_string().contains(&job_id),
        "the message names the job"
    );
    assert_ne!(
        to_slack.header("webhook-id"),
        to_discord.header("webhook-id"),
        "one webhook-id per event and destination"
    );
}

// ---------------------------------------------------------------------------------------------
// Stepped: the delivery worker driven by `step()` on a manual clock
// ---------------------------------------------------------------------------------------------

/// The service's parts on a manual clock (no HTTP server, no background loops), a receiver on
/// 127.0.0.1, and a subscription of tenant A to it: attempts are made by `step()`, and time
/// passes only when the test says so.
struct Stepped {
    h: Harness,
    worker: DeliveryWorker,
    rx: Receiver,
    sub: Subscription,
}

fn tenant_a() -> Tenant {
    Tenant::parse("tenant-a").unwrap()
}

async fn stepped(tweak: impl FnOnce(&mut Settings)) -> Stepped {
    let h = harness(fast_sim_config(), tweak);
    let worker = h.services.delivery_worker().unwrap();
    let rx = Receiver::start().await;
    let now = h.clock.now();
    let sub = Subscription {
        id: SubscriptionId::generate(),
        tenant: tenant_a(),
        url: rx.url("/hook"),
        event_types: vec![EventType::AgentReady],
        format: Format::Standard,
        description: None,
        enabled: true,
        disabled_reason: None,
        secrets: SecretSet::new(SigningSecret::generate()),
        failing_since: None,
        rate_limit_per_second: None,
        created_at: now,
        updated_at: now,
    };
    h.services.store.save_subscription(&sub).await.unwrap();
    Stepped { h, worker, rx, sub }
}

impl Stepped {
    fn now(&self) -> agenthook::clock::Timestamp {
        self.h.clock.now()
    }

    /// Queue a `webhook.test` event to the subscription, due now, as `POST .../test` does.
    async fn send_test_event(&self) -> DeliveryId {
        let now = self.now();
        let event = Event::test(tenant_a(), now);
        let delivery = Delivery::new(&event, None, Destination::subscription(&self.sub), now);
        self.h
            .services
            .store
            .insert_deliveries(vec![delivery.clone()])
            .await
            .unwrap();
        delivery.id
    }

    async fn delivery(&self, id: &DeliveryId) -> Delivery {
        self.h
            .services
            .store
            .delivery(&tenant_a(), id)
            .await
            .unwrap()
            .expect("the delivery is stored")
    }

    async fn subscription(&self) -> Subscription {
        self.h
            .services
            .store
            .subscription(&tenant_a(), &self.sub.id)
            .await
            .unwrap()
            .expect("the subscription is stored")
    }

    /// Every attempt due now, made and recorded.
    async fn step(&self) -> Vec<AttemptReport> {
        self.worker.step().await.unwrap()
    }

    /// Move the clock on by `by`, then [`Stepped::step`].
    async fn step_after(&self, by: Duration) -> Vec<AttemptReport> {
        self.h.clock.advance(by);
        self.step().await
    }
}

// ---------------------------------------------------------------------------------------------
// Retries and dead letters
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn failed_attempts_are_retried_with_the_same_webhook_id_until_a_2xx() {
    let app = spawn_app_with(fast_sim_config(), quick_retries).await;
    let rx = Receiver::start().await;
    let big = "a".repeat(20 * 1024);
    rx.script(vec![
        Reply::status(500).body(big.clone()),
        Reply::status(500).body("boom"),
    ]);
    let job_id = job_id_of(
        &app,
        KEY_A,
        json!({"prompt": "p", "callback_url": rx.url("/hook")}),
    )
    .await;
    let got = rx.wait_for(3, WAIT).await;
    let secret = callback_secret(&app, KEY_A).await;
    let first_id = got[0].header("webhook-id");
    for r in &got {
        assert_eq!(
            r.header("webhook-id"),
            first_id,
            "same webhook-id on retries"
        );
        assert_eq!(r.body, got[0].body, "same body on retries");
        assert_signed(r, &secret);
    }

    let deliveries = job_deliveries(&app, KEY_A, &job_id, 1).await;
    let id = id_of(&deliveries[0]);
    let delivery = wait_for_delivery_state(&app, KEY_A, &id, "succeeded").await;
    assert_eq!(delivery["webhook_id"], first_id);
    let tried = attempts(&delivery);
    assert_eq!(tried.len(), 3, "{delivery:#}");
    let codes: Vec<&Value> = tried.iter().map(|a| &a["status_code"]).collect();
    assert_eq!(codes, [&json!(500), &json!(500), &json!(200)]);
    let errors: Vec<&Value> = tried.iter().map(|a| &a["error"]).collect();
    assert_eq!(errors, [&json!("http"), &json!("http"), &Value::Null]);
    for a in &tried {
        assert!(a["duration_ms"].is_u64(), "{a}");
        assert!(a["at"].is_string(), "{a}");
    }
    let kept = tried[0]["response_body"].as_str().unwrap();
    assert_eq!(RESPONSE_BODY_LIMIT, 16384);
    assert_eq!(kept.len(), 16384, "the first 16 KiB of the response body");
    assert!(big.starts_with(kept));
    assert_eq!(tried[1]["response_body"], "boom");
    assert_eq!(tried[2]["response_body"], "ok");
    assert_eq!(rx.requests().len(), 3, "nothing is sent after the success");
}

#[tokio::test]
async fn a_delivery_failing_every_attempt_is_a_dead_letter_that_can_be_retried() {
    let app = spawn_app_with(fast_sim_config(), quick_retries).await;
    let rx = Receiver::start().await;
    rx.set_default(Reply::status(500).body("down"));
    let job_id = job_id_of(
        &app,
        KEY_A,
        json!({"prompt": "p", "callback_url": rx.url("/hook")}),
    )
    .await;
    let id = id_of(&job_deliveries(&app, KEY_A, &job_id, 1).await[0]);
    let dead = wait_for_delivery_state(&app, KEY_A, &id, "failed").await;
    assert_eq!(attempts(&dead).len(), 3, "{dead:#}");
    assert!(dead["next_attempt_at"].is_null());
    assert_eq!(rx.requests().len(), 3);

    let failed = get_json(&app, KEY_A, "/v1/deliveries?state=failed").await;
    assert!(
        failed["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["id"] == id.as_str()),
        "{failed:#}"
    );
    let succeeded = get_json(&app, KEY_A, "/v1/deliveries?state=succeeded").await;
    assert!(succeeded["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["id"] != id.as_str()));

    rx.set_default(Reply::ok());
    let (status, retried) = json_of(
        app.post(&format!("/v1/deliveries/{id}/retry"), KEY_A)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 202, "{retried}");
    let done = wait_for_delivery_state(&app, KEY_A, &id, "succeeded").await;
    assert_eq!(attempts(&done).len(), 4);
    let got = rx.wait_for(4, WAIT).await;
    assert_eq!(got.len(), 4);
    assert_eq!(
        got[3].header("webhook-id"),
        dead["webhook_id"].as_str().unwrap(),
        "a manual retry keeps the webhook-id"
    );
    assert_signed(&got[3], &callback_secret(&app, KEY_A).await);
}

#[tokio::test]
async fn a_redirect_is_a_failure_and_is_never_followed() {
    let app = spawn_app_with(fast_sim_config(), |s| {
        s.delivery.retry_schedule = vec![ms(0), ms(50)];
    })
    .await;
    let rx = Receiver::start().await;
    rx.set_default(Reply::status(302).header("location", &rx.url("/elsewhere")));
    let sub = create_subscription(&app, KEY_A, json!({"url": rx.url("/hook")})).await;
    let delivery = send_test_event(&app, KEY_A, &id_of(&sub)).await;
    let dead = wait_for_delivery_state(&app, KEY_A, &id_of(&delivery), "failed").await;
    let tried = attempts(&dead);
    assert_eq!(tried.len(), 2, "{dead:#}");
    for a in &tried {
        assert_eq!(a["status_code"], 302);
        assert_eq!(a["error"], "http");
    }
    assert_eq!(rx.requests_to("/hook").len(), 2);
    assert!(
        rx.requests_to("/elsewhere").is_empty(),
        "the redirect was followed"
    );
}

#[tokio::test]
async fn a_410_gone_disables_the_subscription_and_it_receives_nothing_more() {
    let app = spawn_app_with(fast_sim_config(), quick_retries).await;
    let rx = Receiver::start().await;
    rx.script(vec![Reply::status(410).body("gone")]);
    let sub = create_subscription(&app, KEY_A, json!({"url": rx.url("/gone")})).await;
    let sub_id = id_of(&sub);
    let delivery = send_test_event(&app, KEY_A, &sub_id).await;
    let dead = wait_for_delivery_state(&app, KEY_A, &id_of(&delivery), "failed").await;
    assert_eq!(attempts(&dead).len(), 1, "a 410 is not retried: {dead:#}");
    assert_eq!(attempts(&dead)[0]["status_code"], 410);

    let now = get_json(&app, KEY_A, &format!("/v1/subscriptions/{sub_id}")).await;
    assert_eq!(now["enabled"], false, "{now:#}");
    assert!(
        now["disabled_reason"]
            .as_str()
            .is_some_and(|r| r.contains("410")),
        "{now:#}"
    );

    // A later event goes to the job's callback only.
    let job_id = job_id_of(
        &app,
        KEY_A,
        json!({"prompt": "p", "callback_url": rx.url("/cb")}),
    )
    .await;
    rx.wait_for_path("/cb", 1, WAIT).await;
    let deliveries = job_deliveries(&app, KEY_A, &job_id, 1).await;
    assert_eq!(deliveries.len(), 1, "{deliveries:#?}");
    assert_eq!(deliveries[0]["destination"]["kind"], "callback");
    assert_eq!(rx.requests_to("/gone").len(), 1);

    // Nothing can be queued for it while it is disabled: a test event is refused, as a retry is.
    for path in [
        format!("/v1/subscriptions/{sub_id}/test"),
        format!("/v1/deliveries/{}/retry", id_of(&delivery)),
    ] {
        let (status, body) = json_of(app.post(&path, KEY_A).send().await.unwrap()).await;
        assert_eq!(status, 409, "POST {path}: {body}");
        assert_eq!(body["code"], "CONFLICT", "POST {path}: {body}");
    }
    assert_eq!(rx.requests_to("/gone").len(), 1);

    // Enabled again by its owner, its dead letter can be sent again.
    let (status, enabled) = json_of(
        app.http
            .patch(app.url(&format!("/v1/subscriptions/{sub_id}")))
            .bearer_auth(KEY_A)
            .json(&json!({"enabled": true}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{enabled}");
    assert_eq!(enabled["enabled"], true);
    assert!(enabled["disabled_reason"].is_null());
    let (status, _) = json_of(
        app.post(&format!("/v1/deliveries/{}/retry", id_of(&delivery)), KEY_A)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 202);
    wait_for_delivery_state(&app, KEY_A, &id_of(&delivery), "succeeded").await;
    let again = rx.wait_for_path("/gone", 2, WAIT).await;
    assert_eq!(again[1].header("webhook-id"), dead["webhook_id"]);
}

#[tokio::test]
async fn retry_after_on_429_delays_the_next_attempt_even_with_an_immediate_schedule() {
    let t = stepped(|s| {
        s.delivery.retry_schedule = vec![ms(0), ms(0), ms(0)];
    })
    .await;
    t.rx.script(vec![Reply::status(429).header("retry-after", "2")]);
    let id = t.send_test_event().await;
    let first = t.step().await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].status_code, Some(429));
    let waiting = t.delivery(&id).await;
    assert_eq!(waiting.state, DeliveryState::Pending);
    let gap = waiting.next_attempt_at.unwrap() - waiting.attempts[0].at;
    assert!(
        gap >= chrono::Duration::seconds(2),
        "the retry is due {gap} after a 429 with Retry-After: 2"
    );
    // Not a moment sooner, whatever the schedule says.
    assert!(t.step_after(ms(1999)).await.is_empty());
    assert_eq!(t.rx.requests().len(), 1);
    assert_eq!(t.step_after(ms(1)).await.len(), 1);

    let got = t.rx.requests();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    let done = t.delivery(&id).await;
    assert_eq!(done.state, DeliveryState::Succeeded);
    let codes: Vec<Option<u16>> = done.attempts.iter().map(|a| a.status_code).collect();
    assert_eq!(codes, [Some(429), Some(200)]);
    assert!(done.attempts[1].at - done.attempts[0].at >= chrono::Duration::seconds(2));
}

#[tokio::test]
async fn retry_after_as_an_http_date_on_503_delays_the_next_attempt_too() {
    let t = stepped(|s| {
        s.delivery.retry_schedule = vec![ms(0), ms(0), ms(0)];
    })
    .await;
    // HTTP dates have whole seconds: the next whole second at least 2 s from now.
    let not_before = chrono::DateTime::from_timestamp(t.now().timestamp() + 3, 0).unwrap();
    let http_date = not_before.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    t.rx.script(vec![Reply::status(503).header("retry-after", &http_date)]);
    let id = t.send_test_event().await;
    assert_eq!(t.step().await.len(), 1);
    let due = t.delivery(&id).await.next_attempt_at.unwrap();
    assert!(
        due >= not_before,
        "the retry is due at {due}, before Retry-After: {http_date}"
    );
    // Step in 100 ms ticks: nothing goes out before the date.
    while t.now() + chrono::Duration::milliseconds(100) < not_before {
        assert!(t.step_after(ms(100)).await.is_empty(), "at {}", t.now());
    }
    assert_eq!(t.rx.requests().len(), 1);
    let remaining = (not_before - t.now()).to_std().unwrap_or_default();
    assert_eq!(t.step_after(remaining).await.len(), 1);
    let done = t.delivery(&id).await;
    assert_eq!(done.state, DeliveryState::Succeeded);
    assert_eq!(done.attempts[0].status_code, Some(503));
    assert!(done.attempts[1].at >= not_before);
}

// ---------------------------------------------------------------------------------------------
// Secrets, test events, recovery
// ---------------------------------------------------------------------------------------------

/// The two entries of a rotation-era `webhook-signature`, each verified on its own.
fn assert_signed_by_both(r: &Received, new: &str, old: &str) {
    let header = r.header("webhook-signature");
    let entries: Vec<&str> = header.split(' ').collect();
    assert_eq!(
        entries.len(),
        2,
        "two space-separated signatures: {header:?}"
    );
    assert!(entries.iter().all(|e| e.starts_with("v1,")), "{header:?}");
    assert_ne!(entries[0], entries[1]);
    verify(r, new).expect("the new secret verifies");
    verify(r, old).expect("the old secret still verifies");
    let by = |secret: &str| {
        entries
            .iter()
            .filter(|e| verify_header(r, secret, e).is_ok())
            .count()
    };
    assert_eq!(by(new), 1, "exactly one entry is signed by the new secret");
    assert_eq!(by(old), 1, "exactly one entry is signed by the old secret");
    assert!(verify(r, &SigningSecret::generate()).is_err());
}

#[tokio::test]
async fn a_rotated_subscription_secret_signs_beside_the_old_one() {
    let app = spawn_app().await;
    let rx = Receiver::start().await;
    let sub = create_subscription(&app, KEY_A, json!({"url": rx.url("/hook")})).await;
    let sub_id = id_of(&sub);
    let old = sub["secret"].as_str().unwrap().to_owned();

    send_test_event(&app, KEY_A, &sub_id).await;
    let before = rx.wait_for(1, WAIT).await.remove(0);
    assert_eq!(before.header("webhook-signature").split(' ').count(), 1);
    assert_signed(&before, &old);

    let (status, rotated) = json_of(
        app.post(&format!("/v1/subscriptions/{sub_id}/rotate-secret"), KEY_A)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert!(new.starts_with("whsec_"));
    assert!(rotated["previous_secret_expires_at"].is_string());

    send_test_event(&app, KEY_A, &sub_id).await;
    let after = rx.wait_for(2, WAIT).await.remove(1);
    assert_signed_by_both(&after, &new, &old);
}

#[tokio::test]
async fn a_rotated_callback_secret_signs_beside_the_old_one() {
    let app = spawn_app().await;
    let rx = Receiver::start().await;
    let old = callback_secret(&app, KEY_A).await;
    let (status, rotated) = json_of(
        app.post("/v1/callback-secret/rotate", KEY_A)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(callback_secret(&app, KEY_A).await, new);

    job_id_of(
        &app,
        KEY_A,
        json!({"prompt": "p", "callback_url": rx.url("/hook")}),
    )
    .await;
    let got = rx.wait_for(1, WAIT).await.remove(0);
    assert_signed_by_both(&got, &new, &old);
}

#[tokio::test]
async fn a_test_event_is_delivered_on_request() {
    let app = spawn_app().await;
    let rx = Receiver::start().await;
    let sub = create_subscription(
        &app,
        KEY_A,
        json!({"url": rx.url("/hook"), "event_types": ["agent.failed"]}),
    )
    .await;
    let delivery = send_test_event(&app, KEY_A, &id_of(&sub)).await;
    assert_eq!(delivery["event_type"], "webhook.test");
    let got = rx.wait_for(1, WAIT).await.remove(0);
    assert_signed(&got, sub["secret"].as_str().unwrap());
    assert_eq!(got.header("webhook-id"), delivery["webhook_id"]);
    let event = got.json();
    assert_eq!(event["type"], "webhook.test", "{event:#}");
    assert!(event["data"].is_object());
    chrono::DateTime::parse_from_rfc3339(event["timestamp"].as_str().unwrap()).unwrap();
    wait_for_delivery_state(&app, KEY_A, &id_of(&delivery), "succeeded").await;

    let (status, body) = json_of(
        app.post("/v1/subscriptions/sub_01JDX0000000000000000000/test", KEY_A)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], "NOT_FOUND");
}

#[tokio::test]
async fn recover_resends_the_failed_deliveries_since_the_given_time() {
    let app = spawn_app_with(fast_sim_config(), single_attempt).await;
    let rx = Receiver::start().await;
    rx.set_default(Reply::status(503).body("outage"));
    let sub = create_subscription(&app, KEY_A, json!({"url": rx.url("/hook")})).await;
    let sub_id = id_of(&sub);

    let early = id_of(&send_test_event(&app, KEY_A, &sub_id).await);
    wait_for_delivery_state(&app, KEY_A, &early, "failed").await;
    tokio::time::sleep(ms(20)).await;
    let since = chrono::Utc::now();
    tokio::time::sleep(ms(20)).await;
    let late = id_of(&send_test_event(&app, KEY_A, &sub_id).await);
    let late_dead = wait_for_delivery_state(&app, KEY_A, &late, "failed").await;
    assert_eq!(rx.requests().len(), 2);

    rx.set_default(Reply::ok());
    let recover = |since: chrono::DateTime<chrono::Utc>| {
        app.post(&format!("/v1/subscriptions/{sub_id}/recover"), KEY_A)
            .json(&json!({"since": since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)}))
            .send()
    };
    let (status, body) = json_of(recover(since).await.unwrap()).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["recovered"], 1, "only the delivery made since then");
    wait_for_delivery_state(&app, KEY_A, &late, "succeeded").await;
    let got = rx.wait_for(3, WAIT).await;
    assert_eq!(got[2].header("webhook-id"), late_dead["webhook_id"]);
    assert_signed(&got[2], sub["secret"].as_str().unwrap());
    assert_eq!(
        get_json(&app, KEY_A, &format!("/v1/deliveries/{early}")).await["state"],
        "failed"
    );

    // From further back, the earlier one too; the succeeded one is not sent again.
    let (status, body) =
        json_of(recover(since - chrono::Duration::minutes(5)).await.unwrap()).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["recovered"], 1);
    wait_for_delivery_state(&app, KEY_A, &early, "succeeded").await;
    assert_eq!(rx.wait_for(4, WAIT).await.len(), 4);
}

// ---------------------------------------------------------------------------------------------
// Fairness, leases, health
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn fresh_events_to_a_healthy_receiver_are_not_starved_by_a_down_one() {
    const HANG: Duration = Duration::from_millis(1500);
    let app = spawn_app_with(fast_sim_config(), |s| {
        s.delivery.concurrency = 4;
        s.delivery.per_destination_concurrency = 2;
        s.delivery.timeout = Duration::from_secs(5);
        // Failed attempts are due again at once, so retries pile up behind the down receiver.
        s.delivery.retry_schedule = vec![ms(0); 10];
    })
    .await;
    let down = Receiver::start().await;
    down.set_default(Reply::status(500).delay(HANG));
    let healthy = Receiver::start().await;
    let down_sub = create_subscription(&app, KEY_A, json!({"url": down.url("/down")})).await;
    let healthy_sub = create_subscription(&app, KEY_A, json!({"url": healthy.url("/up")})).await;
    for _ in 0..10 {
        send_test_event(&app, KEY_A, &id_of(&down_sub)).await;
    }
    // Let the backlog form: the first attempts have failed and their retries are queued.
    down.wait_for(3, WAIT).await;

    let sent = Instant::now();
    send_test_event(&app, KEY_A, &id_of(&healthy_sub)).await;
    let arrived = healthy.wait_for(1, WAIT).await.remove(0);
    let latency = arrived.at - sent;
    let down_so_far = down.requests().len();
    // Behind the backlog it would wait at least one HANG for a slot (and the whole backlog
    // needs 10 x HANG / 2 = 7.5 s for first attempts alone).
    assert!(
        latency < ms(1200),
        "the fresh event to a healthy receiver took {latency:?}"
    );
    assert!(
        down_so_far < 10,
        "the healthy event arrived only after {down_so_far} attempts to the down receiver"
    );
}

#[tokio::test]
async fn deliveries_waiting_for_a_slow_destination_hold_no_room_from_others_for_long() {
    const HANG: Duration = Duration::from_secs(3);
    let app = spawn_app_with(fast_sim_config(), |s| {
        s.delivery.concurrency = 4;
        s.delivery.per_destination_concurrency = 2;
        s.delivery.timeout = Duration::from_secs(10);
    })
    .await;
    let slow = Receiver::start().await;
    slow.set_default(Reply::ok().delay(HANG));
    let healthy = Receiver::start().await;
    let slow_sub = create_subscription(&app, KEY_A, json!({"url": slow.url("/slow")})).await;
    let healthy_sub = create_subscription(&app, KEY_A, json!({"url": healthy.url("/up")})).await;
    // First attempts only (the fresh queue): the slow destination takes its 2 slots, and the
    // further deliveries to it, due too, must wait for them.
    for _ in 0..20 {
        send_test_event(&app, KEY_A, &id_of(&slow_sub)).await;
    }
    slow.wait_for(2, WAIT).await;

    let sent = Instant::now();
    send_test_event(&app, KEY_A, &id_of(&healthy_sub)).await;
    let arrived = healthy.wait_for(1, WAIT).await.remove(0);
    let latency = arrived.at - sent;
    // Had the waiting deliveries kept their room until the slow destination answered, the
    // healthy event would have waited for a HANG.
    assert!(
        latency < ms(1000),
        "the event to a healthy receiver took {latency:?} behind a slow destination's"
    );
    assert_eq!(
        slow.requests().len(),
        2,
        "the slow destination never gets more than its limit at once"
    );
}

#[tokio::test]
async fn first_attempts_are_not_starved_by_retries_piling_up_for_down_receivers() {
    const HANG: Duration = Duration::from_millis(2000);
    let app = spawn_app_with(fast_sim_config(), |s| {
        s.delivery.concurrency = 4;
        s.delivery.per_destination_concurrency = 2;
        s.delivery.timeout = Duration::from_secs(5);
        s.delivery.retry_schedule = vec![ms(0); 10];
    })
    .await;
    // Two receivers down: between them they could fill every slot (2 x 2) with retries.
    let mut down = Vec::new();
    let mut backlog = Vec::new();
    for _ in 0..2 {
        let rx = Receiver::start().await;
        rx.set_default(Reply::status(500).delay(HANG));
        let sub = create_subscription(&app, KEY_A, json!({"url": rx.url("/down")})).await;
        for _ in 0..2 {
            backlog.push(id_of(&send_test_event(&app, KEY_A, &id_of(&sub)).await));
        }
        down.push(rx);
    }
    let healthy = Receiver::start().await;
    let healthy_sub = create_subscription(&app, KEY_A, json!({"url": healthy.url("/up")})).await;
    // Wait until every first attempt has failed: from then on only retries are pending for
    // the down receivers, and they are due at once.
    for id in &backlog {
        wait_for_json(
            &app,
            KEY_A,
            &format!("/v1/deliveries/{id}"),
            "a first attempt to fail",
            |d| !attempts(d).is_empty(),
        )
        .await;
    }

    let sent = Instant::now();
    send_test_event(&app, KEY_A, &id_of(&healthy_sub)).await;
    let arrived = healthy.wait_for(1, WAIT).await.remove(0);
    let latency = arrived.at - sent;
    // Were retries allowed every slot, the fresh event would wait for one: at least a HANG.
    assert!(
        latency < ms(1200),
        "the fresh event to a healthy receiver took {latency:?} behind retries"
    );
}

#[tokio::test]
async fn a_slow_receiver_is_sent_each_attempt_exactly_once() {
    let app = spawn_app_with(fast_sim_config(), |s| {
        s.delivery.timeout = Duration::from_secs(3);
        quick_retries(s);
    })
    .await;
    let rx = Receiver::start().await;
    rx.set_default(Reply::ok().delay(Duration::from_secs(1)));
    let sub = create_subscription(&app, KEY_A, json!({"url": rx.url("/slow")})).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(id_of(&send_test_event(&app, KEY_A, &id_of(&sub)).await));
    }
    let mut sent_ids = Vec::new();
    for id in &ids {
        let done = wait_for_delivery_state(&app, KEY_A, id, "succeeded").await;
        assert_eq!(attempts(&done).len(), 1, "{done:#}");
        assert!(attempts(&done)[0]["duration_ms"].as_u64().unwrap() >= 900);
        sent_ids.push(done["webhook_id"].as_str().unwrap().to_owned());
    }
    let got = rx.requests();
    let mut seen = webhook_ids(&got);
    seen.sort_unstable();
    sent_ids.sort_unstable();
    assert_eq!(seen, sent_ids, "each attempt sent exactly once");
}

#[tokio::test]
async fn a_subscription_failing_for_longer_than_disable_after_is_disabled() {
    let t = stepped(|s| {
        s.delivery.disable_after = Duration::from_secs(1);
        s.delivery.retry_schedule = vec![ms(0), ms(400), ms(400), ms(400), ms(400), ms(400)];
    })
    .await;
    t.rx.set_default(Reply::status(500));
    let delivery = t.send_test_event().await;
    let started = t.now();
    assert_eq!(t.step().await.len(), 1);
    // 100 ms at a time until the subscription is disabled (the schedule would allow 6 s).
    while t.subscription().await.enabled {
        assert!(
            t.now() - started < chrono::Duration::seconds(3),
            "still enabled after {}",
            t.now() - started
        );
        t.step_after(ms(100)).await;
    }
    let disabled = t.subscription().await;
    assert!(
        disabled
            .disabled_reason
            .as_deref()
            .is_some_and(|r| !r.is_empty()),
        "{disabled:?}"
    );
    assert_eq!(disabled.failing_since, Some(started));
    // Its pending retry stops: the delivery ends as a dead letter without being sent again.
    let left = t.delivery(&delivery).await;
    if left.state == DeliveryState::Pending {
        t.step_after(Duration::from_secs(1)).await;
    }
    let dead = t.delivery(&delivery).await;
    assert_eq!(dead.state, DeliveryState::Failed, "{dead:?}");
    let tried = dead.attempts.len();
    assert!((2..6).contains(&tried), "disabled after {tried} attempts");
    assert_eq!(t.rx.requests().len(), tried);
    // Disabled by the first attempt made once the run had lasted `disable_after`.
    let limit = started + chrono::Duration::seconds(1);
    let (last, before) = dead.attempts.split_last().unwrap();
    assert!(last.at >= limit, "{dead:?}");
    assert!(before.iter().all(|a| a.at < limit), "{dead:?}");
    assert!(t.step_after(Duration::from_secs(10)).await.is_empty());
    assert_eq!(t.rx.requests().len(), tried);
}

#[tokio::test]
async fn a_failing_run_is_written_to_its_subscription_once_not_at_every_attempt() {
    let t = stepped(|s| {
        s.delivery.retry_schedule = vec![ms(0), ms(100), ms(100), ms(100)];
    })
    .await;
    t.rx.set_default(Reply::status(500));
    let delivery = t.send_test_event().await;
    assert_eq!(t.step_after(ms(1)).await.len(), 1);
    let mut stepped_for = Duration::ZERO;
    while t.delivery(&delivery).await.state == DeliveryState::Pending {
        assert!(stepped_for < Duration::from_secs(5), "never dead-lettered");
        t.step_after(ms(10)).await;
        stepped_for += ms(10);
    }
    let dead = t.delivery(&delivery).await;
    assert_eq!(dead.state, DeliveryState::Failed);
    let tried = &dead.attempts;
    assert_eq!(tried.len(), 4, "{dead:?}");

    let now = t.subscription().await;
    assert!(now.enabled, "five days have not passed: {now:?}");
    // Its failing run began with the first attempt, and nothing about it changed after that.
    assert_eq!(now.failing_since, Some(tried[0].at));
    assert!(
        now.updated_at > t.sub.updated_at && now.updated_at < tried[1].at,
        "updated at {}, attempts {tried:#?}",
        now.updated_at
    );
}

#[tokio::test]
async fn an_attempt_that_outlasts_the_timeout_is_classed_timeout() {
    let app = spawn_app_with(fast_sim_config(), |s| {
        s.delivery.timeout = ms(500);
        single_attempt(s);
    })
    .await;
    let rx = Receiver::start().await;
    rx.set_default(Reply::ok().delay(Duration::from_secs(3)));
    let sub = create_subscription(&app, KEY_A, json!({"url": rx.url("/hang")})).await;
    let delivery = id_of(&send_test_event(&app, KEY_A, &id_of(&sub)).await);
    let dead = wait_for_delivery_state(&app, KEY_A, &delivery, "failed").await;
    let attempt = &attempts(&dead)[0];
    assert_eq!(attempt["error"], "timeout", "{dead:#}");
    assert!(attempt["status_code"].is_null());
    let took = attempt["duration_ms"].as_u64().unwrap();
    assert!((400..2500).contains(&took), "the attempt took {took} ms");
}

#[tokio::test]
async fn a_closed_port_is_classed_connect() {
    let app = spawn_app_with(fast_sim_config(), single_attempt).await;
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let sub = create_subscription(
        &app,
        KEY_A,
        json!({"url": format!("http://127.0.0.1:{port}/nobody")}),
    )
    .await;
    let delivery = id_of(&send_test_event(&app, KEY_A, &id_of(&sub)).await);
    let dead = wait_for_delivery_state(&app, KEY_A, &delivery, "failed").await;
    let attempt = &attempts(&dead)[0];
    assert_eq!(attempt["error"], "connect", "{dead:#}");
    assert!(attempt["status_code"].is_null());
}

// ---------------------------------------------------------------------------------------------
// Network policy
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn private_and_non_http_destinations_are_refused_at_the_api() {
    let app = spawn_app_with(fast_sim_config(), |s| {
        s.delivery.allow_private_networks = false;
    })
    .await;
    let rx = Receiver::start().await;
    let port = rx.addr.port();
    for url in [
        rx.url("/x"),
        "http://127.0.0.1:1/x".to_owned(),
        "http://[::1]/".to_owned(),
        "http://0x7f.1/".to_owned(),
        "http://2130706433/".to_owned(),
        format!("http://localhost:{port}/"),
        "http://LOCALHOST./".to_owned(),
        "http://[::ffff:127.0.0.1]/".to_owned(),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "http://10.1.2.3/".to_owned(),
        "ftp://x".to_owned(),
        "file:///etc/passwd".to_owned(),
    ] {
        let (status, body) = json_of(
            app.post("/v1/subscriptions", KEY_A)
                .json(&json!({"url": url}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 400, "{url}: {body}");
        assert_eq!(body["code"], "BAD_REQUEST", "{url}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
        assert_eq!(body["details"], "url", "{url}: {body}");
    }
    let listed = get_json(&app, KEY_A, "/v1/subscriptions").await;
    assert_eq!(listed["data"], json!([]), "{listed}");

    let (status, body) = app
        .create_job(KEY_A, json!({"prompt": "p", "callback_url": rx.url("/cb")}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "BAD_REQUEST");
    assert_eq!(body["details"], "callback_url");
    assert!(
        app.sim.state.requests().is_empty(),
        "a refused job is not submitted upstream"
    );
    assert!(rx.requests().is_empty(), "nothing was sent to the receiver");
}
