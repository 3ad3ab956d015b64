use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;
use utoipa::ToSchema;

use super::{
    DeliveryId, Event, EventId, EventType, Format, JobId, MessageId, Subscription, SubscriptionId,
    Tenant,
};
use crate::clock::Timestamp;

/// Where a delivery goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Destination {
    /// The `callback_url` of a job, signed with the tenant's callback secret.
    Callback { url: String },
    /// A subscription, signed with its own secret.
    Subscription {
        subscription_id: SubscriptionId,
        url: String,
        format: Format,
    },
}

impl Destination {
    /// A subscription as it is now: its URL and format.
    pub fn subscription(sub: &Subscription) -> Destination {
        Destination::Subscription {
            subscription_id: sub.id.clone(),
            url: sub.url.clone(),
            format: sub.format,
        }
    }

    pub fn url(&self) -> &str {
        match self {
            Destination::Callback { url } | Destination::Subscription { url, .. } => url,
        }
    }

    pub fn format(&self) -> Format {
        match self {
            Destination::Callback { .. } => Format::Standard,
            Destination::Subscription { format, .. } => *format,
        }
    }

    pub fn subscription_id(&self) -> Option<&SubscriptionId> {
        match self {
            Destination::Callback { .. } => None,
            Destination::Subscription {
                subscription_id, ..
            } => Some(subscription_id),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    Pending,
    Succeeded,
    /// Dead letter: every attempt failed, or the destination refused it for good.
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Succeeded => "succeeded",
            DeliveryState::Failed => "failed",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [Self::Pending, Self::Succeeded, Self::Failed]
            .into_iter()
            .find(|s| s.as_str() == raw)
    }
}

/// Why an attempt failed, in words an operator can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ErrorClass {
    Timeout,
    Connect,
    Dns,
    /// The receiver answered, but not with a 2xx.
    Http,
    /// The network policy refused the destination.
    Blocked,
    /// Anything else (TLS, a broken connection mid-body, ...).
    Other,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Timeout => "timeout",
            ErrorClass::Connect => "connect",
            ErrorClass::Dns => "dns",
            ErrorClass::Http => "http",
            ErrorClass::Blocked => "blocked",
            ErrorClass::Other => "other",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Attempt {
    pub at: DateTime<Utc>,
    /// The receiver's HTTP status; null when no answer came.
    pub status_code: Option<u16>,
    /// Why the attempt failed; null when it succeeded.
    pub error: Option<ErrorClass>,
    pub duration_ms: u64,
    /// The first 16 KiB of the response body.
    pub response_body: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Delivery {
    pub id: DeliveryId,
    pub tenant: Tenant,
    pub event_id: EventId,
    pub event_type: EventType,
    pub job_id: Option<JobId>,
    pub message_id: MessageId,
    pub destination: Destination,
    /// The standard event body; other formats are rendered from it at send time.
    pub payload: Payload,
    pub state: DeliveryState,
    pub attempts: Vec<Attempt>,
    pub next_attempt_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Delivery {
    pub fn new(
        event: &Event,
        job_id: Option<JobId>,
        destination: Destination,
        now: Timestamp,
    ) -> Self {
        Delivery {
            id: DeliveryId::generate(),
            tenant: event.tenant.clone(),
            event_id: event.id.clone(),
            event_type: event.event_type,
            job_id,
            message_id: MessageId::generate(),
            destination,
            payload: Payload::from(event.payload()),
            state: DeliveryState::Pending,
            attempts: Vec::new(),
            next_attempt_at: Some(now),
            created_at: now,
            updated_at: now,
        }
    }

    /// A first attempt goes in the fresh queue, which retries never delay.
    pub fn is_first_attempt(&self) -> bool {
        self.attempts.is_empty()
    }
}

/// A delivery's event body, kept as the JSON text it is stored and sent as. Reading a delivery
/// does not build the JSON tree, and the standard format sends these bytes without
/// serialising anything; the tree is parsed on first use (the chat formats, the API).
#[derive(Clone)]
pub struct Payload {
    raw: Box<RawValue>,
    parsed: OnceLock<Value>,
}

impl Payload {
    /// The body as compact JSON text, exactly as stored.
    pub fn json(&self) -> &str {
        self.raw.get()
    }

    /// The body as a JSON value.
    pub fn value(&self) -> &Value {
        self.parsed
            .get_or_init(|| serde_json::from_str(self.raw.get()).expect("a payload is valid JSON"))
    }
}

impl From<Value> for Payload {
    fn from(value: Value) -> Self {
        let raw = serde_json::value::to_raw_value(&value).expect("a JSON value serialises");
        let parsed = OnceLock::new();
        let _ = parsed.set(value);
        Payload { raw, parsed }
    }
}

impl std::ops::Index<&str> for Payload {
    type Output = Value;

    fn index(&self, key: &str) -> &Value {
        &self.value()[key]
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.raw.get())
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.raw.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Payload {
            raw: Box::<RawValue>::deserialize(deserializer)?,
            parsed: OnceLock::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_payload_is_stored_and_sent_as_the_compact_json_of_its_value() {
        let value =
            json!({"type": "agent.ready", "data": {"n": 1.5, "s": "é\"", "z": null, "a": [1, 2]}});
        let payload = Payload::from(value.clone());
        assert_eq!(payload.json(), value.to_string());
        assert_eq!(payload["data"]["n"], json!(1.5));

        let stored = serde_json::to_string(&json!({"payload": value})).unwrap();
        #[derive(Deserialize, Serialize)]
        struct Holder {
            payload: Payload,
        }
        let read: Holder = serde_json::from_str(&stored).unwrap();
        assert_eq!(read.payload.json(), value.to_string());
        assert_eq!(read.payload.value(), &value);
        assert_eq!(serde_json::to_string(&read).unwrap(), stored);
    }
}
