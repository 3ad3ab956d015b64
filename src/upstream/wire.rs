//! bitHuman's two wire shapes: the seed document's and the current docs'. Everything here is
//! pure parsing so both shapes are tested without a network.

use serde_json::{Map, Value};

/// Where an agent stands, by the terminal rules of `upstream/NOTES.md`.
#[derive(Clone, Debug, PartialEq)]
pub enum AgentState {
    Running,
    Ready,
    Failed { message: Option<String> },
}

/// Only `ready`, `success` at progress 1.0, and `failed` end a job. `completed` (seen early)
/// and `success` step markers (seen at 0.2 and 0.45) do not; unknown values mean running.
pub fn agent_state(data: &Value) -> AgentState {
    let status = data.get("status").and_then(Value::as_str).unwrap_or("");
    let progress = data.get("progress").and_then(progress_value);
    match status {
        "ready" => AgentState::Ready,
        "success" if progress.is_some_and(|p| p >= 1.0) => AgentState::Ready,
        "failed" => AgentState::Failed {
            message: data
                .get("error_message")
                .and_then(Value::as_str)
                .filter(|m| !m.is_empty())
                .map(str::to_owned),
        },
        _ => AgentState::Running,
    }
}

/// `progress` as a number, tolerating a numeric string.
fn progress_value(v: &Value) -> Option<f64> {
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// The agent id of a generate answer: top level, or under `data` in one older example.
pub fn generated_agent_id(body: &Value) -> Option<String> {
    let id = body
        .get("agent_id")
        .or_else(|| body.get("data").and_then(|d| d.get("agent_id")))?;
    match id {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The `data` object of a status answer (or the body itself when it is not wrapped).
pub fn status_data(body: Value) -> Option<Map<String, Value>> {
    match body {
        Value::Object(mut map) => match map.remove("data") {
            Some(Value::Object(data)) => Some(data),
            Some(_) => None,
            None if map.contains_key("status") => Some(map),
            None => None,
        },
        _ => None,
    }
}

/// An upstream error body, in either shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireError {
    pub code: String,
    pub message: String,
    pub details: Option<String>,
}

/// Seed: `{"error": "msg", "code": "CODE", "details": "..."}`.
/// Current: `{"error": {"code", "message", "httpStatus"}, "status": "error", "status_code"}`.
pub fn parse_error(body: &[u8], status: u16) -> WireError {
    let fallback = || WireError {
        code: default_code(status).to_owned(),
        message: format!("upstream answered HTTP {status}"),
        details: None,
    };
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
        return fallback();
    };
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    match map.get("error") {
        Some(Value::Object(inner)) => WireError {
            code: text(inner.get("code")).unwrap_or_else(|| default_code(status).to_owned()),
            message: text(inner.get("message")).unwrap_or_else(|| fallback().message),
            details: text(inner.get("details")),
        },
        Some(Value::String(message)) => WireError {
            code: text(map.get("code")).unwrap_or_else(|| default_code(status).to_owned()),
            message: message.clone(),
            details: text(map.get("details")),
        },
        _ => WireError {
            message: text(map.get("message")).unwrap_or_else(|| fallback().message),
            ..fallback()
        },
    }
}

fn default_code(status: u16) -> &'static str {
    match status {
        400 => "VALIDATION_ERROR",
        401 => "UNAUTHORIZED",
        402 => "INSUFFICIENT_BALANCE",
        404 => "NOT_FOUND",
        429 => "RATE_LIMITED",
        503 => "NO_AVAILABLE_WORKERS",
        _ => "INTERNAL_ERROR",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_the_documented_terminal_rules_end_a_job() {
        let cases = [
            (json!({"status": "ready"}), AgentState::Ready),
            (
                json!({"status": "ready", "model_url": null}),
                AgentState::Ready,
            ),
            (
                json!({"status": "success", "progress": 1.0}),
                AgentState::Ready,
            ),
            (
                json!({"status": "success", "progress": 1}),
                AgentState::Ready,
            ),
            (
                json!({"status": "success", "progress": 0.2}),
                AgentState::Running,
            ),
            (
                json!({"status": "success", "progress": 0.45}),
                AgentState::Running,
            ),
            (json!({"status": "success"}), AgentState::Running),
            (
                json!({"status": "completed", "progress": 0.05}),
                AgentState::Running,
            ),
            (
                json!({"status": "completed", "progress": 1.0}),
                AgentState::Running,
            ),
            (json!({"status": "generating"}), AgentState::Running),
            (json!({"status": "processing"}), AgentState::Running),
            (json!({"status": "brand-new-value"}), AgentState::Running),
            (json!({}), AgentState::Running),
            (
                json!({"status": "failed", "error_message": "Image processing failed: x"}),
                AgentState::Failed {
                    message: Some("Image processing failed: x".into()),
                },
            ),
            (
                json!({"status": "failed"}),
                AgentState::Failed { message: None },
            ),
        ];
        for (data, expected) in cases {
            assert_eq!(agent_state(&data), expected, "{data}");
        }
    }

    #[test]
    fn the_agent_id_is_found_at_the_top_or_under_data() {
        assert_eq!(
            generated_agent_id(&json!({"success": true, "agent_id": "A91XMB7113"})),
            Some("A91XMB7113".into())
        );
        assert_eq!(
            generated_agent_id(&json!({"success": true, "data": {"agent_id": "A1"}})),
            Some("A1".into())
        );
        assert_eq!(generated_agent_id(&json!({"success": true})), None);
        assert_eq!(generated_agent_id(&json!({"agent_id": ""})), None);
    }

    #[test]
    fn status_data_unwraps_the_envelope() {
        let data = status_data(json!({"success": true, "data": {"status": "ready"}})).unwrap();
        assert_eq!(data["status"], "ready");
        assert!(status_data(json!({"success": true})).is_none());
        assert!(status_data(json!("nope")).is_none());
    }

    #[test]
    fn both_error_shapes_parse() {
        let seed =
            br#"{"error": "Invalid API secret", "code": "UNAUTHORIZED", "details": "check it"}"#;
        assert_eq!(
            parse_error(seed, 401),
            WireError {
                code: "UNAUTHORIZED".into(),
                message: "Invalid API secret".into(),
                details: Some("check it".into())
            }
        );
        let current = br#"{"error": {"code": "INSUFFICIENT_BALANCE", "message": "No credits", "httpStatus": 402}, "status": "error", "status_code": 402}"#;
        let parsed = parse_error(current, 402);
        assert_eq!(parsed.code, "INSUFFICIENT_BALANCE");
        assert_eq!(parsed.message, "No credits");
        let garbage = parse_error(b"<html>bad gateway</html>", 502);
        assert_eq!(garbage.code, "INTERNAL_ERROR");
    }
}
