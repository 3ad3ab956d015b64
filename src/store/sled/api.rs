//! [`Storage`] for sled: reads and claims run on tokio's blocking pool, writes go to the writer
//! thread, so no sled call ever runs on a runtime thread (a sled transaction may wait for sled's
//! global lock while a flush holds it). What is in memory (cached subscriptions and secrets) is
//! answered at once.

use super::{Result, SledStore};
use crate::clock::Timestamp;
use crate::domain::{
    Delivery, DeliveryId, DeliveryState, Job, JobId, JobStatus, SecretSet, Subscription,
    SubscriptionId, Tenant,
};
use crate::store::{
    Admission, Cancellation, Claimed, Counts, DeliveryChange, DeliveryPage, DeliveryQueue,
    DeliveryUpdate, IdempotencyKey, IdempotentResponse, JobPage, PurgeReport, Recorded,
    SecretsChange, Storage, StoredTotals, SubscriptionChange, WorkKind, Writable,
};
use crate::store::{JobTime, Room, UpstreamWebhook};

/// Reads of one store on the blocking pool at once. Without a bound, a burst of concurrent
/// reads (a poller round of 1,000 jobs each completing, say) would start as many threads, each
/// with its stack and its own malloc arena; beyond the cores they only wait for each other.
pub(super) const READERS: usize = 8;

impl SledStore {
    /// Run `read` on the blocking pool, at most [`READERS`] at a time.
    async fn blocking<T, F>(&self, read: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&SledStore) -> Result<T> + Send + 'static,
    {
        let permit = self.readers.clone().acquire_owned().await;
        let store = self.clone();
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            read(&store)
        });
        match task.await {
            Ok(result) => result,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => Err(super::StoreError::Unavailable(
                "the storage task was cancelled".into(),
            )),
        }
    }
}

#[async_trait::async_trait]
impl Storage for SledStore {
    async fn begin_job(
        &self,
        job: &Job,
        idempotency: Option<&IdempotencyKey>,
        key_ttl: std::time::Duration,
    ) -> Result<Admission> {
        if idempotency.is_none() {
            // Nothing to read: no key, nothing held.
            return SledStore::begin_job(self, job, None, key_ttl);
        }
        let (job, key) = (job.clone(), idempotency.cloned());
        self.blocking(move |s| s.begin_job(&job, key.as_ref(), key_ttl))
            .await
    }

    async fn hold_job(&self, job: &Job, idempotency: Option<&IdempotencyKey>) -> Result<()> {
        SledStore::hold_job(self, job, idempotency).await
    }

    async fn accept_job(
        &self,
        job: Job,
        held: bool,
        idempotency: Option<(IdempotencyKey, IdempotentResponse)>,
    ) -> Result<bool> {
        SledStore::accept_job(self, job, held, idempotency).await
    }

    async fn refuse_job(
        &self,
        job: &Job,
        idempotency: Option<&IdempotencyKey>,
        response: Option<&IdempotentResponse>,
    ) -> Result<()> {
        SledStore::refuse_job(self, job, idempotency, response).await
    }

    async fn save_job(&self, job: &Job) -> Result<bool> {
        SledStore::save_job(self, job).await
    }

    async fn complete_job(&self, job: &Job, deliveries: Vec<Delivery>) -> Result<bool> {
        SledStore::complete_job(self, job, deliveries).await
    }

    async fn cancel_job(
        &self,
        tenant: &Tenant,
        id: &JobId,
        now: Timestamp,
    ) -> Result<Cancellation> {
        SledStore::cancel_job(self, tenant, id, now).await
    }

    async fn job(&self, tenant: &Tenant, id: &JobId) -> Result<Option<Job>> {
        let (tenant, id) = (tenant.clone(), id.clone());
        self.blocking(move |s| s.job(&tenant, &id)).await
    }

    async fn job_by_id(&self, id: &JobId) -> Result<Option<Job>> {
        let id = id.clone();
        self.blocking(move |s| s.job_by_id(&id)).await
    }

    async fn job_by_agent(&self, agent_id: &str) -> Result<Option<Job>> {
        let agent_id = agent_id.to_owned();
        self.blocking(move |s| s.job_by_agent(&agent_id)).await
    }

    async fn list_jobs(
        &self,
        tenant: &Tenant,
        status: Option<JobStatus>,
        after: Option<&JobId>,
        limit: usize,
    ) -> Result<JobPage> {
        let (tenant, after) = (tenant.clone(), after.cloned());
        self.blocking(move |s| s.list_jobs(&tenant, status, after.as_ref(), limit))
            .await
    }

    async fn purge_idempotency(
        &self,
        now: Timestamp,
        ttl: std::time::Duration,
        limit: usize,
    ) -> Result<usize> {
        let expired = self
            .blocking(move |s| s.expired_idempotency(now, ttl, limit))
            .await?;
        if expired.is_empty() {
            return Ok(0);
        }
        self.remove_idempotency(expired, now, ttl).await
    }

    async fn claim_due_jobs(
        &self,
        kind: WorkKind,
        now: Timestamp,
        limit: usize,
        lease_until: Timestamp,
    ) -> Result<Vec<Job>> {
        let due = self.blocking(move |s| s.due_jobs(kind, now, limit)).await?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        self.claim_jobs(due, lease_until).await
    }

    async fn release_leases(&self, now: Timestamp, horizon: Timestamp) -> Result<usize> {
        let leased = self
            .blocking(move |s| s.leased_between(now, horizon))
            .await?;
        if leased.is_empty() {
            return Ok(0);
        }
        self.release_leased(leased, now).await
    }

    async fn next_due_at(&self, kind: WorkKind) -> Result<Option<Timestamp>> {
        self.blocking(move |s| s.next_due_at(kind)).await
    }

    async fn count_due(&self, kind: WorkKind, now: Timestamp, cap: usize) -> Result<usize> {
        self.blocking(move |s| s.count_due(kind, now, cap)).await
    }

    async fn claim_due_deliveries(
        &self,
        queue: DeliveryQueue,
        now: Timestamp,
        limit: usize,
        room: Room,
    ) -> Result<Vec<Claimed>> {
        let (claimed, stale) = self
            .blocking(move |s| s.claim_due_deliveries(queue, now, limit, room))
            .await?;
        if !stale.is_empty() {
            self.remove_stale_entries(stale).await?;
        }
        Ok(claimed)
    }

    async fn next_delivery_due_at(&self, queue: DeliveryQueue) -> Result<Option<Timestamp>> {
        self.blocking(move |s| s.next_delivery_due_at(queue)).await
    }

    async fn insert_deliveries(&self, deliveries: Vec<Delivery>) -> Result<()> {
        SledStore::insert_deliveries(self, deliveries).await
    }

    async fn update_claimed(
        &self,
        claim: Claimed,
        change: DeliveryChange,
    ) -> Result<Option<Recorded>> {
        SledStore::update_claimed(self, claim, change).await
    }

    async fn update_delivery(
        &self,
        tenant: &Tenant,
        id: &DeliveryId,
        change: DeliveryChange,
    ) -> Result<DeliveryUpdate> {
        SledStore::update_delivery(self, tenant, id, change).await
    }

    async fn delivery(&self, tenant: &Tenant, id: &DeliveryId) -> Result<Option<Delivery>> {
        let (tenant, id) = (tenant.clone(), id.clone());
        self.blocking(move |s| s.delivery(&tenant, &id)).await
    }

    async fn list_deliveries(
        &self,
        tenant: &Tenant,
        state: Option<DeliveryState>,
        after: Option<&DeliveryId>,
        limit: usize,
    ) -> Result<DeliveryPage> {
        let (tenant, after) = (tenant.clone(), after.cloned());
        self.blocking(move |s| s.list_deliveries(&tenant, state, after.as_ref(), limit))
            .await
    }

    async fn deliveries_of_job(&self, job: &JobId) -> Result<Vec<Delivery>> {
        let job = job.clone();
        self.blocking(move |s| s.deliveries_of_job(&job)).await
    }

    async fn failed_deliveries_of_subscription(
        &self,
        sub: &SubscriptionId,
    ) -> Result<Vec<Delivery>> {
        let sub = sub.clone();
        self.blocking(move |s| s.failed_deliveries_of_subscription(&sub))
            .await
    }

    async fn save_subscription(&self, sub: &Subscription) -> Result<()> {
        SledStore::save_subscription(self, sub).await
    }

    async fn subscription(
        &self,
        tenant: &Tenant,
        id: &SubscriptionId,
    ) -> Result<Option<Subscription>> {
        if let Some(sub) = self.cached_subscription(id) {
            return Ok(Some(sub).filter(|s| &s.tenant == tenant));
        }
        let (tenant, id) = (tenant.clone(), id.clone());
        self.blocking(move |s| s.subscription(&tenant, &id)).await
    }

    async fn list_subscriptions(&self, tenant: &Tenant) -> Result<Vec<Subscription>> {
        let tenant = tenant.clone();
        self.blocking(move |s| s.list_subscriptions(&tenant)).await
    }

    async fn delete_subscription(&self, tenant: &Tenant, id: &SubscriptionId) -> Result<bool> {
        SledStore::delete_subscription(self, tenant, id).await
    }

    async fn update_subscription(
        &self,
        id: &SubscriptionId,
        change: SubscriptionChange,
    ) -> Result<Option<Subscription>> {
        SledStore::update_subscription(self, id, change).await
    }

    async fn callback_secrets(
        &self,
        tenant: &Tenant,
        generate: fn() -> String,
    ) -> Result<SecretSet> {
        if let Some(secrets) = self.cached_callback_secrets(tenant) {
            return Ok(secrets);
        }
        let key = tenant.clone();
        if let Some(secrets) = self
            .blocking(move |s| s.stored_callback_secrets(&key))
            .await?
        {
            return Ok(secrets);
        }
        // First use: created in one write, unless a concurrent first use won.
        let fresh = SecretSet::new(generate());
        let created = SledStore::update_callback_secrets(self, tenant, move |stored| {
            Some(stored.cloned().unwrap_or_else(|| fresh.clone()))
        })
        .await?;
        Ok(created.expect("the change always answers"))
    }

    async fn update_callback_secrets(
        &self,
        tenant: &Tenant,
        change: SecretsChange,
    ) -> Result<Option<SecretSet>> {
        SledStore::update_callback_secrets(self, tenant, change).await
    }

    async fn claim_job_for_poll(&self, id: &JobId, lease_until: Timestamp) -> Result<Option<Job>> {
        SledStore::claim_job_for_poll(self, id, lease_until).await
    }

    async fn pull_in_polls(
        &self,
        later_than: Timestamp,
        limit: usize,
        to: JobTime,
    ) -> Result<usize> {
        let due = self
            .blocking(move |s| s.polls_due_after(later_than, limit))
            .await?;
        if due.is_empty() {
            return Ok(0);
        }
        self.pull_in(due, later_than, to).await
    }

    async fn upstream_webhook(&self) -> Result<Option<UpstreamWebhook>> {
        self.blocking(|s| s.upstream_webhook()).await
    }

    async fn save_upstream_webhook(&self, webhook: &UpstreamWebhook) -> Result<()> {
        let webhook = webhook.clone();
        self.blocking(move |s| s.save_upstream_webhook(&webhook))
            .await
    }

    async fn counts(&self) -> Result<Counts> {
        Ok(self.counts.read())
    }

    async fn is_healthy(&self) -> bool {
        self.blocking(|s| Ok(s.is_healthy())).await.unwrap_or(false)
    }

    async fn close(&self) -> Result<()> {
        self.writer.flush().await
    }

    async fn purge_finished_before(
        &self,
        cutoff: Timestamp,
        after: Option<&JobId>,
        limit: usize,
    ) -> Result<PurgeReport> {
        self.purge_finished(cutoff, after.cloned(), limit).await
    }

    async fn stored_totals(&self) -> Result<StoredTotals> {
        self.blocking(|s| s.totals()).await
    }

    async fn check_writable(&self) -> Result<Writable> {
        self.probe_writable().await
    }
}
