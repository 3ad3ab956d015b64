//! `/v1/deliveries`: every event sent to every destination, its attempts, and manual retries.

use actix_web::{get, post, web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::jobs::{page_limit, query_param};
use super::{ApiError, AppState, ErrorBody};
use crate::clock::Timestamp;
use crate::domain::{
    Attempt, Delivery, DeliveryId, DeliveryState, Destination, EventId, EventType, JobId,
    MessageId, Subscription, Tenant,
};
use crate::store::DeliveryUpdate;

/// A delivery as the API lists it: one event to one destination, and its attempts.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    pub id: DeliveryId,
    pub event_id: EventId,
    pub event_type: EventType,
    /// The job whose event this is; null for `webhook.test`.
    pub job_id: Option<JobId>,
    /// The Standard Webhooks `webhook-id`, the same on every attempt.
    pub webhook_id: MessageId,
    pub destination: Destination,
    pub state: DeliveryState,
    pub attempts: Vec<Attempt>,
    /// When the next attempt is due; null once succeeded or failed.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl DeliveryView {
    pub fn of(d: &Delivery) -> DeliveryView {
        DeliveryView {
            id: d.id.clone(),
            event_id: d.event_id.clone(),
            event_type: d.event_type,
            job_id: d.job_id.clone(),
            webhook_id: d.message_id.clone(),
            destination: d.destination.clone(),
            state: d.state,
            attempts: d.attempts.clone(),
            next_attempt_at: d.next_attempt_at,
            created_at: d.created_at,
            updated_at: d.updated_at,
        }
    }
}

/// One delivery as the API shows it alone: the list view and the event body it carries.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryDetail {
    #[serde(flatten)]
    pub view: DeliveryView,
    /// The standard event body (`type`, `timestamp`, `data`); other formats are rendered from
    /// it at send time.
    pub payload: Value,
}

impl DeliveryDetail {
    pub fn of(d: &Delivery) -> DeliveryDetail {
        DeliveryDetail {
            view: DeliveryView::of(d),
            payload: d.payload.value().clone(),
        }
    }
}

/// Deliveries, all at once.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    pub data: Vec<DeliveryView>,
}

/// One page of deliveries, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryPage {
    pub data: Vec<DeliveryView>,
    /// Pass as `after` for the next page; null on the last one.
    pub next: Option<DeliveryId>,
}

/// Queue `d` to be sent again now, with the same `webhook-id` and its attempt log kept. A
/// delivery to a subscription goes where the subscription points now (its URL or format may
/// have been changed since, often as the fix for what made it fail).
pub fn resend(d: &mut Delivery, sub: Option<&Subscription>, now: Timestamp) {
    if let (Some(sub), Destination::Subscription { url, format, .. }) = (sub, &mut d.destination) {
        url.clone_from(&sub.url);
        *format = sub.format;
    }
    d.state = DeliveryState::Pending;
    d.next_attempt_at = Some(now);
    d.updated_at = now;
}

fn parse_id(raw: &str) -> Result<DeliveryId, ApiError> {
    DeliveryId::parse(raw).ok_or_else(|| ApiError::not_found("delivery"))
}

fn find(state: &AppState, tenant: &Tenant, raw: &str) -> Result<Delivery, ApiError> {
    let id = parse_id(raw)?;
    state
        .store
        .delivery(tenant, &id)?
        .ok_or_else(|| ApiError::not_found("delivery"))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only deliveries in this state (`failed`: the dead letters).
    #[param(value_type = Option<DeliveryState>)]
    state: Option<String>,
    /// Page size, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<usize>,
    /// The `next` of the previous page.
    #[param(value_type = Option<DeliveryId>)]
    after: Option<String>,
}

/// The tenant's deliveries
#[utoipa::path(
    tag = "deliveries",
    operation_id = "list_deliveries",
    params(ListQuery),
    responses(
        (status = 200, description = "One page of deliveries", body = DeliveryPage),
        (status = 400, description = "Bad query string", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_secret" = [])),
)]
#[get("/deliveries")]
pub async fn list(
    query: web::Query<ListQuery>,
    tenant: Tenant,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let wanted = query_param(
        query.state.as_deref(),
        DeliveryState::parse,
        "state",
        "one of pending, succeeded, failed",
    )?;
    let limit = page_limit(query.limit)?;
    let after = query_param(
        query.after.as_deref(),
        DeliveryId::parse,
        "after",
        "a delivery id",
    )?;
    let page = state
        .store
        .list_deliveries(&tenant, wanted, after.as_ref(), limit)?;
    Ok(HttpResponse::Ok().json(DeliveryPage {
        data: page.deliveries.iter().map(DeliveryView::of).collect(),
        next: page.next,
    }))
}

/// One delivery, with its attempts and payload
#[utoipa::path(
    tag = "deliveries",
    operation_id = "get_delivery",
    params(("id" = String, Path, description = "Delivery id (`dlv_...`)")),
    responses(
        (status = 200, description = "The delivery", body = DeliveryDetail),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "No such delivery for this tenant", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_secret" = [])),
)]
#[get("/deliveries/{id}")]
pub async fn get(
    path: web::Path<String>,
    tenant: Tenant,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let delivery = find(&state, &tenant, &path)?;
    Ok(HttpResponse::Ok().json(DeliveryDetail::of(&delivery)))
}

/// Send a delivery again now
///
/// Whatever its state (a succeeded delivery is sent again too), with the same `webhook-id`;
/// a subscription's delivery goes where the subscription points now.
#[utoipa::path(
    tag = "deliveries",
    operation_id = "retry_delivery",
    params(("id" = String, Path, description = "Delivery id (`dlv_...`)")),
    responses(
        (status = 202, description = "Queued to be sent now", body = DeliveryDetail),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "No such delivery for this tenant", body = ErrorBody),
        (status = 409, description = "Its subscription is deleted or disabled", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_secret" = [])),
)]
#[post("/deliveries/{id}/retry")]
pub async fn retry(
    path: web::Path<String>,
    tenant: Tenant,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let delivery = find(&state, &tenant, &path)?;
    let sub = match delivery.destination.subscription_id() {
        None => None,
        Some(id) => {
            let sub = state.store.subscription(&tenant, id)?.ok_or_else(|| {
                ApiError::conflict("the subscription of this delivery has been deleted")
                    .with_details(id.to_string())
            })?;
            if !sub.enabled {
                return Err(ApiError::conflict(
                    "the subscription of this delivery is disabled; enable it (PATCH {\"enabled\": true}) before retrying",
                )
                .with_details(sub.disabled_reason.clone().unwrap_or_default()));
            }
            Some(sub)
        }
    };
    let now = state.clock.now();
    let updated = match state.store.update_delivery(&tenant, &delivery.id, |d| {
        resend(d, sub.as_ref(), now);
        true
    })? {
        DeliveryUpdate::Updated(d) => d,
        DeliveryUpdate::Unchanged(_) | DeliveryUpdate::NotFound => {
            return Err(ApiError::not_found("delivery"))
        }
    };
    state.store.durable().await?;
    state.signals.delivery_wake.notify_one();
    Ok(HttpResponse::Accepted().json(DeliveryDetail::of(&updated)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Attempt, ErrorClass, Event, Format, SecretSet, SubscriptionId};

    fn failed_to(destination: Destination) -> Delivery {
        let now = chrono::Utc::now();
        let event = Event::test(Tenant::parse("acme").unwrap(), now);
        let mut d = Delivery::new(&event, None, destination, now);
        d.state = DeliveryState::Failed;
        d.next_attempt_at = None;
        d.attempts.push(Attempt {
            at: now,
            status_code: Some(500),
            error: Some(ErrorClass::Http),
            duration_ms: 3,
            response_body: Some("boom".into()),
        });
        d
    }

    #[test]
    fn resend_keeps_the_webhook_id_and_the_attempts() {
        let mut d = failed_to(Destination::Callback {
            url: "https://example.com/cb".into(),
        });
        let before = d.clone();
        let later = d.created_at + chrono::Duration::hours(1);
        resend(&mut d, None, later);
        assert_eq!(d.state, DeliveryState::Pending);
        assert_eq!(d.next_attempt_at, Some(later));
        assert_eq!(d.updated_at, later);
        assert_eq!(d.message_id, before.message_id);
        assert_eq!(d.attempts.len(), 1);
        assert_eq!(d.destination, before.destination);
    }

    #[test]
    fn resend_to_a_subscription_follows_its_current_url_and_format() {
        let now = chrono::Utc::now();
        let sub = Subscription {
            id: SubscriptionId::generate(),
            tenant: Tenant::parse("acme").unwrap(),
            url: "https://example.org/moved".into(),
            event_types: vec![],
            format: Format::Discord,
            description: None,
            enabled: true,
            disabled_reason: None,
            secrets: SecretSet::new("whsec_x".into()),
            failing_since: None,
            rate_limit_per_second: None,
            created_at: now,
            updated_at: now,
        };
        let mut d = failed_to(Destination::Subscription {
            subscription_id: sub.id.clone(),
            url: "https://example.com/old".into(),
            format: Format::Standard,
        });
        resend(&mut d, Some(&sub), now);
        assert_eq!(d.destination.url(), "https://example.org/moved");
        assert_eq!(d.destination.format(), Format::Discord);
        assert_eq!(d.destination.subscription_id(), Some(&sub.id));
    }

    #[test]
    fn the_detail_view_adds_the_payload_to_the_list_view() {
        let d = failed_to(Destination::Callback {
            url: "https://example.com/cb".into(),
        });
        let listed = serde_json::to_value(DeliveryView::of(&d)).unwrap();
        let detail = serde_json::to_value(DeliveryDetail::of(&d)).unwrap();
        assert!(listed.get("payload").is_none());
        assert_eq!(detail["payload"]["type"], "webhook.test");
        assert_eq!(detail["webhook_id"], d.message_id.as_str());
        assert_eq!(detail["attempts"][0]["error"], "http");
        assert_eq!(detail["attempts"][0]["response_body"], "boom");
        assert!(detail.get("tenant").is_none());
    }
}
