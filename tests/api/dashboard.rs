//! The dashboard at `/ui/`: its headers over plain HTTP, and its use in a real browser
//! (headless Chromium over WebDriver) against the service, its simulator and local receivers.
//! Screenshots of the main views go to `target/ui-screenshots/`.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use crate::browser::Browser;
use crate::helpers::*;
use crate::receiver::{Receiver, Reply};

/// Outside text that would run script if it were ever parsed as HTML.
const HOSTILE_PROMPT: &str = r#"Museum guide <img src=x onerror="window.__xss='prompt-img'"><script>window.__xss='prompt-script'</script> end"#;
const HOSTILE_BODY: &str = r#"upstream says no: <img src=x onerror="window.__xss='body-img'"><script>window.__xss='body-script'</script>"#;
/// Marks every piece of tenant B's data, so the page can be searched for it.
const OTHER_TENANT: &str = "tenant-b-only";

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots")
}

fn header<'a>(res: &'a reqwest::Response, name: &str) -> &'a str {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn the_dashboard_is_served_from_the_binary_with_a_strict_policy_and_validators() {
    let app = spawn_app().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    let bare = http.get(app.url("/ui")).send().await.unwrap();
    assert_eq!(bare.status(), 308);
    assert_eq!(header(&bare, "location"), "/ui/");

    // No key needed for the page itself: it holds no data, the API behind it does.
    let page = http.get(app.url("/ui/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
    let csp = header(&page, "content-security-policy").to_owned();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "require-trusted-types-for 'script'",
    ] {
        assert!(csp.contains(directive), "{directive} missing from {csp}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
    assert_eq!(header(&page, "x-content-type-options"), "nosniff");
    assert_eq!(header(&page, "x-frame-options"), "DENY");
    assert_eq!(header(&page, "referrer-policy"), "no-referrer");
    assert_eq!(header(&page, "cache-control"), "no-cache");
    let etag = header(&page, "etag").to_owned();
    assert!(
        etag.starts_with('"') && etag.len() > 10,
        "a strong ETag: {etag}"
    );
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"<script type="module" src="/ui/app.js"></script>"#));

    let again = http
        .get(app.url("/ui/"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(header(&again, "etag"), etag);
    assert!(again.bytes().await.unwrap().is_empty());

    for (path, content_type) in [
        ("/ui/index.html", "text/html; charset=utf-8"),
        ("/ui/style.css", "text/css; charset=utf-8"),
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/subscriptions.js", "text/javascript; charset=utf-8"),
        ("/ui/icon.svg", "image/svg+xml"),
    ] {
        let res = http.get(app.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(header(&res, "content-type"), content_type, "{path}");
        assert_eq!(header(&res, "x-content-type-options"), "nosniff", "{path}");
        assert!(
            !header(&res, "content-security-policy").is_empty(),
            "{path}"
        );
        let head = http.head(app.url(path)).send().await.unwrap();
        assert_eq!(head.status(), 200, "HEAD {path}");
    }

    let missing = http.get(app.url("/ui/nope.js")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["code"], "NOT_FOUND");
    let traversal = http.get(app.url("/ui/../Cargo.toml")).send().await.unwrap();
    assert_ne!(traversal.status(), 200);
    let post = http.post(app.url("/ui/")).send().await.unwrap();
    assert_eq!(post.status(), 405);
}

#[tokio::test]
async fn the_dashboard_shows_a_tenants_jobs_deliveries_and_subscriptions_and_runs_no_outside_text()
{
    let Some(browser) = Browser::start(1366, 768).await else {
        return;
    };
    let shots = screenshots();
    let _ = std::fs::remove_file(shots.join("failure.png"));
    let app = spawn_app_with(fast_sim_config(), |s| {
        // Two attempts, then a dead letter.
        s.delivery.retry_schedule = vec![Duration::ZERO, Duration::from_millis(200)];
    })
    .await;
    let rx = Receiver::start().await;
    let refusal = Reply::status(500)
        .header("content-type", "text/html")
        .body(HOSTILE_BODY);
    rx.script(vec![refusal.clone(), refusal]);

    // Tenant B's data, which tenant A's page must never show.
    let rx_b = Receiver::start().await;
    let b_sub = app
        .post("/v1/subscriptions", KEY_B)
        .json(&json!({"url": rx_b.url(&format!("/{OTHER_TENANT}")), "description": OTHER_TENANT}))
        .send()
        .await
        .unwrap();
    assert_eq!(b_sub.status(), 201);
    let (status, b_job) = app
        .create_job(KEY_B, json!({"prompt": format!("{OTHER_TENANT} prompt")}))
        .await;
    assert_eq!(status, 202);
    let b_job_id = b_job["id"].as_str().unwrap().to_owned();

    // Sign in: a wrong key is refused on the form, the right one opens the jobs.
    browser.goto(&app.url("/ui/")).await;
    browser
        .wait_until(
            "the sign-in form",
            Duration::from_secs(10),
            "return !document.getElementById('signin').hidden;",
            vec![],
        )
        .await;
    browser.screenshot(&shots, "01-sign-in").await;
    browser
        .type_into("#signin-key", "not-a-key-of-this-service")
        .await;
    browser.click("#signin-submit").await;
    browser
        .wait_until(
            "the refusal",
            Duration::from_secs(10),
            "return document.getElementById('signin-error').textContent.includes('not accepted');",
            vec![],
        )
        .await;
    browser.type_into("#signin-key", KEY_A).await;
    browser.click("#signin-submit").await;
    browser
        .wait_until(
            "the jobs page",
            Duration::from_secs(10),
            "return !document.getElementById('shell').hidden && document.querySelector('#view h1')?.textContent === 'Jobs';",
            vec![],
        )
        .await;
    let kept = browser
        .eval(
            "return {stored: sessionStorage.getItem('agenthook.apiKey'), url: location.href, \
             cookie: document.cookie, local: localStorage.length};",
        )
        .await;
    assert_eq!(kept["stored"], KEY_A, "the key lives in session storage");
    assert!(
        !kept["url"].as_str().unwrap().contains(KEY_A),
        "never in a URL"
    );
    assert_eq!(kept["cookie"], "", "never in a cookie");
    assert_eq!(kept["local"], 0, "nothing in local storage");

    // A few jobs in other states, so the list looks like a day's work.
    for prompt in [
        "[fail] A guide the simulator refuses to finish",
        "[slow] A patient storyteller for the planetarium",
        "You are a friendly museum guide.",
    ] {
        assert_eq!(
            app.create_job(KEY_A, json!({"prompt": prompt})).await.0,
            202
        );
    }

    // A job created through the API appears and reaches `ready`.
    let (status, job) = app
        .create_job(
            KEY_A,
            json!({"prompt": HOSTILE_PROMPT, "callback_url": rx.url("/callback"),
                   "metadata": {"order": 42}}),
        )
        .await;
    assert_eq!(status, 202);
    let job_id = job["id"].as_str().unwrap().to_owned();
    let agent_id = job["agent_id"].as_str().unwrap().to_owned();
    browser
        .wait_until(
            "the job to show as ready",
            Duration::from_secs(30),
            "const row = document.querySelector(`tr[data-job-id='${arguments[0]}'] .badge`); \
             return !!row && row.textContent === 'ready';",
            vec![json!(job_id)],
        )
        .await;
    app.wait_for_status(KEY_B, &b_job_id, "ready").await;
    browser.screenshot(&shots, "02-jobs").await;

    // Found by its agent id.
    browser
        .type_into("[data-testid=job-search]", &agent_id)
        .await;
    browser.click(".search-form button[type=submit]").await;
    browser
        .wait_until(
            "the search result",
            Duration::from_secs(10),
            "const rows = [...document.querySelectorAll('tr[data-job-id]')]; \
             return location.hash.includes('q=') && rows.length === 1 && rows[0].dataset.jobId === arguments[0];",
            vec![json!(job_id)],
        )
        .await;

    // Its page: the prompt as text, the delivery with both failed attempts and the body.
    browser
        .click(&format!("tr[data-job-id='{job_id}'] a"))
        .await;
    browser
        .wait_until(
            "the job's failed delivery with its two attempts",
            Duration::from_secs(20),
            "const card = document.querySelector('article[data-delivery-id]'); \
             return !!card && card.classList.contains('delivery-failed') && \
               card.querySelectorAll('tr[data-attempt]').length === 2;",
            vec![],
        )
        .await;
    let prompt = browser
        .eval("return document.querySelector('[data-testid=agent-prompt]').textContent;")
        .await;
    assert_eq!(
        prompt, HOSTILE_PROMPT,
        "the prompt is shown exactly, as text"
    );
    let page = browser.text().await;
    for shown in [
        "Submitted",
        "Accepted upstream",
        "Polled",
        "Ready",
        "Event agent.ready",
        "HTTP 500",
    ] {
        assert!(
            page.contains(shown),
            "the job page lacks {shown:?}:\n{page}"
        );
    }
    let bodies = browser
        .eval("return [...document.querySelectorAll('pre.body-text')].map(p => p.textContent);")
        .await;
    assert!(
        bodies
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| *b == HOSTILE_BODY)
            .count()
            == 2,
        "both response bodies shown as text: {bodies}"
    );
    assert_nothing_ran(&browser).await;
    browser.screenshot(&shots, "03-job").await;
    screenshot_whole_page(&browser, &shots, "03-job-full", 1366).await;

    // The dead letter, retried from the page, succeeds with the same webhook-id.
    let deliveries = app
        .get_json(&format!("/v1/jobs/{job_id}/deliveries"), KEY_A)
        .await;
    let delivery_id = deliveries["data"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(deliveries["data"][0]["state"], "failed");
    browser.click("a[data-nav=deliveries]").await;
    let row = format!("tr[data-delivery-id='{delivery_id}']");
    browser
        .wait_until(
            "the dead letter",
            Duration::from_secs(10),
            "return !!document.querySelector(arguments[0]);",
            vec![json!(row)],
        )
        .await;
    browser.click(&format!("{row} td:nth-child(2)")).await;
    browser
        .wait_until(
            "its attempts",
            Duration::from_secs(10),
            "return document.querySelectorAll('tr.detail-row tr[data-attempt]').length === 2;",
            vec![],
        )
        .await;
    assert_nothing_ran(&browser).await;
    browser.screenshot(&shots, "04-dead-letters").await;
    browser.click(&format!("{row} [data-testid=retry]")).await;
    let received = rx
        .wait_for_path("/callback", 3, Duration::from_secs(10))
        .await;
    assert_eq!(
        received[2].header("webhook-id"),
        received[0].header("webhook-id")
    );
    browser
        .wait_until(
            "the dead letter to leave the list",
            Duration::from_secs(15),
            "return !document.querySelector(arguments[0]) && !!document.querySelector('.empty');",
            vec![json!(row)],
        )
        .await;
    let retried = app
        .get_json(&format!("/v1/deliveries/{delivery_id}"), KEY_A)
        .await;
    assert_eq!(retried["state"], "succeeded");
    assert_eq!(retried["attempts"].as_array().unwrap().len(), 3);
    browser
        .goto(&app.url(&format!("/ui/#/deliveries/{delivery_id}")))
        .await;
    browser
        .wait_until(
            "the delivery page to show it succeeded",
            Duration::from_secs(10),
            "const card = document.querySelector('article.delivery'); \
             return !!card && card.classList.contains('delivery-succeeded') && \
               card.querySelectorAll('tr[data-attempt]').length === 3;",
            vec![],
        )
        .await;
    browser.screenshot(&shots, "05-delivery").await;

    // A subscription created on the page, turned off and on, tested, its secret rotated.
    browser.click("a[data-nav=subscriptions]").await;
    browser.click("[data-testid=new-subscription]").await;
    browser
        .type_into("[data-testid=sub-url]", &rx.url("/subscriber"))
        .await;
    browser
        .type_into("[data-testid=sub-description]", "Museum CRM")
        .await;
    browser.screenshot(&shots, "06-new-subscription").await;
    browser.click("[data-testid=dialog-confirm]").await;
    browser
        .wait_until(
            "the new subscription",
            Duration::from_secs(10),
            "return document.querySelectorAll('article[data-subscription-id]').length === 1;",
            vec![],
        )
        .await;
    let subs = app.get_json("/v1/subscriptions", KEY_A).await;
    let sub = subs["data"][0].clone();
    assert_eq!(subs["data"].as_array().unwrap().len(), 1);
    assert_eq!(sub["url"], rx.url("/subscriber"));
    assert_eq!(sub["description"], "Museum CRM");
    let sub_id = sub["id"].as_str().unwrap().to_owned();
    let old_secret = sub["secret"].as_str().unwrap().to_owned();

    browser.click("[data-testid=toggle-enabled]").await;
    wait_for_api(&app, &format!("/v1/subscriptions/{sub_id}"), |s| {
        s["enabled"] == false
    })
    .await;
    browser
        .wait_until(
            "the switch to show it disabled",
            Duration::from_secs(10),
            "return !!document.querySelector('article.sub-disabled [data-testid=toggle-enabled]:not(:checked)');",
            vec![],
        )
        .await;
    browser.click("[data-testid=toggle-enabled]").await;
    wait_for_api(&app, &format!("/v1/subscriptions/{sub_id}"), |s| {
        s["enabled"] == true
    })
    .await;
    browser
        .wait_until(
            "the switch to show it enabled",
            Duration::from_secs(10),
            "return !!document.querySelector('article[data-subscription-id]:not(.sub-disabled) [data-testid=send-test]:not(:disabled)');",
            vec![],
        )
        .await;
    // The test event is refused twice: a dead letter of this subscription, recovered below.
    let unavailable = Reply::status(503).body(HOSTILE_BODY);
    rx.script(vec![unavailable.clone(), unavailable]);
    browser.click("[data-testid=send-test]").await;
    let tested = rx
        .wait_for_path("/subscriber", 2, Duration::from_secs(10))
        .await;
    assert_eq!(tested[0].json()["type"], "webhook.test");
    let dead = wait_for_api(&app, "/v1/deliveries?state=failed", |page| {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["event_type"] == "webhook.test")
    })
    .await;
    let test_delivery = dead["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["event_type"] == "webhook.test")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    browser.click("[data-testid=reveal-secret]").await;
    browser
        .wait_until(
            "the secret revealed",
            Duration::from_secs(10),
            "return document.querySelector('[data-testid=secret]').textContent === arguments[0];",
            vec![json!(old_secret)],
        )
        .await;
    browser.click("[data-testid=rotate]").await;
    browser.click("[data-testid=dialog-confirm]").await;
    let rotated = wait_for_api(&app, &format!("/v1/subscriptions/{sub_id}"), |s| {
        s["secret"] != old_secret.as_str()
    })
    .await;
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    assert!(rotated["previous_secret_expires_at"].is_string());
    browser
        .wait_until(
            "the new secret on the page",
            Duration::from_secs(10),
            "return document.querySelector('[data-testid=secret]').textContent === arguments[0];",
            vec![json!(new_secret)],
        )
        .await;
    assert!(browser
        .text()
        .await
        .to_lowercase()
        .contains("previous secret"));
    browser.screenshot(&shots, "07-subscriptions").await;

    // Edited in its dialog; its dead letter recovered (failed since a day ago: the test event).
    browser.click("[data-testid=edit]").await;
    browser
        .type_into("[data-testid=sub-description]", "Museum CRM (staging)")
        .await;
    browser.click("[data-testid=dialog-confirm]").await;
    wait_for_api(&app, &format!("/v1/subscriptions/{sub_id}"), |s| {
        s["description"] == "Museum CRM (staging)"
    })
    .await;
    browser
        .wait_until(
            "the edited description",
            Duration::from_secs(10),
            "return document.querySelector('article[data-subscription-id]').textContent.includes('Museum CRM (staging)');",
            vec![],
        )
        .await;
    browser.click("[data-testid=recover]").await;
    browser.click("[data-testid=dialog-confirm]").await;
    browser
        .wait_until(
            "the recovery's answer",
            Duration::from_secs(10),
            "return document.getElementById('toasts').textContent.includes('1 delivery queued again');",
            vec![],
        )
        .await;
    let resent = rx
        .wait_for_path("/subscriber", 3, Duration::from_secs(10))
        .await;
    assert_eq!(
        resent[2].header("webhook-id"),
        resent[0].header("webhook-id")
    );
    wait_for_api(&app, &format!("/v1/deliveries/{test_delivery}"), |d| {
        d["state"] == "succeeded"
    })
    .await;

    // Tenant B never shows: not in the lists, not by its id.
    // Each view is read once its own data is in (tenant A's job, or A's subscription).
    let own_data = [
        ("#/jobs", "tr[data-job-id]"),
        ("#/deliveries?state=all", "tr[data-delivery-id]"),
        ("#/subscriptions", "article[data-subscription-id]"),
    ];
    for (view, loaded) in own_data {
        browser.goto(&app.url(&format!("/ui/{view}"))).await;
        browser
            .wait_until(
                "the view's data",
                Duration::from_secs(10),
                "return !!document.querySelector(arguments[0]);",
                vec![json!(loaded)],
            )
            .await;
        // textContent, not innerText: hidden text counts too.
        let text = browser.eval("return document.body.textContent;").await;
        let text = text.as_str().unwrap();
        assert!(
            !text.contains(OTHER_TENANT),
            "{view} shows tenant B: {text}"
        );
        assert!(!text.contains(&b_job_id), "{view} shows tenant B's job");
    }
    browser
        .goto(&app.url(&format!("/ui/#/jobs/{b_job_id}")))
        .await;
    browser
        .wait_until(
            "another tenant's job to be not found",
            Duration::from_secs(10),
            "const alert = document.querySelector('.alert-error'); \
             return !!alert && alert.textContent.includes('not found');",
            vec![],
        )
        .await;
    assert!(!browser.text().await.contains(OTHER_TENANT));

    // The same views on a large screen.
    browser.resize_viewport(1920, 1080).await;
    browser.goto(&app.url("/ui/#/jobs")).await;
    browser
        .wait_until(
            "the jobs, with no message left from earlier actions",
            Duration::from_secs(10),
            "return document.querySelectorAll('tr[data-job-id]').length === 4 && \
               document.getElementById('toasts').children.length === 0;",
            vec![],
        )
        .await;
    browser.screenshot(&shots, "08-jobs-1920").await;
    browser
        .goto(&app.url(&format!("/ui/#/jobs/{job_id}")))
        .await;
    browser
        .wait_until(
            "the job",
            Duration::from_secs(10),
            "return !!document.querySelector('article[data-delivery-id]');",
            vec![],
        )
        .await;
    browser.screenshot(&shots, "09-job-1920").await;
    assert_nothing_ran(&browser).await;

    // Signing out forgets the key.
    browser.click("#signout").await;
    let after = browser
        .eval("return [sessionStorage.length, document.getElementById('signin').hidden];")
        .await;
    assert_eq!(after, json!([0, false]));
    browser.close().await;
}

/// The hostile text ran nothing: no flag set, no element made from it, no script but ours.
async fn assert_nothing_ran(browser: &Browser) {
    let state = browser
        .eval(
            "return {flag: window.__xss === undefined ? null : String(window.__xss), \
                     images: document.querySelectorAll('img[src=x]').length, \
                     scripts: [...document.scripts].map(s => s.getAttribute('src'))};",
        )
        .await;
    assert_eq!(state["flag"], Value::Null, "outside text ran: {state}");
    assert_eq!(
        state["images"], 0,
        "outside text became an element: {state}"
    );
    assert_eq!(state["scripts"], json!(["/ui/app.js"]), "{state}");
}

/// Poll `path` as tenant A until `done` holds; its last answer.
async fn wait_for_api(app: &TestApp, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..200 {
        let value = app.get_json(path, KEY_A).await;
        if done(&value) {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{path} never reached the expected state");
}

/// The whole page, however long: the viewport is made as tall as the document for the picture.
async fn screenshot_whole_page(browser: &Browser, dir: &std::path::Path, name: &str, width: u32) {
    let (height, before) = {
        let sizes = browser
            .eval("return [document.documentElement.scrollHeight, window.innerHeight];")
            .await;
        (
            sizes[0].as_u64().unwrap_or(768) as u32,
            sizes[1].as_u64().unwrap_or(768) as u32,
        )
    };
    browser.resize_viewport(width, height.min(4000)).await;
    browser.screenshot(dir, name).await;
    browser.resize_viewport(width, before).await;
}
