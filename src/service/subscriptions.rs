//! Subscription health: a receiver that answers `410 Gone`, or fails every delivery for
//! longer than `delivery.disable_after`, gets its subscription disabled; any success clears
//! the failing run.

use std::time::Duration;

use crate::clock::{after, Timestamp};
use crate::domain::Subscription;
use crate::store::{Store, StoreError};

/// Why a subscription is disabled after its receiver answered `410 Gone`.
pub const GONE_REASON: &str = "the receiver answered 410 Gone";

/// Why a subscription is disabled when its owner turns it off.
pub const DISABLED_BY_CLIENT: &str = "disabled through the API";

/// What one attempt tells about a subscription's receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx.
    Succeeded,
    /// `410 Gone`: the receiver asks never to be sent anything again.
    Gone,
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
    pub fn changes(&self, sub: &Subscription, outcome: Outcome, now: Timestamp) -> bool {
        match outcome {
            Outcome::Succeeded => sub.failing_since.is_some(),
            Outcome::Gone => true,
            Outcome::Failed => sub
                .failing_since
                .is_none_or(|since| sub.enabled && after(since, self.disable_after) <= now),
        }
    }

    /// Apply `outcome` to the stored `sub`.
    pub fn apply(&self, sub: &mut Subscription, outcome: Outcome, now: Timestamp) {
        if outcome == Outcome::Succeeded {
            sub.failing_since = None;
            return;
        }
        let since = *sub.failing_since.get_or_insert(now);
        if outcome == Outcome::Gone {
            sub.enabled = false;
            sub.disabled_reason = Some(GONE_REASON.into());
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
    pub fn note(
        &self,
        store: &Store,
        sub: &Subscription,
        outcome: Outcome,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        if !self.changes(sub, outcome, now) {
            return Ok(());
        }
        store.update_subscription(&sub.id, |s| self.apply(s, outcome, now))?;
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
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn a_failing_run_is_noted_once_and_disables_after_its_limit() {
        let health = Health::new(Duration::from_secs(60));
        let start = chrono::Utc::now();
        let mut sub = subscription(start);
        assert!(health.changes(&sub, Outcome::Failed, start));
        health.apply(&mut sub, Outcome::Failed, start);
        assert_eq!(sub.failing_since, Some(start));
        assert!(sub.enabled);

        let later = start + chrono::Duration::seconds(30);
        assert!(
            !health.changes(&sub, Outcome::Failed, later),
            "one write per run"
        );

        let past = start + chrono::Duration::seconds(60);
        assert!(health.changes(&sub, Outcome::Failed, past));
        health.apply(&mut sub, Outcome::Failed, past);
        assert!(!sub.enabled);
        assert_eq!(
            sub.disabled_reason.as_deref(),
            Some("every delivery failed for 1m")
        );
        assert_eq!(sub.failing_since, Some(start), "the run keeps its start");
        assert!(!health.changes(&sub, Outcome::Failed, past));
    }

    #[test]
    fn a_410_disables_at_once_and_a_success_clears_the_run() {
        let health = Health::new(Duration::from_secs(3600));
        let now = chrono::Utc::now();
        let mut sub = subscription(now);
        assert!(!health.changes(&sub, Outcome::Succeeded, now));
        health.apply(&mut sub, Outcome::Failed, now);
        assert!(health.changes(&sub, Outcome::Succeeded, now));
        health.apply(&mut sub, Outcome::Succeeded, now);
        assert_eq!(sub.failing_since, None);
        assert!(sub.enabled);

        assert!(health.changes(&sub, Outcome::Gone, now));
        health.apply(&mut sub, Outcome::Gone, now);
        assert!(!sub.enabled);
        assert_eq!(sub.disabled_reason.as_deref(), Some(GONE_REASON));
    }
}
