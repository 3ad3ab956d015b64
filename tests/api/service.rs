//! The service as an operator runs it: health, readiness, the real binary, SIGTERM.

use std::process::Command;
use std::time::Duration;

use crate::helpers::*;

#[tokio::test]
async fn healthz_and_readyz_answer() {
    let app = spawn_app().await;
    let res = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let mut ready = false;
    for _ in 0..50 {
        if app
            .http
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ready, "/readyz never turned 200");
}

#[tokio::test]
async fn the_binary_refuses_to_serve_without_an_upstream_secret() {
    let out = Command::new(env!("CARGO_BIN_EXE_agenthook"))
        .arg("serve")
        .env_remove("BITHUMAN_API_SECRET")
        .env(
            "AGENTHOOK__SERVER__BIND",
            format!("127.0.0.1:{}", free_port()),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("BITHUMAN_API_SECRET") && stderr.contains("--simulator"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_bad_configuration_value_stops_start_up_naming_the_key() {
    let out = Command::new(env!("CARGO_BIN_EXE_agenthook"))
        .args(["serve", "--simulator"])
        .env("AGENTHOOK__POLLER__INTERVAL", "every so often")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("poller.interval"));
}

#[tokio::test]
async fn sigterm_stops_the_real_binary_with_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut service = Process::start_ready(
        &["serve", "--simulator"],
        |c| {
            c.env("AGENTHOOK__SERVER__BIND", format!("127.0.0.1:{port}"))
                .env("AGENTHOOK__STORAGE__PATH", dir.path());
        },
        &format!("http://127.0.0.1:{port}/readyz"),
    )
    .await;
    let client = reqwest::Client::new();
    let res = client
        .post(format!("http://127.0.0.1:{port}/v1/jobs"))
        .bearer_auth(agenthook::cli::DEV_KEY)
        .json(&serde_json::json!({"prompt": "before shutdown"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    service.terminate();
    let exit = service.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(exit.code(), Some(0));
}

#[tokio::test]
async fn the_demo_shows_a_verified_signed_webhook_and_exits_0() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_agenthook"))
        .arg("demo")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"type\": \"agent.ready\""), "{stdout}");
    assert!(stdout.contains("webhook-signature: v1,"), "{stdout}");
    assert!(stdout.contains("signature valid"), "{stdout}");
    assert!(stdout.contains("curl"), "{stdout}");
}
