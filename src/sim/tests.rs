//! The simulator over real HTTP on 127.0.0.1. Agents progress on a manual clock wherever
//! timing matters, so nothing here waits for generation to happen.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use serde_json::{json, Value};

use super::*;
use crate::clock::{Clock, ManualClock, SharedClock, Timestamp};

const SECRET: &str = "sim-secret";

/// Generous limits and a long generation, so each test opts into what it examines.
fn config() -> SimConfig {
    SimConfig {
        time_to_ready: Duration::from_secs(100),
        generate_per_minute: 1_000,
        read_per_minute: 1_000,
        ..SimConfig::default()
    }
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn agent_id(&self) -> String {
        let id = self.body["agent_id"]
            .as_str()
            .or_else(|| self.body["data"]["agent_id"].as_str());
        id.expect("an agent_id in the answer").to_owned()
    }
}

struct Sim {
    server: SimServer,
    client: reqwest::Client,
    clock: Arc<ManualClock>,
    /// The manual clock's reading at start, which `at` counts from.
    start: Timestamp,
}

impl Sim {
    /// A simulator whose agents and rate limits run on a manual clock.
    fn start(config: SimConfig) -> Self {
        let clock = ManualClock::starting_now();
        let shared: SharedClock = clock.clone();
        let state = Arc::new(SimState::with_clock(config, shared));
        Self::on(state, clock)
    }

    /// A simulator on the system clock.
    fn start_real_time(config: SimConfig) -> Self {
        Self::on(Arc::new(SimState::new(config)), ManualClock::starting_now())
    }

    fn on(state: Arc<SimState>, clock: Arc<ManualClock>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let server = spawn_with_state(listener, state).expect("simulator starts");
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let start = clock.now();
        Self {
            server,
            client,
            clock,
            start,
        }
    }

    fn state(&self) -> &SimState {
        &self.server.state
    }

    /// Sets the manual clock to `secs` after the start.
    fn at(&self, secs: i64) {
        self.clock.set(self.start + chrono::Duration::seconds(secs));
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.base_url)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("the simulator answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("a body");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn generate(&self, body: Value) -> Answer {
        self.send(
            self.client
                .post(self.url("/v1/agent/generate"))
                .header("api-secret", SECRET)
                .json(&body),
        )
        .await
    }

    async fn generate_with_key(&self, body: Value, key: &str) -> Answer {
        self.send(
            self.client
                .post(self.url("/v1/agent/generate"))
                .header("api-secret", SECRET)
                .header("Idempotency-Key", key)
                .json(&body),
        )
        .await
    }

    async fn status(&self, agent_id: &str) -> Answer {
        self.send(
            self.client
                .get(self.url(&format!("/v1/agent/status/{agent_id}")))
                .header("api-secret", SECRET),
        )
        .await
    }

    /// The status `data` of an agent, asserting a 200.
    async fn data(&self, agent_id: &str) -> Value {
        let answer = self.status(agent_id).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.body["success"], true);
        answer.body["data"].clone()
    }

    async fn control(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Answer {
        let mut request = self.client.request(method, self.url(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.send(request).await
    }
}

fn current_error_code(answer: &Answer) -> &str {
    answer.body["error"]["code"].as_str().unwrap_or("")
}

fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value
        .as_object()
        .expect("an object")
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

const SEED_FIELDS: [&str; 11] = [
    "agent_id",
    "created_at",
    "error_message",
    "event_type",
    "image_url",
    "model_url",
    "name",
    "status",
    "system_prompt",
    "updated_at",
    "video_url",
];

#[tokio::test]
async fn an_agent_passes_the_trap_statuses_before_it_is_ready() {
    let sim = Sim::start(config());
    let created = sim.generate(json!({"prompt": "You are kind."})).await;
    assert_eq!(created.status, 200);
    assert_eq!(created.body["success"], true);
    assert_eq!(created.body["message"], "Agent generation started");
    assert_eq!(created.body["status"], "processing");
    let id = created.agent_id();

    let seen = |secs| {
        sim.at(secs);
        sim.data(&id)
    };
    let early = seen(5).await;
    assert_eq!(early["status"], "completed", "completed shows up early");
    assert_eq!(early["progress"], 0.05);
    assert_eq!(early["current_step"], "payment");
    let marker = seen(20).await;
    assert_eq!(marker["status"], "success", "success marks a step");
    assert!(marker["progress"].as_f64().unwrap() < 1.0);
    assert_eq!(marker["model_url"], Value::Null);
    assert_eq!(seen(30).await["status"], "generating");
    assert_eq!(seen(45).await["status"], "success");
    assert_eq!(seen(90).await["current_step"], "lip_sync");

    let ready = seen(100).await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["progress"], 1.0);
    assert_eq!(ready["current_step"], "done");
    assert_eq!(ready["event_type"], "lip_created");
    assert_eq!(ready["system_prompt"], "You are kind.");
    assert!(ready["model_url"].as_str().unwrap().ends_with(".imx"));
    for field in [
        "description",
        "voice_id",
        "progress_msg",
        "supported_models",
    ] {
        assert!(ready.get(field).is_some(), "current shape has {field}");
    }
    for field in SEED_FIELDS {
        assert!(ready.get(field).is_some(), "current shape keeps {field}");
    }
}

#[tokio::test]
async fn an_agent_becomes_ready_in_real_time() {
    let sim = Sim::start_real_time(SimConfig {
        time_to_ready: Duration::from_millis(150),
        ..config()
    });
    let id = sim.generate(json!({})).await.agent_id();
    assert_ne!(sim.data(&id).await["status"], "ready");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ready = sim.data(&id).await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["progress"], 1.0);
}

#[tokio::test]
async fn the_seed_status_shape_has_only_the_seed_fields_and_statuses() {
    let sim = Sim::start(SimConfig {
        status_shape: StatusShape::Seed,
        ..config()
    });
    let id = sim.generate(json!({"prompt": "p"})).await.agent_id();
    for secs in [0, 5, 20, 45, 99] {
        sim.at(secs);
        let data = sim.data(&id).await;
        assert_eq!(keys(&data), SEED_FIELDS, "at {secs} s");
        assert_eq!(data["status"], "processing", "at {secs} s");
    }
    sim.at(100);
    assert_eq!(sim.data(&id).await["status"], "ready");
}

#[tokio::test]
async fn generate_puts_the_agent_id_where_the_shape_says() {
    let sim = Sim::start(config());
    let top = sim.generate(json!({})).await;
    assert!(top.body["agent_id"].is_string());
    assert_eq!(top.body["status"], "processing");
    assert!(top.body.get("data").is_none());

    sim.state()
        .update(|c| c.generate_shape = GenerateShape::Data);
    let data = sim.generate(json!({})).await;
    assert_eq!(data.body["success"], true);
    assert_eq!(data.body["message"], "Agent generation started");
    assert!(data.body["data"]["agent_id"].is_string());
    assert_eq!(data.body["data"]["status"], "processing");
    assert!(data.body.get("agent_id").is_none());
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_answer_without_a_new_agent() {
    let sim = Sim::start(config());
    let first = sim.generate_with_key(json!({"prompt": "a"}), "job-1").await;
    let again = sim.generate_with_key(json!({"prompt": "a"}), "job-1").await;
    assert_eq!(first.status, 200);
    assert_eq!(again.status, 200);
    assert_eq!(again.body, first.body);
    assert_eq!(first.header("idempotency-replayed"), None);
    assert_eq!(again.header("idempotency-replayed"), Some("true"));
    assert_eq!(sim.state().accepted_generates(), 1);
    assert_eq!(sim.state().generate_calls(), 2);

    let other = sim.generate_with_key(json!({"prompt": "a"}), "job-2").await;
    assert_ne!(other.agent_id(), first.agent_id());

    // Keys are scoped per api-secret.
    sim.state().update(|c| c.api_secret = "other".into());
    let scoped = sim
        .send(
            sim.client
                .post(sim.url("/v1/agent/generate"))
                .header("api-secret", "other")
                .header("Idempotency-Key", "job-1")
                .json(&json!({})),
        )
        .await;
    assert_ne!(scoped.agent_id(), first.agent_id());
    sim.state().update(|c| c.api_secret = SECRET.into());

    // Keys live 24 hours.
    sim.clock.advance(Duration::from_secs(24 * 3600 + 1));
    let later = sim.generate_with_key(json!({"prompt": "a"}), "job-1").await;
    assert_ne!(later.agent_id(), first.agent_id());
    assert_eq!(sim.state().accepted_generates(), 4);
}

#[tokio::test]
async fn missing_and_wrong_secrets_answer_401_in_both_error_shapes() {
    let sim = Sim::start(config());
    let generate = || {
        sim.client
            .post(sim.url("/v1/agent/generate"))
            .json(&json!({}))
    };

    let missing = sim.send(generate()).await;
    assert_eq!(missing.status, 401);
    assert_eq!(current_error_code(&missing), "MISSING_AUTH");
    assert_eq!(missing.body["error"]["httpStatus"], 401);
    assert_eq!(missing.body["status"], "error");
    assert_eq!(missing.body["status_code"], 401);

    let wrong = sim.send(generate().header("api-secret", "nope")).await;
    assert_eq!(wrong.status, 401);
    assert_eq!(current_error_code(&wrong), "UNAUTHORIZED");

    sim.state().update(|c| c.error_shape = ErrorShape::Seed);
    for request in [generate(), generate().header("api-secret", "nope")] {
        let seed = sim.send(request).await;
        assert_eq!(seed.status, 401);
        assert_eq!(seed.body["code"], "UNAUTHORIZED");
        assert!(seed.body["error"].is_string());
        assert!(seed.body["details"].is_string());
    }
    assert_eq!(sim.state().accepted_generates(), 0);
}

#[tokio::test]
async fn over_the_generate_limit_answers_429_with_retry_after_when_enabled() {
    let sim = Sim::start(SimConfig {
        generate_per_minute: 2,
        ..config()
    });
    assert_eq!(sim.generate(json!({})).await.status, 200);
    sim.clock.advance(Duration::from_secs(30));
    assert_eq!(sim.generate(json!({})).await.status, 200);

    let refused = sim.generate(json!({})).await;
    assert_eq!(refused.status, 429);
    assert_eq!(current_error_code(&refused), "RATE_LIMITED");
    assert_eq!(refused.header("retry-after"), Some("30"));

    sim.state().update(|c| c.retry_after = false);
    let bare = sim.generate(json!({})).await;
    assert_eq!(bare.status, 429);
    assert_eq!(bare.header("retry-after"), None);

    sim.clock.advance(Duration::from_secs(30));
    assert_eq!(sim.generate(json!({})).await.status, 200);
    assert_eq!(sim.state().accepted_generates(), 3);
    let stats = sim.state().stats();
    assert_eq!(stats.buckets["generate"].rate_limited, 2);
    assert_eq!(stats.buckets["generate"].max_in_any_60s, 4);
    assert_eq!(stats.buckets["generate"].max_admitted_in_any_60s, 2);
}

#[tokio::test]
async fn a_poller_at_exactly_the_read_limit_is_never_refused() {
    let sim = Sim::start(SimConfig {
        read_per_minute: 6,
        ..config()
    });
    let id = sim.generate(json!({})).await.agent_id();
    // Every 10 s for ten minutes: always six in the last minute, never seven.
    for poll in 0..60 {
        sim.at(poll * 10);
        let answer = sim.status(&id).await;
        assert_eq!(answer.status, 200, "poll {poll}");
    }
    // At 600 s the polls of 550-590 s are in the window: room for one more, not three.
    sim.at(600);
    let mut burst = Vec::new();
    for _ in 0..3 {
        burst.push(sim.status(&id).await.status);
    }
    assert_eq!(burst, [200, 429, 429]);
    let read = &sim.state().stats().buckets["read"];
    assert_eq!(read.max_admitted_in_any_60s, 6);
    assert_eq!(read.max_in_any_60s, 5 + 3);
}

#[tokio::test]
async fn validate_shares_the_read_bucket_and_reports_the_secret_in_its_body() {
    let sim = Sim::start(SimConfig {
        read_per_minute: 3,
        ..config()
    });
    let validate = |secret: Option<&str>| {
        let request = sim.client.post(sim.url("/v1/validate"));
        match secret {
            Some(s) => request.header("api-secret", s.to_owned()),
            None => request,
        }
    };
    let good = sim.send(validate(Some(SECRET))).await;
    assert_eq!(
        (good.status, good.body.clone()),
        (200, json!({"valid": true}))
    );
    let bad = sim.send(validate(Some("nope"))).await;
    assert_eq!(
        (bad.status, bad.body.clone()),
        (200, json!({"valid": false}))
    );
    let none = sim.send(validate(None)).await;
    assert_eq!(
        (none.status, none.body.clone()),
        (200, json!({"valid": false}))
    );
    assert_eq!(sim.send(validate(Some(SECRET))).await.status, 429);
    assert_eq!(sim.state().validate_calls(), 4);
}

#[tokio::test]
async fn an_outage_answers_503_on_every_route_until_lifted() {
    let sim = Sim::start(config());
    let id = sim.generate(json!({})).await.agent_id();
    sim.state().set_outage(true);
    let generate = sim.generate(json!({})).await;
    let status = sim.status(&id).await;
    let validate = sim
        .send(
            sim.client
                .post(sim.url("/v1/validate"))
                .header("api-secret", SECRET),
        )
        .await;
    for answer in [&generate, &status, &validate] {
        assert_eq!(answer.status, 503);
        assert_eq!(current_error_code(answer), "NO_AVAILABLE_WORKERS");
    }
    sim.state().set_outage(false);
    assert_eq!(sim.generate(json!({})).await.status, 200);
    assert_eq!(sim.state().accepted_generates(), 2);
}

#[tokio::test]
async fn fail_next_answers_the_requested_statuses_then_recovers() {
    let sim = Sim::start(config());
    sim.state().fail_next(2, 500);
    sim.state().fail_next(1, 402);
    for expected in [(500, "INTERNAL_ERROR"), (500, "INTERNAL_ERROR")] {
        let answer = sim.generate(json!({})).await;
        assert_eq!((answer.status, current_error_code(&answer)), expected);
    }
    let broke = sim.generate(json!({})).await;
    assert_eq!(broke.status, 402);
    assert_eq!(current_error_code(&broke), "INSUFFICIENT_BALANCE");
    assert_eq!(sim.generate(json!({})).await.status, 200);
    assert_eq!(sim.state().accepted_generates(), 1);

    sim.state().fail_next(1, 429);
    let limited = sim.generate(json!({})).await;
    assert_eq!(limited.status, 429);
    assert!(limited.header("retry-after").is_some());
    sim.state().update(|c| c.retry_after = false);
    sim.state().fail_next(1, 429);
    assert_eq!(sim.generate(json!({})).await.header("retry-after"), None);

    sim.state().update(|c| c.error_shape = ErrorShape::Seed);
    for (status, code) in [
        (400, "VALIDATION_ERROR"),
        (401, "UNAUTHORIZED"),
        (404, "NOT_FOUND"),
        (503, "NO_AVAILABLE_WORKERS"),
    ] {
        sim.state().fail_next(1, status);
        let answer = sim.generate(json!({})).await;
        assert_eq!(answer.status, status);
        assert_eq!(answer.body["code"], code);
    }
}

#[tokio::test]
async fn a_fail_prompt_fails_half_way() {
    let sim = Sim::start(config());
    let id = sim.generate(json!({"prompt": "x [fail]"})).await.agent_id();
    sim.at(40);
    assert_eq!(sim.data(&id).await["status"], "generating");
    sim.at(55);
    let failed = sim.data(&id).await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(
        failed["error_message"],
        "Generation failed: simulated failure"
    );
    sim.at(500);
    assert_eq!(sim.data(&id).await["status"], "failed");
}

#[tokio::test]
async fn an_unreachable_image_is_accepted_then_fails_quickly() {
    let sim = Sim::start(config());
    let created = sim
        .generate(json!({"image": "https://unreachable.example/face.jpg"}))
        .await;
    assert_eq!(created.status, 200);
    assert_eq!(created.body["status"], "processing");
    let id = created.agent_id();
    assert_eq!(sim.data(&id).await["status"], "processing");
    sim.at(10);
    let failed = sim.data(&id).await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(
        failed["error_message"],
        "Image processing failed: could not download image"
    );
}

#[tokio::test]
async fn a_null_model_prompt_ends_ready_without_a_model_url() {
    let sim = Sim::start(config());
    let id = sim
        .generate(json!({"prompt": "[null-model]"}))
        .await
        .agent_id();
    sim.at(100);
    let ready = sim.data(&id).await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["model_url"], Value::Null);
}

#[tokio::test]
async fn a_success_final_prompt_ends_success_at_full_progress_never_ready() {
    let sim = Sim::start(config());
    let id = sim
        .generate(json!({"prompt": "[success-final]"}))
        .await
        .agent_id();
    for secs in [0, 20, 45, 99] {
        sim.at(secs);
        let data = sim.data(&id).await;
        assert!(data["progress"].as_f64().unwrap() < 1.0, "at {secs} s");
    }
    for secs in [100, 1000] {
        sim.at(secs);
        let done = sim.data(&id).await;
        assert_eq!(done["status"], "success");
        assert_eq!(done["progress"], 1.0);
    }
}

#[tokio::test]
async fn a_failure_ratio_of_one_fails_every_agent() {
    let sim = Sim::start(SimConfig {
        failure_ratio: 1.0,
        ..config()
    });
    let ids = [
        sim.generate(json!({})).await.agent_id(),
        sim.generate(json!({})).await.agent_id(),
    ];
    sim.at(100);
    for id in ids {
        assert_eq!(sim.data(&id).await["status"], "failed");
    }
}

#[tokio::test]
async fn bad_generate_bodies_answer_400_and_unknown_fields_are_kept() {
    let sim = Sim::start(config());
    let raw = |body: &'static str| {
        sim.client
            .post(sim.url("/v1/agent/generate"))
            .header("api-secret", SECRET)
            .header("content-type", "application/json")
            .body(body)
    };
    for body in [
        "not json",
        "",
        "[1]",
        r#"{"prompt": 1}"#,
        r#"{"aspect_ratio": "4:3"}"#,
    ] {
        let answer = sim.send(raw(body)).await;
        assert_eq!(answer.status, 400, "{body}");
        assert_eq!(current_error_code(&answer), "VALIDATION_ERROR", "{body}");
    }
    let video = sim
        .generate(json!({"video": "https://x/unsupported.mp4"}))
        .await;
    assert_eq!(video.status, 400);
    assert_eq!(current_error_code(&video), "VIDEO_INPUT_NOT_SUPPORTED");

    let extra = json!({"prompt": "p", "aspect_ratio": "1:1", "transparency": true,
                       "framing": "portrait", "model": "essence-2", "version": "v2",
                       "callback_hint": {"nested": [1, 2]}});
    assert_eq!(sim.generate(extra.clone()).await.status, 200);
    let recorded = sim.state().requests();
    let last = recorded.last().expect("recorded");
    assert_eq!(last.body.as_ref(), Some(&extra));
    assert_eq!(last.status, 200);
    assert_eq!(
        last.headers.get("api-secret").map(String::as_str),
        Some(SECRET)
    );
    assert_eq!(last.method, "POST");
    assert_eq!(last.path, "/v1/agent/generate");
    assert_eq!(sim.state().accepted_generates(), 1);
}

#[tokio::test]
async fn a_custom_agent_id_is_honoured_once() {
    let sim = Sim::start(config());
    let created = sim.generate(json!({"agent_id": "my-agent_1"})).await;
    assert_eq!(created.agent_id(), "my-agent_1");
    assert_eq!(sim.data("my-agent_1").await["agent_id"], "my-agent_1");
    let again = sim.generate(json!({"agent_id": "my-agent_1"})).await;
    assert_eq!(again.status, 400);
}

#[tokio::test]
async fn unknown_and_forgotten_agents_answer_404() {
    let sim = Sim::start(config());
    let unknown = sim.status("A00NOPE0000").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(current_error_code(&unknown), "NOT_FOUND");

    let id = sim.generate(json!({})).await.agent_id();
    assert!(sim.state().forget_agent(&id));
    assert_eq!(sim.status(&id).await.status, 404);
    assert_eq!(sim.state().status_calls(), 2);
}

#[tokio::test]
async fn forcing_an_outcome_changes_what_status_says() {
    let sim = Sim::start(config());
    let id = sim.generate(json!({})).await.agent_id();
    assert!(sim.state().set_agent_outcome(&id, Outcome::Ready));
    assert_eq!(sim.data(&id).await["status"], "ready");
    let failure = Outcome::Failed {
        error_message: Some("boom".into()),
    };
    assert!(sim.state().set_agent_outcome(&id, failure));
    let failed = sim.data(&id).await;
    assert_eq!(
        (failed["status"].clone(), failed["error_message"].clone()),
        (json!("failed"), json!("boom"))
    );
    assert!(!sim.state().set_agent_outcome("A00NOPE0000", Outcome::Ready));
}

#[tokio::test]
async fn latency_holds_back_every_answer() {
    let sim = Sim::start(SimConfig {
        latency: Duration::from_millis(80),
        ..config()
    });
    let began = Instant::now();
    assert_eq!(sim.generate(json!({})).await.status, 200);
    assert!(began.elapsed() >= Duration::from_millis(80));
}

#[tokio::test]
async fn the_control_routes_steer_the_simulator_over_http() {
    use reqwest::Method;
    let sim = Sim::start(config());

    let patched = sim
        .control(
            Method::POST,
            "/_sim/config",
            Some(json!({"error_shape": "seed", "time_to_ready": "1h"})),
        )
        .await;
    assert_eq!(patched.status, 200);
    assert_eq!(patched.body["time_to_ready"], "1h");
    assert_eq!(patched.body["api_secret"], "[redacted]");
    let typo = sim
        .control(
            Method::POST,
            "/_sim/config",
            Some(json!({"error_shap": "seed"})),
        )
        .await;
    assert_eq!(typo.status, 400);
    let shown = sim.control(Method::GET, "/_sim/config", None).await;
    assert_eq!(shown.body["error_shape"], "seed");

    let id = sim.generate(json!({"prompt": "p"})).await.agent_id();
    let forced = sim
        .control(
            Method::POST,
            &format!("/_sim/agents/{id}"),
            Some(json!({"status": "ready"})),
        )
        .await;
    assert_eq!(forced.status, 200);
    assert_eq!(sim.data(&id).await["status"], "ready");
    let failed = sim
        .control(
            Method::POST,
            &format!("/_sim/agents/{id}"),
            Some(json!({"status": "failed", "error_message": "boom"})),
        )
        .await;
    assert_eq!(failed.body["error_message"], "boom");
    let nonsense = sim
        .control(
            Method::POST,
            &format!("/_sim/agents/{id}"),
            Some(json!({"status": "done"})),
        )
        .await;
    assert_eq!(nonsense.status, 400);
    let listed = sim.control(Method::GET, "/_sim/agents", None).await;
    assert_eq!(listed.body.as_array().map(Vec::len), Some(1));

    sim.control(Method::POST, "/_sim/outage", Some(json!({"on": true})))
        .await;
    let down = sim.generate(json!({})).await;
    assert_eq!(
        (down.status, down.body["code"].clone()),
        (503, json!("NO_AVAILABLE_WORKERS"))
    );
    sim.control(Method::POST, "/_sim/outage", Some(json!({"on": false})))
        .await;

    let queued = sim
        .control(
            Method::POST,
            "/_sim/fail-next",
            Some(json!({"count": 1, "status": 429})),
        )
        .await;
    assert_eq!(queued.body["pending"], 1);
    assert_eq!(sim.generate(json!({})).await.status, 429);
    let not_an_error = sim
        .control(
            Method::POST,
            "/_sim/fail-next",
            Some(json!({"count": 1, "status": 200})),
        )
        .await;
    assert_eq!(not_an_error.status, 400);

    let requests = sim.control(Method::GET, "/_sim/requests", None).await;
    let paths: Vec<&str> = requests
        .body
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|r| r["path"].as_str())
        .collect();
    assert!(
        paths.iter().all(|p| p.starts_with("/v1/")),
        "control routes are not recorded"
    );
    assert_eq!(paths.len(), 4);

    let stats = sim.control(Method::GET, "/_sim/stats", None).await;
    assert_eq!(stats.body["routes"]["generate"]["total"], 3);
    assert_eq!(stats.body["routes"]["generate"]["by_status"]["503"], 1);
    assert_eq!(stats.body["buckets"]["read"]["requests"], 1);
    assert_eq!(stats.body["buckets"]["generate"]["max_in_any_60s"], 3);

    let forget = sim
        .control(Method::DELETE, &format!("/_sim/agents/{id}"), None)
        .await;
    assert_eq!(forget.status, 204);
    assert_eq!(sim.status(&id).await.status, 404);
    assert_eq!(
        sim.control(Method::DELETE, &format!("/_sim/agents/{id}"), None)
            .await
            .status,
        404
    );

    assert_eq!(
        sim.control(Method::POST, "/_sim/reset", None).await.status,
        204
    );
    let after = sim.state().stats();
    assert_eq!((after.requests, after.agents), (0, 0));
    assert_eq!(
        sim.state().config().error_shape,
        ErrorShape::Seed,
        "reset keeps the config"
    );
    assert_eq!(
        sim.control(Method::GET, "/_sim/nothing", None).await.status,
        404
    );
    assert_eq!(
        sim.control(Method::GET, "/_sim/health", None).await.body["ok"],
        true
    );
}

#[tokio::test]
async fn stop_closes_the_listener() {
    let sim = Sim::start(config());
    assert!(sim.server.base_url.starts_with("http://127.0.0.1:"));
    sim.server.stop().await;
    let refused = sim
        .client
        .post(sim.url("/v1/validate"))
        .timeout(Duration::from_secs(1))
        .send()
        .await;
    assert!(refused.is_err());
}
