//! bitHuman's webhook registrations: `GET/POST /v1/webhooks`, `DELETE /v1/webhooks/{id}`.

use serde_json::{json, Value};

use super::{endpoint, UpstreamClient, UpstreamError};

/// One registration as upstream lists it. `secret` is only ever present in the answer that
/// created it.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookRegistration {
    pub id: String,
    pub url: String,
    pub secret: Option<String>,
}

impl std::fmt::Debug for WebhookRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookRegistration")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .finish()
    }
}

/// The events agenthook registers for.
pub const EVENTS: [&str; 2] = ["agent.ready", "agent.failed"];

impl UpstreamClient {
    /// `GET /v1/webhooks`: every registration of the account.
    pub async fn list_webhooks(&self) -> Result<Vec<WebhookRegistration>, UpstreamError> {
        let url = endpoint(&self.base_url, &["v1", "webhooks"]);
        let request = self
            .http
            .get(url)
            .header("api-secret", self.secret.expose());
        let (status, bytes) = self.send("webhooks", request, &self.budgets.read).await?;
        let body: Value = serde_json::from_slice(&bytes).map_err(|_| {
            UpstreamError::transient("webhooks answered a body that is not JSON", Some(status))
        })?;
        let items = match body.get("data").unwrap_or(&body) {
            Value::Array(items) => items.clone(),
            Value::Object(o) => o
                .get("webhooks")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        Ok(items.iter().filter_map(registration).collect())
    }

    /// `POST /v1/webhooks` for `url`, events `agent.ready` and `agent.failed`. The answer
    /// carries the signing secret, the only time upstream shows it.
    pub async fn register_webhook(&self, url: &str) -> Result<WebhookRegistration, UpstreamError> {
        let endpoint_url = endpoint(&self.base_url, &["v1", "webhooks"]);
        let request = self
            .http
            .post(endpoint_url)
            .header("api-secret", self.secret.expose())
            .json(&json!({
                "url": url,
                "events": EVENTS,
                "description": "agenthook: agent.ready / agent.failed make a job due for a status read",
            }));
        let (status, bytes) = self.send("webhooks", request, &self.budgets.read).await?;
        serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|body| registration(body.get("data").unwrap_or(&body)))
            .filter(|r| r.secret.is_some())
            .ok_or_else(|| {
                UpstreamError::transient(
                    "webhook registration answered without an id and secret",
                    Some(status),
                )
            })
    }

    /// `POST /v1/webhooks/{id}/test`: upstream sends a `ping` to the registration.
    pub async fn test_webhook(&self, id: &str) -> Result<(), UpstreamError> {
        let url = endpoint(&self.base_url, &["v1", "webhooks", id, "test"]);
        let request = self
            .http
            .post(url)
            .header("api-secret", self.secret.expose());
        self.send("webhooks", request, &self.budgets.read).await?;
        Ok(())
    }

    /// `DELETE /v1/webhooks/{id}`.
    pub async fn delete_webhook(&self, id: &str) -> Result<(), UpstreamError> {
        let url = endpoint(&self.base_url, &["v1", "webhooks", id]);
        let request = self
            .http
            .delete(url)
            .header("api-secret", self.secret.expose());
        self.send("webhooks", request, &self.budgets.read).await?;
        Ok(())
    }
}

fn registration(item: &Value) -> Option<WebhookRegistration> {
    let text = |name: &str| item.get(name).and_then(Value::as_str).map(str::to_owned);
    Some(WebhookRegistration {
        id: text("id").or_else(|| item.get("id").map(Value::to_string))?,
        url: text("url")?,
        // A redacted secret ("whsec_***") is no secret.
        secret: text("secret").filter(|s| !s.is_empty() && !s.contains('*')),
    })
}
