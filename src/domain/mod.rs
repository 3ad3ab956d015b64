//! The vocabulary of the service, without I/O: jobs, events, subscriptions, deliveries, ids.

mod delivery;
mod event;
mod ids;
mod job;
mod sample;
mod subscription;
mod tenant;

pub use delivery::{Attempt, Delivery, DeliveryState, Destination, ErrorClass, Payload};
pub use event::{Event, EventType};
pub use ids::{DeliveryId, EventId, JobId, MessageId, SubscriptionId};
pub use job::{Job, JobError, JobStatus, JobView};
pub use sample::sample_event;
pub use subscription::{
    parse_rate_limit_per_second, Format, PreviousSecret, SecretSet, Subscription,
    RATE_LIMIT_PER_SECOND_MAX,
};
pub use tenant::Tenant;
