//! [`Storage`] for PostgreSQL: each method is a query or a transaction on the pool.

use std::sync::Arc;

use super::PgStore;
use crate::clock::Timestamp;
use crate::domain::{
    Delivery, DeliveryId, DeliveryState, Job, JobId, JobStatus, SecretSet, Subscription,
    SubscriptionId, Tenant,
};
use crate::store::{
    Admission, Cancellation, Claimed, Counts, DeliveryChange, DeliveryPage, DeliveryQueue,
    DeliveryUpdate, IdempotencyKey, IdempotentResponse, JobPage, Recorded, Result, SecretsChange,
    Storage, SubscriptionChange, WakeFn, WorkKind,
};
use crate::store::{JobTime, PurgeReport, Room, StoredTotals, UpstreamWebhook, Writable};

#[async_trait::async_trait]
impl Storage for PgStore {
    async fn purge_finished_before(
        &self,
        cutoff: Timestamp,
        after: Option<&JobId>,
        limit: usize,
    ) -> Result<PurgeReport> {
        PgStore::purge_finished_before(self, cutoff, after, limit).await
    }

    async fn stored_totals(&self) -> Result<StoredTotals> {
        PgStore::stored_totals(self).await
    }

    async fn check_writable(&self) -> Result<Writable> {
        PgStore::check_writable(self).await
    }

    async fn claim_job_for_poll(&self, id: &JobId, lease_until: Timestamp) -> Result<Option<Job>> {
        PgStore::claim_job_for_poll(self, id, lease_until).await
    }

    async fn pull_in_polls(
        &self,
        later_than: Timestamp,
        limit: usize,
        to: JobTime,
    ) -> Result<usize> {
        PgStore::pull_in_polls(self, later_than, limit, to).await
    }

    async fn upstream_webhook(&self) -> Result<Option<UpstreamWebhook>> {
        PgStore::upstream_webhook(self).await
    }

    async fn save_upstream_webhook(&self, webhook: &UpstreamWebhook) -> Result<()> {
        PgStore::save_upstream_webhook(self, webhook).await
    }

    async fn begin_job(
        &self,
        job: &Job,
        idempotency: Option<&IdempotencyKey>,
        key_ttl: std::time::Duration,
    ) -> Result<Admission> {
        PgStore::begin_job(self, job, idempotency, key_ttl).await
    }

    async fn hold_job(&self, job: &Job, idempotency: Option<&IdempotencyKey>) -> Result<()> {
        PgStore::hold_job(self, job, idempotency).await
    }

    async fn accept_job(
        &self,
        job: Job,
        held: bool,
        idempotency: Option<(IdempotencyKey, IdempotentResponse)>,
    ) -> Result<bool> {
        PgStore::accept_job(self, job, held, idempotency).await
    }

    async fn refuse_job(
        &self,
        job: &Job,
        idempotency: Option<&IdempotencyKey>,
        response: Option<&IdempotentResponse>,
    ) -> Result<()> {
        PgStore::refuse_job(self, job, idempotency, response).await
    }

    async fn save_job(&self, job: &Job) -> Result<bool> {
        PgStore::save_job(self, job).await
    }

    async fn complete_job(&self, job: &Job, deliveries: Vec<Delivery>) -> Result<bool> {
        PgStore::complete_job(self, job, deliveries).await
    }

    async fn cancel_job(
        &self,
        tenant: &Tenant,
        id: &JobId,
        now: Timestamp,
    ) -> Result<Cancellation> {
        PgStore::cancel_job(self, tenant, id, now).await
    }

    async fn job(&self, tenant: &Tenant, id: &JobId) -> Result<Option<Job>> {
        Ok(PgStore::job_by_id(self, id)
            .await?
            .filter(|job| &job.tenant == tenant))
    }

    async fn job_by_id(&self, id: &JobId) -> Result<Option<Job>> {
        PgStore::job_by_id(self, id).await
    }

    async fn job_by_agent(&self, agent_id: &str) -> Result<Option<Job>> {
        PgStore::job_by_agent(self, agent_id).await
    }

    async fn list_jobs(
        &self,
        tenant: &Tenant,
        status: Option<JobStatus>,
        after: Option<&JobId>,
        limit: usize,
    ) -> Result<JobPage> {
        PgStore::list_jobs(self, tenant, status, after, limit).await
    }

    async fn purge_idempotency(
        &self,
        now: Timestamp,
        ttl: std::time::Duration,
        limit: usize,
    ) -> Result<usize> {
        PgStore::purge_idempotency(self, now, ttl, limit).await
    }

    async fn claim_due_jobs(
        &self,
        kind: WorkKind,
        now: Timestamp,
        limit: usize,
        lease_until: Timestamp,
    ) -> Result<Vec<Job>> {
        PgStore::claim_due_jobs(self, kind, now, limit, lease_until).await
    }

    async fn release_leases(&self, _now: Timestamp, _horizon: Timestamp) -> Result<usize> {
        // Instances share the database: a lease's holder may be running.
        Ok(0)
    }

    async fn next_due_at(&self, kind: WorkKind) -> Result<Option<Timestamp>> {
        PgStore::next_due_at(self, kind).await
    }

    async fn count_due(&self, kind: WorkKind, now: Timestamp, cap: usize) -> Result<usize> {
        PgStore::count_due(self, kind, now, cap).await
    }

    async fn claim_due_deliveries(
        &self,
        queue: DeliveryQueue,
        now: Timestamp,
        limit: usize,
        _room: Room,
    ) -> Result<Vec<Claimed>> {
        // Every worker of every instance claims from one table: the worker checks each
        // destination's room after the claim.
        PgStore::claim_due_deliveries(self, queue, now, limit).await
    }

    async fn next_delivery_due_at(&self, queue: DeliveryQueue) -> Result<Option<Timestamp>> {
        PgStore::next_delivery_due_at(self, queue).await
    }

    async fn insert_deliveries(&self, deliveries: Vec<Delivery>) -> Result<()> {
        PgStore::insert_deliveries(self, deliveries).await
    }

    async fn update_claimed(
        &self,
        claim: Claimed,
        change: DeliveryChange,
    ) -> Result<Option<Recorded>> {
        PgStore::update_claimed(self, claim, change).await
    }

    async fn update_delivery(
        &self,
        tenant: &Tenant,
        id: &DeliveryId,
        change: DeliveryChange,
    ) -> Result<DeliveryUpdate> {
        PgStore::update_delivery(self, tenant, id, change).await
    }

    async fn delivery(&self, tenant: &Tenant, id: &DeliveryId) -> Result<Option<Delivery>> {
        PgStore::delivery(self, tenant, id).await
    }

    async fn list_deliveries(
        &self,
        tenant: &Tenant,
        state: Option<DeliveryState>,
        after: Option<&DeliveryId>,
        limit: usize,
    ) -> Result<DeliveryPage> {
        PgStore::list_deliveries(self, tenant, state, after, limit).await
    }

    async fn deliveries_of_job(&self, job: &JobId) -> Result<Vec<Delivery>> {
        PgStore::deliveries_of_job(self, job).await
    }

    async fn failed_deliveries_of_subscription(
        &self,
        sub: &SubscriptionId,
    ) -> Result<Vec<Delivery>> {
        PgStore::failed_deliveries_of_subscription(self, sub).await
    }

    async fn save_subscription(&self, sub: &Subscription) -> Result<()> {
        PgStore::save_subscription(self, sub).await
    }

    async fn subscription(
        &self,
        tenant: &Tenant,
        id: &SubscriptionId,
    ) -> Result<Option<Subscription>> {
        PgStore::subscription(self, tenant, id).await
    }

    async fn list_subscriptions(&self, tenant: &Tenant) -> Result<Vec<Subscription>> {
        PgStore::list_subscriptions(self, tenant).await
    }

    async fn delete_subscription(&self, tenant: &Tenant, id: &SubscriptionId) -> Result<bool> {
        PgStore::delete_subscription(self, tenant, id).await
    }

    async fn update_subscription(
        &self,
        id: &SubscriptionId,
        change: SubscriptionChange,
    ) -> Result<Option<Subscription>> {
        PgStore::update_subscription(self, id, change).await
    }

    async fn callback_secrets(
        &self,
        tenant: &Tenant,
        generate: fn() -> String,
    ) -> Result<SecretSet> {
        if let Some(secrets) = self.stored_callback_secrets(tenant).await? {
            return Ok(secrets);
        }
        // First use: created in one write, unless a concurrent first use won.
        let fresh = SecretSet::new(generate());
        let created = PgStore::update_callback_secrets(
            self,
            tenant,
            Box::new(move |stored| Some(stored.cloned().unwrap_or_else(|| fresh.clone()))),
        )
        .await?;
        Ok(created.expect("the change always answers"))
    }

    async fn update_callback_secrets(
        &self,
        tenant: &Tenant,
        change: SecretsChange,
    ) -> Result<Option<SecretSet>> {
        PgStore::update_callback_secrets(self, tenant, change).await
    }

    async fn counts(&self) -> Result<Counts> {
        let (submitting, processing): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE work = 0), count(*) FILTER (WHERE work = 1) \
             FROM jobs WHERE work IS NOT NULL AND due_at IS NOT NULL",
        )
        .fetch_one(self.pool())
        .await?;
        let (fresh, retry): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE queue = 0), count(*) FILTER (WHERE queue = 1) \
             FROM deliveries WHERE queue IS NOT NULL",
        )
        .fetch_one(self.pool())
        .await?;
        Ok(Counts {
            jobs_submitting: submitting as u64,
            jobs_processing: processing as u64,
            deliveries_fresh: fresh as u64,
            deliveries_retry: retry as u64,
        })
    }

    async fn is_healthy(&self) -> bool {
        let probe = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(self.pool());
        matches!(
            tokio::time::timeout(std::time::Duration::from_secs(2), probe).await,
            Ok(Ok(1))
        )
    }

    async fn close(&self) -> Result<()> {
        let _ = self.flush_releases().await;
        self.pool().close().await;
        Ok(())
    }

    async fn prepare(&self) -> Result<()> {
        self.migrate().await
    }

    fn shares_budgets(&self) -> bool {
        true
    }

    async fn take_budget(
        &self,
        name: &str,
        now: Timestamp,
        spacing: std::time::Duration,
        burst: u32,
        want: u32,
    ) -> Result<u32> {
        PgStore::take_budget(self, name, now, spacing, burst, want).await
    }

    fn watch_wakeups(&self, wake: WakeFn) {
        PgStore::watch_wakeups(self, wake, std::time::Duration::from_secs(1))
    }
}

#[allow(dead_code)]
fn _assert_send(store: Arc<PgStore>) -> Arc<dyn Storage> {
    store
}
