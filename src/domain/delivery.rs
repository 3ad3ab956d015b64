use std::sync::{Arc, LazyLock, OnceLock};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
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

/// The `scheme://host[:port]` of a URL (see [`Destination::host`]).
fn host_of(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let end = url[after_scheme..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| after_scheme + i);
    &url[..end]
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

    /// Where its requests go, `scheme://host[:port]`, for the per-destination limit: the text
    /// of the URL before the path. Destination URLs are stored as the URL parser writes them
    /// (lower-case scheme and host, no default port, no userinfo), so one destination has one
    /// spelling.
    pub fn host(&self) -> &str {
        host_of(self.url())
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
    /// The standard event body; other formats are rendered from it at send time. Stored once
    /// per event, apart from the delivery record (which is rewritten at every attempt), so a
    /// stored delivery leaves it out and the store puts it back when reading.
    #[serde(default, skip_serializing)]
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
        Delivery::with_payload(
            event,
            &Payload::from(event.payload()),
            job_id,
            destination,
            now,
        )
    }

    /// [`Delivery::new`] with the event's body already rendered (`Payload::from(event.payload())`):
    /// the deliveries of one event then share one body, rendered once, however many there are.
    pub fn with_payload(
        event: &Event,
        payload: &Payload,
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
            payload: payload.clone(),
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
/// serialising anything; the tree is parsed on first use (the chat formats, the API). Cloning
/// shares the text: every delivery of one event holds the same body.
#[derive(Clone)]
pub struct Payload(Arc<PayloadText>);

struct PayloadText {
    json: Box<str>,
    parsed: OnceLock<Value>,
}

impl Payload {
    fn from_text(json: Box<str>, parsed: OnceLock<Value>) -> Payload {
        Payload(Arc::new(PayloadText { json, parsed }))
    }

    /// The body as compact JSON text, exactly as stored.
    pub fn json(&self) -> &str {
        &self.0.json
    }

    /// The body as a JSON value (`null` if the stored text is not JSON, which only a damaged
    /// store could hold: the text is always written from a value).
    pub fn value(&self) -> &Value {
        self.0.parsed.get_or_init(|| {
            serde_json::from_str(&self.0.json).unwrap_or_else(|error| {
                tracing::error!(%error, "a stored event body is not JSON");
                Value::Null
            })
        })
    }

    /// A body as stored: its JSON text, taken as it is (parsed only if [`Payload::value`] is
    /// asked for).
    pub fn from_stored(bytes: &[u8]) -> Result<Payload, std::str::Utf8Error> {
        let json = std::str::from_utf8(bytes)?;
        Ok(Payload::from_text(json.into(), OnceLock::new()))
    }

    /// No body yet: what a delivery read without its event's body holds (JSON `null`; an
    /// event body is always an object).
    pub fn is_absent(&self) -> bool {
        self.json() == "null"
    }
}

impl Default for Payload {
    /// One shared absent body: every record read from the store starts with it.
    fn default() -> Self {
        static ABSENT: LazyLock<Payload> = LazyLock::new(|| Payload::from(Value::Null));
        ABSENT.clone()
    }
}

impl From<Value> for Payload {
    fn from(value: Value) -> Self {
        let json = value.to_string().into_boxed_str();
        let parsed = OnceLock::new();
        let _ = parsed.set(value);
        Payload::from_text(json, parsed)
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
        f.write_str(self.json())
    }
}

/// Written as the JSON text it is (the API's view of a delivery), without building the tree;
/// a damaged text (see [`Payload::value`]) is written as `null`.
impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match serde_json::from_str::<&RawValue>(self.json()) {
            Ok(raw) => raw.serialize(serializer),
            Err(_) => self.value().serialize(serializer),
        }
    }
}

/// Records of the first layout hold the body inside the delivery; it is read as it was
/// written, as text.
impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        Ok(Payload::from_text(raw.get().into(), OnceLock::new()))
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

        let stored = Payload::from_stored(payload.json().as_bytes()).unwrap();
        assert_eq!(stored.json(), value.to_string());
        assert_eq!(stored.value(), &value);
        assert!(!stored.is_absent());
        assert!(Payload::default().is_absent());
    }

    #[test]
    fn a_body_inside_a_record_of_the_first_layout_is_read_as_written() {
        #[derive(Deserialize)]
        struct Holder {
            payload: Payload,
        }
        let value = json!({"type": "agent.ready", "data": {"s": "é\""}});
        let record = serde_json::to_string(&json!({"payload": value})).unwrap();
        let read: Holder = serde_json::from_str(&record).unwrap();
        assert_eq!(read.payload.json(), value.to_string());
        assert_eq!(read.payload.value(), &value);
    }

    #[test]
    fn a_payload_is_written_as_its_text_and_a_damaged_one_as_null() {
        let value = json!({"type": "agent.ready", "data": {"s": "é\"", "n": 1.5}});
        let payload = Payload::from(value.clone());
        assert_eq!(serde_json::to_string(&payload).unwrap(), payload.json());
        assert_eq!(serde_json::to_value(&payload).unwrap(), value);
        let damaged = Payload::from_stored(b"{\"type\": ").unwrap();
        assert_eq!(serde_json::to_string(&damaged).unwrap(), "null");
    }

    #[test]
    fn a_destination_is_the_scheme_host_and_port_of_its_url() {
        for (url, key) in [
            ("http://127.0.0.1:8080/hook?x=1", "http://127.0.0.1:8080"),
            (
                "https://hooks.example.com/services/T/B/X",
                "https://hooks.example.com",
            ),
            ("https://example.com", "https://example.com"),
            ("https://example.com?q#f", "https://example.com"),
            ("http://[::1]:9/a", "http://[::1]:9"),
        ] {
            assert_eq!(host_of(url), key, "{url}");
        }
    }
}
