//! `/v1/deliveries`: every event sent to every destination, its attempts, and manual retries.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::Value;

use super::jobs::page_limit;
use super::{ApiError, AppState};
use crate::clock::Timestamp;
use crate::domain::{Delivery, DeliveryId, DeliveryState, Destination, Subscription, Tenant};
use crate::store::DeliveryUpdate;

/// A delivery as the API lists it.
pub fn delivery_view(d: &Delivery) -> Value {
    serde_json::json!({
        "id": d.id,
        "event_id": d.event_id,
        "event_type": d.event_type,
        "job_id": d.job_id,
        "webhook_id": d.message_id,
        "destination": d.destination,
        "state": d.state,
        "attempts": d.attempts,
        "next_attempt_at": d.next_attempt_at,
        "created_at": d.created_at,
        "updated_at": d.updated_at,
    })
}

/// One delivery as the API shows it alone: the list view and the event body it carries.
pub fn delivery_detail(d: &Delivery) -> Value {
    let mut view = delivery_view(d);
    view["payload"] = d.payload.clone();
    view
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    state: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

pub async fn list(
    query: web::Query<ListQuery>,
    tenant: Tenant,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let wanted = query
        .state
        .as_deref()
        .map(|s| {
            DeliveryState::parse(s).ok_or_else(|| {
                ApiError::bad_request("state must be one of pending, succeeded, failed")
                    .with_details("state")
            })
        })
        .transpose()?;
    let limit = page_limit(query.limit)?;
    let after = query
        .after
        .as_deref()
        .map(|a| {
            DeliveryId::parse(a).ok_or_else(|| {
                ApiError::bad_request("after must be a delivery id").with_details("after")
            })
        })
        .transpose()?;
    let page = state
        .store
        .list_deliveries(&tenant, wanted, after.as_ref(), limit)?;
    let data: Vec<Value> = page.deliveries.iter().map(delivery_view).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "data": data, "next": page.next })))
}

pub async fn get(
    path: web::Path<String>,
    tenant: Tenant,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let delivery = find(&state, &tenant, &path)?;
    Ok(HttpResponse::Ok().json(delivery_detail(&delivery)))
}

/// Send again now, whatever the state (a succeeded delivery is sent again too).
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
    Ok(HttpResponse::Accepted().json(delivery_detail(&updated)))
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
        let list = delivery_view(&d);
        let detail = delivery_detail(&d);
        assert!(list.get("payload").is_none());
        assert_eq!(detail["payload"]["type"], "webhook.test");
        assert_eq!(detail["webhook_id"], d.message_id.as_str());
        assert_eq!(detail["attempts"][0]["error"], "http");
        assert_eq!(detail["attempts"][0]["response_body"], "boom");
        assert!(detail.get("tenant").is_none());
    }
}
