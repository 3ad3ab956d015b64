//! Zapier REST Hooks (resthooks.org, Zapier's "REST Hook" trigger).
//!
//! - subscribe: `POST /v1/subscriptions` with `{"target_url": "...", "event": "agent.ready"}`
//!   makes a standard-format subscription to the Zap's catch URL and answers `201` with its
//!   `id` (the usual subscription body), which Zapier keeps;
//! - unsubscribe: `DELETE /v1/subscriptions/{id}` with that id (the usual route);
//! - sample (`performList`): `GET /v1/events/sample?type=agent.ready` (see `events.rs`).
//!
//! A target that answers `410 Gone` has its subscription disabled (nothing is deleted), as for
//! every receiver.

use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::body::kind_of;
use super::subscriptions::{NewSubscription, NewSubscriptionRequest};
use super::ApiError;
use crate::delivery::policy;
use crate::domain::{EventType, Format};

/// The fields of Zapier's subscribe body.
const SUBSCRIBE_FIELDS: [&str; 2] = ["target_url", "event"];
const TARGET_URL_MAX_LEN: usize = 2048;
/// The description of a subscription made by Zapier, so people can tell it apart.
pub const ZAPIER_DESCRIPTION: &str = "Zapier REST Hook";

/// Zapier's REST Hook subscribe body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ZapierSubscribeRequest {
    /// The Zap's catch URL (`bundle.targetUrl`); it must pass the network policy.
    #[schema(
        format = "uri",
        example = "https://hooks.zapier.com/hooks/standard/1/abc/"
    )]
    pub target_url: String,
    /// The one event type the Zap triggers on; absent: `agent.ready` and `agent.failed`.
    #[schema(value_type = Option<EventType>, example = "agent.ready")]
    pub event: Option<String>,
}

/// The body of `POST /v1/subscriptions`: a subscription, or Zapier's subscribe body.
// Only describes the body for the OpenAPI document; the handler reads it.
#[allow(dead_code)]
#[derive(ToSchema)]
#[serde(untagged)]
pub enum CreateSubscriptionBody {
    Subscription(NewSubscriptionRequest),
    Zapier(ZapierSubscribeRequest),
}

/// Whether a `POST /v1/subscriptions` body is Zapier's (it names `target_url`).
pub fn is_subscribe_body(body: &Map<String, Value>) -> bool {
    body.contains_key("target_url")
}

fn field_error(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message).with_details(field)
}

/// Zapier's subscribe body as a new standard-format subscription.
pub fn parse_subscribe(
    body: Map<String, Value>,
    allow_private: bool,
) -> Result<NewSubscription, ApiError> {
    if let Some(field) = body
        .keys()
        .find(|k| !SUBSCRIBE_FIELDS.contains(&k.as_str()))
    {
        return Err(field_error(
            field,
            format!(
                "unknown field {field:?}; a Zapier subscribe body takes {} (any other body takes url)",
                SUBSCRIBE_FIELDS.join(", ")
            ),
        ));
    }
    for (field, value) in &body {
        if !matches!(value, Value::String(_) | Value::Null) {
            return Err(field_error(
                field,
                format!("{field} must be a string, not {}", kind_of(value)),
            ));
        }
    }
    let request: ZapierSubscribeRequest = serde_json::from_value(Value::Object(body))
        .map_err(|_| field_error("target_url", "target_url is required"))?;
    if request.target_url.len() > TARGET_URL_MAX_LEN {
        return Err(field_error(
            "target_url",
            format!("target_url is longer than {TARGET_URL_MAX_LEN} bytes"),
        ));
    }
    let url = policy::check_url(&request.target_url, allow_private)
        .map_err(|e| field_error("target_url", format!("target_url is not acceptable: {e}")))?;
    let event_types = match request.event.as_deref() {
        None => vec![EventType::AgentReady, EventType::AgentFailed],
        Some(raw) => {
            let event = EventType::parse(raw.trim()).ok_or_else(|| {
                let all: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
                field_error(
                    "event",
                    format!(
                        "unknown event type {raw:?}; expected one of {}",
                        all.join(", ")
                    ),
                )
            })?;
            vec![event]
        }
    };
    Ok(NewSubscription {
        url: url.to_string(),
        event_types,
        format: Format::Standard,
        description: Some(ZAPIER_DESCRIPTION.into()),
        secret: None,
        rate_limit_per_second: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::openapi::property_names;
    use actix_web::http::StatusCode;
    use serde_json::json;

    fn parse(v: Value) -> Result<NewSubscription, ApiError> {
        parse_subscribe(v.as_object().expect("object").clone(), true)
    }

    fn refused_field(v: Value) -> String {
        let err = parse(v.clone()).expect_err("should be refused");
        assert_eq!(err.status, StatusCode::BAD_REQUEST, "{v}");
        err.details
    }

    #[test]
    fn the_documented_body_names_exactly_the_fields_the_parser_takes() {
        let mut fields: Vec<String> = SUBSCRIBE_FIELDS.iter().map(|f| f.to_string()).collect();
        fields.sort();
        assert_eq!(property_names::<ZapierSubscribeRequest>(), fields);
    }

    #[test]
    fn the_document_offers_both_create_bodies() {
        let doc = serde_json::to_value(crate::api::openapi_document()).unwrap();
        let body = &doc["paths"]["/v1/subscriptions"]["post"]["requestBody"]["content"]
            ["application/json"]["schema"];
        let schema = match body.get("$ref").and_then(Value::as_str) {
            Some(reference) => {
                let name = reference.rsplit('/').next().unwrap();
                doc["components"]["schemas"][name].clone()
            }
            None => body.clone(),
        };
        let text = schema.to_string();
        assert!(schema.get("oneOf").is_some(), "{schema:#}");
        assert!(text.contains("NewSubscriptionRequest"), "{schema:#}");
        assert!(text.contains("ZapierSubscribeRequest"), "{schema:#}");
        let sample = &doc["paths"]["/v1/events/sample"]["get"];
        assert!(sample.is_object(), "the sample route is documented");
        let created = &doc["components"]["schemas"]["SubscriptionView"]["properties"];
        assert!(
            created.get("rate_limit_per_second").is_some(),
            "{created:#}"
        );
    }

    #[test]
    fn a_zapier_body_is_told_apart_by_its_target_url() {
        let zapier = json!({"target_url": "https://hooks.zapier.com/x", "event": "agent.ready"});
        assert!(is_subscribe_body(zapier.as_object().unwrap()));
        let ours = json!({"url": "https://example.com/x"});
        assert!(!is_subscribe_body(ours.as_object().unwrap()));
    }

    #[test]
    fn a_subscribe_body_makes_a_standard_subscription_to_the_target_for_its_event() {
        let new = parse(json!({"target_url": "https://hooks.zapier.com/hooks/standard/1/abc/", "event": "agent.failed"})).unwrap();
        assert_eq!(new.url, "https://hooks.zapier.com/hooks/standard/1/abc/");
        assert_eq!(new.event_types, vec![EventType::AgentFailed]);
        assert_eq!(new.format, Format::Standard);
        assert_eq!(new.description.as_deref(), Some(ZAPIER_DESCRIPTION));
        assert_eq!(new.secret, None);

        let both =
            parse(json!({"target_url": "https://hooks.zapier.com/x", "event": null})).unwrap();
        assert_eq!(
            both.event_types,
            vec![EventType::AgentReady, EventType::AgentFailed]
        );
    }

    #[test]
    fn bad_subscribe_bodies_are_refused_naming_the_field() {
        for (body, field) in [
            (json!({"target_url": null}), "target_url"),
            (json!({"target_url": 5}), "target_url"),
            (json!({"target_url": "not a url"}), "target_url"),
            (json!({"target_url": "ftp://example.com/"}), "target_url"),
            (
                json!({"target_url": format!("https://example.com/{}", "a".repeat(TARGET_URL_MAX_LEN))}),
                "target_url",
            ),
            (
                json!({"target_url": "https://example.com/", "event": "agent.done"}),
                "event",
            ),
            (
                json!({"target_url": "https://example.com/", "event": ["agent.ready"]}),
                "event",
            ),
            (
                json!({"target_url": "https://example.com/", "url": "https://example.com/"}),
                "url",
            ),
            (
                json!({"target_url": "https://example.com/", "format": "slack"}),
                "format",
            ),
        ] {
            assert_eq!(refused_field(body.clone()), field, "{body}");
        }
        let private = json!({"target_url": "http://127.0.0.1:9/"});
        let err = parse_subscribe(private.as_object().unwrap().clone(), false).unwrap_err();
        assert_eq!(err.details, "target_url");
    }
}
