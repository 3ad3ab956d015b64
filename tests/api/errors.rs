//! Bad input: a 4xx in the contract's shape, never a 5xx, never a half-written record.

use serde_json::{json, Value};

use crate::helpers::*;

async fn assert_error(res: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(res.status().as_u16(), status);
    assert!(res.headers().contains_key("x-request-id"));
    let body: Value = res.json().await.expect("a JSON error body");
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    assert!(body.get("details").is_some(), "{body}");
    body
}

#[tokio::test]
async fn requests_without_a_valid_key_are_401() {
    let app = spawn_app().await;
    let res = app.http.get(app.url("/v1/jobs")).send().await.unwrap();
    assert_error(res, 401, "UNAUTHORIZED").await;
    let res = app
        .get("/v1/jobs", "wrong-key-0123456789")
        .send()
        .await
        .unwrap();
    assert_error(res, 401, "UNAUTHORIZED").await;
    // The upstream's header works as a drop-in.
    let res = app
        .http
        .get(app.url("/v1/jobs"))
        .header("api-secret", KEY_A)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn malformed_bodies_get_400_and_leave_nothing_behind() {
    let app = spawn_app().await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not json", b"{\"prompt\": ".to_vec()),
        ("empty", Vec::new()),
        ("array", b"[1,2,3]".to_vec()),
        ("string", b"\"hello\"".to_vec()),
        ("wrong type", br#"{"prompt": 12}"#.to_vec()),
        (
            "bad callback",
            br#"{"prompt": "p", "callback_url": "ftp://example.com/x"}"#.to_vec(),
        ),
        (
            "relative callback",
            br#"{"prompt": "p", "callback_url": "/hook"}"#.to_vec(),
        ),
        (
            "metadata not object",
            br#"{"prompt": "p", "metadata": "x"}"#.to_vec(),
        ),
        (
            "invalid utf-8",
            vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}'],
        ),
    ];
    for (name, body) in cases {
        let res = app
            .post("/v1/jobs", KEY_A)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{name}");
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["code"], "BAD_REQUEST", "{name}: {err}");
    }
    assert!(app.list_jobs(KEY_A).await.is_empty());
    assert_eq!(app.sim.state.generate_calls(), 0);
}

#[tokio::test]
async fn callback_urls_on_private_networks_are_refused_unless_allowed() {
    let app = spawn_app_with(fast_sim_config(), |s| {
        s.delivery.allow_private_networks = false
    })
    .await;
    for url in [
        "http://127.0.0.1/x",
        "http://10.0.0.1/x",
        "http://[::1]/x",
        "http://169.254.169.254/latest",
        "http://2130706433/",
    ] {
        let (status, err) = app
            .create_job(KEY_A, json!({"prompt": "p", "callback_url": url}))
            .await;
        assert_eq!(status, 400, "{url}: {err}");
        assert_eq!(err["code"], "BAD_REQUEST");
    }
    assert_eq!(app.sim.state.generate_calls(), 0);
}

#[tokio::test]
async fn oversize_bodies_get_413() {
    let app = spawn_app_with(fast_sim_config(), |s| s.server.max_body_bytes = 64 * 1024).await;
    let body = json!({"prompt": "x".repeat(70 * 1024)});
    let res = app
        .post("/v1/jobs", KEY_A)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_error(res, 413, "PAYLOAD_TOO_LARGE").await;
    let big_metadata = json!({"prompt": "p", "metadata": {"blob": "y".repeat(17 * 1024)}});
    let res = app
        .post("/v1/jobs", KEY_A)
        .json(&big_metadata)
        .send()
        .await
        .unwrap();
    assert_error(res, 400, "BAD_REQUEST").await;
}

#[tokio::test]
async fn unknown_routes_ids_methods_and_queries_are_4xx_in_shape() {
    let app = spawn_app().await;
    let res = app.get("/v1/nope", KEY_A).send().await.unwrap();
    assert_error(res, 404, "NOT_FOUND").await;
    let res = app
        .get("/v1/jobs/job_not-a-ulid", KEY_A)
        .send()
        .await
        .unwrap();
    assert_error(res, 404, "NOT_FOUND").await;
    let res = app
        .get("/v1/jobs/job_01JDX00000000000000000000Z", KEY_A)
        .send()
        .await
        .unwrap();
    assert_error(res, 404, "NOT_FOUND").await;
    let res = app
        .http
        .put(app.url("/v1/jobs"))
        .bearer_auth(KEY_A)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_client_error());
    let body: Value = res.json().await.unwrap();
    assert!(body["code"].is_string());
    for query in [
        "limit=0",
        "limit=1000",
        "limit=abc",
        "status=weird",
        "after=nope",
        "unknown=1",
    ] {
        let res = app
            .get(&format!("/v1/jobs?{query}"), KEY_A)
            .send()
            .await
            .unwrap();
        assert_error(res, 400, "BAD_REQUEST").await;
    }
}

#[tokio::test]
async fn every_response_carries_a_request_id_echoing_the_clients() {
    let app = spawn_app().await;
    let res = app
        .http
        .get(app.url("/healthz"))
        .header("x-request-id", "trace-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "trace-abc-123");
    let res = app.http.get(app.url("/v1/jobs")).send().await.unwrap();
    assert!(!res.headers()["x-request-id"].is_empty());
}
