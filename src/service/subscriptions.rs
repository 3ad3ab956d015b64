//! Subscriptions and signing secrets: their changes, each durable when it returns, test
//! events, and their health: a receiver that answers `410 Gone`, or fails every delivery for
//! longer than `delivery.disable_after`, gets its subscription disabled; any success clears
//! the failing run.

use std::time::Duration;

use crate::api::ApiError;
use crate::clock::{after, Timestamp};
use crate::delivery::signature::SigningSecret;
use crate::domain::{
    Delivery, Destination, Event, SecretSet, Subscription, SubscriptionId, Tenant,
};
use crate::signals::Signals;
use crate::store::{Store, StoreError};

/// Store a new subscription.
pub async fn create(store: &Store, sub: &Subscription) -> Result<(), StoreError> {
    store.save_subscription(sub).await
}

/// The tenant's subscription `id`, changed by `change` atomically; `None` if there is none.
pub async fn update(
    store: &Store,
    tenant: &Tenant,
    id: &SubscriptionId,
    change: impl Fn(&mut Subscription) + Send + Sync + 'static,
) -> Result<Option<Subscription>, StoreError> {
    if store.subscription(tenant, id).await?.is_none() {
        return Ok(None);
    }
    store.update_subscription(id, Box::new(change)).await
}

/// Delete the tenant's subscription `id`; false if there was none.
pub async fn delete(
    store: &Store,
    tenant: &Tenant,
    id: &SubscriptionId,
) -> Result<bool, StoreError> {
    if !store.delete_subscription(tenant, id).await? {
        return Ok(false);
    }
    Ok(true)
}

/// The secrets that sign the tenant's job callbacks, generated and stored on first use.
pub async fn callback_secrets(store: &Store, tenant: &Tenant) -> Result<SecretSet, StoreError> {
    let secrets = store
        .callback_secrets(tenant, SigningSecret::generate)
        .await?;
    Ok(secrets)
}

fn unchanged_secret() -> ApiError {
    ApiError::bad_request("the new secret must differ from the current one").with_details("secret")
}

/// Sign `sub`'s events with `secret` from now on, the old secret beside it until `until`.
pub async fn rotate_secret(
    store: &Store,
    sub: &Subscription,
    secret: String,
    until: Timestamp,
    now: Timestamp,
) -> Result<Subscription, ApiError> {
    if secret == sub.secrets.current {
        return Err(unchanged_secret());
    }
    update(store, &sub.tenant, &sub.id, move |s| {
        s.secrets.rotate(secret.clone(), until);
        s.updated_at = now;
    })
    .await?
    .ok_or_else(|| ApiError::not_found("subscription"))
}

/// Sign the tenant's job callbacks with `secret` from now on, the old secret beside it until
/// `until`. A tenant without a secret yet simply gets this one: there is nothing to overlap
/// with.
pub async fn rotate_callback_secret(
    store: &Store,
    tenant: &Tenant,
    secret: String,
    until: Timestamp,
) -> Result<SecretSet, ApiError> {
    let change = Box::new(move |stored: Option<&SecretSet>| match stored {
        None => Some(SecretSet::new(secret.clone())),
        Some(s) if s.current == secret => None,
        Some(s) => {
            let mut rotated = s.clone();
            rotated.rotate(secret.clone(), until);
            Some(rotated)
        }
    });
    store
        .update_callback_secrets(tenant, change)
        .await?
        .ok_or_else(unchanged_secret)
}

/// Queue a `webhook.test` event to `sub`, whatever its event types. Refused while `sub` is
/// disabled: the worker sends nothing to it, so the delivery could only fail unsent.
pub async fn send_test_event(
    store: &Store,
    signals: &Signals,
    sub: &Subscription,
    now: Timestamp,
) -> Result<Delivery, ApiError> {
    if !sub.enabled {
        return Err(crate::service::resend::disabled(
            sub,
            "the subscription is disabled; enable it (PATCH {\"enabled\": true}) before sending it a test event",
        ));
    }
    let event = Event::test(sub.tenant.clone(), now);
    let delivery = Delivery::new(&event, None, Destination::subscription(sub), now);
    store.insert_deliveries(vec![delivery.clone()]).await?;
    signals.delivery_wake.notify_one();
    Ok(delivery)
}

/// Why a subscription is disabled after its receiver answered `410 Gone`.
pub const GONE_REASON: &str = "the receiver answered 410 Gone";

/// Why a subscription is disabled when its owner turns it off.
pub const DISABLED_BY_CLIENT: &str = "disabled through the API";

/// What one attempt tells about a subscription's receiver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx.
    Succeeded,
    /// The destination is gone (`410 Gone`, Slack's `channel_not_found`, ...), for this
    /// reason: it is never sent anything again.
    Gone(String),
    /// Anything else.
    Failed,
}

/// The health rules of subscriptions, with the failing run after which one is disabled.
#[derive(Clone, Copy, Debug)]
pub struct Health {
    pub disable_after: Duration,
}

impl Health {
    pub fn new(disable_after: Duration) -> Health {
        Health { disable_after }
    }

    /// Whether `outcome` changes `sub` at all: a receiver that keeps failing costs one write
    /// when its run begins (and one when it is disabled), not one per attempt.
    pub fn changes(&self, sub: &Subscription, outcome: &Outcome, now: Timestamp) -> bool {
        match outcome {
            Outcome::Succeeded => sub.failing_since.is_some(),
            Outcome::Gone(_) => true,
            Outcome::Failed => sub
                .failing_since
                .is_none_or(|since| sub.enabled && after(since, self.disable_after) <= now),
        }
    }

    /// Apply `outcome` to the stored `sub`.
    pub fn apply(&self, sub: &mut Subscription, outcome: &Outcome, now: Timestamp) {
        if *outcome == Outcome::Succeeded {
            sub.failing_since = None;
            return;
        }
        let since = *sub.failing_since.get_or_insert(now);
        if let Outcome::Gone(reason) = outcome {
            // Kept as it is when the subscription is disabled already (by its owner, say).
            if sub.enabled {
                sub.enabled = false;
                sub.disabled_reason = Some(reason.clone());
            }
        } else if sub.enabled && after(since, self.disable_after) <= now {
            sub.enabled = false;
            sub.disabled_reason = Some(format!(
                "every delivery failed for {}",
                humantime::format_duration(self.disable_after)
            ));
        }
        sub.updated_at = now;
    }

    /// Record `outcome` on the subscription `sub` (as read before the attempt), writing only
    /// when it changes something.
    pub async fn note(
        &self,
        store: &Store,
        sub: &Subscription,
        outcome: Outcome,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        if !self.changes(sub, &outcome, now) {
            return Ok(());
        }
        let health = *self;
        store
            .update_subscription(&sub.id, Box::new(move |s| health.apply(s, &outcome, now)))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EventType, Format, SecretSet, SubscriptionId, Tenant};

    fn subscription(now: Timestamp) -> Subscription {
        Subscription {
            id: SubscriptionId::generate(),
            tenant: Tenant::parse("acme").unwrap(),
            url: "https://example.com/hook".into(),
            event_types: vec![EventType::AgentReady],
            format: Format::Standard,
            description: None,
            enabled: true,
            disabled_reason: None,
            secrets: SecretSet::new("whsec_x".into()),
            failing_since: None,
            rate_limit_per_second: None,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn a_failing_run_is_noted_once_and_disables_after_its_limit() {
        let health = Health::new(Duration::from_secs(60));
        let start = chrono::Utc::now();
        let mut sub = subscription(start);
        assert!(health.changes(&sub, &Outcome::Failed, start));
        health.apply(&mut sub, &Outcome::Failed, start);
        assert_eq!(sub.failing_since, Some(start));
        assert!(sub.enabled);

        let later = start + chrono::Duration::seconds(30);
        assert!(
            !health.changes(&sub, &Outcome::Failed, later),
            "one write per run"
        );

        let past = start + chrono::Duration::seconds(60);
        assert!(health.changes(&sub, &Outcome::Failed, past));
        health.apply(&mut sub, &Outcome::Failed, past);
        assert!(!sub.enabled);
        assert_eq!(
            sub.disabled_reason.as_deref(),
            Some("every delivery failed for 1m")
        );
        assert_eq!(sub.failing_since, Some(start), "the run keeps its start");
        assert!(!health.changes(&sub, &Outcome::Failed, past));
    }

    #[test]
    fn a_410_disables_at_once_and_a_success_clears_the_run() {
        let health = Health::new(Duration::from_secs(3600));
        let now = chrono::Utc::now();
        let mut sub = subscription(now);
        assert!(!health.changes(&sub, &Outcome::Succeeded, now));
        health.apply(&mut sub, &Outcome::Failed, now);
        assert!(health.changes(&sub, &Outcome::Succeeded, now));
        health.apply(&mut sub, &Outcome::Succeeded, now);
        assert_eq!(sub.failing_since, None);
        assert!(sub.enabled);

        assert!(health.changes(&sub, &Outcome::Gone(GONE_REASON.into()), now));
        health.apply(&mut sub, &Outcome::Gone(GONE_REASON.into()), now);
        assert!(!sub.enabled);
        assert_eq!(sub.disabled_reason.as_deref(), Some(GONE_REASON));
    }
}
