//! `/openapi.json` tells the truth about the routes, in both directions: every operation it
//! documents is served, every route of the contract (SPEC.md, HTTP API) that is served is
//! documented, and no method the document does not name is served on a path it names.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::Value;

use crate::helpers::*;

/// Every route of the contract, by hand, as SPEC.md's HTTP API section lists it.
const CONTRACT: [(&str, &str); 26] = [
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/{id}"),
    ("DELETE", "/v1/jobs/{id}"),
    ("GET", "/v1/jobs/{id}/deliveries"),
    ("POST", "/v1/agent/generate"),
    ("GET", "/v1/agent/status/{agent_id}"),
    ("POST", "/v1/subscriptions"),
    ("GET", "/v1/subscriptions"),
    ("GET", "/v1/subscriptions/{id}"),
    ("PATCH", "/v1/subscriptions/{id}"),
    ("DELETE", "/v1/subscriptions/{id}"),
    ("POST", "/v1/subscriptions/{id}/rotate-secret"),
    ("POST", "/v1/subscriptions/{id}/test"),
    ("POST", "/v1/subscriptions/{id}/recover"),
    ("GET", "/v1/callback-secret"),
    ("POST", "/v1/callback-secret/rotate"),
    ("GET", "/v1/deliveries"),
    ("GET", "/v1/deliveries/{id}"),
    ("POST", "/v1/deliveries/{id}/retry"),
    ("GET", "/v1/events/sample"),
    ("POST", "/v1/upstream/webhooks"),
];

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

type Route = (String, String);

async fn document(app: &TestApp) -> Value {
    let res = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json")));
    res.json().await.expect("the document is JSON")
}

/// (METHOD, path template) of every operation in the document.
fn documented(doc: &Value) -> BTreeSet<Route> {
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS.iter().chain(&["HEAD", "OPTIONS", "TRACE"]) {
            if item.get(method.to_ascii_lowercase()).is_some() {
                routes.insert((method.to_string(), path.clone()));
            }
        }
    }
    routes
}

fn operation<'d>(doc: &'d Value, (method, path): &Route) -> &'d Value {
    &doc["paths"][path][method.to_ascii_lowercase()]
}

/// Call a route with placeholder path parameters and an empty body; the status and the body
/// (`null` when not JSON).
async fn call(app: &TestApp, method: &str, template: &str, key: Option<&str>) -> (u16, Value) {
    let path: String = template
        .split('/')
        .map(|s| {
            if s.starts_with('{') {
                "placeholder-0"
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join("/");
    let mut req = app.http.request(
        Method::from_bytes(method.as_bytes()).unwrap(),
        app.url(&path),
    );
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let bytes = res.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The router's own answers: no route for this path, or not this method. A handler's 404 names
/// what it did not find ("job not found").
fn router_refused(status: u16, body: &Value) -> bool {
    status == 405 || (status == 404 && body["error"] == "route not found")
}

async fn served(app: &TestApp, (method, path): &Route) -> bool {
    let (status, body) = call(app, method, path, Some(KEY_A)).await;
    !router_refused(status, &body)
}

#[tokio::test]
async fn the_document_is_openapi_3_served_without_a_key() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "agenthook");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(doc["paths"].as_object().is_some_and(|p| !p.is_empty()));
}

#[tokio::test]
async fn every_documented_operation_is_served_and_guarded_as_documented() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    for route in documented(&doc) {
        let (method, path) = &route;
        let (status, body) = call(&app, method, path, Some(KEY_A)).await;
        assert!(
            !router_refused(status, &body),
            "{method} {path} is documented but not served: {status} {body}"
        );
        assert!(status < 500, "{method} {path}: {status} {body}");

        let needs_key = operation(&doc, &route).get("security").is_some();
        let (status, body) = call(&app, method, path, None).await;
        if needs_key {
            assert_eq!(status, 401, "{method} {path} without a key: {body}");
            assert_eq!(body["code"], "UNAUTHORIZED");
        } else {
            assert!(
                status != 401 && !router_refused(status, &body),
                "{method} {path} is documented without security: {status} {body}"
            );
        }
    }
}

#[tokio::test]
async fn every_served_route_of_the_contract_is_documented_and_nothing_else_is() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    let in_document = documented(&doc);
    let contract: BTreeSet<Route> = CONTRACT
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();

    let mut serving = BTreeSet::new();
    for route in &contract {
        let is_served = served(&app, route).await;
        assert!(
            is_served,
            "{} {} is in the contract but not served",
            route.0, route.1
        );
        if is_served {
            serving.insert(route.clone());
        }
    }
    assert_eq!(
        in_document, serving,
        "the document and the routes served differ (left: documented, right: served)"
    );
}

#[tokio::test]
async fn methods_the_document_does_not_name_are_refused_on_its_paths() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    let in_document = documented(&doc);
    let paths: BTreeSet<&String> = in_document.iter().map(|(_, p)| p).collect();
    for path in paths {
        let allowed: Vec<&str> = METHODS
            .iter()
            .copied()
            .filter(|m| in_document.contains(&(m.to_string(), path.clone())))
            .collect();
        for method in METHODS.iter().filter(|m| !allowed.contains(m)) {
            let res = app
                .http
                .request(
                    Method::from_bytes(method.as_bytes()).unwrap(),
                    app.url(&path.replace("{id}", "x").replace("{agent_id}", "x")),
                )
                .bearer_auth(KEY_A)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 405, "{method} {path} is served undocumented");
            let allow = res.headers()["allow"].to_str().unwrap().to_owned();
            let mut named: Vec<&str> = allow.split(", ").collect();
            named.sort_unstable();
            let mut expected = allowed.clone();
            expected.sort_unstable();
            assert_eq!(named, expected, "Allow of {path}");
            let body: Value = res.json().await.unwrap();
            assert_eq!(body["code"], "BAD_REQUEST", "{body}");
            assert!(body["details"].is_string(), "{body}");
        }
    }
}

#[tokio::test]
async fn unknown_routes_are_404_in_the_error_shape() {
    let app = spawn_app().await;
    for path in ["/v1/nope", "/v1/jobs/x/y", "/v2/jobs", "/openapi.yaml"] {
        let (status, body) = call(&app, "GET", path, Some(KEY_A)).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body["code"], "NOT_FOUND", "{path}: {body}");
        assert!(router_refused(status, &body), "{path}: {body}");
    }
}
