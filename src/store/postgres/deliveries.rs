//! Deliveries, their claims and attempts.

use std::any::Any;
use std::sync::Arc;

use sqlx::postgres::PgRow;
use sqlx::{Postgres, Row, Transaction};

use super::{
    decode, encode, from_millis, millis, name_of, notify, token, PgStore, Release, Wakeup,
};
use crate::clock::Timestamp;
use crate::domain::{Delivery, DeliveryId, DeliveryState, JobId, Payload, SubscriptionId, Tenant};
use crate::store::{
    Claimed, DeliveryChange, DeliveryPage, DeliveryQueue, DeliveryUpdate, Lease, Recorded, Result,
    StoreError,
};

pub(super) fn queue_code(queue: DeliveryQueue) -> i16 {
    match queue {
        DeliveryQueue::Fresh => 0,
        DeliveryQueue::Retry => 1,
    }
}

/// The queue a delivery waits in and when it is due, if it waits.
fn queued(delivery: &Delivery) -> (Option<i16>, Option<i64>) {
    match (delivery.state, delivery.next_attempt_at) {
        (DeliveryState::Pending, Some(at)) => (
            Some(queue_code(DeliveryQueue::of(delivery))),
            Some(millis(at)),
        ),
        _ => (None, None),
    }
}

/// Columns selected to read a delivery with its event's body.
const WITH_BODY: &str =
    "SELECT d.record, e.body FROM deliveries d JOIN events e ON e.id = d.event_id";

fn read_row(row: &PgRow) -> Result<Delivery> {
    let record: String = row.try_get(0)?;
    let body: String = row.try_get(1)?;
    with_body(decode(&record)?, &body)
}

fn with_body(mut delivery: Delivery, body: &str) -> Result<Delivery> {
    delivery.payload = Payload::from_stored(body.as_bytes()).map_err(|e| {
        StoreError::Corrupt(format!("the body of event {}: {e}", delivery.event_id))
    })?;
    Ok(delivery)
}

/// Store new deliveries with their events' bodies (once each), in the caller's transaction.
pub(super) async fn insert_deliveries_tx(
    tx: &mut Transaction<'_, Postgres>,
    deliveries: &[Delivery],
) -> Result<()> {
    let mut event_ids: Vec<&str> = Vec::new();
    let mut bodies: Vec<&str> = Vec::new();
    for d in deliveries {
        if !event_ids.contains(&d.event_id.as_str()) {
            event_ids.push(d.event_id.as_str());
            bodies.push(d.payload.json());
        }
    }
    sqlx::query(
        "INSERT INTO events (id, body) SELECT * FROM unnest($1::text[], $2::text[]) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&event_ids)
    .bind(&bodies)
    .execute(&mut **tx)
    .await?;
    let n = deliveries.len();
    let (mut ids, mut tenants, mut events, mut jobs, mut subs, mut states) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut queues, mut dues, mut records) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for d in deliveries {
        ids.push(d.id.as_str());
        tenants.push(d.tenant.as_str());
        events.push(d.event_id.as_str());
        jobs.push(d.job_id.as_ref().map(JobId::as_str));
        subs.push(d.destination.subscription_id().map(SubscriptionId::as_str));
        states.push(name_of(&d.state));
        let (queue, due) = queued(d);
        queues.push(queue);
        dues.push(due);
        records.push(encode(d));
    }
    sqlx::query(
        "INSERT INTO deliveries \
         (id, tenant, event_id, job_id, subscription_id, state, queue, due_at, record) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
         $6::text[], $7::smallint[], $8::bigint[], $9::text[])",
    )
    .bind(&ids)
    .bind(&tenants)
    .bind(&events)
    .bind(&jobs)
    .bind(&subs)
    .bind(&states)
    .bind(&queues)
    .bind(&dues)
    .bind(&records)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Write a changed delivery over the stored row (`version` as read), ending any claim when
/// `end_claim`.
async fn write_changed<'c, E: sqlx::PgExecutor<'c>>(
    executor: E,
    changed: &Delivery,
    claim: Option<i64>,
    version: Option<i64>,
) -> Result<bool> {
    let (queue, due) = queued(changed);
    let done = sqlx::query(
        "UPDATE deliveries SET state = $2, queue = $3, due_at = $4, record = $5, \
         version = version + 1, \
         claim_token = CASE WHEN $6::bigint IS NULL THEN claim_token END, \
         lease_until = CASE WHEN $6::bigint IS NULL THEN lease_until END \
         WHERE id = $1 AND ($6::bigint IS NULL OR claim_token = $6) \
         AND ($7::bigint IS NULL OR version = $7)",
    )
    .bind(changed.id.as_str())
    .bind(name_of(&changed.state))
    .bind(queue)
    .bind(due)
    .bind(encode(changed))
    .bind(claim)
    .bind(version)
    .execute(executor)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A claim of this backend: the row's token and the version it was claimed at. Dropping it
/// releases the claim (see [`PgStore::release`]).
struct PgLease {
    store: PgStore,
    id: String,
    token: i64,
    version: i64,
    /// Set once the claim was ended by a write: nothing to release.
    done: bool,
}

impl Lease for PgLease {
    fn put_back(mut self: Box<Self>, at: Timestamp) {
        self.done = true;
        self.store.release(Release::Delivery {
            id: std::mem::take(&mut self.id),
            token: self.token,
            at: Some(millis(at)),
        });
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
}

impl Drop for PgLease {
    fn drop(&mut self) {
        if !self.done {
            self.store.release(Release::Delivery {
                id: std::mem::take(&mut self.id),
                token: self.token,
                at: None,
            });
        }
    }
}

impl PgStore {
    pub(super) async fn insert_deliveries(&self, deliveries: Vec<Delivery>) -> Result<()> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        insert_deliveries_tx(&mut tx, &deliveries).await?;
        notify(&mut *tx, Wakeup::Deliveries).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn claim_due_deliveries(
        &self,
        queue: DeliveryQueue,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<Claimed>> {
        self.flush_releases().await?;
        let claim = token();
        let now_ms = millis(now);
        let lease = now_ms + self.delivery_lease.as_millis() as i64;
        let rows = sqlx::query(
            "WITH claimed AS (UPDATE deliveries d SET lease_until = $4, claim_token = $5 \
             FROM (SELECT id FROM deliveries WHERE queue = $1 AND due_at <= $2 \
                   AND (lease_until IS NULL OR lease_until <= $2) \
                   ORDER BY due_at LIMIT $3 FOR UPDATE SKIP LOCKED) c \
             WHERE d.id = c.id RETURNING d.id, d.record, d.version, d.event_id) \
             SELECT c.id, c.record, c.version, e.body FROM claimed c \
             JOIN events e ON e.id = c.event_id",
        )
        .bind(queue_code(queue))
        .bind(now_ms)
        .bind(limit as i64)
        .bind(lease)
        .bind(claim)
        .fetch_all(&self.pool)
        .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get(0)?;
            let record: String = row.try_get(1)?;
            let version: i64 = row.try_get(2)?;
            let body: String = row.try_get(3)?;
            let lease = PgLease {
                store: self.clone(),
                id: id.clone(),
                token: claim,
                version,
                done: false,
            };
            match decode(&record).and_then(|d| with_body(d, &body)) {
                Ok(delivery) => claimed.push(Claimed {
                    delivery: Arc::new(delivery),
                    lease: Box::new(lease),
                }),
                Err(error) => {
                    tracing::error!(
                        delivery_id = %id,
                        %error,
                        "a stored delivery cannot be read; tried again in a minute"
                    );
                    Box::new(lease)
                        .put_back(crate::clock::after(now, std::time::Duration::from_secs(60)));
                }
            }
        }
        Ok(claimed)
    }

    pub(super) async fn next_delivery_due_at(
        &self,
        queue: DeliveryQueue,
    ) -> Result<Option<Timestamp>> {
        self.flush_releases().await?;
        let at: Option<i64> = sqlx::query_scalar(
            "SELECT min(GREATEST(due_at, COALESCE(lease_until, due_at))) FROM deliveries \
             WHERE queue = $1",
        )
        .bind(queue_code(queue))
        .fetch_one(&self.pool)
        .await?;
        Ok(at.map(from_millis))
    }

    pub(super) async fn update_claimed(
        &self,
        claim: Claimed,
        change: DeliveryChange,
    ) -> Result<Option<Recorded>> {
        let Claimed { delivery, lease } = claim;
        let mut lease = lease
            .into_any()
            .downcast::<PgLease>()
            .map_err(|_| StoreError::Corrupt("a claim of another store".into()))?;
        let mut changed = Delivery::clone(&delivery);
        if !change(&mut changed) {
            return Ok(None); // the lease is dropped: the claim ends
        }
        // The usual case: the row is still as claimed, one write.
        if write_changed(&self.pool, &changed, Some(lease.token), Some(lease.version)).await? {
            lease.done = true;
            return Ok(Some(Recorded {
                state: changed.state,
                attempts: changed.attempts.len(),
            }));
        }
        // Changed meanwhile (a retry by hand, say), or the claim was lost: change what is
        // stored, under the row's lock, if the claim is still ours.
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(&format!(
            "{WITH_BODY} WHERE d.id = $1 AND d.claim_token = $2 FOR UPDATE OF d"
        ))
        .bind(delivery.id.as_str())
        .bind(lease.token)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            lease.done = true; // no longer ours (its lease ended and another took it)
            return Ok(None);
        };
        let mut stored = read_row(&row)?;
        if !change(&mut stored) {
            return Ok(None);
        }
        write_changed(&mut *tx, &stored, Some(lease.token), None).await?;
        tx.commit().await?;
        lease.done = true;
        Ok(Some(Recorded {
            state: stored.state,
            attempts: stored.attempts.len(),
        }))
    }

    pub(super) async fn update_delivery(
        &self,
        tenant: &Tenant,
        id: &DeliveryId,
        change: DeliveryChange,
    ) -> Result<DeliveryUpdate> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(&format!("{WITH_BODY} WHERE d.id = $1 FOR UPDATE OF d"))
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(DeliveryUpdate::NotFound);
        };
        let stored = read_row(&row)?;
        if &stored.tenant != tenant {
            return Ok(DeliveryUpdate::NotFound);
        }
        let mut changed = stored.clone();
        if !change(&mut changed) {
            return Ok(DeliveryUpdate::Unchanged(stored));
        }
        write_changed(&mut *tx, &changed, None, None).await?;
        if queued(&changed).0.is_some() {
            notify(&mut *tx, Wakeup::Deliveries).await?;
        }
        tx.commit().await?;
        Ok(DeliveryUpdate::Updated(changed))
    }

    pub(super) async fn delivery(
        &self,
        tenant: &Tenant,
        id: &DeliveryId,
    ) -> Result<Option<Delivery>> {
        let row = sqlx::query(&format!("{WITH_BODY} WHERE d.id = $1 AND d.tenant = $2"))
            .bind(id.as_str())
            .bind(tenant.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(read_row).transpose()
    }

    pub(super) async fn list_deliveries(
        &self,
        tenant: &Tenant,
        state: Option<DeliveryState>,
        after: Option<&DeliveryId>,
        limit: usize,
    ) -> Result<DeliveryPage> {
        let rows = sqlx::query(&format!(
            "{WITH_BODY} WHERE d.tenant = $1 AND ($2::text IS NULL OR d.state = $2) \
             AND ($3::text IS NULL OR d.id < $3) ORDER BY d.id DESC LIMIT $4"
        ))
        .bind(tenant.as_str())
        .bind(state.map(|s| name_of(&s)))
        .bind(after.map(DeliveryId::as_str))
        .bind(limit as i64 + 1)
        .fetch_all(&self.pool)
        .await?;
        let mut deliveries = rows.iter().map(read_row).collect::<Result<Vec<_>>>()?;
        let mut next = None;
        if deliveries.len() > limit {
            deliveries.truncate(limit);
            next = deliveries.last().map(|d| d.id.clone());
        }
        Ok(DeliveryPage { deliveries, next })
    }

    pub(super) async fn deliveries_of_job(&self, job: &JobId) -> Result<Vec<Delivery>> {
        let rows = sqlx::query(&format!("{WITH_BODY} WHERE d.job_id = $1 ORDER BY d.id"))
            .bind(job.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(read_row).collect()
    }

    pub(super) async fn failed_deliveries_of_subscription(
        &self,
        sub: &SubscriptionId,
    ) -> Result<Vec<Delivery>> {
        let rows = sqlx::query(&format!(
            "{WITH_BODY} WHERE d.subscription_id = $1 AND d.state = $2 ORDER BY d.id"
        ))
        .bind(sub.as_str())
        .bind(name_of(&DeliveryState::Failed))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(read_row).collect()
    }
}
