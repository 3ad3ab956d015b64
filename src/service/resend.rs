//! Sending deliveries again by hand: one delivery (`POST /v1/deliveries/{id}/retry`), or every
//! failed delivery of a subscription since a time (`recover`, after a receiver's outage).

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
        .delivery(tenant, id)?
        .ok_or_else(|| ApiError::not_found("delivery"))?;
    let sub = match delivery.destination.subscription_id() {
        None => None,
        Some(sub_id) => {
            let sub = store.subscription(tenant, sub_id)?.ok_or_else(|| {
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
    let updated = match store.update_delivery(tenant, &delivery.id, |d| {
        resend(d, sub.as_ref(), now);
        true
    })? {
        DeliveryUpdate::Updated(d) => d,
        DeliveryUpdate::Unchanged(_) | DeliveryUpdate::NotFound => {
            return Err(ApiError::not_found("delivery"))
        }
    };
    store.durable().await?;
    signals.delivery_wake.notify_one();
    Ok(updated)
}

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
    let mut recovered = 0usize;
    for delivery in store.deliveries_of_subscription(&sub.id)? {
        if delivery.state != DeliveryState::Failed || delivery.created_at < since {
            continue;
        }
        let update = store.update_delivery(&sub.tenant, &delivery.id, |d| {
            if d.state != DeliveryState::Failed {
                return false;
            }
            resend(d, Some(sub), now);
            true
        })?;
        if matches!(update, DeliveryUpdate::Updated(_)) {
            recovered += 1;
        }
    }
    if recovered > 0 {
        store.durable().await?;
        signals.delivery_wake.notify_one();
    }
    Ok(recovered)
}
