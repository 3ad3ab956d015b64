//! `POST /v1/jobs` and friends: submission, idempotency, tenants, outages, restarts.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

fn generate_requests(app: &TestApp) -> Vec<agenthook::sim::RecordedRequest> {
    app.sim
        .state
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/agent/generate")
        .collect()
}

#[tokio::test]
async fn a_job_is_submitted_upstream_at_once_and_answers_202_processing() {
    let app = spawn_app().await;
    let (status, job) = app
        .create_job(
            KEY_A,
            json!({
                "prompt": "You are a friendly assistant",
                "aspect_ratio": "16:9",
                "some_future_field": {"nested": [1, 2]},
                "callback_url": "http://127.0.0.1:9/hook",
                "metadata": {"order": 42}
            }),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["status"], "processing");
    assert!(job["id"].as_str().unwrap().starts_with("job_"));
    assert!(job["agent_id"].as_str().is_some_and(|a| !a.is_empty()));
    assert_eq!(job["metadata"]["order"], 42);
    assert_eq!(job["callback_url"], "http://127.0.0.1:9/hook");

    let sent = generate_requests(&app);
    assert_eq!(sent.len(), 1);
    let body = sent[0].body.clone().unwrap();
    assert_eq!(body["prompt"], "You are a friendly assistant");
    assert_eq!(body["aspect_ratio"], "16:9");
    assert_eq!(body["some_future_field"], json!({"nested": [1, 2]}));
    assert!(
        body.get("callback_url").is_none(),
        "callback_url must not be forwarded"
    );
    assert!(
        body.get("metadata").is_none(),
        "metadata must not be forwarded"
    );
    assert_eq!(
        sent[0].headers["idempotency-key"],
        job["id"].as_str().unwrap()
    );
    assert_eq!(
        sent[0].headers["api-secret"],
        app.sim.state.config().api_secret
    );
}

#[tokio::test]
async fn media_is_not_echoed_and_not_kept_once_accepted() {
    let app = spawn_app().await;
    let image = format!("data:image/png;base64,{}", "A".repeat(4096));
    let (status, job) = app
        .create_job(KEY_A, json!({"prompt": "p", "image": image}))
        .await;
    assert_eq!(status, 202);
    assert!(!job.to_string().contains("AAAAAAAA"), "media echoed: {job}");
    let (_, fetched) = app.job(KEY_A, job["id"].as_str().unwrap()).await;
    assert!(!fetched.to_string().contains("AAAAAAAA"));
    let id = agenthook::domain::JobId::parse(job["id"].as_str().unwrap()).unwrap();
    let (_, dir, _) = app.stop().await;
    let store = open_store(dir.path()).await;
    let stored = store
        .job_by_id(&id)
        .await
        .unwrap()
        .expect("the job is stored");
    assert!(
        stored.request.is_none(),
        "the generate request (with its media) is still stored"
    );
    assert!(!serde_json::to_string(&stored).unwrap().contains("AAAAAAAA"));
}

#[tokio::test]
async fn jobs_are_read_back_listed_and_paged() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let (_, job) = app
            .create_job(KEY_A, json!({"prompt": format!("p{i}")}))
            .await;
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    let (status, job) = app.job(KEY_A, &ids[0]).await;
    assert_eq!(status, 200);
    assert_eq!(job["id"], ids[0].as_str());

    let page: serde_json::Value = app.get_json("/v1/jobs?limit=2", KEY_A).await;
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    let mut seen: Vec<String> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect();
    let mut next = page["next"].as_str().map(str::to_owned);
    while let Some(after) = next {
        let page: serde_json::Value = app
            .get_json(&format!("/v1/jobs?limit=2&after={after}"), KEY_A)
            .await;
        seen.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["id"].as_str().unwrap().to_owned()),
        );
        next = page["next"].as_str().map(str::to_owned);
    }
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(seen, expected, "newest first, every job once");

    let filtered: serde_json::Value = app.get_json("/v1/jobs?status=ready", KEY_A).await;
    assert!(filtered["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|j| j["status"] == "ready"));
}

#[tokio::test]
async fn a_job_is_found_by_its_agent_id_by_its_own_tenant_only() {
    let app = spawn_app().await;
    let (_, mine) = app.create_job(KEY_A, json!({"prompt": "find me"})).await;
    let (_, other) = app.create_job(KEY_A, json!({"prompt": "not me"})).await;
    let agent_id = mine["agent_id"].as_str().expect("accepted upstream");
    assert_ne!(other["agent_id"], agent_id);

    let page = app
        .get_json(&format!("/v1/jobs?agent_id={agent_id}"), KEY_A)
        .await;
    let found = page["data"].as_array().unwrap();
    assert_eq!(found.len(), 1, "{page}");
    assert_eq!(found[0]["id"], mine["id"]);
    assert_eq!(page["next"], Value::Null);

    let wrong_status = app
        .get_json(
            &format!("/v1/jobs?agent_id={agent_id}&status=failed"),
            KEY_A,
        )
        .await;
    assert_eq!(wrong_status["data"], json!([]));
    let other_tenant = app
        .get_json(&format!("/v1/jobs?agent_id={agent_id}"), KEY_B)
        .await;
    assert_eq!(other_tenant["data"], json!([]));
    let unknown = app.get_json("/v1/jobs?agent_id=NOSUCHAGENT", KEY_A).await;
    assert_eq!(unknown["data"], json!([]));
}

#[tokio::test]
async fn the_same_idempotency_key_and_body_replays_the_first_answer_with_one_upstream_call() {
    let app = spawn_app().await;
    let body = json!({"prompt": "idempotent", "metadata": {"a": 1, "b": 2}});
    let send = |body: serde_json::Value| {
        app.post("/v1/jobs", KEY_A)
            .header("Idempotency-Key", "order-1234")
            .json(&body)
            .send()
    };
    let first = send(body.clone()).await.unwrap();
    assert_eq!(first.status(), 202);
    let first: serde_json::Value = first.json().await.unwrap();
    // Same content, keys in another order.
    let reordered: serde_json::Value =
        serde_json::from_str(r#"{"metadata": {"b": 2, "a": 1}, "prompt": "idempotent"}"#).unwrap();
    let second = send(reordered).await.unwrap();
    assert_eq!(second.status(), 202);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    let second: serde_json::Value = second.json().await.unwrap();
    assert_eq!(first["id"], second["id"]);
    assert_eq!(first["agent_id"], second["agent_id"]);
    assert_eq!(
        generate_requests(&app).len(),
        1,
        "upstream must be called once"
    );

    let different = send(json!({"prompt": "something else"})).await.unwrap();
    assert_eq!(different.status(), 422);
    let err: serde_json::Value = different.json().await.unwrap();
    assert_eq!(err["code"], "UNPROCESSABLE");
    assert_eq!(generate_requests(&app).len(), 1);

    // Keys are per tenant: tenant B may use the same key for its own job.
    let other = app
        .post("/v1/jobs", KEY_B)
        .header("Idempotency-Key", "order-1234")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 202);
    let other: serde_json::Value = other.json().await.unwrap();
    assert_ne!(other["id"], first["id"]);
}

#[tokio::test]
async fn a_key_still_in_flight_answers_409() {
    let app = spawn_app_with_slow_upstream(Duration::from_millis(800)).await;
    let body = json!({"prompt": "slow"});
    let first = app
        .post("/v1/jobs", KEY_A)
        .header("Idempotency-Key", "slow-1")
        .json(&body)
        .send();
    let second = async {
        // Once upstream has the first one's generate (held 800 ms), the first is in flight. A
        // fixed head start was not enough on a loaded machine: the second came in first.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while generate_requests(&app).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the first never reached upstream"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        app.post("/v1/jobs", KEY_A)
            .header("Idempotency-Key", "slow-1")
            .json(&body)
            .send()
            .await
    };
    let (first, second) = tokio::join!(first, second);
    assert_eq!(first.unwrap().status(), 202);
    let second = second.unwrap();
    assert_eq!(second.status(), 409);
    let err: serde_json::Value = second.json().await.unwrap();
    assert_eq!(err["code"], "CONFLICT");
    assert_eq!(generate_requests(&app).len(), 1);
}

/// A service whose upstream takes `latency` to answer a generate.
async fn spawn_app_with_slow_upstream(latency: Duration) -> TestApp {
    spawn_app_with(
        agenthook::sim::SimConfig {
            latency,
            ..fast_sim_config()
        },
        |_| {},
    )
    .await
}

#[tokio::test]
async fn a_job_waiting_on_a_slow_upstream_is_stored_as_submitting_before_the_answer() {
    let app = spawn_app_with_slow_upstream(Duration::from_millis(1500)).await;
    let first = app
        .post("/v1/jobs", KEY_A)
        .json(&json!({"prompt": "slow"}))
        .send();
    let during = async {
        // Past agenthook's hold point, well before upstream answers.
        tokio::time::sleep(Duration::from_millis(700)).await;
        app.list_jobs(KEY_A).await
    };
    let (first, during) = tokio::join!(first, during);
    assert_eq!(during.len(), 1, "the job is stored while upstream is slow");
    assert_eq!(during[0]["status"], "submitting");
    let first: serde_json::Value = first.unwrap().json().await.unwrap();
    assert_eq!(first["status"], "processing");
    assert_eq!(first["id"], during[0]["id"]);
    let after = app.list_jobs(KEY_A).await;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0]["status"], "processing");
    assert_eq!(generate_requests(&app).len(), 1);
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_submission_still_gets_its_job_kept() {
    let app = spawn_app_with_slow_upstream(Duration::from_millis(1500)).await;
    let request = app
        .post("/v1/jobs", KEY_A)
        .json(&json!({"prompt": "hang up"}))
        .send();
    let client = tokio::spawn(request);
    // Hang up once agenthook's request is upstream, well before upstream answers.
    for _ in 0..200 {
        if !generate_requests(&app).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(generate_requests(&app).len(), 1, "the job reached upstream");
    client.abort();
    assert!(
        client.await.unwrap_err().is_cancelled(),
        "the client hung up"
    );
    // Upstream accepts it a moment later: the job that tracks that agent must exist.
    let mut jobs = Vec::new();
    for _ in 0..100 {
        jobs = app.list_jobs(KEY_A).await;
        if jobs.first().is_some_and(|j| j["status"] == "processing") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["status"], "processing");
    assert!(jobs[0]["agent_id"].is_string());
    assert_eq!(generate_requests(&app).len(), 1);
}

#[tokio::test]
async fn a_bad_idempotency_key_is_refused() {
    let app = spawn_app().await;
    let res = app
        .post("/v1/jobs", KEY_A)
        .header("Idempotency-Key", "x".repeat(256))
        .json(&json!({"prompt": "p"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(generate_requests(&app).len(), 0);
}

#[tokio::test]
async fn tenants_never_see_each_others_jobs() {
    let app = spawn_app().await;
    let (_, job) = app.create_job(KEY_A, json!({"prompt": "mine"})).await;
    let id = job["id"].as_str().unwrap();
    assert_eq!(app.job(KEY_B, id).await.0, 404);
    let list: serde_json::Value = app.get_json("/v1/jobs", KEY_B).await;
    assert!(list["data"].as_array().unwrap().is_empty());
    assert_eq!(
        app.delete(&format!("/v1/jobs/{id}"), KEY_B)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        app.get(&format!("/v1/jobs/{id}/deliveries"), KEY_B)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(app.job(KEY_A, id).await.1["status"], "processing");
}

#[tokio::test]
async fn permanent_upstream_refusals_are_returned_and_no_job_is_kept() {
    let app = spawn_app().await;
    for (status, upstream_code) in [
        (400, "VALIDATION_ERROR"),
        (401, "UNAUTHORIZED"),
        (402, "INSUFFICIENT_BALANCE"),
    ] {
        app.sim.state.fail_next(1, status);
        let (got, err) = app.create_job(KEY_A, json!({"prompt": "refused"})).await;
        assert_eq!(got, status, "{err}");
        assert_eq!(err["code"], "UPSTREAM_ERROR");
        assert_eq!(err["details"], upstream_code);
    }
    let list: serde_json::Value = app.get_json("/v1/jobs", KEY_A).await;
    assert!(list["data"].as_array().unwrap().is_empty(), "{list}");
}

#[tokio::test]
async fn an_unreachable_upstream_gives_202_submitting_which_survives_a_restart_and_is_submitted_later(
) {
    let app = spawn_app().await;
    app.sim.state.set_outage(true);
    let (status, job) = app
        .create_job(KEY_A, json!({"prompt": "during outage"}))
        .await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["status"], "submitting");
    assert!(job["agent_id"].is_null());
    let id = job["id"].as_str().unwrap().to_owned();

    let (sim, dir, settings) = app.stop().await;
    let app = start(sim, dir, settings, agenthook::clock::system()).await;
    let (status, again) = app.job(KEY_A, &id).await;
    assert_eq!(status, 200);
    assert_eq!(again["status"], "submitting");

    app.sim.state.set_outage(false);
    let done = app.wait_for_status(KEY_A, &id, "processing").await;
    assert!(done["agent_id"].as_str().is_some());
    // Every submission attempt carried the job id as upstream Idempotency-Key.
    assert!(generate_requests(&app)
        .iter()
        .all(|r| r.headers["idempotency-key"] == id));
}

#[tokio::test]
async fn a_transient_upstream_error_defers_the_submission() {
    let app = spawn_app().await;
    app.sim.state.fail_next(1, 503);
    let (status, job) = app.create_job(KEY_A, json!({"prompt": "retry me"})).await;
    assert_eq!(status, 202);
    assert_eq!(job["status"], "submitting");
    let id = job["id"].as_str().unwrap();
    app.wait_for_status(KEY_A, id, "processing").await;
}

#[tokio::test]
async fn an_upstream_redirect_is_not_followed_and_the_job_waits() {
    // Upstream's base URL points at something that redirects elsewhere (a wrong base_url):
    // the api-secret must not travel to the redirect's target, and the job is kept.
    let elsewhere = crate::receiver::Receiver::start().await;
    let redirector = crate::receiver::Receiver::start().await;
    redirector.set_default(
        crate::receiver::Reply::status(307)
            .header("location", &elsewhere.url("/v1/agent/generate")),
    );
    let base = redirector.url("");
    let app = spawn_app_with(fast_sim_config(), |s| {
        s.upstream.base_url = base.parse().unwrap();
    })
    .await;
    let (status, job) = app.create_job(KEY_A, json!({"prompt": "p"})).await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["status"], "submitting");
    assert_eq!(redirector.requests().len(), 1);
    assert!(elsewhere.requests().is_empty(), "the redirect was followed");
}

#[tokio::test]
async fn a_cancelled_job_is_never_polled_again() {
    let app = spawn_app_with(
        agenthook::sim::SimConfig {
            time_to_ready: Duration::from_secs(30),
            ..fast_sim_config()
        },
        |_| {},
    )
    .await;
    let (_, job) = app.create_job(KEY_A, json!({"prompt": "cancel me"})).await;
    let id = job["id"].as_str().unwrap();
    let res = app
        .delete(&format!("/v1/jobs/{id}"), KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let cancelled: serde_json::Value = res.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    let polls_after_cancel = app.sim.state.status_calls();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(app.sim.state.status_calls(), polls_after_cancel);
    assert_eq!(app.job(KEY_A, id).await.1["status"], "cancelled");
    // Cancelling again is harmless; cancelling a finished job is a conflict.
    assert_eq!(
        app.delete(&format!("/v1/jobs/{id}"), KEY_A)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn a_job_runs_to_ready_with_the_latest_upstream_data() {
    let app = spawn_app().await;
    let (_, job) = app.create_job(KEY_A, json!({"prompt": "to the end"})).await;
    let id = job["id"].as_str().unwrap();
    let done = app.wait_for_status(KEY_A, id, "ready").await;
    assert_eq!(done["agent"]["status"], "ready");
    assert!(done["completed_at"].is_string());
    assert!(done["polls"].as_u64().unwrap() >= 1);
    let res = app
        .delete(&format!("/v1/jobs/{id}"), KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
}
