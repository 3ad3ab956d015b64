//! Prefixed, time-ordered identifiers (`job_01J...`). A ULID sorts by creation time, which keeps
//! listings chronological and pagination stable.

use std::fmt;

use serde::{Deserialize, Serialize};
use ulid::Ulid;
use utoipa::ToSchema;

/// A new ULID, later than every one this process made before: ids made in the same
/// millisecond still sort in the order they were made (a plain ULID's random part would order
/// them by chance), so a listing newest first shows two jobs created back to back in order.
fn next_ulid() -> Ulid {
    static GENERATOR: std::sync::Mutex<Option<ulid::Generator>> = std::sync::Mutex::new(None);
    let mut generator = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    generator
        .get_or_insert_with(ulid::Generator::new)
        .generate()
        // The random part ran out within one millisecond (2^80 ids): a fresh one then.
        .unwrap_or_else(|_| Ulid::new())
}

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(
            Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
        )]
        #[serde(transparent)]
        #[schema(example = json!(concat!($prefix, "01JDX5R5B6Y0V4W3Q2P1N0M9KZ")))]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            pub fn generate() -> Self {
                Self(format!("{}{}", $prefix, next_ulid()))
            }

            /// Accepts only well-formed ids of this kind.
            pub fn parse(raw: &str) -> Option<Self> {
                let rest = raw.strip_prefix($prefix)?;
                Ulid::from_string(rest).ok()?;
                Some(Self(raw.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// An id as the store wrote it, taken as it is (like its JSON form).
            pub(crate) fn from_stored(raw: String) -> Self {
                Self(raw)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

prefixed_id!(
    /// One generation request tracked by agenthook.
    JobId,
    "job_"
);
prefixed_id!(
    /// A standing subscription of a tenant.
    SubscriptionId,
    "sub_"
);
prefixed_id!(
    /// One event sent to one destination.
    DeliveryId,
    "dlv_"
);
prefixed_id!(
    /// An event (agent.ready, agent.failed, webhook.test).
    EventId,
    "evt_"
);
prefixed_id!(
    /// The Standard Webhooks `webhook-id`: one per event and destination, stable across retries.
    MessageId,
    "msg_"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_back_and_carry_their_prefix() {
        let id = JobId::generate();
        assert!(id.as_str().starts_with("job_"));
        assert_eq!(JobId::parse(id.as_str()), Some(id));
    }

    #[test]
    fn ids_of_another_kind_or_malformed_are_refused() {
        let sub = SubscriptionId::generate();
        assert_eq!(JobId::parse(sub.as_str()), None);
        assert_eq!(JobId::parse("job_"), None);
        assert_eq!(JobId::parse("job_../../etc"), None);
    }

    #[test]
    fn ids_made_one_after_another_sort_in_that_order_even_within_a_millisecond() {
        let ids: Vec<JobId> = (0..2_000).map(|_| JobId::generate()).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "ids out of creation order"
        );
    }
}
