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
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Subscription {
    pub fn wants(&self, event_type: EventType) -> bool {
        self.enabled && self.event_types.contains(&event_type)
    }
}
