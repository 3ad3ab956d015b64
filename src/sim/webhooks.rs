//! bitHuman's own outgoing webhooks, simulated: registrations (`POST/GET/DELETE /v1/webhooks`)
//! and the sender. When an agent ends (on the simulator's clock), every registration (and
//! `--webhook-url`) gets `agent.ready` or `agent.failed`, signed as upstream signs
//! ([`crate::upstream::push::sign`]), attempted at 0, 2 and 5 s (10 s timeout each; a 2xx ends
//! them), after `webhook_delay`; a `webhook_drop_ratio` share is never sent.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

use super::agent::mix;
use super::state::SimState;
use crate::upstream::push;

/// When each attempt starts, counted from the first.
pub const ATTEMPTS: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_secs(2),
    Duration::from_secs(5),
];
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the sender looks for agents that have ended.
const TICK: Duration = Duration::from_millis(20);

/// A registered receiver.
#[derive(Clone, Debug, Serialize)]
pub struct Registration {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    #[serde(skip)]
    pub secret: String,
}

impl Registration {
    pub fn wants(&self, event: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == event)
    }

    /// As listed: the secret redacted, as upstream shows it after creation.
    pub fn listed(&self) -> Value {
        json!({"id": self.id, "url": self.url, "events": self.events, "active": true, "secret": "whsec_***"})
    }
}

/// One webhook to send: to one receiver, with all its attempts.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub url: String,
    pub secret: String,
    pub event: &'static str,
    pub delivery_id: String,
    pub body: Vec<u8>,
}

/// What the sender did, for tests and benchmarks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WebhookStats {
    /// Webhooks handed to the sender (one per agent and receiver).
    pub queued: usize,
    /// Webhooks the drop ratio kept from ever being sent.
    pub dropped: usize,
    /// HTTP attempts made.
    pub attempts: usize,
    /// Webhooks a receiver answered 2xx.
    pub delivered: usize,
    /// Webhooks whose every attempt failed.
    pub failed: usize,
    /// How long each answered attempt took, request sent to answer read (microseconds).
    pub answer_us: Vec<u64>,
}

/// The sender's memory inside the simulator state.
#[derive(Debug, Default)]
pub struct Sender {
    pub registrations: Vec<Registration>,
    /// Agents whose end has been handled (sent or dropped).
    pub handled: HashSet<String>,
    pub stats: WebhookStats,
    pub next_id: u64,
    /// `ping`s asked for with `POST /v1/webhooks/{id}/test`, not sent yet.
    pub pings: Vec<Outgoing>,
}

/// Whether the drop ratio keeps this agent's webhook from being sent.
pub fn dropped(seed: u64, agent_id: &str, ratio: f64) -> bool {
    if ratio <= 0.0 {
        return false;
    }
    let hash = agent_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let draw = mix(mix(seed ^ 0xD80F) ^ hash) >> 11;
    (draw as f64 / (1u64 << 53) as f64) < ratio
}

/// The body upstream sends.
pub fn body(
    delivery_id: &str,
    event: &str,
    agent_id: &str,
    error: Option<&str>,
    created: i64,
) -> Vec<u8> {
    let mut data = json!({"agent_id": agent_id, "code": agent_id});
    if let Some(error) = error {
        data["error"] = Value::from(error);
    }
    serde_json::to_vec(
        &json!({"id": delivery_id, "event": event, "created": created, "data": data}),
    )
    .expect("JSON")
}

/// Runs until aborted: every [`TICK`], hands the webhooks of newly ended agents to tasks that
/// attempt them.
pub async fn run(state: Arc<SimState>) {
    let client = reqwest::Client::builder()
        .timeout(ATTEMPT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("HTTP client");
    loop {
        tokio::time::sleep(TICK).await;
        let (outgoing, delay) = state.due_webhooks();
        for webhook in outgoing {
            tokio::spawn(deliver(client.clone(), state.clone(), webhook, delay));
        }
    }
}

async fn deliver(
    client: reqwest::Client,
    state: Arc<SimState>,
    webhook: Outgoing,
    delay: Duration,
) {
    tokio::time::sleep(delay).await;
    let start = tokio::time::Instant::now();
    for at in ATTEMPTS {
        tokio::time::sleep_until(start + at).await;
        let timestamp = state.now_for_webhooks().timestamp();
        let sent_at = std::time::Instant::now();
        let sent = client
            .post(&webhook.url)
            .header("content-type", "application/json")
            .header(push::EVENT_HEADER, webhook.event)
            .header(push::DELIVERY_HEADER, &webhook.delivery_id)
            .header(push::TIMESTAMP_HEADER, timestamp.to_string())
            .header(
                push::SIGNATURE_HEADER,
                push::sign(&webhook.secret, timestamp, &webhook.body),
            )
            .body(webhook.body.clone())
            .send()
            .await;
        let answered = sent.as_ref().ok().map(|_| sent_at.elapsed());
        state.note_webhook_attempt(answered);
        if sent.is_ok_and(|r| r.status().is_success()) {
            state.note_webhook_result(true);
            return;
        }
    }
    state.note_webhook_result(false);
}
