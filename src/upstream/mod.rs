//! The bitHuman client: generate and status, both wire shapes, and a clear split between
//! refusals (do not retry) and transient failures (retry later). It knows nothing of storage.

pub mod budget;
pub mod push;
mod registration;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Map, Value};

pub use budget::{Budget, Budgets};
pub use registration::WebhookRegistration;
pub use wire::AgentState;

use crate::clock::{after, SharedClock};
use crate::config::Secret;

#[derive(Clone, Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Upstream said no for good (400, 401, 402, 404, ...): retrying cannot help.
    #[error("upstream refused the request (HTTP {status} {code}): {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
        details: Option<String>,
    },
    /// Timeouts, connection errors, 429, 5xx, bodies that do not parse: try again later.
    #[error("upstream is unavailable: {reason}")]
    Transient {
        reason: String,
        status: Option<u16>,
        retry_after: Option<Duration>,
    },
}

impl UpstreamError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, UpstreamError::Refused { status: 404, .. })
    }

    fn transient(reason: impl Into<String>, status: Option<u16>) -> Self {
        UpstreamError::Transient {
            reason: reason.into(),
            status,
            retry_after: None,
        }
    }

    /// A short label for metrics and logs.
    pub fn outcome_label(&self) -> String {
        match self {
            UpstreamError::Refused { status, .. } => status.to_string(),
            UpstreamError::Transient {
                status: Some(status),
                ..
            } => status.to_string(),
            UpstreamError::Transient { .. } => "error".to_owned(),
        }
    }
}

/// Upstream took a generate request.
#[derive(Clone, Debug)]
pub struct Accepted {
    pub agent_id: String,
    pub body: Value,
}

/// An agent's status `data`, as received, with its interpretation.
#[derive(Clone, Debug)]
pub struct StatusReport {
    pub data: Map<String, Value>,
    pub state: AgentState,
}

#[derive(Clone, Debug)]
pub struct UpstreamClient {
    http: reqwest::Client,
    base_url: url::Url,
    /// Built once: every submission posts here.
    generate_url: url::Url,
    secret: Secret,
    budgets: Arc<Budgets>,
    clock: SharedClock,
    rate_limit_backoff: Duration,
}

impl UpstreamClient {
    pub fn new(
        base_url: url::Url,
        secret: Secret,
        timeout: Duration,
        budgets: Arc<Budgets>,
        clock: SharedClock,
        rate_limit_backoff: Duration,
    ) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("agenthook/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(64)
            // Retries are the scheduler's, with the job id as Idempotency-Key: none hidden here.
            .retry(reqwest::retry::never())
            // Never carry the api-secret header to wherever a redirect points.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a TLS backend is compiled in");
        let generate_url = endpoint(&base_url, &["v1", "agent", "generate"]);
        UpstreamClient {
            http,
            generate_url,
            base_url,
            secret,
            budgets,
            clock,
            rate_limit_backoff,
        }
    }

    pub fn budgets(&self) -> &Budgets {
        &self.budgets
    }

    /// `POST /v1/agent/generate` with `idempotency_key` (the job id), so a retried submission
    /// never creates a second agent.
    pub async fn generate(
        &self,
        body: &Map<String, Value>,
        idempotency_key: &str,
    ) -> Result<Accepted, UpstreamError> {
        let request = self
            .http
            .post(self.generate_url.clone())
            .header("api-secret", self.secret.expose())
            .header("idempotency-key", idempotency_key)
            .json(body);
        let (status, bytes) = self
            .send("generate", request, &self.budgets.generate)
            .await?;
        let parsed: Value = serde_json::from_slice(&bytes).map_err(|_| {
            UpstreamError::transient("generate answered a body that is not JSON", Some(status))
        })?;
        match wire::generated_agent_id(&parsed) {
            Some(agent_id) => Ok(Accepted {
                agent_id,
                body: parsed,
            }),
            None => Err(UpstreamError::transient(
                "generate answered without an agent_id",
                Some(status),
            )),
        }
    }

    /// `GET /v1/agent/status/{agent_id}`.
    pub async fn status(&self, agent_id: &str) -> Result<StatusReport, UpstreamError> {
        let (status, bytes) = self.status_raw(agent_id).await?;
        let data = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(wire::status_data)
            .ok_or_else(|| {
                UpstreamError::transient("status answered a body without data", Some(status))
            })?;
        let state = wire::agent_state(&Value::Object(data.clone()));
        Ok(StatusReport { data, state })
    }

    /// The status answer as it came (2xx only), for proxying agents agenthook does not track.
    pub async fn status_raw(&self, agent_id: &str) -> Result<(u16, bytes::Bytes), UpstreamError> {
        let url = endpoint(&self.base_url, &["v1", "agent", "status", agent_id]);
        let request = self
            .http
            .get(url)
            .header("api-secret", self.secret.expose());
        self.send("status", request, &self.budgets.read).await
    }

    /// Send, and sort the answer into success, refusal or transient failure. A 429 pauses the
    /// bucket it was charged to.
    async fn send(
        &self,
        endpoint: &'static str,
        request: reqwest::RequestBuilder,
        bucket: &Budget,
    ) -> Result<(u16, bytes::Bytes), UpstreamError> {
        let started = std::time::Instant::now();
        let result = self.exchange(request, bucket).await;
        let outcome = match &result {
            Ok((status, _)) => status.to_string(),
            Err(e) => e.outcome_label(),
        };
        metrics::counter!("agenthook_upstream_requests_total", "endpoint" => endpoint, "outcome" => outcome)
            .increment(1);
        metrics::histogram!("agenthook_upstream_request_duration_seconds", "endpoint" => endpoint)
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn exchange(
        &self,
        request: reqwest::RequestBuilder,
        bucket: &Budget,
    ) -> Result<(u16, bytes::Bytes), UpstreamError> {
        let response = request.send().await.map_err(|e| {
            let what = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "connection failed"
            } else {
                "request failed"
            };
            UpstreamError::transient(format!("{what}: {}", without_url(&e)), None)
        })?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = response.bytes().await.map_err(|e| {
            UpstreamError::transient(
                format!("reading the answer failed: {}", without_url(&e)),
                Some(status.as_u16()),
            )
        })?;
        if status.is_success() {
            return Ok((status.as_u16(), bytes));
        }
        let wire = wire::parse_error(&bytes, status.as_u16());
        if status == StatusCode::TOO_MANY_REQUESTS {
            let pause = retry_after.unwrap_or(self.rate_limit_backoff);
            bucket.pause_until(after(self.clock.now(), pause));
            metrics::counter!("agenthook_upstream_rate_limited_total", "bucket" => bucket.name())
                .increment(1);
            tracing::warn!(
                bucket = bucket.name(),
                pause_secs = pause.as_secs(),
                "upstream rate limit hit; pausing the bucket"
            );
        }
        if is_transient(status) {
            return Err(UpstreamError::Transient {
                reason: format!("HTTP {} {}: {}", status.as_u16(), wire.code, wire.message),
                status: Some(status.as_u16()),
                retry_after,
            });
        }
        Err(UpstreamError::Refused {
            status: status.as_u16(),
            code: wire.code,
            message: wire.message,
            details: wire.details,
        })
    }
}

/// `base` with `segments` appended to its path, each escaped as a path segment.
fn endpoint(base: &url::Url, segments: &[&str]) -> url::Url {
    let mut url = base.clone();
    url.path_segments_mut()
        .expect("base_url is an http(s) URL")
        .pop_if_empty()
        .extend(segments);
    url
}

/// Whether a failed answer may succeed later. A redirect counts: it is not followed (the
/// secret would go with it), it points at a wrong `upstream.base_url`, and jobs wait for the
/// fix instead of failing.
fn is_transient(status: StatusCode) -> bool {
    status.is_redirection()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.as_u16() == 425
        || status.is_server_error()
}

/// reqwest errors print the URL; ours carry no secrets, but keep messages short and uniform.
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(&format!(" for url ({url})"), "");
    }
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_rate_limits_and_server_errors_are_transient_refusals_are_not() {
        for status in [301, 302, 307, 308, 408, 425, 429, 500, 502, 503, 504] {
            assert!(
                is_transient(StatusCode::from_u16(status).unwrap()),
                "{status}"
            );
        }
        for status in [400, 401, 402, 403, 404, 409, 422] {
            assert!(
                !is_transient(StatusCode::from_u16(status).unwrap()),
                "{status}"
            );
        }
    }
}
