//! The drop-in routes: bitHuman's own bodies, with an agenthook key.

use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn drop_in_generate_returns_the_upstream_body_and_tracks_the_agent() {
    // No poll may land between the two readings of the simulator's counter below.
    let app = spawn_app_with(fast_sim_config(), |s| {
        s.poller.first_poll_after = std::time::Duration::from_secs(600)
    })
    .await;
    let res = app
        .http
        .post(app.url("/v1/agent/generate"))
        .header("api-secret", KEY_A)
        .json(&json!({"prompt": "drop in", "callback_url": "http://127.0.0.1:9/cb", "metadata": {"x": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["success"], true);
    assert_eq!(body["status"], "processing");
    assert_eq!(body["message"], "Agent generation started");
    let agent_id = body["agent_id"].as_str().unwrap().to_owned();
    let sent = app.sim.state.requests();
    let forwarded = sent[0].body.clone().unwrap();
    assert!(forwarded.get("callback_url").is_none() && forwarded.get("metadata").is_none());

    // Status from storage: no upstream call.
    let before = app.sim.state.status_calls();
    let res = app
        .http
        .get(app.url(&format!("/v1/agent/status/{agent_id}")))
        .header("api-secret", KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let status: Value = res.json().await.unwrap();
    assert_eq!(status["success"], true);
    assert!(status["data"]["status"].is_string());
    assert_eq!(app.sim.state.status_calls(), before);

    // Another tenant's agent is a 404, never proxied.
    let res = app
        .http
        .get(app.url(&format!("/v1/agent/status/{agent_id}")))
        .header("api-secret", KEY_B)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(app.sim.state.status_calls(), before);
}

#[tokio::test]
async fn drop_in_generate_is_synchronous_about_upstream_failures() {
    let app = spawn_app().await;
    app.sim.state.set_outage(true);
    let res = app
        .http
        .post(app.url("/v1/agent/generate"))
        .header("api-secret", KEY_A)
        .json(&json!({"prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    let err: Value = res.json().await.unwrap();
    assert_eq!(err["code"], "UPSTREAM_ERROR");
    let list = app.list_jobs(KEY_A).await;
    assert!(list.is_empty(), "nothing is kept: {list:?}");
}

#[tokio::test]
async fn untracked_agents_are_proxied_upstream() {
    let app = spawn_app().await;
    // An agent created directly upstream, not through agenthook.
    let created: Value = app
        .http
        .post(format!("{}/v1/agent/generate", app.sim.base_url))
        .header("api-secret", app.sim.state.config().api_secret)
        .json(&json!({"prompt": "direct"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let agent_id = created["agent_id"].as_str().unwrap();
    let res = app
        .http
        .get(app.url(&format!("/v1/agent/status/{agent_id}")))
        .header("api-secret", KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["data"]["agent_id"], agent_id);
    let res = app
        .http
        .get(app.url("/v1/agent/status/UNKNOWN123"))
        .header("api-secret", KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}
