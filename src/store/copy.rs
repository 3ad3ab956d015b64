//! Everything a store holds, in domain terms: what `agenthook store copy` moves from one
//! backend to another (jobs, deliveries with their events' bodies, subscriptions, callback
//! secrets, idempotency keys). Claims are not state: a copied job or delivery is due when its
//! record says.

use crate::clock::Timestamp;
use crate::domain::{Delivery, Job, JobId, SecretSet, Subscription, Tenant};
use crate::store::IdempotentResponse;

/// An idempotency key's record.
#[derive(Clone, Debug)]
pub struct ExportedKey {
    pub tenant: Tenant,
    pub key: String,
    pub fingerprint: String,
    pub job_id: JobId,
    /// The answer replayed; `None` while its first request was still being answered.
    pub response: Option<IdempotentResponse>,
    pub created_at: Timestamp,
}

/// The whole content of a store.
#[derive(Debug, Default)]
pub struct Export {
    pub jobs: Vec<Job>,
    /// With their events' bodies.
    pub deliveries: Vec<Delivery>,
    pub subscriptions: Vec<Subscription>,
    pub secrets: Vec<(Tenant, SecretSet)>,
    pub keys: Vec<ExportedKey>,
}

impl Export {
    /// What it holds, for people: "3 jobs, 4 deliveries (2 events), ...".
    pub fn summary(&self) -> String {
        let events: std::collections::HashSet<&str> = self
            .deliveries
            .iter()
            .map(|d| d.event_id.as_str())
            .collect();
        let pending_jobs = self.jobs.iter().filter(|j| j.is_pending()).count();
        let pending_deliveries = self
            .deliveries
            .iter()
            .filter(|d| d.state == crate::domain::DeliveryState::Pending)
            .count();
        format!(
            "{} jobs ({pending_jobs} pending), {} deliveries ({pending_deliveries} pending) of {} events, \
             {} subscriptions, the callback secrets of {} tenants, {} idempotency keys",
            self.jobs.len(),
            self.deliveries.len(),
            events.len(),
            self.subscriptions.len(),
            self.secrets.len(),
            self.keys.len()
        )
    }
}
