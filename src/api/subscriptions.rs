//! `/v1/subscriptions`: standing destinations of a tenant's events, their secrets, test events
//! and recovery after a receiver's outage.

use actix_web::{delete, get, patch, post, web, HttpRequest, HttpResponse};
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::body::{self, kind_of};
use super::deliveries::DeliveryDetail;
use super::request::{self, field_error, FieldError};
use super::{ApiError, AppState, ErrorBody};
use crate::clock::{after, Timestamp};
use crate::delivery::signature::{SigningSecret, SECRET_PREFIX};
use crate::domain::{EventType, Format, SecretSet, Subscription, SubscriptionId, Tenant};
use crate::service;
use crate::service::subscriptions;
pub use crate::service::subscriptions::DISABLED_BY_CLIENT;

/// Subscription bodies are small; this is far more than any honest one needs.
pub const BODY_LIMIT: usize = 64 * 1024;
const URL_MAX_LEN: usize = 2048;
const DESCRIPTION_MAX_CHARS: usize = 1024;
/// Decoded key sizes accepted for a chosen secret (as Svix does; generated ones are 32).
const SECRET_KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;
const DEFAULT_EVENT_TYPES: [EventType; 2] = [EventType::AgentReady, EventType::AgentFailed];

/// Field deserializers of the subscription bodies: the JSON value of a present field, checked
/// with the messages clients see (the type, the size, the known values). What needs the
/// settings (the network policy of a URL) is checked after, by `validate`.
mod de {
    use serde::de::Deserializer;

    use super::*;
    use crate::api::request::field;

    fn url_value<E: serde::de::Error>(value: Value) -> Result<Option<String>, E> {
        let raw = field::string("url", value)?;
        if raw.as_ref().is_some_and(|raw| raw.len() > URL_MAX_LEN) {
            return Err(
                FieldError::new("url", format!("url is longer than {URL_MAX_LEN} bytes"))
                    .into_serde(),
            );
        }
        Ok(raw)
    }

    pub fn url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        match url_value(field::value(d)?)? {
            Some(url) => Ok(Some(url)),
            None => Err(FieldError::new("url", "url is required").into_serde()),
        }
    }

    pub fn url_patch<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        field::not_null("url", url_value(field::value(d)?)?).map(Some)
    }

    pub fn event_types<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<EventType>>, D::Error> {
        const FIELD: &str = "event_types";
        let value = field::value(d)?;
        let items = match value {
            Value::Null => return Ok(None),
            Value::Array(items) => items,
            other => {
                return Err(
                    FieldError::wrong_type(FIELD, "an array of strings", &other).into_serde()
                )
            }
        };
        let mut types = Vec::new();
        for item in &items {
            let Value::String(raw) = item else {
                return Err(FieldError::wrong_type(FIELD, "an array of strings", item).into_serde());
            };
            let Some(known) = EventType::parse(raw) else {
                let all: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
                return Err(FieldError::new(
                    FIELD,
                    format!(
                        "unknown event type {raw:?}; expected any of {}",
                        all.join(", ")
                    ),
                )
                .into_serde());
            };
            if !types.contains(&known) {
                types.push(known);
            }
        }
        if types.is_empty() {
            return Err(
                FieldError::new(FIELD, "event_types must name at least one event type")
                    .into_serde(),
            );
        }
        Ok(Some(types))
    }

    pub fn event_types_patch<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<EventType>>, D::Error> {
        field::not_null("event_types", event_types(d)?).map(Some)
    }

    pub fn format<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Format>, D::Error> {
        let Some(raw) = field::string("format", field::value(d)?)? else {
            return Ok(None);
        };
        match raw.as_str() {
            "standard" => Ok(Some(Format::Standard)),
            "slack" => Ok(Some(Format::Slack)),
            "discord" => Ok(Some(Format::Discord)),
            other => Err(FieldError::new(
                "format",
                format!("format must be one of standard, slack, discord, not {other:?}"),
            )
            .into_serde()),
        }
    }

    pub fn format_patch<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Format>, D::Error> {
        field::not_null("format", format(d)?).map(Some)
    }

    /// A description, or `None` for null (which clears it).
    pub fn description<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        let text = field::string("description", field::value(d)?)?;
        if text
            .as_ref()
            .is_some_and(|t| t.chars().count() > DESCRIPTION_MAX_CHARS)
        {
            return Err(FieldError::new(
                "description",
                format!("description is longer than {DESCRIPTION_MAX_CHARS} characters"),
            )
            .into_serde());
        }
        Ok(text)
    }

    /// Present (`Some`): set to the description, or cleared by null.
    pub fn description_patch<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<String>>, D::Error> {
        description(d).map(Some)
    }

    /// Deliveries per second (1 to 1000), or `None` for null (no limit).
    pub fn rate_limit<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        crate::domain::parse_rate_limit_per_second(&field::value(d)?)
            .map_err(|message| FieldError::new("rate_limit_per_second", message).into_serde())
    }

    /// Present (`Some`): set to the limit, or removed by null.
    pub fn rate_limit_patch<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<u32>>, D::Error> {
        rate_limit(d).map(Some)
    }

    pub fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        match field::value(d)? {
            Value::Null => Ok(None),
            value => parse_secret(value)
                .map(Some)
                .map_err(FieldError::into_serde),
        }
    }

    pub fn enabled<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        field::not_null("enabled", field::boolean("enabled", field::value(d)?)?).map(Some)
    }

    pub fn since<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
        match field::value(d)? {
            Value::Null => Err(since_required().into_serde()),
            Value::String(raw) => chrono::DateTime::parse_from_rfc3339(raw.trim())
                .map(|t| Some(t.with_timezone(&chrono::Utc)))
                .map_err(|e| {
                    FieldError::new(
                        "since",
                        format!(
                            "since must be an RFC 3339 time such as 2026-11-28T16:00:00Z ({e})"
                        ),
                    )
                    .into_serde()
                }),
            other => {
                Err(FieldError::wrong_type("since", "an RFC 3339 string", &other).into_serde())
            }
        }
    }

    pub fn since_required() -> FieldError {
        FieldError::new(
            "since",
            "since is required: the RFC 3339 time from which failed deliveries are sent again",
        )
    }
}

/// The network policy's verdict on a URL the body gave.
fn check_url(raw: &str, allow_private: bool) -> Result<String, ApiError> {
    request::check_url("url", raw, allow_private)
}

const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A secret chosen by the client: `whsec_` + base64 of 24 to 64 bytes. The error never
/// repeats the secret.
pub fn parse_secret(value: Value) -> Result<String, FieldError> {
    let Value::String(raw) = &value else {
        return Err(FieldError::wrong_type("secret", "a string", &value));
    };
    let secret = raw.trim();
    let refuse = || {
        FieldError::new(
            "secret",
            format!(
                "secret must be {SECRET_PREFIX} followed by the base64 of {} to {} random bytes",
                SECRET_KEY_BYTES.start(),
                SECRET_KEY_BYTES.end()
            ),
        )
    };
    let encoded = secret.strip_prefix(SECRET_PREFIX).ok_or_else(refuse)?;
    let key = LENIENT_BASE64.decode(encoded).map_err(|_| refuse())?;
    if !SECRET_KEY_BYTES.contains(&key.len()) || SigningSecret::parse(secret).is_err() {
        return Err(refuse());
    }
    Ok(secret.to_owned())
}

/// The body of `POST /v1/subscriptions`.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct NewSubscriptionRequest {
    /// An absolute http/https URL that passes the network policy.
    #[serde(default, deserialize_with = "de::url")]
    #[schema(
        value_type = String,
        required = true,
        format = "uri",
        example = "https://example.com/hooks/agenthook"
    )]
    pub url: Option<String>,
    /// Default: `agent.ready` and `agent.failed`.
    #[serde(default, deserialize_with = "de::event_types")]
    pub event_types: Option<Vec<EventType>>,
    /// Default: `standard`.
    #[serde(default, deserialize_with = "de::format")]
    pub format: Option<Format>,
    #[serde(default, deserialize_with = "de::description")]
    #[schema(max_length = 1024)]
    pub description: Option<String>,
    /// `whsec_` + base64 of 24 to 64 random bytes; generated when absent.
    #[serde(default, deserialize_with = "de::secret")]
    #[schema(example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]
    pub secret: Option<String>,
    /// Deliveries per second to it at most (1 to 1000), evenly spaced; absent or null: no
    /// limit. Other destinations are never delayed by it.
    #[serde(default, deserialize_with = "de::rate_limit")]
    #[schema(minimum = 1, maximum = 1000)]
    pub rate_limit_per_second: Option<u32>,
}

impl NewSubscriptionRequest {
    /// Read from a JSON object; a field it does not have is refused, then a URL the network
    /// policy refuses, then any other field.
    pub fn from_object(body: Map<String, Value>, allow_private: bool) -> Result<Self, ApiError> {
        request::only_known_fields::<Self>(&body, "a subscription")?;
        if !body.contains_key("url") {
            return Err(field_error("url", "url is required"));
        }
        request::url_first(&body, "url", URL_MAX_LEN, allow_private)?;
        request::from_object(&body)
    }

    /// Check what needs the settings (the URL's network policy) and apply the defaults.
    pub fn validate(self, allow_private: bool) -> Result<NewSubscription, ApiError> {
        let Some(url) = self.url else {
            return Err(field_error("url", "url is required"));
        };
        Ok(NewSubscription {
            url: check_url(&url, allow_private)?,
            event_types: self
                .event_types
                .unwrap_or_else(|| DEFAULT_EVENT_TYPES.to_vec()),
            format: self.format.unwrap_or_default(),
            description: self.description,
            secret: self.secret,
            rate_limit_per_second: self.rate_limit_per_second,
        })
    }
}

/// The body of `PATCH /v1/subscriptions/{id}`: only the fields given change. The secret
/// changes only through `rotate-secret`.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct SubscriptionPatchRequest {
    #[serde(default, deserialize_with = "de::url_patch")]
    #[schema(format = "uri", nullable = false)]
    pub url: Option<String>,
    #[serde(default, deserialize_with = "de::event_types_patch")]
    #[schema(nullable = false)]
    pub event_types: Option<Vec<EventType>>,
    #[serde(default, deserialize_with = "de::format_patch")]
    #[schema(nullable = false)]
    pub format: Option<Format>,
    /// null clears it.
    #[serde(default, deserialize_with = "de::description_patch")]
    #[schema(value_type = Option<String>, max_length = 1024)]
    pub description: Option<Option<String>>,
    /// `true` re-enables a disabled subscription and clears the reason.
    #[serde(default, deserialize_with = "de::enabled")]
    #[schema(nullable = false)]
    pub enabled: Option<bool>,
    /// 1 to 1000 deliveries per second; null removes the limit.
    #[serde(default, deserialize_with = "de::rate_limit_patch")]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub rate_limit_per_second: Option<Option<u32>>,
}

impl SubscriptionPatchRequest {
    /// Read from a JSON object; a field it does not have is refused (the secret with a hint),
    /// then a URL the network policy refuses, then any other field.
    pub fn from_object(body: Map<String, Value>, allow_private: bool) -> Result<Self, ApiError> {
        if body.contains_key("secret") {
            return Err(field_error(
                "secret",
                "the secret is changed with POST /v1/subscriptions/{id}/rotate-secret, not PATCH",
            ));
        }
        request::only_known_fields::<Self>(&body, "PATCH of a subscription")?;
        request::url_first(&body, "url", URL_MAX_LEN, allow_private)?;
        request::from_object(&body)
    }

    /// Check what needs the settings (the URL's network policy).
    pub fn validate(self, allow_private: bool) -> Result<SubscriptionPatch, ApiError> {
        Ok(SubscriptionPatch {
            url: self
                .url
                .map(|url| check_url(&url, allow_private))
                .transpose()?,
            event_types: self.event_types,
            format: self.format,
            description: self.description,
            enabled: self.enabled,
            rate_limit_per_second: self.rate_limit_per_second,
        })
    }
}

/// The optional body of a rotation: nothing for a generated secret, or a chosen one.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct RotateSecretRequest {
    /// `whsec_` + base64 of 24 to 64 random bytes; generated when absent.
    #[serde(default, deserialize_with = "de::secret")]
    pub secret: Option<String>,
}

/// The body of `recover`.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct RecoverRequest {
    /// Failed deliveries created at or after this time are sent again.
    #[serde(default, deserialize_with = "de::since")]
    #[schema(value_type = DateTime<Utc>, required = true)]
    pub since: Option<Timestamp>,
}

/// The body of `POST /v1/subscriptions`, validated.
#[derive(Debug)]
pub struct NewSubscription {
    pub url: String,
    pub event_types: Vec<EventType>,
    pub format: Format,
    pub description: Option<String>,
    pub secret: Option<String>,
    pub rate_limit_per_second: Option<u32>,
}

impl NewSubscription {
    /// Read and validate the body of `POST /v1/subscriptions`.
    pub fn parse(body: Map<String, Value>, allow_private: bool) -> Result<Self, ApiError> {
        NewSubscriptionRequest::from_object(body, allow_private)?.validate(allow_private)
    }

    pub fn into_subscription(self, tenant: Tenant, now: Timestamp) -> Subscription {
        Subscription {
            id: SubscriptionId::generate(),
            tenant,
            url: self.url,
            event_types: self.event_types,
            format: self.format,
            description: self.description,
            enabled: true,
            disabled_reason: None,
            secrets: SecretSet::new(self.secret.unwrap_or_else(SigningSecret::generate)),
            failing_since: None,
            rate_limit_per_second: self.rate_limit_per_second,
            created_at: now,
            updated_at: now,
        }
    }
}

/// The body of `PATCH /v1/subscriptions/{id}`, validated: only the fields given change.
#[derive(Debug, Default)]
pub struct SubscriptionPatch {
    pub url: Option<String>,
    pub event_types: Option<Vec<EventType>>,
    pub format: Option<Format>,
    /// `Some(None)` clears the description.
    pub description: Option<Option<String>>,
    pub enabled: Option<bool>,
    /// `Some(None)` removes the limit.
    pub rate_limit_per_second: Option<Option<u32>>,
}

impl SubscriptionPatch {
    /// Read and validate the body of `PATCH /v1/subscriptions/{id}`.
    pub fn parse(body: Map<String, Value>, allow_private: bool) -> Result<Self, ApiError> {
        SubscriptionPatchRequest::from_object(body, allow_private)?.validate(allow_private)
    }

    pub fn apply(&self, sub: &mut Subscription, now: Timestamp) {
        if let Some(url) = &self.url {
            sub.url = url.clone();
        }
        if let Some(types) = &self.event_types {
            sub.event_types = types.clone();
        }
        if let Some(format) = self.format {
            sub.format = format;
        }
        if let Some(description) = &self.description {
            sub.description = description.clone();
        }
        if let Some(limit) = self.rate_limit_per_second {
            sub.rate_limit_per_second = limit;
        }
        match self.enabled {
            Some(true) => {
                sub.enabled = true;
                sub.disabled_reason = None;
                sub.failing_since = None;
            }
            Some(false) if sub.enabled => {
                sub.enabled = false;
                sub.disabled_reason = Some(DISABLED_BY_CLIENT.into());
            }
            _ => {}
        }
        sub.updated_at = now;
    }
}

/// A subscription as its owner sees it, secret included (as Svix shows it).
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionView {
    pub id: SubscriptionId,
    pub url: String,
    pub event_types: Vec<EventType>,
    pub format: Format,
    pub description: Option<String>,
    pub enabled: bool,
    /// Why it is disabled (a `410 Gone`, failing for days, or the API); null when enabled.
    pub disabled_reason: Option<String>,
    /// The secret that signs its events (`whsec_...`).
    pub secret: String,
    /// Deliveries per second to it at most; null: no limit.
    pub rate_limit_per_second: Option<u32>,
    /// When the secret replaced by the last rotation stops signing; null outside an overlap.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A tenant's subscriptions.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionList {
    pub data: Vec<SubscriptionView>,
}

/// A signing secret after a read or a rotation.
#[derive(Debug, Serialize, ToSchema)]
pub struct SecretView {
    /// The secret that signs from now on (`whsec_...`).
    pub secret: String,
    /// When the secret replaced by the last rotation stops signing beside it; null outside an
    /// overlap.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
}

impl SecretView {
    pub fn of(secrets: &SecretSet, now: Timestamp) -> SecretView {
        SecretView {
            secret: secrets.current.clone(),
            previous_secret_expires_at: overlap_ends(secrets, now),
        }
    }
}

/// How many failed deliveries were queued again.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecoverResult {
    pub recovered: usize,
}

/// When the previous secret of `secrets` stops signing, if it still signs at `now`.
pub fn overlap_ends(secrets: &SecretSet, now: Timestamp) -> Option<Timestamp> {
    secrets
        .previous
        .as_ref()
        .map(|p| p.expires_at)
        .filter(|at| *at > now)
}

impl SubscriptionView {
    pub fn of(sub: &Subscription, now: Timestamp) -> SubscriptionView {
        SubscriptionView {
            id: sub.id.clone(),
            url: sub.url.clone(),
            event_types: sub.event_types.clone(),
            format: sub.format,
            description: sub.description.clone(),
            enabled: sub.enabled,
            disabled_reason: sub.disabled_reason.clone(),
            secret: sub.secrets.current.clone(),
            rate_limit_per_second: sub.rate_limit_per_second,
            previous_secret_expires_at: overlap_ends(&sub.secrets, now),
            created_at: sub.created_at,
            updated_at: sub.updated_at,
        }
    }
}

/// A JSON object body that may also be absent (empty).
pub async fn optional_object(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<Map<String, Value>, ApiError> {
    let bytes = body::read_limited(req, payload, limit).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match body::parse_json(&bytes)? {
        Value::Object(map) => Ok(map),
        other => Err(ApiError::bad_request(format!(
            "request body must be a JSON object, not {}",
            kind_of(&other)
        ))),
    }
}

/// The body of a rotation: nothing, or `{"secret": "whsec_..."}` to set a chosen one.
pub fn parse_rotation(body: Map<String, Value>) -> Result<String, ApiError> {
    request::only_known_fields::<RotateSecretRequest>(&body, "a rotation")?;
    let rotation: RotateSecretRequest = request::from_object(&body)?;
    Ok(rotation.secret.unwrap_or_else(SigningSecret::generate))
}

fn body_limit(state: &AppState) -> usize {
    BODY_LIMIT.min(state.settings.server.max_body_bytes)
}

fn parse_id(raw: &str) -> Result<SubscriptionId, ApiError> {
    SubscriptionId::parse(raw).ok_or_else(|| ApiError::not_found("subscription"))
}

/// The tenant's subscription `raw`, or a 404.
async fn find(state: &AppState, tenant: &Tenant, raw: &str) -> Result<Subscription, ApiError> {
    let id = parse_id(raw)?;
    state
        .store
        .subscription(tenant, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("subscription"))
}

/// Subscribe to events
#[utoipa::path(
    tag = "subscriptions",
    operation_id = "create_subscription",
    request_body = super::zapier::CreateSubscriptionBody,
    responses(
        (status = 201, description = "Created, enabled, with its secret", body = SubscriptionView),
        (status = 400, description = "Malformed body or a field refused (named in `details`)", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_secret" = [])),
)]
#[post("/subscriptions")]
pub async fn create(
    req: HttpRequest,
    payload: web::Payload,
    tenant: Tenant,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = body::json_object(&req, payload, body_limit(&state)).await?;
    let allow_private = state.settings.delivery.allow_private_networks;
    // Zapier's REST Hook subscribe body, `{"target_url", "event"}` (see zapier.rs).
    let new = if super::zapier::is_subscribe_body(&body) {
        super::zapier::parse_subscribe(body, allow_private)?
    } else {
        NewSubscription::parse(body, allow_private)?
    };
    let now = state.clock.now();
    let sub = new.into_subscription(tenant, now);
    subscriptions::create(&state.store, &sub).await?;
    Ok(HttpResponse::Created().json(SubscriptionView::of(&sub, now)))
}

/// The tenant's subscriptions
#[utoipa::path(
    tag = "subscriptions",
    operation_id = "list_subscriptions",
    responses(
        (status = 200, description = "Every subscription of the tenant", body = SubscriptionList),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_secret" = [])),
)]
#[get("/subscriptions")]
pub async fn list(tenant: Tenant, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let now = state.clock.now();
    let data: Vec<SubscriptionView> = state
        .store
        .list_subscriptions(&tenant)
        .await?
        .iter()
        .map(|s| SubscriptionView::of(s, now))
        .collect();
    Ok(HttpResponse::Ok().json(SubscriptionList { data }))
}

/// One subscription
#[utoipa::path(
    tag = "subscriptions",
    operation_id = "get_subscription",
    params(("id" = String, Path, description = "Subscription id (`sub_...`)")),
    responses(
        (status = 200, description = "The subscription", body = SubscriptionView),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "No such subscription for this tenant", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_secret" = [])),
)]
#[get("/subscriptions/{id}")]
pub async fn get(
    path: web::Path<String>,
    tenant: Tenant,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let sub = find(&state, &tenant, &path).await?;
    Ok(HttpResponse::Ok().json(SubscriptionView::of(&sub, state.clock.now())))
}

/// Change a subscription
#[utoipa::path(
    tag = "subscriptions",
    operation_id = "update_subscription",
    params(("id" = String, Path, description = "Subscription id (`sub_...`)")),
    request_body = SubscriptionPatchRequest,
    responses(
        (status = 200, description = "The changed subscription", body = SubscriptionView),
        (status = 400, description = "Malformed body or a field refused (named in `details`)", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "No such subscription for this tenant", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_secret" = [])),
)]
#[patch("/subscriptions/{id}")]
pub async fn patch(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    tenant: Tenant,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let existing = find(&state, &tenant, &path).await?;
    let body = body::json_object(&req, payload, body_limit(&state)).await?;
    let patch = SubscriptionPatch::parse(body, state.settings.delivery.allow_private_networks)?;
    let now = state.clock.now();
    let sub = subscriptions::update(&state.store, &tenant, &existing.id, move |s| {
        patch.apply(s, now)
    })
    .await?
    .ok_or_else(|| ApiError::not_found("subscription"))?;
    Ok(HttpResponse::Ok().json(SubscriptionView::of(&sub, now)))
}

/// Delete a subscription
#[utoipa::path(
    tag = "subscriptions",
    operation_id = "delete_subscription",
    params(("id" = String, Path, description = "Subscription id (`sub_...`)")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "No such subscription for this tenant", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_secret" = [])),
)]
#[delete("/subscriptions/{id}")]
pub async fn delete(
    path: web::Path<String>,
    tenant: Tenant,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    if !subscriptions::delete(&state.store, &tenant, &id).await? {
        return Err(ApiError::not_found("subscription"));
    }
    Ok(HttpResponse::NoContent().finish())
}

/// Rotate a subscription's secret
///
/// The old secret keeps signing beside the new one for the overlap (24 h by default).
#[utoipa::path(
    tag = "subscriptions",
    operation_id = "rotate_subscription_secret",
    params(("id" = String, Path, description = "Subscription id (`sub_...`)")),
    request_body(content = Option<RotateSecretRequest>, description = "Optional: a chosen secret"),
    responses(
        (status = 200, description = "The new secret", body = SecretView),
        (status = 400, description = "Malformed body, or a secret refused or unchanged", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "No such subscription for this tenant", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_secret" = [])),
)]
#[post("/subscriptions/{id}/rotate-secret")]
pub async fn rotate_secret(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    tenant: Tenant,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let existing = find(&state, &tenant, &path).await?;
    let body = optional_object(&req, payload, body_limit(&state)).await?;
    let secret = parse_rotation(body)?;
    let now = state.clock.now();
    let until = after(now, state.settings.delivery.secret_overlap);
    let sub = subscriptions::rotate_secret(&state.store, &existing, secret, until, now).await?;
    Ok(HttpResponse::Ok().json(SecretView::of(&sub.secrets, now)))
}

/// Send a test event
///
/// Queues a `webhook.test` event to the subscription, whatever its event types.
#[utoipa::path(
    tag = "subscriptions",
    operation_id = "test_subscription",
    params(("id" = String, Path, description = "Subscription id (`sub_...`)")),
    responses(
        (status = 202, description = "The queued delivery", body = DeliveryDetail),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "No such subscription for this tenant", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_secret" = [])),
)]
#[post("/subscriptions/{id}/test")]
pub async fn test(
    path: web::Path<String>,
    tenant: Tenant,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let sub = find(&state, &tenant, &path).await?;
    let delivery =
        subscriptions::send_test_event(&state.store, &state.signals, &sub, state.clock.now())
            .await?;
    Ok(HttpResponse::Accepted().json(DeliveryDetail::of(&delivery)))
}

/// `{"since": "RFC 3339"}`.
pub fn parse_recover(body: Map<String, Value>) -> Result<Timestamp, ApiError> {
    request::only_known_fields::<RecoverRequest>(&body, "recover")?;
    let body: RecoverRequest = request::from_object(&body)?;
    body.since.ok_or_else(|| de::since_required().into())
}

/// Send failed deliveries again
///
/// Every failed delivery of the subscription created since `since` is queued again (after an
/// outage on the receiver's side).
#[utoipa::path(
    tag = "subscriptions",
    operation_id = "recover_subscription",
    params(("id" = String, Path, description = "Subscription id (`sub_...`)")),
    request_body = RecoverRequest,
    responses(
        (status = 202, description = "How many deliveries were queued", body = RecoverResult),
        (status = 400, description = "Malformed body or a bad `since`", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "No such subscription for this tenant", body = ErrorBody),
        (status = 409, description = "The subscription is disabled", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_secret" = [])),
)]
#[post("/subscriptions/{id}/recover")]
pub async fn recover(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    tenant: Tenant,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let sub = find(&state, &tenant, &path).await?;
    let body = body::json_object(&req, payload, body_limit(&state)).await?;
    let since = parse_recover(body)?;
    let recovered =
        service::resend::recover(&state.store, &state.signals, &sub, since, state.clock.now())
            .await?;
    Ok(HttpResponse::Accepted().json(RecoverResult { recovered }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::openapi::property_names;
    use actix_web::http::StatusCode;
    use serde_json::json;

    #[test]
    fn the_documented_bodies_name_exactly_the_fields_the_parsers_take() {
        fn check<T: ToSchema + for<'de> Deserialize<'de>>(fields: &[&str]) {
            let mut expected: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
            assert_eq!(request::fields_of::<T>(), fields, "read in this order");
            expected.sort();
            assert_eq!(property_names::<T>(), expected, "documented");
        }
        check::<NewSubscriptionRequest>(&[
            "url",
            "event_types",
            "format",
            "description",
            "secret",
            "rate_limit_per_second",
        ]);
        check::<SubscriptionPatchRequest>(&[
            "url",
            "event_types",
            "format",
            "description",
            "enabled",
            "rate_limit_per_second",
        ]);
        check::<RotateSecretRequest>(&["secret"]);
        check::<RecoverRequest>(&["since"]);
    }

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn object(v: Value) -> Map<String, Value> {
        v.as_object().expect("an object").clone()
    }

    fn create(v: Value) -> Result<NewSubscription, ApiError> {
        NewSubscription::parse(object(v), true)
    }

    fn patch(v: Value) -> Result<SubscriptionPatch, ApiError> {
        SubscriptionPatch::parse(object(v), true)
    }

    fn refused_field(result: Result<impl std::fmt::Debug, ApiError>) -> String {
        let err = result.expect_err("should be refused");
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert_eq!(err.code, "BAD_REQUEST");
        err.details
    }

    #[test]
    fn only_the_url_is_required_and_the_rest_has_defaults() {
        let new = create(json!({"url": "https://example.com/hook"})).unwrap();
        assert_eq!(new.url, "https://example.com/hook");
        assert_eq!(new.event_types, DEFAULT_EVENT_TYPES.to_vec());
        assert_eq!(new.format, Format::Standard);
        assert_eq!(new.description, None);
        assert_eq!(new.secret, None);
        let sub = new.into_subscription(Tenant::parse("acme").unwrap(), chrono::Utc::now());
        assert!(sub.enabled);
        assert!(sub.secrets.current.starts_with(SECRET_PREFIX));
        assert!(SigningSecret::parse(&sub.secrets.current).is_ok());
    }

    #[test]
    fn every_field_is_taken_when_given() {
        let new = create(json!({
            "url": "http://127.0.0.1:9/slack", "event_types": ["agent.failed", "agent.failed"],
            "format": "slack", "description": "ops channel", "secret": SECRET
        }))
        .unwrap();
        assert_eq!(new.event_types, vec![EventType::AgentFailed]);
        assert_eq!(new.format, Format::Slack);
        assert_eq!(new.description.as_deref(), Some("ops channel"));
        assert_eq!(new.secret.as_deref(), Some(SECRET));
        let sub = new.into_subscription(Tenant::parse("acme").unwrap(), chrono::Utc::now());
        assert_eq!(sub.secrets.current, SECRET);
    }

    #[test]
    fn bad_create_bodies_are_refused_naming_the_field() {
        for (body, field) in [
            (json!({}), "url"),
            (json!({"url": null}), "url"),
            (json!({"url": 5}), "url"),
            (json!({"url": "not a url"}), "url"),
            (json!({"url": "/relative"}), "url"),
            (json!({"url": "ftp://example.com/"}), "url"),
            (json!({"url": "https://user:pw@example.com/"}), "url"),
            (
                json!({"url": format!("https://example.com/{}", "a".repeat(URL_MAX_LEN))}),
                "url",
            ),
            (
                json!({"url": "https://example.com", "event_types": "agent.ready"}),
                "event_types",
            ),
            (
                json!({"url": "https://example.com", "event_types": []}),
                "event_types",
            ),
            (
                json!({"url": "https://example.com", "event_types": ["agent.done"]}),
                "event_types",
            ),
            (
                json!({"url": "https://example.com", "event_types": [1]}),
                "event_types",
            ),
            (
                json!({"url": "https://example.com", "format": "teams"}),
                "format",
            ),
            (json!({"url": "https://example.com", "format": 1}), "format"),
            (
                json!({"url": "https://example.com", "description": 1}),
                "description",
            ),
            (
                json!({"url": "https://example.com", "description": "d".repeat(DESCRIPTION_MAX_CHARS + 1)}),
                "description",
            ),
            (
                json!({"url": "https://example.com", "secret": "hunter2"}),
                "secret",
            ),
            (
                json!({"url": "https://example.com", "secret": "whsec_!!!"}),
                "secret",
            ),
            (
                json!({"url": "https://example.com", "secret": "whsec_c2hvcnQ="}),
                "secret",
            ),
            (
                json!({"url": "https://example.com", "secret": "whsec_"}),
                "secret",
            ),
            (
                json!({"url": "https://example.com", "secret": 42}),
                "secret",
            ),
            (
                json!({"url": "https://example.com", "enabled": false}),
                "enabled",
            ),
            (json!({"url": "https://example.com", "urls": []}), "urls"),
        ] {
            assert_eq!(refused_field(create(body.clone())), field, "{body}");
        }
    }

    #[test]
    fn the_url_is_judged_before_any_other_field_as_the_hand_written_parser_did() {
        let err = create(json!({"event_types": []})).unwrap_err();
        assert_eq!(
            (err.details.as_str(), err.message.as_str()),
            ("url", "url is required")
        );
        for body in [
            json!({"url": "http://127.0.0.1/x", "format": 1, "event_types": 1}),
            json!({"url": "http://127.0.0.1/x", "description": ["x"]}),
        ] {
            let err = NewSubscription::parse(object(body.clone()), false).unwrap_err();
            assert_eq!(err.details, "url", "{body}");
            assert!(err.message.starts_with("url is not acceptable: "), "{body}");
            let err = SubscriptionPatch::parse(object(body.clone()), false).unwrap_err();
            assert_eq!(err.details, "url", "{body}");
        }
        // Then the others in their order, whatever the body's order.
        let err =
            create(json!({"url": "https://example.com", "secret": 1, "format": 1})).unwrap_err();
        assert_eq!(err.details, "format");
        assert_eq!(err.message, "format must be a string, not a number");
    }

    #[test]
    fn a_refused_secret_is_never_echoed() {
        let err =
            create(json!({"url": "https://example.com", "secret": "whsec_c2hvcnQ="})).unwrap_err();
        assert!(!err.message.contains("c2hvcnQ"));
        assert!(!err.details.contains("c2hvcnQ"));
    }

    #[test]
    fn secrets_of_24_to_64_bytes_are_accepted_padded_or_not() {
        use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
        for n in [24, 32, 64] {
            let key = vec![7u8; n];
            for secret in [
                format!("whsec_{}", STANDARD.encode(&key)),
                format!("whsec_{}", STANDARD_NO_PAD.encode(&key)),
            ] {
                assert_eq!(parse_secret(json!(secret)).ok().unwrap(), secret);
            }
        }
        for n in [23, 65] {
            let secret = format!("whsec_{}", STANDARD.encode(vec![7u8; n]));
            assert!(parse_secret(json!(secret)).is_err(), "{n} bytes");
        }
    }

    #[test]
    fn private_urls_are_refused_unless_allowed() {
        let body = object(json!({"url": "http://127.0.0.1:9/hook"}));
        let err = NewSubscription::parse(body.clone(), false).unwrap_err();
        assert_eq!(err.details, "url");
        assert!(NewSubscription::parse(body, true).is_ok());
        let err = SubscriptionPatch::parse(object(json!({"url": "http://10.0.0.1/"})), false)
            .unwrap_err();
        assert_eq!(err.details, "url");
    }

    fn subscription() -> Subscription {
        create(json!({"url": "https://example.com/hook", "description": "old"}))
            .unwrap()
            .into_subscription(Tenant::parse("acme").unwrap(), chrono::Utc::now())
    }

    #[test]
    fn a_patch_changes_only_what_it_names() {
        let mut sub = subscription();
        let before = sub.clone();
        let later = before.updated_at + chrono::Duration::seconds(5);
        patch(json!({"format": "discord"}))
            .unwrap()
            .apply(&mut sub, later);
        assert_eq!(sub.format, Format::Discord);
        assert_eq!(sub.url, before.url);
        assert_eq!(sub.event_types, before.event_types);
        assert_eq!(sub.description.as_deref(), Some("old"));
        assert_eq!(sub.secrets.current, before.secrets.current);
        assert_eq!(sub.updated_at, later);

        patch(json!({"description": null, "url": "https://example.org/new", "event_types": ["agent.ready"]}))
            .unwrap()
            .apply(&mut sub, later);
        assert_eq!(sub.description, None);
        assert_eq!(sub.url, "https://example.org/new");
        assert_eq!(sub.event_types, vec![EventType::AgentReady]);
    }

    #[test]
    fn enabling_clears_the_reason_and_the_failing_run() {
        let mut sub = subscription();
        let now = sub.created_at;
        patch(json!({"enabled": false}))
            .unwrap()
            .apply(&mut sub, now);
        assert!(!sub.enabled);
        assert_eq!(sub.disabled_reason.as_deref(), Some(DISABLED_BY_CLIENT));

        sub.disabled_reason = Some("the receiver answered 410 Gone".into());
        sub.failing_since = Some(now);
        patch(json!({"enabled": false}))
            .unwrap()
            .apply(&mut sub, now);
        assert_eq!(
            sub.disabled_reason.as_deref(),
            Some("the receiver answered 410 Gone"),
            "disabling again keeps the first reason"
        );

        patch(json!({"enabled": true}))
            .unwrap()
            .apply(&mut sub, now);
        assert!(sub.enabled);
        assert_eq!(sub.disabled_reason, None);
        assert_eq!(sub.failing_since, None);
    }

    #[test]
    fn bad_patches_are_refused_naming_the_field() {
        for (body, field) in [
            (json!({"secret": SECRET}), "secret"),
            (json!({"url": null}), "url"),
            (json!({"url": "nope"}), "url"),
            (json!({"event_types": null}), "event_types"),
            (json!({"event_types": ["agent.*"]}), "event_types"),
            (json!({"format": null}), "format"),
            (json!({"format": "xml"}), "format"),
            (json!({"enabled": null}), "enabled"),
            (json!({"enabled": "true"}), "enabled"),
            (json!({"description": ["x"]}), "description"),
            (json!({"id": "sub_x"}), "id"),
            (json!({"tenant": "globex"}), "tenant"),
        ] {
            assert_eq!(refused_field(patch(body.clone())), field, "{body}");
        }
        assert!(patch(json!({})).is_ok());
    }

    #[test]
    fn a_rotation_takes_nothing_or_a_valid_secret() {
        assert!(parse_rotation(Map::new())
            .unwrap()
            .starts_with(SECRET_PREFIX));
        assert!(parse_rotation(object(json!({"secret": null}))).is_ok());
        assert_eq!(
            parse_rotation(object(json!({"secret": SECRET}))).unwrap(),
            SECRET
        );
        assert_eq!(
            refused_field(parse_rotation(object(json!({"secret": "whsec_x"})))),
            "secret"
        );
        assert_eq!(
            refused_field(parse_rotation(object(json!({"overlap": "1h"})))),
            "overlap"
        );
    }

    #[test]
    fn recover_needs_an_rfc_3339_since() {
        let since = parse_recover(object(json!({"since": "2026-11-28T16:00:00+01:00"}))).unwrap();
        assert_eq!(since.to_rfc3339(), "2026-11-28T15:00:00+00:00");
        for body in [
            json!({}),
            json!({"since": null}),
            json!({"since": 1700000000}),
            json!({"since": "yesterday"}),
            json!({"since": "2026-11-28"}),
        ] {
            assert_eq!(refused_field(parse_recover(object(body))), "since");
        }
        assert_eq!(
            refused_field(parse_recover(object(
                json!({"since": "2026-11-28T16:00:00Z", "until": "x"})
            ))),
            "until"
        );
    }

    #[test]
    fn the_view_shows_the_previous_secret_only_during_its_overlap() {
        let mut sub = subscription();
        let now = sub.created_at;
        assert_eq!(
            SubscriptionView::of(&sub, now).previous_secret_expires_at,
            None
        );
        let until = now + chrono::Duration::hours(24);
        sub.secrets.rotate(SECRET.into(), until);
        let view = SubscriptionView::of(&sub, now);
        assert_eq!(view.secret, SECRET);
        assert_eq!(view.previous_secret_expires_at, Some(until));
        assert_eq!(
            SubscriptionView::of(&sub, until).previous_secret_expires_at,
            None
        );
        let shown = serde_json::to_value(&view).unwrap();
        assert!(shown.get("tenant").is_none());
        assert!(shown.get("secrets").is_none());
    }
}
