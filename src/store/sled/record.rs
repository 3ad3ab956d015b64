//! The stored form of a delivery record: a compact binary encoding.
//!
//! A record is rewritten at every attempt and read at every claim, so its form is on the
//! delivery path twice per attempt. JSON with RFC 3339 times cost a tenth of the worker's CPU
//! there; this form is about half the size and needs no parsing beyond lengths.
//!
//! Layout (version 1): the byte `0x01`, then the fields in the order of [`Delivery`], the event
//! body left out (it is stored once per event, in `events`). Strings are a LEB128 length and
//! UTF-8 bytes; an option is a byte 0 (none) or 1 (some) before its value; times are seconds
//! since the epoch (i64) and nanoseconds (u32), little-endian; enums are one byte each, with the
//! codes below (never renumbered).
//!
//! Version 2 (the byte `0x02`) is version 1 followed by the event body, a string: the record of
//! an event's only delivery (a test event; a job with one destination) holds its body, so that
//! delivery is one key fewer on disk and one read fewer per claim, for a longer record rewritten
//! at each attempt. A record keeps its form when it is rewritten ([`Body::of`]).
//!
//! Records written by earlier versions are JSON objects (they begin with `{`) and are read as
//! such; each is written in version 1's form the next time it changes.

use chrono::DateTime;

use super::{decode, Result, StoreError};
use crate::clock::Timestamp;
use crate::domain::{
    Attempt, Delivery, DeliveryId, DeliveryState, Destination, ErrorClass, EventId, EventType,
    Format, JobId, MessageId, Payload, SubscriptionId, Tenant,
};

const VERSION_1: u8 = 1;
const WITH_BODY: u8 = 2;

/// Where a delivery record keeps its event's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Body {
    /// In `events`, under the event's id, shared by the event's deliveries (version 1).
    Apart,
    /// In the record itself (version 2).
    Inside,
}

impl Body {
    /// The form a stored record has, to write it again in: a JSON record of the first layout
    /// is written with its body apart.
    pub(super) fn of(stored: &[u8]) -> Body {
        if stored.first() == Some(&WITH_BODY) {
            Body::Inside
        } else {
            Body::Apart
        }
    }
}

/// The records of deliveries stored together: an event's only delivery among them holds its
/// body; the deliveries of an event with several (a fan-out) share one body, stored apart.
pub(super) fn encode_new(deliveries: &[Delivery]) -> Vec<Vec<u8>> {
    let mut per_event: std::collections::HashMap<&str, usize> = Default::default();
    for d in deliveries {
        *per_event.entry(d.event_id.as_str()).or_default() += 1;
    }
    deliveries
        .iter()
        .map(|d| {
            let alone = per_event[d.event_id.as_str()] == 1;
            encode_delivery(d, if alone { Body::Inside } else { Body::Apart })
        })
        .collect()
}

/// A delivery's record, its body in it or apart. A delivery without its body (never the case
/// for one in hand to be written) is written apart.
pub(super) fn encode_delivery(d: &Delivery, body: Body) -> Vec<u8> {
    let inside = body == Body::Inside && !d.payload.is_absent();
    let mut out = Out(Vec::with_capacity(
        256 + if inside { d.payload.json().len() } else { 0 },
    ));
    out.u8(if inside { WITH_BODY } else { VERSION_1 });
    out.str(d.id.as_str());
    out.str(d.tenant.as_str());
    out.str(d.event_id.as_str());
    out.u8(event_type_code(d.event_type));
    out.opt(d.job_id.as_ref(), |out, id| out.str(id.as_str()));
    out.str(d.message_id.as_str());
    match &d.destination {
        Destination::Callback { url } => {
            out.u8(0);
            out.str(url);
        }
        Destination::Subscription {
            subscription_id,
            url,
            format,
        } => {
            out.u8(1);
            out.str(subscription_id.as_str());
            out.str(url);
            out.u8(format_code(*format));
        }
    }
    out.u8(state_code(d.state));
    out.varint(d.attempts.len() as u64);
    for a in &d.attempts {
        out.time(&a.at);
        out.opt(a.status_code, |out, code| out.varint(code.into()));
        out.opt(a.error, |out, error| out.u8(error_code(error)));
        out.varint(a.duration_ms);
        out.opt(a.response_body.as_deref(), Out::str);
    }
    out.opt(d.next_attempt_at.as_ref(), Out::time);
    out.time(&d.created_at);
    out.time(&d.updated_at);
    if inside {
        out.str(d.payload.json());
    }
    out.0
}

/// A stored delivery record, in any form; with its event body if the record holds it (a JSON
/// record of the first layout, or version 2), else with none ([`Payload::is_absent`]).
pub(super) fn decode_delivery(bytes: &[u8]) -> Result<Delivery> {
    match bytes.first() {
        Some(b'{') => decode(bytes),
        Some(&form @ (VERSION_1 | WITH_BODY)) => {
            let mut input = In(&bytes[1..]);
            let mut delivery = read_v1(&mut input).map_err(|what| corrupt(&what))?;
            if form == WITH_BODY {
                let body = input.bytes().map_err(|what| corrupt(&what))?;
                delivery.payload =
                    Payload::from_stored(body).map_err(|e| corrupt(&format!("its body: {e}")))?;
            }
            if !input.0.is_empty() {
                return Err(corrupt("bytes after the end"));
            }
            Ok(delivery)
        }
        Some(other) => Err(corrupt(&format!("unknown form {other:#04x}"))),
        None => Err(corrupt("empty")),
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("delivery record: {what}"))
}

type Read<T> = std::result::Result<T, String>;

fn read_v1(input: &mut In<'_>) -> Read<Delivery> {
    let id = DeliveryId::from_stored(input.string()?);
    let tenant = Tenant::from_stored(input.string()?);
    let event_id = EventId::from_stored(input.string()?);
    let event_type = event_type(input.u8()?)?;
    let job_id = input.opt(|i| Ok(JobId::from_stored(i.string()?)))?;
    let message_id = MessageId::from_stored(input.string()?);
    let destination = match input.u8()? {
        0 => Destination::Callback {
            url: input.string()?,
        },
        1 => Destination::Subscription {
            subscription_id: SubscriptionId::from_stored(input.string()?),
            url: input.string()?,
            format: format(input.u8()?)?,
        },
        other => return Err(format!("unknown destination kind {other}")),
    };
    let state = state(input.u8()?)?;
    let count = input.varint()?;
    // Each attempt takes at least 16 bytes: a count beyond what is left is damage.
    if count > (input.0.len() / 16) as u64 {
        return Err(format!("{count} attempts in {} bytes", input.0.len()));
    }
    let mut attempts = Vec::with_capacity(count as usize);
    for _ in 0..count {
        attempts.push(Attempt {
            at: input.time()?,
            status_code: input.opt(|i| {
                u16::try_from(i.varint()?).map_err(|_| "status code out of range".to_owned())
            })?,
            error: input.opt(|i| error_class(i.u8()?))?,
            duration_ms: input.varint()?,
            response_body: input.opt(In::string)?,
        });
    }
    Ok(Delivery {
        id,
        tenant,
        event_id,
        event_type,
        job_id,
        message_id,
        destination,
        payload: Payload::default(),
        state,
        attempts,
        next_attempt_at: input.opt(In::time)?,
        created_at: input.time()?,
        updated_at: input.time()?,
    })
}

// The one-byte codes of each enum. Never renumbered; a new variant takes a new code (the
// matches are exhaustive, so a variant without a code does not compile).

fn event_type_code(value: EventType) -> u8 {
    match value {
        EventType::AgentReady => 0,
        EventType::AgentFailed => 1,
        EventType::WebhookTest => 2,
    }
}

fn event_type(code: u8) -> Read<EventType> {
    Ok(match code {
        0 => EventType::AgentReady,
        1 => EventType::AgentFailed,
        2 => EventType::WebhookTest,
        other => return Err(format!("unknown event type {other}")),
    })
}

fn format_code(value: Format) -> u8 {
    match value {
        Format::Standard => 0,
        Format::Slack => 1,
        Format::Discord => 2,
    }
}

fn format(code: u8) -> Read<Format> {
    Ok(match code {
        0 => Format::Standard,
        1 => Format::Slack,
        2 => Format::Discord,
        other => return Err(format!("unknown format {other}")),
    })
}

fn state_code(value: DeliveryState) -> u8 {
    match value {
        DeliveryState::Pending => 0,
        DeliveryState::Succeeded => 1,
        DeliveryState::Failed => 2,
    }
}

fn state(code: u8) -> Read<DeliveryState> {
    Ok(match code {
        0 => DeliveryState::Pending,
        1 => DeliveryState::Succeeded,
        2 => DeliveryState::Failed,
        other => return Err(format!("unknown state {other}")),
    })
}

fn error_code(value: ErrorClass) -> u8 {
    match value {
        ErrorClass::Timeout => 0,
        ErrorClass::Connect => 1,
        ErrorClass::Dns => 2,
        ErrorClass::Http => 3,
        ErrorClass::Blocked => 4,
        ErrorClass::Other => 5,
    }
}

fn error_class(code: u8) -> Read<ErrorClass> {
    Ok(match code {
        0 => ErrorClass::Timeout,
        1 => ErrorClass::Connect,
        2 => ErrorClass::Dns,
        3 => ErrorClass::Http,
        4 => ErrorClass::Blocked,
        5 => ErrorClass::Other,
        other => return Err(format!("unknown error class {other}")),
    })
}

struct Out(Vec<u8>);

impl Out {
    fn u8(&mut self, byte: u8) {
        self.0.push(byte);
    }

    fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.0.push((value as u8) | 0x80);
            value >>= 7;
        }
        self.0.push(value as u8);
    }

    fn str(&mut self, text: &str) {
        self.varint(text.len() as u64);
        self.0.extend_from_slice(text.as_bytes());
    }

    fn time(&mut self, at: &Timestamp) {
        self.0.extend_from_slice(&at.timestamp().to_le_bytes());
        self.0
            .extend_from_slice(&at.timestamp_subsec_nanos().to_le_bytes());
    }

    fn opt<T>(&mut self, value: Option<T>, write: impl FnOnce(&mut Self, T)) {
        match value {
            None => self.u8(0),
            Some(value) => {
                self.u8(1);
                write(self, value);
            }
        }
    }
}

struct In<'a>(&'a [u8]);

impl<'a> In<'a> {
    fn take(&mut self, n: usize) -> Read<&'a [u8]> {
        if self.0.len() < n {
            return Err("cut short".to_owned());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Read<u8> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> Read<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("a number longer than 64 bits".to_owned())
    }

    /// A length and that many bytes.
    fn bytes(&mut self) -> Read<&'a [u8]> {
        let len = usize::try_from(self.varint()?).map_err(|_| "a length out of range")?;
        self.take(len)
    }

    fn string(&mut self) -> Read<String> {
        let bytes = self.bytes()?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| "text that is not UTF-8".to_owned())
    }

    fn time(&mut self) -> Read<Timestamp> {
        let secs = i64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes"));
        let nanos = u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes"));
        DateTime::from_timestamp(secs, nanos).ok_or_else(|| "a time out of range".to_owned())
    }

    fn opt<T>(&mut self, read: impl FnOnce(&mut Self) -> Read<T>) -> Read<Option<T>> {
        match self.u8()? {
            0 => Ok(None),
            1 => read(self).map(Some),
            other => Err(format!("an option marked {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Event;
    use serde_json::json;

    const EVENT_TYPES: &[EventType] = &EventType::ALL;
    const FORMATS: &[Format] = &[Format::Standard, Format::Slack, Format::Discord];
    const STATES: &[DeliveryState] = &[
        DeliveryState::Pending,
        DeliveryState::Succeeded,
        DeliveryState::Failed,
    ];
    const ERRORS: &[ErrorClass] = &[
        ErrorClass::Timeout,
        ErrorClass::Connect,
        ErrorClass::Dns,
        ErrorClass::Http,
        ErrorClass::Blocked,
        ErrorClass::Other,
    ];

    #[test]
    fn every_enum_code_reads_back_and_codes_are_distinct() {
        for (i, v) in EVENT_TYPES.iter().enumerate() {
            assert_eq!(event_type(event_type_code(*v)).unwrap(), *v);
            assert_eq!(
                event_type_code(*v) as usize,
                i,
                "codes are never renumbered"
            );
        }
        for (i, v) in FORMATS.iter().enumerate() {
            assert_eq!(format(format_code(*v)).unwrap(), *v);
            assert_eq!(format_code(*v) as usize, i);
        }
        for (i, v) in STATES.iter().enumerate() {
            assert_eq!(state(state_code(*v)).unwrap(), *v);
            assert_eq!(state_code(*v) as usize, i);
        }
        for (i, v) in ERRORS.iter().enumerate() {
            assert_eq!(error_class(error_code(*v)).unwrap(), *v);
            assert_eq!(error_code(*v) as usize, i);
        }
        assert!(event_type(3).is_err() && format(3).is_err());
        assert!(state(3).is_err() && error_class(6).is_err());
    }

    fn event(event_type: EventType) -> Event {
        Event {
            id: EventId::generate(),
            tenant: Tenant::parse("acme").unwrap(),
            event_type,
            timestamp: chrono::Utc::now(),
            data: json!({"agent_id": "A1", "note": "é\"\u{1F600}"}),
        }
    }

    /// Every field compared, through the JSON form (which leaves out the body too).
    fn same(a: &Delivery, b: &Delivery) {
        assert_eq!(
            serde_json::to_value(a).unwrap(),
            serde_json::to_value(b).unwrap()
        );
    }

    fn varied() -> Vec<Delivery> {
        let at = DateTime::from_timestamp(1_790_000_000, 123_456_789).unwrap();
        let mut callback = Delivery::new(
            &event(EventType::AgentReady),
            Some(JobId::generate()),
            Destination::Callback {
                url: "https://example.com/hook?q=é".into(),
            },
            at,
        );
        callback.attempts = vec![
            Attempt {
                at,
                status_code: Some(503),
                error: Some(ErrorClass::Http),
                duration_ms: 1_234,
                response_body: Some("busy \u{1F600}".repeat(300)),
            },
            Attempt {
                at: at + chrono::Duration::seconds(5),
                status_code: None,
                error: Some(ErrorClass::Timeout),
                duration_ms: u64::MAX,
                response_body: None,
            },
            Attempt {
                at: at + chrono::Duration::seconds(65),
                status_code: Some(200),
                error: None,
                duration_ms: 0,
                response_body: Some(String::new()),
            },
        ];
        callback.state = DeliveryState::Succeeded;
        callback.next_attempt_at = None;
        let mut subscription = Delivery::new(
            &event(EventType::WebhookTest),
            None,
            Destination::Subscription {
                subscription_id: SubscriptionId::generate(),
                url: "http://127.0.0.1:9/x".into(),
                format: Format::Discord,
            },
            DateTime::from_timestamp(-1, 999_999_999).unwrap(),
        );
        subscription.state = DeliveryState::Failed;
        let mut variants = vec![callback, subscription];
        for (i, error) in ERRORS.iter().enumerate() {
            let format = &FORMATS[i % FORMATS.len()];
            let mut d = Delivery::new(
                &event(EVENT_TYPES[i % EVENT_TYPES.len()]),
                None,
                Destination::Subscription {
                    subscription_id: SubscriptionId::generate(),
                    url: format!("https://h{i}.example/"),
                    format: *format,
                },
                at,
            );
            d.state = STATES[i % STATES.len()];
            d.attempts.push(Attempt {
                at,
                status_code: Some(u16::MAX),
                error: Some(*error),
                duration_ms: 127,
                response_body: None,
            });
            variants.push(d);
        }
        let mut d = variants[2].clone();
        d.attempts[0].error = Some(ErrorClass::Other);
        variants.push(d);
        variants
    }

    #[test]
    fn a_record_reads_back_as_written_every_field_and_code() {
        for delivery in varied() {
            let bytes = encode_delivery(&delivery, Body::Apart);
            assert_eq!(bytes[0], VERSION_1);
            assert_eq!(Body::of(&bytes), Body::Apart);
            let read = decode_delivery(&bytes).unwrap();
            same(&read, &delivery);
            assert!(read.payload.is_absent(), "the body is stored apart");
            assert_eq!(encode_delivery(&read, Body::Apart), bytes);
        }
    }

    #[test]
    fn a_record_that_holds_its_body_reads_back_with_it() {
        for delivery in varied() {
            let bytes = encode_delivery(&delivery, Body::Inside);
            assert_eq!(bytes[0], WITH_BODY);
            assert_eq!(Body::of(&bytes), Body::Inside, "written again in its form");
            let read = decode_delivery(&bytes).unwrap();
            same(&read, &delivery);
            assert_eq!(read.payload.json(), delivery.payload.json());
            assert!(!read.payload.is_absent());
            assert_eq!(encode_delivery(&read, Body::Inside), bytes);
            let apart = encode_delivery(&delivery, Body::Apart);
            assert_eq!(
                bytes[1..apart.len()],
                apart[1..],
                "version 1's fields first"
            );
            assert!(
                bytes.ends_with(delivery.payload.json().as_bytes()),
                "then the body"
            );
        }
    }

    #[test]
    fn a_delivery_without_its_body_is_written_apart_and_json_records_are_rewritten_apart() {
        let mut delivery = varied().remove(0);
        delivery.payload = Payload::default();
        let bytes = encode_delivery(&delivery, Body::Inside);
        assert_eq!(Body::of(&bytes), Body::Apart, "no body to hold");
        let json = serde_json::to_vec(&varied()[0]).unwrap();
        assert_eq!(Body::of(&json), Body::Apart);
    }

    #[test]
    fn new_records_hold_the_body_of_an_events_only_delivery() {
        let at = chrono::Utc::now();
        let tenant = Tenant::parse("acme").unwrap();
        let fanned = Event::test(tenant.clone(), at);
        let alone = Event::test(tenant, at);
        let to = |i: usize| Destination::Callback {
            url: format!("http://127.0.0.1:9/{i}"),
        };
        let deliveries = vec![
            Delivery::new(&fanned, None, to(0), at),
            Delivery::new(&alone, None, to(1), at),
            Delivery::new(&fanned, None, to(2), at),
        ];
        let forms: Vec<Body> = encode_new(&deliveries)
            .iter()
            .map(|b| Body::of(b))
            .collect();
        assert_eq!(forms, [Body::Apart, Body::Inside, Body::Apart]);
    }

    #[test]
    fn a_record_written_as_json_by_an_earlier_version_is_read() {
        for delivery in varied() {
            let json = serde_json::to_vec(&delivery).unwrap();
            same(&decode_delivery(&json).unwrap(), &delivery);
        }
    }

    #[test]
    fn a_record_is_about_half_the_size_of_its_json() {
        let d = &varied()[1];
        let (binary, json) = (
            encode_delivery(d, Body::Apart).len(),
            serde_json::to_vec(d).unwrap().len(),
        );
        assert!(binary * 2 <= json + 40, "{binary} bytes against {json}");
    }

    #[test]
    fn damaged_records_are_errors_not_panics() {
        for body in [Body::Apart, Body::Inside] {
            damaged_records_of_this_form_are_errors(encode_delivery(&varied()[0], body));
        }
    }

    fn damaged_records_of_this_form_are_errors(bytes: Vec<u8>) {
        // Every prefix, and every single-byte change at each position.
        for len in 0..bytes.len() {
            assert!(decode_delivery(&bytes[..len]).is_err(), "cut at {len}");
        }
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut damaged = bytes.clone();
                damaged[i] ^= flip;
                let _ = decode_delivery(&damaged);
            }
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_delivery(&longer).is_err(), "trailing bytes");
        assert!(decode_delivery(&[9, 1, 2]).is_err(), "unknown form");
    }
}
