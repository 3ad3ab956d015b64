//! The simulator's memory and the path every upstream request takes through it.
//!
//! One mutex guards everything: each request is decided in a single short critical section
//! (no I/O, no awaits), which keeps the simulated API consistent under concurrent clients —
//! two racing generates with the same idempotency key create one agent, and the rate limiter
//! never admits one request too many.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use super::agent::{generated_id, unlucky, Agent, GenerateRequest, Outcome, Plan};
use super::config::{GenerateShape, SimConfig, StatusShape};
use super::limiter::{SlidingWindowLimiter, WindowPeak};
use super::reply::{Reply, SimError};
use super::webhooks::{self, Outgoing, Registration, WebhookStats};
use crate::clock::{self, SharedClock, Timestamp};

/// How long upstream remembers an `Idempotency-Key`.
const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// The most recent requests kept for [`SimState::requests`]; counters and stats cover all.
pub const REQUEST_LOG_CAPACITY: usize = 10_000;

/// One request to an upstream route, as the simulator received and answered it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// Lower-cased header names; repeated headers joined with ", ".
    pub headers: BTreeMap<String, String>,
    /// The body as JSON; a body that is not JSON is kept as a JSON string; no body is `None`.
    pub body: Option<Value>,
    pub received_at: DateTime<Utc>,
    pub status: u16,
}

/// Counts for one upstream route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteStats {
    pub total: usize,
    pub by_status: BTreeMap<u16, usize>,
}

/// Counts for one rate-limit bucket.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BucketStats {
    pub limit_per_minute: u32,
    /// Every request to the bucket's routes, whatever the answer.
    pub requests: usize,
    /// Requests the rate limiter refused with 429.
    pub rate_limited: usize,
    /// The most requests seen in any sliding 60-second window.
    pub max_in_any_60s: usize,
    /// The most requests the rate limiter admitted in any sliding 60-second window.
    pub max_admitted_in_any_60s: usize,
}

/// What `GET /_sim/stats` reports.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SimStats {
    pub requests: usize,
    /// Keyed by route: `generate`, `status`, `validate`, `unknown`.
    pub routes: BTreeMap<String, RouteStats>,
    /// Keyed by bucket: `generate`, `read`.
    pub buckets: BTreeMap<String, BucketStats>,
    pub agents: usize,
    pub accepted_generates: usize,
    pub outage: bool,
    pub pending_injected_failures: usize,
}

/// The upstream routes, as recognised by the HTTP layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Generate,
    Status { agent_id: String },
    Validate,
    RegisterWebhook,
    ListWebhooks,
    DeleteWebhook { id: String },
    TestWebhook { id: String },
    Unknown,
}

impl Route {
    pub fn name(&self) -> &'static str {
        match self {
            Route::Generate => "generate",
            Route::Status { .. } => "status",
            Route::Validate => "validate",
            Route::RegisterWebhook
            | Route::ListWebhooks
            | Route::DeleteWebhook { .. }
            | Route::TestWebhook { .. } => "webhooks",
            Route::Unknown => "unknown",
        }
    }

    fn bucket(&self) -> Option<Bucket> {
        match self {
            Route::Generate => Some(Bucket::Generate),
            Route::Status { .. }
            | Route::Validate
            | Route::RegisterWebhook
            | Route::ListWebhooks
            | Route::DeleteWebhook { .. }
            | Route::TestWebhook { .. } => Some(Bucket::Read),
            Route::Unknown => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bucket {
    Generate,
    Read,
}

impl Bucket {
    fn name(self) -> &'static str {
        match self {
            Bucket::Generate => "generate",
            Bucket::Read => "read",
        }
    }

    fn limit(self, config: &SimConfig) -> u32 {
        match self {
            Bucket::Generate => config.generate_per_minute,
            Bucket::Read => config.read_per_minute,
        }
    }
}

/// A request to an upstream route, stripped of actix types.
#[derive(Clone, Debug)]
pub struct Incoming {
    pub route: Route,
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Incoming {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// How far a request got with the rate limiter, for the stats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Admission {
    NotReached,
    Admitted,
    Refused,
}

/// The simulator's shared state. Tests hold it (through [`SimServer`](super::SimServer)) to
/// steer the simulator and to read what it received.
#[derive(Debug)]
pub struct SimState {
    clock: SharedClock,
    inner: Mutex<Inner>,
}

impl SimState {
    pub fn new(config: SimConfig) -> Self {
        Self::with_clock(config, clock::system())
    }

    /// A simulator whose agents progress, and whose rate limits refill, on `clock`: with a
    /// [`ManualClock`](crate::clock::ManualClock) a test walks an agent through its statuses
    /// without sleeping.
    pub fn with_clock(config: SimConfig, clock: SharedClock) -> Self {
        Self {
            clock,
            inner: Mutex::new(Inner::new(config)),
        }
    }

    pub fn config(&self) -> SimConfig {
        self.lock().config.clone()
    }

    /// Changes the configuration; it applies to the next request. Agents keep the generation
    /// time they were created with.
    pub fn update(&self, change: impl FnOnce(&mut SimConfig)) {
        change(&mut self.lock().config);
    }

    /// Applies a partial configuration (see [`SimConfig::merged`]) and returns the result; on
    /// error nothing changes.
    pub fn merge_config(&self, patch: &Value) -> Result<SimConfig, String> {
        let mut inner = self.lock();
        let merged = inner.config.merged(patch)?;
        inner.config = merged.clone();
        Ok(merged)
    }

    /// While on, every upstream route answers 503 `NO_AVAILABLE_WORKERS`.
    pub fn set_outage(&self, on: bool) {
        self.lock().outage = on;
    }

    /// The next `count` upstream requests answer `status` with upstream's error code for it
    /// (429 `RATE_LIMITED`, 500 `INTERNAL_ERROR`, 503 `NO_AVAILABLE_WORKERS`, 400
    /// `VALIDATION_ERROR`, 401 `UNAUTHORIZED`, 402 `INSUFFICIENT_BALANCE`, 404 `NOT_FOUND`).
    /// Calls queue up behind each other; these answers take precedence over everything else.
    pub fn fail_next(&self, count: usize, status: u16) {
        self.lock()
            .injected
            .extend(std::iter::repeat_n(status, count));
    }

    /// Forces an agent into `outcome` from now on. False when there is no such agent.
    pub fn set_agent_outcome(&self, agent_id: &str, outcome: Outcome) -> bool {
        let now = self.now();
        match self.lock().agents.get_mut(agent_id) {
            Some(agent) => {
                agent.force(outcome, now);
                true
            }
            None => false,
        }
    }

    /// Forgets an agent: its status answers 404 from now on. False when there was none.
    pub fn forget_agent(&self, agent_id: &str) -> bool {
        self.lock().agents.remove(agent_id).is_some()
    }

    /// Forgets agents, idempotency keys, recorded requests, counters, rate-limit windows,
    /// injected failures and the outage. The configuration stays.
    pub fn reset(&self) {
        let mut inner = self.lock();
        let config = inner.config.clone();
        *inner = Inner::new(config);
    }

    /// The most recent requests to upstream routes (at most [`REQUEST_LOG_CAPACITY`]), oldest
    /// first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().log.iter().cloned().collect()
    }

    /// Requests to `POST /v1/agent/generate`, whatever the answer.
    pub fn generate_calls(&self) -> usize {
        self.route_total(Route::Generate.name())
    }

    /// Requests to `GET /v1/agent/status/{id}`, whatever the answer.
    pub fn status_calls(&self) -> usize {
        self.route_total("status")
    }

    /// Requests to `POST /v1/validate`, whatever the answer.
    pub fn validate_calls(&self) -> usize {
        self.route_total(Route::Validate.name())
    }

    /// Agents created by generate requests (idempotent replays create none).
    pub fn accepted_generates(&self) -> usize {
        self.lock().accepted_generates
    }

    pub fn stats(&self) -> SimStats {
        self.lock().stats()
    }

    /// An agent's status `data` in the current shape, whatever shape the API answers with.
    pub fn agent_status(&self, agent_id: &str) -> Option<Value> {
        let now = self.now();
        let inner = self.lock();
        let agent = inner.agents.get(agent_id)?;
        Some(agent.status_data(now, StatusShape::Current))
    }

    /// Every agent's status `data` in the current shape, oldest first.
    pub fn agent_statuses(&self) -> Vec<Value> {
        let now = self.now();
        let inner = self.lock();
        let mut agents: Vec<&Agent> = inner.agents.values().collect();
        agents.sort_by_key(|a| (a.created_at, a.id.clone()));
        agents
            .into_iter()
            .map(|a| a.status_data(now, StatusShape::Current))
            .collect()
    }

    /// Decides one upstream request and records it. Returns the answer and how long to hold
    /// it back (the configured latency).
    pub(crate) fn handle(&self, incoming: &Incoming) -> (Reply, Duration) {
        let now = self.now();
        let mut inner = self.lock();
        let reply = inner.serve(incoming, now);
        (reply, inner.config.latency)
    }

    /// Webhook registrations made through `POST /v1/webhooks`, oldest first.
    pub fn webhook_registrations(&self) -> Vec<Registration> {
        self.lock().webhooks.registrations.clone()
    }

    /// What the webhook sender has done so far.
    pub fn webhook_stats(&self) -> WebhookStats {
        self.lock().webhooks.stats.clone()
    }

    /// The webhooks of agents that have ended since the last call (none are sent twice), and
    /// the configured delay before their first attempt.
    pub(crate) fn due_webhooks(&self) -> (Vec<Outgoing>, Duration) {
        let now = self.now();
        let mut guard = self.lock();
        let Inner {
            agents,
            webhooks: sender,
            config,
            ..
        } = &mut *guard;
        let mut targets = sender.registrations.clone();
        if let Some(url) = config.webhook_url.as_ref().filter(|u| !u.is_empty()) {
            targets.push(Registration {
                id: "cli".into(),
                url: url.clone(),
                events: Vec::new(),
                secret: config.webhook_secret.clone(),
            });
        }
        let mut outgoing = std::mem::take(&mut sender.pings);
        if targets.is_empty() {
            return (outgoing, config.webhook_delay);
        }
        for agent in agents.values() {
            if sender.handled.contains(&agent.id) {
                continue;
            }
            let Some((event, error)) = agent.ended(now) else {
                continue;
            };
            sender.handled.insert(agent.id.clone());
            let receivers: Vec<&Registration> = targets.iter().filter(|t| t.wants(event)).collect();
            if webhooks::dropped(config.seed, &agent.id, config.webhook_drop_ratio) {
                sender.stats.dropped += receivers.len();
                continue;
            }
            for target in receivers {
                let delivery_id = format!("evt_{}", ulid::Ulid::new());
                let body = webhooks::body(
                    &delivery_id,
                    event,
                    &agent.id,
                    error.as_deref(),
                    now.timestamp(),
                );
                sender.stats.queued += 1;
                outgoing.push(Outgoing {
                    url: target.url.clone(),
                    secret: target.secret.clone(),
                    event,
                    delivery_id,
                    body,
                });
            }
        }
        (outgoing, config.webhook_delay)
    }

    pub(crate) fn now_for_webhooks(&self) -> Timestamp {
        self.now()
    }

    pub(crate) fn note_webhook_attempt(&self, answered_in: Option<Duration>) {
        let mut inner = self.lock();
        inner.webhooks.stats.attempts += 1;
        if let Some(took) = answered_in {
            inner.webhooks.stats.answer_us.push(took.as_micros() as u64);
        }
    }

    pub(crate) fn note_webhook_result(&self, delivered: bool) {
        let mut inner = self.lock();
        if delivered {
            inner.webhooks.stats.delivered += 1;
        } else {
            inner.webhooks.stats.failed += 1;
        }
    }

    fn route_total(&self, route_name: &str) -> usize {
        self.lock()
            .routes
            .get(route_name)
            .map_or(0, |stats| stats.total)
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// A panic elsewhere must not take the simulator down with it: the state is still usable.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn idempotency_ttl() -> chrono::Duration {
    chrono::Duration::from_std(IDEMPOTENCY_TTL).unwrap_or(chrono::Duration::MAX)
}

/// A first answer kept for replay under its idempotency key.
#[derive(Debug)]
struct Remembered {
    reply: Reply,
    at: Timestamp,
}

#[derive(Debug, Default)]
struct BucketState {
    limiter: SlidingWindowLimiter,
    requests: usize,
    rate_limited: usize,
    seen: WindowPeak,
    admitted: WindowPeak,
}

#[derive(Debug)]
struct Inner {
    config: SimConfig,
    agents: HashMap<String, Agent>,
    /// Agents ever created since the last reset: the index that seeds ids and failure picks.
    agents_created: u64,
    accepted_generates: usize,
    /// Keyed by (api-secret, key): keys are scoped per account.
    idempotency: HashMap<(String, String), Remembered>,
    /// The same keys in the order they were remembered, so that expiring them looks at the
    /// oldest few instead of every key on every generate.
    idempotency_order: VecDeque<((String, String), Timestamp)>,
    generate_bucket: BucketState,
    read_bucket: BucketState,
    outage: bool,
    injected: VecDeque<u16>,
    log: VecDeque<RecordedRequest>,
    routes: BTreeMap<&'static str, RouteStats>,
    webhooks: webhooks::Sender,
}

impl Inner {
    fn new(config: SimConfig) -> Self {
        Self {
            config,
            agents: HashMap::new(),
            agents_created: 0,
            accepted_generates: 0,
            idempotency: HashMap::new(),
            idempotency_order: VecDeque::new(),
            generate_bucket: BucketState::default(),
            read_bucket: BucketState::default(),
            outage: false,
            injected: VecDeque::new(),
            log: VecDeque::new(),
            routes: BTreeMap::new(),
            webhooks: webhooks::Sender::default(),
        }
    }

    fn serve(&mut self, incoming: &Incoming, now: Timestamp) -> Reply {
        let mut admission = Admission::NotReached;
        let reply = match self.gate(incoming, now, &mut admission) {
            Ok(()) => self.route(incoming, now),
            Err(error) => Err(error),
        }
        .unwrap_or_else(|error| self.error_reply(&error));
        self.record(incoming, &reply, admission, now);
        reply
    }

    /// What stands between a request and its route, in order: failures a test injected, an
    /// outage, authentication, then the rate limit (which only admitted requests consume).
    fn gate(
        &mut self,
        incoming: &Incoming,
        now: Timestamp,
        admission: &mut Admission,
    ) -> Result<(), SimError> {
        if let Some(status) = self.injected.pop_front() {
            return Err(SimError::injected(status));
        }
        if self.outage {
            return Err(SimError::no_workers());
        }
        let Some(bucket) = incoming.route.bucket() else {
            return Err(SimError::not_found("No such route"));
        };
        // Validate reports bad credentials in its body rather than with a 401.
        if incoming.route != Route::Validate {
            self.authenticate(incoming)?;
        }
        let limit = bucket.limit(&self.config);
        let verdict = self.bucket_mut(bucket).limiter.try_acquire(now, limit);
        *admission = match verdict {
            Ok(()) => Admission::Admitted,
            Err(_) => Admission::Refused,
        };
        verdict.map_err(SimError::rate_limited)
    }

    fn authenticate(&self, incoming: &Incoming) -> Result<(), SimError> {
        match incoming.header("api-secret") {
            None => Err(SimError::missing_auth(self.config.error_shape)),
            Some(given) if self.is_secret(given) => Ok(()),
            Some(_) => Err(SimError::unauthorized()),
        }
    }

    fn is_secret(&self, given: &str) -> bool {
        given
            .as_bytes()
            .ct_eq(self.config.api_secret.as_bytes())
            .into()
    }

    fn route(&mut self, incoming: &Incoming, now: Timestamp) -> Result<Reply, SimError> {
        match &incoming.route {
            Route::Generate => Ok(self.generate(incoming, now)),
            Route::Status { agent_id } => self.status(agent_id, now),
            Route::Validate => Ok(self.validate(incoming)),
            Route::RegisterWebhook => self.register_webhook(&incoming.body),
            Route::ListWebhooks => Ok(Reply::ok(json!({
                "success": true,
                "data": self
                    .webhooks
                    .registrations
                    .iter()
                    .map(Registration::listed)
                    .collect::<Vec<_>>(),
            }))),
            Route::DeleteWebhook { id } => {
                let before = self.webhooks.registrations.len();
                self.webhooks.registrations.retain(|r| &r.id != id);
                if self.webhooks.registrations.len() == before {
                    Err(SimError::not_found(format!("Webhook {id} not found")))
                } else {
                    Ok(Reply::ok(json!({"success": true})))
                }
            }
            Route::TestWebhook { id } => {
                let Some(target) = self.webhooks.registrations.iter().find(|r| &r.id == id) else {
                    return Err(SimError::not_found(format!("Webhook {id} not found")));
                };
                let delivery_id = format!("evt_{}", ulid::Ulid::new());
                let body = serde_json::to_vec(&json!({
                    "id": delivery_id, "event": "ping", "created": now.timestamp(), "data": {}
                }))
                .expect("JSON");
                let ping = Outgoing {
                    url: target.url.clone(),
                    secret: target.secret.clone(),
                    event: "ping",
                    delivery_id,
                    body,
                };
                self.webhooks.pings.push(ping);
                self.webhooks.stats.queued += 1;
                Ok(Reply::ok(json!({"success": true})))
            }
            Route::Unknown => Err(SimError::not_found("No such route")),
        }
    }

    /// Generate, with idempotency: the first answer under a key (success or refusal) is
    /// replayed for 24 hours, marked `Idempotency-Replayed: true`, without creating an agent.
    fn generate(&mut self, incoming: &Incoming, now: Timestamp) -> Reply {
        self.forget_expired_keys(now);
        let key = incoming
            .header("idempotency-key")
            .filter(|k| !k.is_empty())
            .map(|k| (self.config.api_secret.clone(), k.to_owned()));
        let live = |first: &&Remembered| now - first.at < idempotency_ttl();
        if let Some(first) = key
            .as_ref()
            .and_then(|k| self.idempotency.get(k))
            .filter(live)
        {
            return first
                .reply
                .clone()
                .with_header("idempotency-replayed", "true");
        }
        let reply = match self.create_agent(&incoming.body, now) {
            Ok(agent_id) => self.generate_reply(&agent_id),
            Err(error) => self.error_reply(&error),
        };
        if let Some(key) = key {
            let remembered = Remembered {
                reply: reply.clone(),
                at: now,
            };
            self.idempotency_order.push_back((key.clone(), now));
            self.idempotency.insert(key, remembered);
        }
        reply
    }

    /// Drops the keys that have lived their time, oldest first. A key whose clock went
    /// backwards may outstay its turn here, but lookups check the age themselves.
    fn forget_expired_keys(&mut self, now: Timestamp) {
        while self
            .idempotency_order
            .front()
            .is_some_and(|(_, at)| now - *at >= idempotency_ttl())
        {
            let Some((key, at)) = self.idempotency_order.pop_front() else {
                break;
            };
            // The key may have been remembered again since; only its latest entry counts.
            if self
                .idempotency
                .get(&key)
                .is_some_and(|first| first.at == at)
            {
                self.idempotency.remove(&key);
            }
        }
    }

    fn create_agent(&mut self, body: &[u8], now: Timestamp) -> Result<String, SimError> {
        let request = GenerateRequest::parse(body)?;
        let id = match &request.agent_id {
            Some(custom) if self.agents.contains_key(custom) => {
                return Err(SimError::validation(format!(
                    "agent_id `{custom}` already exists"
                )));
            }
            Some(custom) => custom.clone(),
            None => self.fresh_id(),
        };
        let index = self.agents_created;
        let plan = Plan {
            time_to_ready: self.config.time_to_ready,
            unlucky: unlucky(self.config.seed, index, self.config.failure_ratio),
        };
        self.agents_created += 1;
        self.accepted_generates += 1;
        let agent = Agent::new(id.clone(), request, plan, now);
        self.agents.insert(id.clone(), agent);
        Ok(id)
    }

    /// The id for the next agent, stepping past any taken by custom ids.
    fn fresh_id(&self) -> String {
        let index = self.agents_created;
        (0..64)
            .map(|attempt| generated_id(self.config.seed.wrapping_add(attempt), index))
            .find(|id| !self.agents.contains_key(id))
            .unwrap_or_else(|| format!("A{index:09}"))
    }

    fn generate_reply(&self, agent_id: &str) -> Reply {
        let message = "Agent generation started";
        Reply::ok(match self.config.generate_shape {
            GenerateShape::Top => json!({
                "success": true,
                "message": message,
                "agent_id": agent_id,
                "status": "processing",
            }),
            GenerateShape::Data => json!({
                "success": true,
                "message": message,
                "data": {"agent_id": agent_id, "status": "processing"},
            }),
        })
    }

    fn status(&self, agent_id: &str, now: Timestamp) -> Result<Reply, SimError> {
        let agent = self
            .agents
            .get(agent_id)
            .ok_or_else(|| SimError::not_found(format!("Agent {agent_id} not found")))?;
        let data = agent.status_data(now, self.config.status_shape);
        Ok(Reply::ok(json!({"success": true, "data": data})))
    }

    /// `POST /v1/webhooks` `{"url", "events", "description"}`: the secret is in this answer
    /// only.
    fn register_webhook(&mut self, body: &[u8]) -> Result<Reply, SimError> {
        let request: Value = serde_json::from_slice(body)
            .map_err(|e| SimError::validation(format!("the body is not valid JSON: {e}")))?;
        let url = request
            .get("url")
            .and_then(Value::as_str)
            .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
            .ok_or_else(|| SimError::validation("`url` must be an http(s) URL"))?;
        let events: Vec<String> = match request.get("events") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|e| e.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or_else(|| SimError::validation("`events` must be a list of strings"))?,
            Some(_) => return Err(SimError::validation("`events` must be a list of strings")),
        };
        self.webhooks.next_id += 1;
        let registration = Registration {
            id: format!("wh_{:04}", self.webhooks.next_id),
            url: url.to_owned(),
            events,
            secret: format!("whsec_{}", ulid::Ulid::new().to_string().to_lowercase()),
        };
        let mut data = registration.listed();
        data["secret"] = Value::from(registration.secret.clone());
        self.webhooks.registrations.push(registration);
        Ok(Reply::ok(json!({"success": true, "data": data})))
    }

    fn validate(&self, incoming: &Incoming) -> Reply {
        let valid = incoming
            .header("api-secret")
            .is_some_and(|given| self.is_secret(given));
        Reply::ok(json!({ "valid": valid }))
    }

    fn error_reply(&self, error: &SimError) -> Reply {
        error.reply(self.config.error_shape, self.config.retry_after)
    }

    fn bucket_mut(&mut self, bucket: Bucket) -> &mut BucketState {
        match bucket {
            Bucket::Generate => &mut self.generate_bucket,
            Bucket::Read => &mut self.read_bucket,
        }
    }

    fn record(&mut self, incoming: &Incoming, reply: &Reply, admission: Admission, now: Timestamp) {
        let route = self.routes.entry(incoming.route.name()).or_default();
        route.total += 1;
        *route.by_status.entry(reply.status).or_default() += 1;
        if let Some(bucket) = incoming.route.bucket() {
            let state = self.bucket_mut(bucket);
            state.requests += 1;
            state.seen.record(now);
            match admission {
                Admission::Admitted => state.admitted.record(now),
                Admission::Refused => state.rate_limited += 1,
                Admission::NotReached => {}
            }
        }
        if self.log.len() == REQUEST_LOG_CAPACITY {
            self.log.pop_front();
        }
        self.log.push_back(RecordedRequest {
            method: incoming.method.clone(),
            path: incoming.path.clone(),
            headers: incoming.headers.clone(),
            body: recorded_body(&incoming.body),
            received_at: now,
            status: reply.status,
        });
    }

    fn stats(&self) -> SimStats {
        let bucket = |b: Bucket, state: &BucketState| BucketStats {
            limit_per_minute: b.limit(&self.config),
            requests: state.requests,
            rate_limited: state.rate_limited,
            max_in_any_60s: state.seen.peak(),
            max_admitted_in_any_60s: state.admitted.peak(),
        };
        SimStats {
            requests: self.routes.values().map(|r| r.total).sum(),
            routes: self
                .routes
                .iter()
                .map(|(name, stats)| ((*name).to_owned(), stats.clone()))
                .collect(),
            buckets: BTreeMap::from([
                (
                    Bucket::Generate.name().to_owned(),
                    bucket(Bucket::Generate, &self.generate_bucket),
                ),
                (
                    Bucket::Read.name().to_owned(),
                    bucket(Bucket::Read, &self.read_bucket),
                ),
            ]),
            agents: self.agents.len(),
            accepted_generates: self.accepted_generates,
            outage: self.outage,
            pending_injected_failures: self.injected.len(),
        }
    }
}

fn recorded_body(body: &[u8]) -> Option<Value> {
    if body.is_empty() {
        return None;
    }
    Some(
        serde_json::from_slice(body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generate(key: &str) -> Incoming {
        Incoming {
            route: Route::Generate,
            method: "POST".into(),
            path: "/v1/agent/generate".into(),
            headers: BTreeMap::from([
                ("api-secret".to_owned(), SimConfig::default().api_secret),
                ("idempotency-key".to_owned(), key.to_owned()),
            ]),
            body: br#"{"prompt": "a"}"#.to_vec(),
        }
    }

    #[test]
    fn expired_idempotency_keys_are_forgotten_oldest_first() {
        let start = chrono::Utc::now();
        let mut inner = Inner::new(SimConfig {
            generate_per_minute: 1_000,
            ..SimConfig::default()
        });
        for i in 0..100 {
            let at = start + chrono::Duration::seconds(i);
            assert_eq!(inner.serve(&generate(&format!("k{i}")), at).status, 200);
        }
        assert_eq!(inner.idempotency.len(), 100);
        // 24 h after the 50th key was remembered, the first 51 are gone.
        let later = start + idempotency_ttl() + chrono::Duration::seconds(50);
        inner.serve(&generate("fresh"), later);
        assert_eq!(inner.idempotency.len(), 50);
        assert_eq!(inner.idempotency_order.len(), 50);
        // An expired key creates a new agent, a live one replays.
        let agents = inner.accepted_generates;
        inner.serve(&generate("k10"), later);
        assert_eq!(inner.accepted_generates, agents + 1);
        let replay = inner.serve(&generate("k60"), later);
        assert_eq!(inner.accepted_generates, agents + 1);
        assert_eq!(replay.status, 200);
    }

    #[test]
    fn a_key_is_not_replayed_after_its_time_even_when_the_clock_went_backwards() {
        let start = chrono::Utc::now();
        let mut inner = Inner::new(SimConfig::default());
        let day = idempotency_ttl();
        inner.serve(&generate("late"), start + day);
        inner.serve(&generate("early"), start);
        // "early" sits behind "late" in the order; the lookup still sees it has expired.
        inner.serve(
            &generate("early"),
            start + day + chrono::Duration::seconds(1),
        );
        assert_eq!(inner.accepted_generates, 3);
    }
}
