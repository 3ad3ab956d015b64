//! Sending deliveries again by hand: one delivery (`POST /v1/deliveries/{id}/retry`), or every
//! failed delivery of a subscription since a time (`recover`, after a receiver's outage).

use futures_util::StreamExt;

use crate::api::ApiError;
use crate::clock::Timestamp;
use crate::domain::{Delivery, DeliveryId, DeliveryState, Destination, Subscription, Tenant};
use crate::signals::Signals;
use crate::store::{DeliveryUpdate, Store};

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

/// A refusal because `sub` is disabled: nothing is sent to it until it is enabled again.
pub fn disabled(sub: &Subscription, message: &str) -> ApiError {
    ApiError::conflict(message.to_owned())
        .with_details(sub.disabled_reason.clone().unwrap_or_default())
}

/// Queue the tenant's delivery `id` (whatever its state) to be sent again now; durable when
/// this returns. Refused while its subscription is deleted or disabled.
pub async fn retry_delivery(
    store: &Store,
    signals: &Signals,
    tenant: &Tenant,
    id: &DeliveryId,
    now: Timestamp,
) -> Result<Delivery, ApiError> {
    let delivery = store
        .delivery(tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found("delivery"))?;
    let sub = match delivery.destination.subscription_id() {
        None => None,
        Some(sub_id) => {
            let sub = store.subscription(tenant, sub_id).await?.ok_or_else(|| {
                ApiError::conflict("the subscription of this delivery has been deleted")
                    .with_details(sub_id.to_string())
            })?;
            if !sub.enabled {
                return Err(disabled(
                    &sub,
                    "the subscription of this delivery is disabled; enable it (PATCH {\"enabled\": true}) before retrying",
                ));
            }
            Some(sub)
        }
    };
    let change = Box::new(move |d: &mut Delivery| {
        resend(d, sub.as_ref(), now);
        true
    });
    let updated = match store.update_delivery(tenant, &delivery.id, change).await? {
        DeliveryUpdate::Updated(d) => d,
        DeliveryUpdate::Unchanged(_) | DeliveryUpdate::NotFound => {
            return Err(ApiError::not_found("delivery"))
        }
    };
    signals.delivery_wake.notify_one();
    Ok(updated)
}

/// Deliveries a recover changes at once.
const RECOVER_AT_ONCE: usize = 64;

/// Queue again every failed delivery of `sub` created at or after `since`; durable when this
/// returns. How many were queued. Refused while `sub` is disabled.
pub async fn recover(
    store: &Store,
    signals: &Signals,
    sub: &Subscription,
    since: Timestamp,
    now: Timestamp,
) -> Result<usize, ApiError> {
    if !sub.enabled {
        return Err(disabled(
            sub,
            "the subscription is disabled; enable it (PATCH {\"enabled\": true}) before recovering its deliveries",
        ));
    }
    let failed: Vec<DeliveryId> = store
        .failed_deliveries_of_subscription(&sub.id)
        .await?
        .into_iter()
        .filter(|d| d.created_at >= since)
        .map(|d| d.id)
        .collect();
    // Many at once: their writes share the store's rounds (one commit for dozens) instead of
    // waiting for the disk one after another.
    let updates = futures_util::stream::iter(failed)
        .map(|id| {
            let owned = sub.clone();
            let change = Box::new(move |d: &mut Delivery| {
                if d.state != DeliveryState::Failed {
                    return false;
                }
                resend(d, Some(&owned), now);
                true
            });
            async move { store.update_delivery(&sub.tenant, &id, change).await }
        })
        .buffer_unordered(RECOVER_AT_ONCE)
        .collect::<Vec<_>>()
        .await;
    let mut recovered = 0usize;
    for update in updates {
        if matches!(update?, DeliveryUpdate::Updated(_)) {
            recovered += 1;
        }
    }
    if recovered > 0 {
        signals.delivery_wake.notify_one();
    }
    Ok(recovered)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::{Attempt, ErrorClass, Event, Format, SecretSet, SubscriptionId};

    /// A delivery to `destination` that failed its one attempt (a 500 answering "boom").
    pub(crate) fn failed_to(destination: Destination) -> Delivery {
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
}
