//! bitHuman's own outgoing webhooks (`upstream/NOTES.md`): how they are signed, checked and
//! read. Pure functions, shared by the receiving route and the simulator that sends them.
//!
//! A delivery carries `X-BitHuman-Event`, `X-BitHuman-Delivery`, `X-BitHuman-Timestamp` (unix
//! seconds) and `X-BitHuman-Signature: sha256=<hex>`, the HMAC-SHA256 keyed with the secret
//! string's own bytes (not base64-decoded) over `"{timestamp}.{raw body}"`.

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::clock::Timestamp;

type HmacSha256 = Hmac<Sha256>;

pub const EVENT_HEADER: &str = "x-bithuman-event";
pub const DELIVERY_HEADER: &str = "x-bithuman-delivery";
pub const TIMESTAMP_HEADER: &str = "x-bithuman-timestamp";
pub const SIGNATURE_HEADER: &str = "x-bithuman-signature";

/// How far a delivery's timestamp may be from our clock, either way.
pub const TOLERANCE: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// Why a delivery was refused. Both answer 401; they are told apart in the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// A header missing or malformed, or no known secret signed this body.
    BadSignature,
    /// Signed by a known secret, but the timestamp is outside the tolerance.
    Stale,
}

/// `sha256=<hex>` for `body` sent at `timestamp` (unix seconds).
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!("sha256={}", hex(&mac(secret, timestamp, body)))
}

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length.
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

/// Check a delivery against each of `secrets` (constant time per comparison) and the clock.
/// `timestamp` and `signature` are the raw header values, when present.
pub fn verify(
    secrets: &[&str],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: Timestamp,
) -> Result<(), Rejection> {
    let timestamp: i64 = timestamp
        .and_then(|t| t.trim().parse().ok())
        .ok_or(Rejection::BadSignature)?;
    let given = signature
        .and_then(|s| s.trim().strip_prefix("sha256="))
        .and_then(unhex)
        .ok_or(Rejection::BadSignature)?;
    let signed = secrets
        .iter()
        .filter(|s| !s.is_empty())
        .any(|secret| bool::from(mac(secret, timestamp, body).ct_eq(&given)));
    if !signed {
        return Err(Rejection::BadSignature);
    }
    let skew = (now.timestamp() - timestamp).unsigned_abs();
    if skew > TOLERANCE.as_secs() {
        return Err(Rejection::Stale);
    }
    Ok(())
}

/// What a delivery says, as far as agenthook cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushEvent {
    /// `agent.ready` or `agent.failed`: the agent has ended; a status read says how.
    AgentEnded { agent_id: String },
    /// `ping` (a test delivery).
    Ping,
    /// Anything else (`video.*`, events added later): ignored.
    Other,
}

/// Read the event of a verified body: the `X-BitHuman-Event` header, else the body's `event`;
/// the agent id from `data.agent_id` (or `data.code`). `None` when the body is not JSON or an
/// agent event names no agent.
pub fn parse_event(header_event: Option<&str>, body: &[u8]) -> Option<PushEvent> {
    let body: Value = serde_json::from_slice(body).ok()?;
    let event = header_event
        .filter(|e| !e.is_empty())
        .or_else(|| body.get("event").and_then(Value::as_str))
        .unwrap_or("");
    Some(match event {
        "agent.ready" | "agent.failed" => {
            let data = body.get("data")?;
            let agent_id = data
                .get("agent_id")
                .or_else(|| data.get("code"))
                .and_then(Value::as_str)
                .filter(|id| !id.is_empty())?;
            PushEvent::AgentEnded {
                agent_id: agent_id.to_owned(),
            }
        }
        "ping" => PushEvent::Ping,
        _ => PushEvent::Other,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.is_empty() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        chrono::DateTime::from_timestamp(secs, 0).unwrap()
    }

    #[test]
    fn the_signature_is_hex_hmac_sha256_over_timestamp_dot_body_keyed_with_the_string() {
        // Computed independently: printf '1780417371.{"a":1}' | openssl dgst -sha256 -hmac whsec_test
        assert_eq!(
            sign("whsec_test", 1_780_417_371, br#"{"a":1}"#),
            "sha256=ba2353cb6b66a323f16c8ca73dc2afe9dcbbe5cb8625ab4dab4871215bee2e14"
        );
    }

    #[test]
    fn verification_accepts_the_right_secret_and_refuses_the_rest() {
        let body = br#"{"event":"ping"}"#;
        let ts = 1_780_417_371;
        let good = sign("whsec_a", ts, body);
        let now = at(ts + 10);
        let tsx = ts.to_string();
        assert_eq!(
            verify(&["whsec_a"], Some(&tsx), Some(&good), body, now),
            Ok(())
        );
        assert_eq!(
            verify(&["other", "whsec_a"], Some(&tsx), Some(&good), body, now),
            Ok(())
        );
        assert_eq!(
            verify(&["whsec_b"], Some(&tsx), Some(&good), body, now),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            verify(&["whsec_a"], Some(&tsx), Some(&good), b"{}", now),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            verify(&["whsec_a"], None, Some(&good), body, now),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            verify(&["whsec_a"], Some(&tsx), None, body, now),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            verify(&["whsec_a"], Some(&tsx), Some(&good[7..]), body, now),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            verify(&["whsec_a"], Some(&tsx), Some(&good), body, at(ts + 301)),
            Err(Rejection::Stale)
        );
        assert_eq!(
            verify(&["whsec_a"], Some(&tsx), Some(&good), body, at(ts - 301)),
            Err(Rejection::Stale)
        );
        assert_eq!(
            verify(&[""], Some(&tsx), Some(&sign("", ts, body)), body, now),
            Err(Rejection::BadSignature),
            "an empty secret never verifies"
        );
    }

    #[test]
    fn events_are_read_from_the_header_or_the_body() {
        let body = br#"{"id":"evt_1","event":"agent.ready","created":1,"data":{"agent_id":"A1","code":"A1"}}"#;
        assert_eq!(
            parse_event(None, body),
            Some(PushEvent::AgentEnded {
                agent_id: "A1".into()
            })
        );
        assert_eq!(
            parse_event(Some("agent.failed"), br#"{"data":{"code":"A2"}}"#),
            Some(PushEvent::AgentEnded {
                agent_id: "A2".into()
            })
        );
        assert_eq!(parse_event(Some("ping"), b"{}"), Some(PushEvent::Ping));
        assert_eq!(
            parse_event(Some("video.completed"), b"{}"),
            Some(PushEvent::Other)
        );
        assert_eq!(parse_event(Some("agent.ready"), b"{}"), None);
        assert_eq!(parse_event(None, b"not json"), None);
    }
}
