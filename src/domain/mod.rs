//! The vocabulary of the service, without I/O: jobs, events, subscriptions, deliveries, ids.

mod delivery;
mod event;
mod ids;
mod job;
mod subscription;
mod tenant;

pub use delivery::{Attempt, Delivery, DeliveryState, Destination, ErrorClass, Payload};
pub use event::{Event, EventType};
pub use ids::{DeliveryId, EventId, JobId, MessageId, SubscriptionId};
pub use job::{Job, JobError, JobStatus, JobView};
pub use subscription::{Format, PreviousSecret, SecretSet, Subscription};
pub use tenant::Tenant;
