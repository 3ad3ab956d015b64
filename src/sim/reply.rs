//! Answers of the simulated upstream as plain data, and the one place error bodies are made.
//!
//! Keeping answers as data (not `HttpResponse`) lets the idempotency store replay them byte for
//! byte and keeps the simulator's logic free of actix.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use serde_json::{json, Value};

use super::config::ErrorShape;
use super::limiter::retry_after_secs;

/// An upstream answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn ok(body: Value) -> Self {
        Self {
            status: 200,
            body,
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn into_response(self) -> HttpResponse {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = HttpResponse::build(status);
        for (name, value) in self.headers {
            response.insert_header((name, value));
        }
        response.json(self.body)
    }
}

/// An upstream error: status, code and message, shaped only when answered.
#[derive(Clone, Debug, PartialEq)]
pub struct SimError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// With `Some`, a 429 carries `Retry-After` (if the configuration allows it).
    pub retry_after: Option<Duration>,
}

impl SimError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(400, "VALIDATION_ERROR", message)
    }

    /// No `api-secret` header: the current API says `MISSING_AUTH`, the seed only knew
    /// `UNAUTHORIZED`.
    pub fn missing_auth(shape: ErrorShape) -> Self {
        let code = match shape {
            ErrorShape::Seed => "UNAUTHORIZED",
            ErrorShape::Current => "MISSING_AUTH",
        };
        Self::new(401, code, "Missing API secret")
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "UNAUTHORIZED", "Invalid API secret")
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(404, "NOT_FOUND", what)
    }

    pub fn rate_limited(wait: Duration) -> Self {
        Self {
            retry_after: Some(wait),
            ..Self::new(429, "RATE_LIMITED", "Rate limit exceeded")
        }
    }

    pub fn no_workers() -> Self {
        Self::new(
            503,
            "NO_AVAILABLE_WORKERS",
            "No workers are available, try again later",
        )
    }

    /// The error a test asked for with `fail_next`, with upstream's code for that status.
    pub fn injected(status: u16) -> Self {
        let (code, message) = match status {
            400 => ("VALIDATION_ERROR", "Invalid request"),
            401 => ("UNAUTHORIZED", "Invalid API secret"),
            402 => ("INSUFFICIENT_BALANCE", "Insufficient credits"),
            404 => ("NOT_FOUND", "Not found"),
            429 => ("RATE_LIMITED", "Rate limit exceeded"),
            500 => ("INTERNAL_ERROR", "Internal server error"),
            503 => ("NO_AVAILABLE_WORKERS", "No workers are available"),
            _ => ("ERROR", "Simulated error"),
        };
        let error = Self::new(
            status,
            code,
            format!("{message} (injected by the simulator)"),
        );
        if status == 429 {
            Self {
                retry_after: Some(Duration::from_secs(1)),
                ..error
            }
        } else {
            error
        }
    }

    /// The answer in the configured body shape. `Retry-After` is sent only when
    /// `send_retry_after` is on, since upstream's coverage of it is uneven.
    pub fn reply(&self, shape: ErrorShape, send_retry_after: bool) -> Reply {
        let body = match shape {
            ErrorShape::Seed => json!({
                "error": self.message,
                "code": self.code,
                "details": self.details(),
            }),
            ErrorShape::Current => json!({
                "error": {"code": self.code, "message": self.message, "httpStatus": self.status},
                "status": "error",
                "status_code": self.status,
            }),
        };
        let reply = Reply {
            status: self.status,
            body,
            headers: Vec::new(),
        };
        match self.retry_after {
            Some(wait) if send_retry_after => {
                reply.with_header("retry-after", retry_after_secs(wait).to_string())
            }
            _ => reply,
        }
    }

    fn details(&self) -> &'static str {
        match self.status {
            401 => "Please check your API secret from imaginex.bithuman.ai",
            402 => "Top up your credits to continue",
            429 => "Slow down and retry later",
            500 | 503 => "Temporary problem, retry with backoff",
            _ => "See the API documentation",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_shape_is_flat() {
        let reply = SimError::unauthorized().reply(ErrorShape::Seed, true);
        assert_eq!(reply.status, 401);
        assert_eq!(reply.body["error"], "Invalid API secret");
        assert_eq!(reply.body["code"], "UNAUTHORIZED");
        assert!(reply.body["details"].is_string());
    }

    #[test]
    fn the_current_shape_nests_the_error() {
        let reply = SimError::no_workers().reply(ErrorShape::Current, true);
        assert_eq!(reply.body["error"]["code"], "NO_AVAILABLE_WORKERS");
        assert_eq!(reply.body["error"]["httpStatus"], 503);
        assert_eq!(reply.body["status"], "error");
        assert_eq!(reply.body["status_code"], 503);
    }

    #[test]
    fn retry_after_is_sent_only_when_enabled() {
        let error = SimError::rate_limited(Duration::from_millis(2500));
        let with = error.reply(ErrorShape::Current, true);
        assert_eq!(with.headers, vec![("retry-after", "3".to_owned())]);
        assert!(error.reply(ErrorShape::Current, false).headers.is_empty());
    }

    #[test]
    fn missing_auth_has_the_code_of_each_shape() {
        assert_eq!(
            SimError::missing_auth(ErrorShape::Seed).code,
            "UNAUTHORIZED"
        );
        assert_eq!(
            SimError::missing_auth(ErrorShape::Current).code,
            "MISSING_AUTH"
        );
    }
}
