use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{EventType, SubscriptionId, Tenant};
use crate::clock::Timestamp;

/// How an event body is shaped for the receiver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Standard,
    Slack,
    Discord,
}

/// A signing secret with, during a rotation, the one it replaced and when that one stops signing.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SecretSet {
    pub current: String,
    #[serde(default)]
    pub previous: Option<PreviousSecret>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PreviousSecret {
    pub secret: String,
    pub expires_at: Timestamp,
}

impl SecretSet {
    pub fn new(current: String) -> Self {
        SecretSet {
            current,
            previous: None,
        }
    }

    /// Every secret that signs at `now`, newest first.
    pub fn active(&self, now: Timestamp) -> Vec<&str> {
        let mut secrets = vec![self.current.as_str()];
        if let Some(previous) = &self.previous {
            if previous.expires_at > now {
                secrets.push(previous.secret.as_str());
            }
        }
        secrets
    }

    /// Replace the current secret; the old one keeps signing beside it until `overlap_until`.
    pub fn rotate(&mut self, new_secret: String, overlap_until: Timestamp) {
        let old = std::mem::replace(&mut self.current, new_secret);
        self.previous = Some(PreviousSecret {
            secret: old,
            expires_at: overlap_until,
        });
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Subscription {
    pub id: SubscriptionId,
    pub tenant: Tenant,
    pub url: String,
    pub event_types: Vec<EventType>,
    pub format: Format,
    pub description: Option<String>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub secrets: SecretSet,
    /// Start of the current run of failed deliveries; cleared by any success.
    pub failing_since: Option<Timestamp>,
    /// Deliveries per second to it at most; `None`: no limit of its own (issue 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_second: Option<u32>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Subscription {
    pub fn wants(&self, event_type: EventType) -> bool {
        self.enabled && self.event_types.contains(&event_type)
    }
}

/// Bounds of a subscription's `rate_limit_per_second`.
pub const RATE_LIMIT_PER_SECOND_MAX: u32 = 1000;

/// A subscription's `rate_limit_per_second` as given in JSON: `null` for no limit, else a
/// whole number from 1 to [`RATE_LIMIT_PER_SECOND_MAX`]. The error is a sentence for the client.
pub fn parse_rate_limit_per_second(value: &serde_json::Value) -> Result<Option<u32>, String> {
    let refuse = || {
        format!(
            "rate_limit_per_second must be a whole number of deliveries per second from 1 to \
             {RATE_LIMIT_PER_SECOND_MAX}, or null for no limit"
        )
    };
    match value {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::Number(n) => match n.as_u64() {
            Some(r) if (1..=u64::from(RATE_LIMIT_PER_SECOND_MAX)).contains(&r) => {
                Ok(Some(r as u32))
            }
            _ => Err(refuse()),
        },
        _ => Err(refuse()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_rate_limit_is_null_or_a_whole_number_from_1_to_the_max() {
        assert_eq!(parse_rate_limit_per_second(&json!(null)), Ok(None));
        assert_eq!(parse_rate_limit_per_second(&json!(1)), Ok(Some(1)));
        assert_eq!(
            parse_rate_limit_per_second(&json!(RATE_LIMIT_PER_SECOND_MAX)),
            Ok(Some(RATE_LIMIT_PER_SECOND_MAX))
        );
        for bad in [
            json!(0),
            json!(-1),
            json!(1.5),
            json!(RATE_LIMIT_PER_SECOND_MAX + 1),
            json!("5"),
            json!(true),
            json!([5]),
            json!(1e30),
        ] {
            let message = parse_rate_limit_per_second(&bad).expect_err("refused");
            assert!(
                message.contains("rate_limit_per_second"),
                "{bad}: {message}"
            );
        }
    }

    #[test]
    fn a_subscription_stored_before_rate_limits_reads_as_unlimited() {
        let stored = json!({
            "id": "sub_01JDX5R5B6Y0V4W3Q2P1N0M9KZ", "tenant": "acme",
            "url": "https://example.com/hook", "event_types": ["agent.ready"],
            "format": "standard", "description": null, "enabled": true,
            "disabled_reason": null, "secrets": {"current": "whsec_x"},
            "failing_since": null,
            "created_at": "2026-11-28T16:00:00Z", "updated_at": "2026-11-28T16:00:00Z"
        });
        let sub: Subscription = serde_json::from_value(stored).expect("reads");
        assert_eq!(sub.rate_limit_per_second, None);
    }
}
