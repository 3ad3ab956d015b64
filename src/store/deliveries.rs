//! Deliveries and the worker's queue.

use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use sled::{IVec, Transactional};

use super::{decode, decode_tx, encode, keys, tx_result, Result, Store, StoreError};
use crate::clock::Timestamp;
use crate::domain::{Delivery, DeliveryId, DeliveryState, JobId, SubscriptionId, Tenant};

type TxResult<T> = std::result::Result<T, ConflictableTransactionError<StoreError>>;

/// The worker drains two queues so that a receiver piling up retries never delays fresh
/// events to healthy receivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryQueue {
    /// First attempts.
    Fresh,
    /// Everything after a failed attempt.
    Retry,
}

impl DeliveryQueue {
    fn tag(self) -> u8 {
        match self {
            DeliveryQueue::Fresh => b'f',
            DeliveryQueue::Retry => b'r',
        }
    }

    pub fn of(delivery: &Delivery) -> DeliveryQueue {
        if delivery.is_first_attempt() {
            DeliveryQueue::Fresh
        } else {
            DeliveryQueue::Retry
        }
    }
}

fn queue_key(delivery: &Delivery) -> Option<Vec<u8>> {
    if delivery.state != DeliveryState::Pending {
        return None;
    }
    let at = delivery.next_attempt_at?;
    Some(keys::timed(
        DeliveryQueue::of(delivery).tag(),
        at,
        delivery.id.as_str(),
    ))
}

pub(super) fn insert_delivery_tx(
    deliveries: &TransactionalTree,
    index: &TransactionalTree,
    queue: &TransactionalTree,
    delivery: &Delivery,
    bytes: &[u8],
) -> TxResult<()> {
    let id = delivery.id.as_str();
    deliveries.insert(id, bytes)?;
    index.insert(
        keys::owned(keys::TENANT_DELIVERIES, delivery.tenant.as_str(), id),
        &[],
    )?;
    if let Some(job) = &delivery.job_id {
        index.insert(keys::owned(keys::JOB_DELIVERIES, job.as_str(), id), &[])?;
    }
    if let Some(sub) = delivery.destination.subscription_id() {
        index.insert(
            keys::owned(keys::SUBSCRIPTION_DELIVERIES, sub.as_str(), id),
            &[],
        )?;
    }
    if let Some(key) = queue_key(delivery) {
        queue.insert(key, &[])?;
    }
    Ok(())
}

/// What [`Store::update_delivery`] did.
#[derive(Clone, Debug)]
pub enum DeliveryUpdate {
    /// No such delivery for this tenant.
    NotFound,
    /// The change declined; the delivery as stored.
    Unchanged(Delivery),
    /// The delivery as changed and stored.
    Updated(Delivery),
}

/// The body of [`Store::update_delivery`], inside a transaction. `claimed` is a delivery
/// already in hand with the bytes it was read as: while those are still what is stored, it is
/// taken instead of decoding them again.
fn update_delivery_tx(
    tree: &TransactionalTree,
    queue: &TransactionalTree,
    tenant: &Tenant,
    id: &DeliveryId,
    claimed: Option<(&[u8], &Delivery)>,
    change: &dyn Fn(&mut Delivery) -> bool,
) -> TxResult<DeliveryUpdate> {
    let Some(raw) = tree.get(id.as_str())? else {
        return Ok(DeliveryUpdate::NotFound);
    };
    let stored: Delivery = match claimed {
        Some((bytes, delivery)) if raw == bytes => delivery.clone(),
        _ => decode_tx(&raw)?,
    };
    if &stored.tenant != tenant {
        return Ok(DeliveryUpdate::NotFound);
    }
    let mut changed = stored.clone();
    if !change(&mut changed) {
        return Ok(DeliveryUpdate::Unchanged(stored));
    }
    if let Some(key) = queue_key(&stored) {
        queue.remove(key)?;
    }
    if let Some(key) = queue_key(&changed) {
        queue.insert(key, &[])?;
    }
    tree.insert(id.as_str(), encode(&changed))?;
    Ok(DeliveryUpdate::Updated(changed))
}

/// A delivery claimed by the worker, with the bytes the claim stored.
pub struct Claimed {
    pub delivery: Delivery,
    stored: IVec,
}

#[derive(Clone, Debug)]
pub struct DeliveryPage {
    pub deliveries: Vec<Delivery>,
    pub next: Option<DeliveryId>,
}

impl Store {
    /// Store deliveries that no job transition caused (test events, say), queued at once.
    pub fn insert_deliveries(&self, deliveries: &[Delivery]) -> Result<()> {
        let encoded: Vec<Vec<u8>> = deliveries.iter().map(encode).collect();
        let result =
            (&self.deliveries, &self.index, &self.queue).transaction(|(tree, index, queue)| {
                for (delivery, bytes) in deliveries.iter().zip(&encoded) {
                    insert_delivery_tx(tree, index, queue, delivery, bytes)?;
                }
                Ok(())
            });
        tx_result(result)
    }

    /// Claim up to `limit` deliveries from `queue` that are due at `now`, leasing each until
    /// `lease_until` (longer than a request's timeout, so one attempt is never sent twice).
    /// The claims are one write on the writer thread, answered once on disk.
    pub async fn claim_due_deliveries(
        &self,
        queue: DeliveryQueue,
        now: Timestamp,
        limit: usize,
        lease_until: Timestamp,
    ) -> Result<Vec<Claimed>> {
        let start = [queue.tag()];
        let end = keys::timed_upper(queue.tag(), now);
        let mut due = Vec::new();
        for entry in self.queue.range(start.as_slice()..end.as_slice()) {
            if due.len() >= limit {
                break;
            }
            let (key, _) = entry?;
            if let Some((_, id)) = keys::parse_timed(&key) {
                let id = id.to_owned();
                due.push((key, id));
            }
        }
        if due.is_empty() {
            return Ok(Vec::new());
        }
        self.writer
            .write(move |tx| {
                let mut claimed = Vec::with_capacity(due.len());
                for (key, id) in &due {
                    if tx.queue.remove(key)?.is_none() {
                        continue;
                    }
                    let Some(raw) = tx.deliveries.get(id.as_str())? else {
                        continue;
                    };
                    let mut delivery: Delivery = decode_tx(&raw)?;
                    if queue_key(&delivery).as_deref() != Some(&key[..]) {
                        continue;
                    }
                    delivery.next_attempt_at = Some(lease_until);
                    if let Some(new_key) = queue_key(&delivery) {
                        tx.queue.insert(new_key, &[])?;
                    }
                    let stored = IVec::from(encode(&delivery));
                    tx.deliveries.insert(id.as_str(), stored.clone())?;
                    claimed.push(Claimed { delivery, stored });
                }
                Ok(claimed)
            })
            .await
    }

    /// Put claimed deliveries back in their queue, due at `at` (the worker had no room).
    pub async fn put_back_deliveries(&self, claims: Vec<Claimed>, at: Timestamp) -> Result<()> {
        self.writer
            .write(move |tx| {
                for claim in &claims {
                    let tenant = &claim.delivery.tenant;
                    let claimed = Some((claim.stored.as_ref(), &claim.delivery));
                    update_delivery_tx(
                        tx.deliveries,
                        tx.queue,
                        tenant,
                        &claim.delivery.id,
                        claimed,
                        &|d| {
                            d.next_attempt_at = Some(at);
                            true
                        },
                    )?;
                }
                Ok(())
            })
            .await
    }

    /// Change a claimed delivery (its attempt recorded) as [`Store::update_delivery`] does,
    /// answered once on disk. Changes made together share one transaction and one fsync.
    pub async fn update_claimed(
        &self,
        claim: Claimed,
        change: impl Fn(&mut Delivery) -> bool + Send + 'static,
    ) -> Result<DeliveryUpdate> {
        self.writer
            .write(move |tx| {
                let claimed = Some((claim.stored.as_ref(), &claim.delivery));
                let d = &claim.delivery;
                update_delivery_tx(tx.deliveries, tx.queue, &d.tenant, &d.id, claimed, &change)
            })
            .await
    }

    /// Save a delivery (an attempt recorded, a manual retry), moving its queue entry.
    pub fn save_delivery(&self, delivery: &Delivery) -> Result<()> {
        let bytes = encode(delivery);
        let result = (&self.deliveries, &self.queue).transaction(|(tree, queue)| {
            if let Some(raw) = tree.get(delivery.id.as_str())? {
                let stored: Delivery = decode_tx(&raw)?;
                if let Some(key) = queue_key(&stored) {
                    queue.remove(key)?;
                }
            }
            if let Some(key) = queue_key(delivery) {
                queue.insert(key, &[])?;
            }
            tree.insert(delivery.id.as_str(), bytes.as_slice())?;
            Ok(())
        });
        tx_result(result)
    }

    /// Change a tenant's delivery atomically against concurrent writers (the worker recording
    /// an attempt), moving its queue entry. `change` returns `false` to leave it as it is; it
    /// may run more than once.
    pub fn update_delivery(
        &self,
        tenant: &Tenant,
        id: &DeliveryId,
        change: impl Fn(&mut Delivery) -> bool,
    ) -> Result<DeliveryUpdate> {
        let result = (&self.deliveries, &self.queue).transaction(|(tree, queue)| {
            update_delivery_tx(tree, queue, tenant, id, None, &change)
        });
        tx_result(result)
    }

    pub fn delivery(&self, tenant: &Tenant, id: &DeliveryId) -> Result<Option<Delivery>> {
        let found: Option<Delivery> = self
            .deliveries
            .get(id.as_str())?
            .map(|raw| decode(&raw))
            .transpose()?;
        Ok(found.filter(|d| &d.tenant == tenant))
    }

    /// A tenant's deliveries, newest first, optionally in one state, after the cursor.
    pub fn list_deliveries(
        &self,
        tenant: &Tenant,
        state: Option<DeliveryState>,
        after: Option<&DeliveryId>,
        limit: usize,
    ) -> Result<DeliveryPage> {
        let prefix = keys::owner_prefix(keys::TENANT_DELIVERIES, tenant.as_str());
        let upper = match after {
            Some(id) => keys::owned(keys::TENANT_DELIVERIES, tenant.as_str(), id.as_str()),
            None => {
                let mut end = prefix.clone();
                *end.last_mut().expect("prefix ends with a separator") += 1;
                end
            }
        };
        let mut deliveries: Vec<Delivery> = Vec::new();
        let mut next = None;
        for entry in self.index.range(prefix.as_slice()..upper.as_slice()).rev() {
            let (key, _) = entry?;
            let Some(id) = keys::last_part(&key) else {
                continue;
            };
            let Some(raw) = self.deliveries.get(id)? else {
                continue;
            };
            let delivery: Delivery = decode(&raw)?;
            if state.is_some_and(|s| s != delivery.state) {
                continue;
            }
            if deliveries.len() == limit {
                next = deliveries.last().map(|d| d.id.clone());
                break;
            }
            deliveries.push(delivery);
        }
        Ok(DeliveryPage { deliveries, next })
    }

    /// Every delivery of a job's events, oldest first.
    pub fn deliveries_of_job(&self, job: &JobId) -> Result<Vec<Delivery>> {
        self.deliveries_under(&keys::owner_prefix(keys::JOB_DELIVERIES, job.as_str()))
    }

    /// Every delivery to a subscription, oldest first.
    pub fn deliveries_of_subscription(&self, sub: &SubscriptionId) -> Result<Vec<Delivery>> {
        self.deliveries_under(&keys::owner_prefix(
            keys::SUBSCRIPTION_DELIVERIES,
            sub.as_str(),
        ))
    }

    fn deliveries_under(&self, prefix: &[u8]) -> Result<Vec<Delivery>> {
        let mut found = Vec::new();
        for entry in self.index.scan_prefix(prefix) {
            let (key, _) = entry?;
            let Some(id) = keys::last_part(&key) else {
                continue;
            };
            if let Some(raw) = self.deliveries.get(id)? {
                found.push(decode(&raw)?);
            }
        }
        Ok(found)
    }

    /// When the earliest delivery of `queue` is due.
    pub fn next_delivery_due_at(&self, queue: DeliveryQueue) -> Result<Option<Timestamp>> {
        let Some((key, _)) = self.queue.scan_prefix([queue.tag()]).next().transpose()? else {
            return Ok(None);
        };
        Ok(keys::parse_timed(&key)
            .and_then(|(ms, _)| chrono::DateTime::from_timestamp_millis(ms as i64)))
    }

    /// Deliveries waiting in `queue`.
    pub fn queued_deliveries(&self, queue: DeliveryQueue) -> usize {
        self.queue.scan_prefix([queue.tag()]).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Destination, Event};
    use crate::store::test_support::temp_store;

    fn failed_delivery(tenant: &Tenant, now: Timestamp) -> Delivery {
        let event = Event::test(tenant.clone(), now);
        let mut delivery = Delivery::new(
            &event,
            None,
            Destination::Callback {
                url: "http://127.0.0.1:9/cb".into(),
            },
            now,
        );
        delivery.state = DeliveryState::Failed;
        delivery.next_attempt_at = None;
        delivery
    }

    #[tokio::test]
    async fn update_delivery_requeues_and_is_scoped_to_the_tenant() {
        let (store, _dir) = temp_store();
        let now = chrono::Utc::now();
        let acme = Tenant::parse("acme").unwrap();
        let globex = Tenant::parse("globex").unwrap();
        let delivery = failed_delivery(&acme, now);
        store
            .insert_deliveries(std::slice::from_ref(&delivery))
            .unwrap();
        assert_eq!(store.queued_deliveries(DeliveryQueue::Fresh), 0);

        let other = store
            .update_delivery(&globex, &delivery.id, |_| true)
            .unwrap();
        assert!(matches!(other, DeliveryUpdate::NotFound));

        let declined = store
            .update_delivery(&acme, &delivery.id, |_| false)
            .unwrap();
        assert!(matches!(declined, DeliveryUpdate::Unchanged(_)));

        let updated = store
            .update_delivery(&acme, &delivery.id, |d| {
                d.state = DeliveryState::Pending;
                d.next_attempt_at = Some(now);
                true
            })
            .unwrap();
        let DeliveryUpdate::Updated(updated) = updated else {
            panic!("expected an update");
        };
        assert_eq!(updated.message_id, delivery.message_id);
        assert_eq!(store.queued_deliveries(DeliveryQueue::Fresh), 1);
        let claimed = store
            .claim_due_deliveries(DeliveryQueue::Fresh, now, 10, now)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].delivery.id, delivery.id);
    }
}
