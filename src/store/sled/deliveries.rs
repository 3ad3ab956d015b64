//! Deliveries and the worker's queue.

use std::any::Any;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use sled::{IVec, Transactional};

use super::record::{decode_delivery, encode_delivery, encode_new, Body};
use super::writer::{Tx, TxResult};
use super::{keys, tx_result, Result, SledStore, StoreError};
use crate::clock::Timestamp;
use crate::domain::{Delivery, DeliveryId, DeliveryState, JobId, Payload, SubscriptionId, Tenant};
use crate::store::{
    Claimed, DeliveryChange, DeliveryPage, DeliveryQueue, DeliveryUpdate, DestinationKey, Lease,
    Recorded, Room,
};

/// Event bodies read during one read of several deliveries, by event id.
type Bodies = HashMap<String, Payload>;

/// A queue entry found stale by a claim, with its delivery's key ([`key_of`]).
pub type StaleEntry = (Vec<u8>, String);

/// What became of a due entry a claim passed over for want of room.
enum Passed {
    /// It waits for its destination's room, in memory.
    Waiting,
    /// It is held back for a while (its queue stalled, see [`QueueState::stalled_since`]).
    HeldBack,
    /// Neither: the queue is blocked and the claim stops.
    Blocked,
}

/// Whether a claim scans its queue (again) when the entries it found run out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rescan {
    /// Yes: not scanned yet, or an entry was set waiting since a full scan.
    Yes,
    /// The last scan found all it looked for: again if an entry is set waiting since.
    IfWaiting,
    No,
}

impl Rescan {
    /// After an entry was passed over: scan again if it was set waiting since a full scan.
    fn after(self, passed: Passed) -> Rescan {
        match (self, passed) {
            (Rescan::IfWaiting, Passed::Waiting) => Rescan::Yes,
            (other, _) => other,
        }
    }
}

/// What one claim has found so far.
struct Claim {
    claimed: Vec<Claimed>,
    stale: Vec<StaleEntry>,
    /// The event bodies it has read.
    bodies: Bodies,
    now: Timestamp,
}

/// The due time of a queue entry (its millis) as a timestamp.
fn from_millis(ms: u64) -> Timestamp {
    chrono::DateTime::from_timestamp_millis(ms as i64).unwrap_or_default()
}

fn queue_tag(queue: DeliveryQueue) -> u8 {
    match queue {
        DeliveryQueue::Fresh => b'f',
        DeliveryQueue::Retry => b'r',
    }
}

/// A pending delivery's queue entry: its key ([`queue_key`]) and, as its value, its
/// destination's key (8 bytes, big-endian), so that a claim can pass over a destination
/// without room without reading the delivery.
fn queue_entry(delivery: &Delivery) -> Option<(Vec<u8>, [u8; 8])> {
    let destination = destination_of(delivery);
    Some((queue_key(delivery)?, destination.0.to_be_bytes()))
}

fn destination_of(delivery: &Delivery) -> DestinationKey {
    DestinationKey::of(delivery.destination.host())
}

/// The destination a queue entry's value names: none in an entry written before entries named
/// one (an empty value).
fn named_destination(value: &[u8]) -> Option<DestinationKey> {
    Some(DestinationKey(u64::from_be_bytes(value.try_into().ok()?)))
}

/// A delivery's key: of its record, and at the end of its queue entries ([`keys::delivery`]).
pub(super) fn key_of(delivery: &Delivery) -> String {
    keys::delivery(delivery.tenant.as_str(), delivery.id.as_str())
}

/// A pending delivery's queue entry key, `queue | due millis | delivery key`.
fn queue_key(delivery: &Delivery) -> Option<Vec<u8>> {
    queue_key_ending(delivery, &key_of(delivery))
}

/// A pending delivery's queue entry key ending with `end` (layouts before 4 ended it with the
/// delivery's id).
fn queue_key_ending(delivery: &Delivery, end: &str) -> Option<Vec<u8>> {
    if delivery.state != DeliveryState::Pending {
        return None;
    }
    let at = delivery.next_attempt_at?;
    Some(keys::timed(queue_tag(DeliveryQueue::of(delivery)), at, end))
}

/// Store new deliveries (`encoded` are their records, [`encode_new`]): each with its index and
/// queue entries, and each event's body once, however many deliveries it has (in the record of
/// an event's only delivery, else apart). The deliveries of one job stored together get one job
/// index entry for all of them (a fan-out of a hundred writes one).
pub(super) fn insert_deliveries_tx(
    tx: &Tx<'_>,
    deliveries: &[Delivery],
    encoded: &[Vec<u8>],
) -> TxResult<()> {
    let mut bodies_written: HashSet<&str> = HashSet::new();
    let mut of_job: Vec<(&JobId, Vec<&str>)> = Vec::new();
    for (delivery, bytes) in deliveries.iter().zip(encoded) {
        let id = delivery.id.as_str();
        if Body::of(bytes) == Body::Apart && bodies_written.insert(delivery.event_id.as_str()) {
            put_body_tx(tx.events, delivery)?;
        }
        tx.deliveries
            .insert(key_of(delivery).as_str(), bytes.as_slice())?;
        let index = tx.index;
        if let Some(job) = &delivery.job_id {
            match of_job.iter_mut().find(|(j, _)| *j == job) {
                Some((_, ids)) => ids.push(id),
                None => of_job.push((job, vec![id])),
            }
        }
        if let Some(key) = failed_key(delivery).filter(|_| delivery.state == DeliveryState::Failed)
        {
            index.insert(key, &[])?;
        }
        if let Some((key, destination)) = queue_entry(delivery) {
            tx.put_queued(&key, &destination)?;
        }
    }
    for (job, ids) in of_job {
        let key = keys::owned(keys::JOB_DELIVERIES, job.as_str(), ids[0]);
        // One delivery keeps the one-entry form (an empty value); several share a group.
        let value = if ids.len() == 1 {
            Vec::new()
        } else {
            keys::id_group(ids)
        };
        tx.index.insert(key, value)?;
    }
    Ok(())
}

/// The tenant of the job or subscription stored under `id` in `tree` (`None` if there is
/// none), the only field decoded.
fn owner(tree: &sled::Tree, id: &str) -> Result<Option<Tenant>> {
    #[derive(serde::Deserialize)]
    struct Owned {
        tenant: Tenant,
    }
    let Some(raw) = tree.get(id)? else {
        return Ok(None);
    };
    Ok(Some(super::decode::<Owned>(&raw)?.tenant))
}

/// The index key listing `delivery` among its subscription's failed deliveries (none for a job's
/// own callback), whatever its state.
pub(super) fn failed_key(delivery: &Delivery) -> Option<Vec<u8>> {
    let sub = delivery.destination.subscription_id()?;
    Some(keys::owned(
        keys::SUBSCRIPTION_FAILED,
        sub.as_str(),
        delivery.id.as_str(),
    ))
}

/// Store a delivery's event body under its event id (the same bytes for every delivery of
/// the event).
fn put_body_tx(events: &TransactionalTree, delivery: &Delivery) -> TxResult<()> {
    events.insert(
        delivery.event_id.as_str(),
        delivery.payload.json().as_bytes(),
    )?;
    Ok(())
}

/// An event body as stored, or an error naming the event if it is not there.
fn stored_payload(event_id: &str, raw: Option<IVec>) -> Result<Payload> {
    let raw =
        raw.ok_or_else(|| StoreError::Corrupt(format!("the body of event {event_id} is missing")))?;
    Payload::from_stored(&raw)
        .map_err(|e| StoreError::Corrupt(format!("the body of event {event_id}: {e}")))
}

/// The layout of the stored records, kept in the `meta` tree (as decimal text). Layout 1 kept
/// each event body inside each of its delivery records (JSON); layout 2 keeps it once, in
/// `events`; layout 3 lets the record of an event's only delivery hold its body (the record
/// form `record::Body::Inside`), which builds of layout 2 cannot read; layout 4 keys each record
/// by its tenant and id ([`keys::delivery`], no tenant index) and indexes a subscription's
/// failed deliveries only ([`keys::SUBSCRIPTION_FAILED`]): a pending delivery is two keys fewer.
/// A directory of a newer layout than this build's is refused, not misread.
const LAYOUT: u32 = 4;
const LAYOUT_KEY: &str = "layout";
/// Present while an upgrade to [`LAYOUT`] is under way: the layout it started from.
const UPGRADING_FROM_KEY: &str = "upgrading_from";
/// Records moved (or index entries rewritten) per transaction when upgrading.
const UPGRADE_BATCH: usize = 256;

/// Bring a directory of an earlier layout up to date, once, in steps that each leave every
/// record whole and can be taken again (a crash midway leaves both forms, and the next start
/// goes on): from layout 1, each delivery record that still holds its event's body has it
/// moved to `events`; before layout 4, a subscription's index of deliveries keeps only the
/// failed ones, and then each record moves to its tenant's key. A directory of a later layout
/// is refused.
pub(super) fn upgrade_layout(db: &sled::Db, trees: &super::writer::Trees) -> Result<()> {
    let meta = db.open_tree("meta")?;
    let stored = read_layout(&meta, LAYOUT_KEY)?;
    // An upgrade under way names the layout it started from.
    let upgrading = read_layout(&meta, UPGRADING_FROM_KEY)?;
    if let Some(layout) = stored.filter(|layout| *layout > LAYOUT) {
        return Err(StoreError::Unavailable(format!(
            "the data directory was written by a newer version of agenthook (record layout \
             {layout}; this version reads layouts up to {LAYOUT}): run that version or a later \
             one"
        )));
    }
    let from = match (stored, upgrading) {
        (Some(LAYOUT), None) => return Ok(()),
        (_, Some(from)) => Some(from),
        // Nothing to bring up to date (a new directory, or one without deliveries).
        (_, None) if trees.deliveries.is_empty() => return mark_layout(db, &meta),
        (stored, None) => {
            // Marked first, on disk before anything moves: a build of layout 3 refuses the
            // directory from now on (it would misread records already moved), and an
            // interrupted upgrade goes on at the next start.
            meta.insert(
                UPGRADING_FROM_KEY,
                stored.unwrap_or(1).to_string().as_bytes(),
            )?;
            mark_layout(db, &meta)?;
            stored
        }
    };
    tracing::info!(
        from,
        to = LAYOUT,
        "upgrading the data directory: every delivery record is rewritten once (about a \
         minute per million deliveries; safe to interrupt, it goes on at the next start)"
    );
    if from.is_none_or(|layout| layout < 2) {
        let moved = move_bodies_out_of_records(trees)?;
        if moved > 0 {
            tracing::info!(
                deliveries = moved,
                "stored event bodies once per event (layout 2)"
            );
        }
    }
    // Before the records move: it reads them by id.
    let (dropped, failed) = index_failed_deliveries_only(trees)?;
    if dropped > 0 {
        tracing::info!(
            entries = dropped,
            failed,
            "a subscription's index now lists its failed deliveries only (layout 4)"
        );
    }
    let rekeyed = key_records_by_tenant(trees)?;
    if rekeyed > 0 {
        tracing::info!(
            deliveries = rekeyed,
            "delivery records are now keyed by tenant (layout 4)"
        );
    }
    meta.remove(UPGRADING_FROM_KEY)?;
    db.flush()?;
    Ok(())
}

/// A layout number stored under `key` in `meta` (decimal text).
fn read_layout(meta: &sled::Tree, key: &str) -> Result<Option<u32>> {
    let Some(raw) = meta.get(key)? else {
        return Ok(None);
    };
    std::str::from_utf8(&raw)
        .ok()
        .and_then(|text| text.parse::<u32>().ok())
        .map(Some)
        .ok_or_else(|| StoreError::Corrupt(format!("the stored {key} is not a number")))
}

/// Layout 1 to 2: move each body a delivery record holds to `events`. How many moved.
fn move_bodies_out_of_records(trees: &super::writer::Trees) -> Result<usize> {
    let mut moved = 0usize;
    let mut batch: Vec<(IVec, Delivery)> = Vec::with_capacity(UPGRADE_BATCH);
    let mut entries = trees.deliveries.iter();
    loop {
        let entry = entries.next().transpose()?;
        let done = entry.is_none();
        if let Some((key, raw)) = entry {
            match decode_delivery(&raw) {
                Ok(delivery) if !delivery.payload.is_absent() && Body::of(&raw) == Body::Apart => {
                    batch.push((key, delivery))
                }
                Ok(_) => {}
                // Left as it is: reading it fails as it did before, and the service starts.
                Err(error) => tracing::error!(
                    delivery_id = %String::from_utf8_lossy(&key),
                    %error,
                    "a stored delivery cannot be decoded; left as it is"
                ),
            }
        }
        if batch.len() >= UPGRADE_BATCH || (done && !batch.is_empty()) {
            move_bodies_out(&trees.deliveries, &trees.events, &batch)?;
            moved += batch.len();
            batch.clear();
        }
        if done {
            return Ok(moved);
        }
    }
}

/// The start of every index entry under the prefix `name` (`name \0 ...`).
fn entries_of(name: &str) -> Vec<u8> {
    [name.as_bytes(), &[keys::SEP]].concat()
}

/// The keys of the first [`UPGRADE_BATCH`] entries of `index` under `prefix` (an upgrade step
/// removes the entries of each batch, so the next call finds the next ones).
fn first_batch(index: &sled::Tree, prefix: &[u8]) -> Result<Vec<IVec>> {
    let keys = index.scan_prefix(prefix).keys().take(UPGRADE_BATCH);
    Ok(keys.collect::<std::result::Result<_, _>>()?)
}

/// Before layout 4: each delivery to a subscription had an index entry; now only a failed one
/// has (under another prefix). Each batch of old entries is removed, with the new entries of
/// its failed deliveries written, in one atomic batch. How many old entries went, and how many
/// failed deliveries are indexed.
fn index_failed_deliveries_only(trees: &super::writer::Trees) -> Result<(usize, usize)> {
    let prefix = entries_of(keys::SUBSCRIPTION_DELIVERIES_BEFORE_4);
    let (mut dropped, mut failed) = (0usize, 0usize);
    loop {
        let old = first_batch(&trees.index, &prefix)?;
        if old.is_empty() {
            return Ok((dropped, failed));
        }
        let mut batch = sled::Batch::default();
        for key in &old {
            let stored = match keys::last_part(key) {
                Some(id) => trees.deliveries.get(id)?,
                None => None,
            };
            // An unreadable record is left out of the index, as it is out of every listing.
            let delivery = stored.and_then(|raw| decode_delivery(&raw).ok());
            if let Some(new) = delivery
                .filter(|d| d.state == DeliveryState::Failed)
                .and_then(|d| failed_key(&d))
            {
                batch.insert(new, &[]);
                failed += 1;
            }
            batch.remove(key.clone());
        }
        trees.index.apply_batch(batch)?;
        dropped += old.len();
    }
}

/// Before layout 4 a delivery's record was keyed by its id alone, its queue entry ended with the
/// id, and the index listed it under its tenant (`dt \0 tenant \0 id`). Each batch of those
/// entries has its records moved to their deliveries' keys ([`key_of`]) as they are, with the
/// queue entries of those that can be decoded, and the entries removed, in one transaction (an
/// unreadable record moves too, and its old entry, which names no record any more, is dropped
/// by the first claim that meets it). Then any record still keyed by id alone, which no entry
/// listed, moves if it can be decoded. How many moved.
fn key_records_by_tenant(trees: &super::writer::Trees) -> Result<usize> {
    let prefix = entries_of(keys::TENANT_DELIVERIES_BEFORE_4);
    let mut moved = 0usize;
    loop {
        let listed = first_batch(&trees.index, &prefix)?;
        if listed.is_empty() {
            break;
        }
        moved += move_listed(trees, &prefix, &listed)?;
    }
    // Each with its tenant.
    let mut batch: Vec<(String, Tenant)> = Vec::with_capacity(UPGRADE_BATCH);
    // One walk: a record moved lands under a key with a separator, which the walk passes over.
    let mut entries = trees.deliveries.iter();
    loop {
        let entry = entries.next().transpose()?;
        let done = entry.is_none();
        if let Some((key, raw)) = entry.filter(|(key, _)| !key.contains(&keys::SEP)) {
            let id = std::str::from_utf8(&key).map_err(|e| StoreError::Corrupt(e.to_string()));
            match id.and_then(|id| Ok((id.to_owned(), decode_delivery(&raw)?.tenant))) {
                Ok(found) => batch.push(found),
                // Left as it is: no one can read it, and nothing names its tenant.
                Err(error) => tracing::error!(
                    delivery_id = %String::from_utf8_lossy(&key),
                    %error,
                    "a stored delivery cannot be decoded; left as it is"
                ),
            }
        }
        if batch.len() >= UPGRADE_BATCH || (done && !batch.is_empty()) {
            move_to_tenant_keys(trees, &batch)?;
            moved += batch.len();
            batch.clear();
        }
        if done {
            return Ok(moved);
        }
    }
}

/// Move the records that the tenant entries `listed` (under `prefix`) name ([`move_record_tx`]),
/// and remove the entries, in one transaction. How many records moved.
fn move_listed(trees: &super::writer::Trees, prefix: &[u8], listed: &[IVec]) -> Result<usize> {
    let trees = (&trees.deliveries, &trees.queue, &trees.index);
    let result = trees.transaction(|(deliveries, queue, index)| {
        let mut moved = 0usize;
        for entry in listed {
            index.remove(entry)?;
            let named = std::str::from_utf8(&entry[prefix.len()..]).ok();
            let Some((tenant, id)) = named.and_then(|n| n.split_once(char::from(keys::SEP))) else {
                continue;
            };
            if move_record_tx(deliveries, queue, tenant, id)? {
                moved += 1;
            }
        }
        Ok(moved)
    });
    tx_result(result)
}

/// Move records keyed by id alone, each of `tenant` ([`move_record_tx`]), in one transaction.
fn move_to_tenant_keys(trees: &super::writer::Trees, batch: &[(String, Tenant)]) -> Result<()> {
    let trees = (&trees.deliveries, &trees.queue);
    let result = trees.transaction(|(deliveries, queue)| {
        for (id, tenant) in batch {
            move_record_tx(deliveries, queue, tenant.as_str(), id)?;
        }
        Ok(())
    });
    tx_result(result)
}

/// Move the record keyed by `id` alone, as it is, to its delivery's key under `tenant`, with
/// its queue entry when it can be decoded. Whether there was such a record.
fn move_record_tx(
    deliveries: &TransactionalTree,
    queue: &TransactionalTree,
    tenant: &str,
    id: &str,
) -> TxResult<bool> {
    let Some(raw) = deliveries.remove(id)? else {
        return Ok(false);
    };
    let key = keys::delivery(tenant, id);
    if let Ok(delivery) = decode_delivery(&raw) {
        let entries = (
            queue_key_ending(&delivery, id),
            queue_key_ending(&delivery, &key),
        );
        if let (Some(old), Some(new)) = entries {
            if let Some(destination) = queue.remove(old)? {
                queue.insert(new, destination)?;
            }
        }
    }
    deliveries.insert(key.as_bytes(), raw)?;
    Ok(true)
}

/// Record that the directory has this build's layout, on disk before anything is written in it.
fn mark_layout(db: &sled::Db, meta: &sled::Tree) -> Result<()> {
    meta.insert(LAYOUT_KEY, LAYOUT.to_string().as_bytes())?;
    db.flush()?;
    Ok(())
}

/// Move the bodies of deliveries (`key`, as decoded) whose records still hold them to
/// `events`, each record rewritten without it, in one transaction.
fn move_bodies_out(
    deliveries: &sled::Tree,
    events: &sled::Tree,
    batch: &[(IVec, Delivery)],
) -> Result<()> {
    let result = (deliveries, events).transaction(|(deliveries, events)| {
        for (key, delivery) in batch {
            put_body_tx(events, delivery)?;
            deliveries.insert(key, encode_delivery(delivery, Body::Apart))?;
        }
        Ok(())
    });
    tx_result(result)
}

/// The body of [`SledStore::update_delivery`], inside a transaction. `claimed` is a delivery
/// already in hand with the bytes it was read as: while those are still what is stored, it is
/// taken instead of decoding them again.
fn update_delivery_tx(
    tx: &Tx<'_>,
    tenant: &Tenant,
    id: &DeliveryId,
    claimed: Option<(&[u8], &Delivery)>,
    change: &dyn Fn(&mut Delivery) -> bool,
) -> TxResult<DeliveryUpdate> {
    let key = keys::delivery(tenant.as_str(), id.as_str());
    let Some(raw) = tx.deliveries.get(key.as_str())? else {
        return Ok(DeliveryUpdate::NotFound);
    };
    // The claimed copy, when the record is still as claimed: no decoding, and one clone.
    let stored: Cow<'_, Delivery> = match claimed {
        Some((bytes, delivery)) if raw == bytes => Cow::Borrowed(delivery),
        _ => Cow::Owned(with_body_tx(tx.events, &raw, claimed.map(|(_, d)| d))?),
    };
    let mut changed = Delivery::clone(&stored);
    if !change(&mut changed) {
        return Ok(DeliveryUpdate::Unchanged(stored.into_owned()));
    }
    let failed = |d: &Delivery| d.state == DeliveryState::Failed;
    if failed(&stored) != failed(&changed) {
        if let Some(key) = failed_key(&changed) {
            if failed(&changed) {
                tx.index.insert(key, &[])?;
            } else {
                tx.index.remove(key)?;
            }
        }
    }
    let (old_entry, new_entry) = (queue_entry(&stored), queue_entry(&changed));
    if old_entry != new_entry {
        if let Some((key, _)) = old_entry {
            tx.remove_queued(&key)?;
        }
        if let Some((key, destination)) = new_entry {
            tx.put_queued(&key, &destination)?;
        }
    }
    tx.deliveries
        .insert(key.as_str(), encode_delivery(&changed, Body::of(&raw)))?;
    Ok(DeliveryUpdate::Updated(changed))
}

/// A record (`raw`) read in a transaction, with its event's body: its own if it holds it, else
/// the claimed delivery's if it is of the same event, else the stored one. A JSON record of the
/// first layout holds its own too (written by an earlier version after the upgrade ran): that
/// body is written to `events` now, since the record will be written back without it.
fn with_body_tx(
    events: &TransactionalTree,
    raw: &[u8],
    claimed: Option<&Delivery>,
) -> TxResult<Delivery> {
    let mut stored = decode_delivery(raw).map_err(ConflictableTransactionError::Abort)?;
    if !stored.payload.is_absent() {
        if Body::of(raw) == Body::Apart {
            put_body_tx(events, &stored)?;
        }
        return Ok(stored);
    }
    let event = stored.event_id.as_str();
    stored.payload = match claimed {
        Some(delivery) if delivery.event_id == stored.event_id => delivery.payload.clone(),
        _ => stored_payload(event, events.get(event)?)
            .map_err(ConflictableTransactionError::Abort)?,
    };
    Ok(stored)
}

/// Which deliveries the worker holds now, in memory.
///
/// A claim writes nothing: the delivery's queue entry stays where it is until its attempt is
/// recorded (which moves or removes it in the same transaction). While claimed, the entry is
/// skipped, so one attempt is never sent twice at once; a claim ends when its attempt is on
/// disk, or when its task ends any other way (then the entry is simply due again). This is
/// sound because only one process can open a sled directory: no one else claims. After a
/// crash, the entries of interrupted attempts are due at once: they are sent again, with the
/// same `webhook-id` (at least once).
///
/// A queue entry names its delivery's destination (its value, see [`queue_entry`]). A claim
/// passes over a due entry whose destination has no room without reading the delivery: the
/// entry waits in memory, with the others of its destination, oldest first, and the next claim
/// that finds room there takes it before anything further in the queue.
#[derive(Clone, Default)]
pub(super) struct Claims(Arc<Mutex<ClaimState>>);

#[derive(Default)]
struct ClaimState {
    /// Deliveries being sent: their keys ([`key_of`], what their queue entries end with), with
    /// the queue entry each was claimed by.
    sending: HashMap<String, IVec>,
    /// Deliveries put back for want of room, by key: not to be claimed before the time given.
    held_back: HashMap<String, Timestamp>,
    /// Deliveries waiting for their destination's room: their keys, with their entries (see
    /// [`QueueState::waiting`]).
    waiting: HashMap<String, IVec>,
    /// Fresh, then retry.
    queues: [QueueState; 2],
}

#[derive(Default)]
struct QueueState {
    /// Queue entries found due by the last scan, in order, not yet taken: claims take from
    /// here and scan the queue again only when it runs out, so a backlog is scanned once per
    /// [`PREFETCH`] claims, not once per dispatch. Each is checked against the stored delivery
    /// when taken.
    due: VecDeque<DueEntry>,
    /// Entries passed over for want of room, by destination, oldest first.
    waiting: HashMap<DestinationKey, VecDeque<IVec>>,
    /// Entries in `waiting`.
    waiting_len: usize,
    /// Where the next scan goes on from: after this entry, the last one the previous scan
    /// looked at. Entries before it are taken, being sent, waiting or in `due`. Whatever may
    /// leave one there clears it: a claim released without its attempt recorded (or whose
    /// record failed), a delivery put back or held back, a scan that passed a held-back entry
    /// or another entry of a delivery being sent or waiting, a claim that found its delivery
    /// moved, or failed. An entry written there moves the next scan's start back to it
    /// ([`QueueCounts::take_earliest_written`](super::counts::QueueCounts)). Without it a scan
    /// would walk past every entry being sent or waiting at the head of the queue.
    cursor: Option<IVec>,
    /// The last claim stopped at an entry it could neither take nor set waiting
    /// ([`WAITING_LIMIT`]): nothing further in this queue is due before the next claim (an
    /// attempt that ends wakes the worker for one, and it claims at least once a second).
    blocked: bool,
    /// When the queue was first blocked since an entry waiting in it was last taken. Blocked
    /// for [`STALL_LIMIT`] without one taken, it stops waiting for its busy destinations: their
    /// entries past the limit are held back for [`BUSY_HOLD`] instead, and the claims go on
    /// past them (a receiver that hangs must not hold up every other one).
    stalled_since: Option<Timestamp>,
}

/// A due queue entry: its key and its value (see [`named_destination`]).
struct DueEntry {
    key: IVec,
    destination: IVec,
}

/// Where [`ClaimState::queues`] keeps `queue`'s state.
fn slot(queue: DeliveryQueue) -> usize {
    usize::from(queue == DeliveryQueue::Retry)
}

/// Due queue entries kept beyond what a claim asked for.
const PREFETCH: usize = 256;
/// Entries waiting for room, at most, per queue. Past that a claim stops at the first entry
/// whose destination has none, and the queue waits for an attempt to end, for as long as the
/// waiting entries are being taken ([`QueueState::stalled_since`]).
const WAITING_LIMIT: usize = 4096;
/// How long a queue blocked with no waiting entry taken waits before it goes past them.
const STALL_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);
/// How long an entry past the waiting limit of a stalled queue is held back.
const BUSY_HOLD: std::time::Duration = std::time::Duration::from_millis(50);

impl Claims {
    fn lock(&self) -> std::sync::MutexGuard<'_, ClaimState> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ClaimState {
    fn queue(&mut self, queue: DeliveryQueue) -> &mut QueueState {
        &mut self.queues[slot(queue)]
    }

    /// Whether the entry `key` may be claimed at `now`.
    fn may_claim(&self, key: &[u8], now: Timestamp) -> bool {
        let Some((due, delivery_key)) = keys::parse_timed(key) else {
            return false;
        };
        matches!(self.claimable_at(delivery_key, from_millis(due)), Some(at) if at <= now)
    }

    /// When the first of `keys` (queue entries, in order) that is not claimed may be claimed.
    /// Held-back entries count from when they may go again; entries being sent or waiting are
    /// passed over (up to [`WAITING_LIMIT`] and [`HELD_BACK_LIMIT`] of them).
    fn earliest(&self, entries: impl Iterator<Item = Result<IVec>>) -> Result<Option<Timestamp>> {
        let mut earliest: Option<Timestamp> = None;
        for key in entries {
            let key = key?;
            let Some((due, delivery_key)) = keys::parse_timed(&key) else {
                continue;
            };
            let due = from_millis(due);
            if earliest.is_some_and(|e| e <= due) {
                break;
            }
            if let Some(at) = self.claimable_at(delivery_key, due) {
                earliest = Some(earliest.map_or(at, |e| e.min(at)));
            }
        }
        Ok(earliest)
    }

    /// When the entry for `delivery_key`, due at `due`, may be claimed; `None` while it is being
    /// sent or waits for its destination's room (an attempt that ends makes room, and wakes the
    /// worker).
    fn claimable_at(&self, delivery_key: &str, due: Timestamp) -> Option<Timestamp> {
        if self.sending.contains_key(delivery_key) || self.waiting.contains_key(delivery_key) {
            return None;
        }
        Some(
            self.held_back
                .get(delivery_key)
                .map_or(due, |until| (*until).max(due)),
        )
    }

    /// Whether the entry `key` itself is being sent or waits for its destination's room (not
    /// another entry of its delivery: one written since, by a retry recorded or asked for).
    fn is_taken(&self, key: &[u8]) -> bool {
        keys::parse_timed(key).is_some_and(|(_, delivery_key)| {
            let taken = |by: Option<&IVec>| by.is_some_and(|k| k[..] == *key);
            taken(self.sending.get(delivery_key)) || taken(self.waiting.get(delivery_key))
        })
    }

    /// Let the entry `key` of `queue` wait for `destination`'s room; `false` when the queue has
    /// [`WAITING_LIMIT`] waiting already.
    fn wait(&mut self, queue: DeliveryQueue, destination: DestinationKey, key: IVec) -> bool {
        let Some((_, delivery_key)) = keys::parse_timed(&key) else {
            return true;
        };
        let delivery_key = delivery_key.to_owned();
        let state = self.queue(queue);
        if state.waiting_len >= WAITING_LIMIT {
            return false;
        }
        state.waiting_len += 1;
        state
            .waiting
            .entry(destination)
            .or_default()
            .push_back(key.clone());
        self.waiting.insert(delivery_key, key);
        true
    }

    /// Let `entry` wait for `destination`'s room. When [`WAITING_LIMIT`] entries of `queue`
    /// wait already: hold it back if the queue has been stalled for [`STALL_LIMIT`] (and
    /// fewer than [`HELD_BACK_LIMIT`] are held back), else put it back at the head of the
    /// entries found and block the queue.
    fn wait_or_block(
        &mut self,
        queue: DeliveryQueue,
        destination: DestinationKey,
        entry: DueEntry,
        now: Timestamp,
    ) -> Passed {
        if self.wait(queue, destination, entry.key.clone()) {
            return Passed::Waiting;
        }
        let stalled_since = *self.queue(queue).stalled_since.get_or_insert(now);
        if crate::clock::after(stalled_since, STALL_LIMIT) <= now {
            if let Some((_, delivery_key)) = keys::parse_timed(&entry.key) {
                let delivery_key = delivery_key.to_owned();
                if self.hold_back(delivery_key, crate::clock::after(now, BUSY_HOLD), now) {
                    // Behind where the scans go on from: the next one starts over.
                    self.queue(queue).cursor = None;
                    return Passed::HeldBack;
                }
            }
        }
        let state = self.queue(queue);
        state.due.push_front(entry);
        state.blocked = true;
        Passed::Blocked
    }

    /// Let the delivery `delivery_key` be claimed no earlier than `until`, unless
    /// [`HELD_BACK_LIMIT`] are held back until after `expired` (`false`).
    fn hold_back(&mut self, delivery_key: String, until: Timestamp, expired: Timestamp) -> bool {
        if !self.room_to_hold_back(expired) {
            return false;
        }
        self.held_back.insert(delivery_key, until);
        true
    }

    /// Whether fewer than [`HELD_BACK_LIMIT`] deliveries are held back, once those whose time
    /// came by `expired` are let go (they hold nothing back any more).
    fn room_to_hold_back(&mut self, expired: Timestamp) -> bool {
        if self.held_back.len() >= HELD_BACK_LIMIT {
            self.held_back.retain(|_, until| *until > expired);
        }
        self.held_back.len() < HELD_BACK_LIMIT
    }

    /// The oldest entry of `queue` waiting for `destination`, no longer waiting.
    fn take_waiting(&mut self, queue: DeliveryQueue, destination: DestinationKey) -> Option<IVec> {
        let state = self.queue(queue);
        let keys = state.waiting.get_mut(&destination)?;
        let key = keys.pop_front();
        state.stalled_since = None;
        if keys.is_empty() {
            state.waiting.remove(&destination);
        }
        let key = key?;
        state.waiting_len -= 1;
        if let Some((_, delivery_key)) = keys::parse_timed(&key) {
            self.waiting.remove(delivery_key);
        }
        Some(key)
    }

    /// Send every scan back to the head of its queue.
    fn rewind(&mut self) {
        for queue in &mut self.queues {
            queue.cursor = None;
        }
    }
}

/// The lease of a delivery the worker holds (see [`Claims`]), with the bytes its record was
/// read as. Dropping it releases the claim.
struct SledLease {
    /// Its delivery's key.
    delivery_key: String,
    stored: IVec,
    claims: Claims,
    /// Its queue's [`slot`].
    queue: usize,
    /// Its attempt is recorded: its queue entry has moved on or is gone.
    recorded: AtomicBool,
}

impl Lease for SledLease {
    fn put_back(self: Box<Self>, at: Timestamp) {
        let mut state = self.claims.lock();
        state.queues[self.queue].cursor = None;
        // Held even past the limit: otherwise the worker would claim it again at once.
        state.room_to_hold_back(at);
        state.held_back.insert(self.delivery_key.clone(), at);
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
}

impl Drop for SledLease {
    fn drop(&mut self) {
        let mut state = self.claims.lock();
        state.sending.remove(&self.delivery_key);
        if !self.recorded.load(Ordering::Acquire) {
            // Its entry is where it was, before where the scans go on from.
            state.queues[self.queue].cursor = None;
        }
    }
}

/// Past this many held-back deliveries, those free to go again are forgotten.
const HELD_BACK_LIMIT: usize = 4096;

/// How long a delivery whose record cannot be read is left alone before it is tried again.
const UNREADABLE_HOLD: std::time::Duration = std::time::Duration::from_secs(60);

impl SledStore {
    /// Store deliveries that no job transition caused (test events, say), queued at once.
    pub async fn insert_deliveries(&self, deliveries: Vec<Delivery>) -> Result<()> {
        let encoded = encode_new(&deliveries);
        self.writer
            .write_rows(deliveries.len(), move |tx| {
                insert_deliveries_tx(tx, &deliveries, &encoded)
            })
            .await
    }

    /// The delivery `delivery_key` stored as `raw`, with its event's body, to be claimed: a JSON
    /// record of the first layout (written by an earlier version) has its body moved out first,
    /// so that recording the attempt, which writes the record without it, cannot lose it.
    /// Returns the record's bytes as stored now. `bodies` are the event bodies this claim read
    /// already.
    fn read_for_claim(
        &self,
        delivery_key: &str,
        raw: IVec,
        bodies: &mut Bodies,
    ) -> Result<(IVec, Delivery)> {
        let mut decoded = decode_delivery(&raw)?;
        if decoded.payload.is_absent() {
            self.attach_body(&mut decoded, bodies)?;
            return Ok((raw, decoded));
        }
        if Body::of(&raw) == Body::Inside {
            return Ok((raw, decoded));
        }
        move_bodies_out(
            &self.deliveries,
            &self.events,
            &[(IVec::from(delivery_key.as_bytes()), decoded.clone())],
        )?;
        Ok((IVec::from(encode_delivery(&decoded, Body::Apart)), decoded))
    }

    /// The delivery stored as `raw`, with its event's body (from `bodies`, the ones this read
    /// has met already, or stored, then kept there).
    fn read_delivery(&self, raw: &[u8], bodies: &mut Bodies) -> Result<Delivery> {
        let mut delivery = decode_delivery(raw)?;
        self.attach_body(&mut delivery, bodies)?;
        Ok(delivery)
    }

    /// Put a delivery's event body back, unless its record held it: the one in `bodies`, or the
    /// stored one, read once and kept there (the deliveries of a fan-out share one body).
    fn attach_body(&self, delivery: &mut Delivery, bodies: &mut Bodies) -> Result<()> {
        if !delivery.payload.is_absent() {
            return Ok(());
        }
        let event = delivery.event_id.as_str();
        delivery.payload = match bodies.get(event) {
            Some(body) => body.clone(),
            None => {
                let body = stored_payload(event, self.events.get(event)?)?;
                bodies.insert(event.to_owned(), body.clone());
                body
            }
        };
        Ok(())
    }

    /// Claim up to `limit` deliveries from `queue` that are due at `now`, to destinations with
    /// `room` (see [`Claims`]). A claim writes nothing; queue entries their deliveries no longer
    /// have are returned, for [`SledStore::remove_stale_entries`], and a record of the first
    /// layout has its body moved out.
    pub fn claim_due_deliveries(
        &self,
        queue: DeliveryQueue,
        now: Timestamp,
        limit: usize,
        room: Room,
    ) -> Result<(Vec<Claimed>, Vec<StaleEntry>)> {
        let mut claim = Claim {
            claimed: Vec::with_capacity(limit.min(PREFETCH)),
            stale: Vec::new(),
            bodies: Bodies::new(),
            now,
        };
        let mut state = self.claims.lock();
        let claimed = self.claim_locked(&mut state, queue, limit, room, &mut claim);
        if claimed.is_err() {
            // Entries taken from memory and not claimed are where the scans have been.
            state.queue(queue).cursor = None;
        }
        drop(state);
        claimed?;
        Ok((claim.claimed, claim.stale))
    }

    fn claim_locked(
        &self,
        state: &mut ClaimState,
        queue: DeliveryQueue,
        limit: usize,
        mut room: Room,
        claim: &mut Claim,
    ) -> Result<()> {
        let now = claim.now;
        state.queue(queue).blocked = false;
        // First the entries waiting for destinations that have room now.
        let ready: Vec<DestinationKey> = state
            .queue(queue)
            .waiting
            .keys()
            .filter(|destination| room.of(**destination) > 0)
            .copied()
            .collect();
        for destination in ready {
            while claim.claimed.len() < limit && room.of(destination) > 0 {
                let Some(key) = state.take_waiting(queue, destination) else {
                    break;
                };
                if !state.may_claim(&key, now) {
                    continue;
                }
                if let Some((raw, delivery)) = self.read_entry(state, &key, claim)? {
                    room.take(destination);
                    let claimed = self.lease(state, queue, &key, raw, delivery);
                    claim.claimed.push(claimed);
                }
            }
        }
        // Then further along the queue. The queue is scanned again when the entries found run
        // out, once, or for as long as each scan finds as many as it looked for and some of
        // them were set waiting (the claim makes progress, and ends with every due entry
        // looked at, taken, or the queue blocked).
        let mut scan = Rescan::Yes;
        while claim.claimed.len() < limit {
            let Some(entry) = state.queue(queue).due.pop_front() else {
                if matches!(scan, Rescan::No | Rescan::IfWaiting) {
                    break;
                }
                let want = (limit - claim.claimed.len()).saturating_add(PREFETCH);
                let found = self.scan_due(state, queue, now, want)?;
                scan = if found.len() == want {
                    Rescan::IfWaiting
                } else {
                    Rescan::No
                };
                state.queue(queue).due = found;
                continue;
            };
            if !state.may_claim(&entry.key, now) {
                continue;
            }
            let named = named_destination(&entry.destination);
            if let Some(busy) = named.filter(|d| room.of(*d) == 0) {
                match state.wait_or_block(queue, busy, entry, now) {
                    Passed::Blocked => break,
                    passed => scan = scan.after(passed),
                }
                continue;
            }
            let Some((raw, delivery)) = self.read_entry(state, &entry.key, claim)? else {
                continue;
            };
            // An entry that names no destination (written by an earlier version) is read
            // first: its delivery's destination decides.
            let destination = named.unwrap_or_else(|| destination_of(&delivery));
            if !room.take(destination) {
                match state.wait_or_block(queue, destination, entry, now) {
                    Passed::Blocked => break,
                    passed => scan = scan.after(passed),
                }
                continue;
            }
            let claimed = self.lease(state, queue, &entry.key, raw, delivery);
            claim.claimed.push(claimed);
        }
        Ok(())
    }

    /// The delivery of the due entry `key`, read to be claimed, with its record's bytes;
    /// `None` if it cannot be now: its record is gone or has moved on (the entry goes to
    /// `claim.stale` if it is still stored) or cannot be read (then it is held back for a
    /// minute).
    fn read_entry(
        &self,
        state: &mut ClaimState,
        key: &IVec,
        claim: &mut Claim,
    ) -> Result<Option<(IVec, Delivery)>> {
        let Some((_, delivery_key)) = keys::parse_timed(key) else {
            return Ok(None);
        };
        state.held_back.remove(delivery_key);
        let read = match self.deliveries.get(delivery_key)? {
            None => None,
            Some(raw) => match self.read_for_claim(delivery_key, raw, &mut claim.bodies) {
                Ok(read) => Some(read),
                Err(StoreError::Corrupt(error)) => {
                    let id = keys::last_part(delivery_key.as_bytes()).unwrap_or(delivery_key);
                    tracing::error!(
                        delivery_id = id,
                        %error,
                        "a stored delivery cannot be read; tried again in a minute"
                    );
                    let until = crate::clock::after(claim.now, UNREADABLE_HOLD);
                    state.held_back.insert(delivery_key.to_owned(), until);
                    // Held back behind where the scans go on from: the next one starts over.
                    state.rewind();
                    return Ok(None);
                }
                Err(other) => return Err(other),
            },
        };
        let Some((raw, delivery)) = read else {
            claim.stale.push((key.to_vec(), delivery_key.to_owned()));
            return Ok(None);
        };
        if queue_key(&delivery).as_deref() != Some(&key[..]) {
            // Moved since the scan (a manual retry, say), maybe behind where the scans go on
            // from; or an entry left behind.
            state.rewind();
            if self.queue.contains_key(key)? {
                claim.stale.push((key.to_vec(), delivery_key.to_owned()));
            }
            return Ok(None);
        }
        Ok(Some((raw, delivery)))
    }

    /// Claim a delivery of `queue` read by [`SledStore::read_entry`].
    fn lease(
        &self,
        state: &mut ClaimState,
        queue: DeliveryQueue,
        key: &IVec,
        raw: IVec,
        delivery: Delivery,
    ) -> Claimed {
        let delivery_key = key_of(&delivery);
        state.sending.insert(delivery_key.clone(), key.clone());
        Claimed {
            delivery: Arc::new(delivery),
            lease: Box::new(SledLease {
                delivery_key,
                stored: raw,
                claims: self.claims.clone(),
                queue: slot(queue),
                recorded: AtomicBool::new(false),
            }),
        }
    }

    /// Up to `want` entries of `queue` due at `now` that may be claimed, in order, from where
    /// the last scan stopped (see [`QueueState::cursor`]); the cursor moves on.
    fn scan_due(
        &self,
        state: &mut ClaimState,
        queue: DeliveryQueue,
        now: Timestamp,
        want: usize,
    ) -> Result<VecDeque<DueEntry>> {
        let tag = queue_tag(queue);
        // The first entry that can have been written since, if any.
        let written = (self.counts.take_earliest_written(slot(queue)))
            .map(|due| keys::timed(tag, from_millis(due), ""));
        let start: Bound<Vec<u8>> = match (state.queue(queue).cursor.take(), written) {
            (Some(after), Some(from)) if from[..] <= after[..] => Bound::Included(from),
            (Some(after), _) => Bound::Excluded(after.to_vec()),
            (None, _) => Bound::Included(vec![tag]),
        };
        let end = keys::timed_upper(tag, now);
        let empty = !matches!(&start, Bound::Included(k) | Bound::Excluded(k) if *k < end);
        let mut found = VecDeque::new();
        let mut last: Option<IVec> = None;
        let mut passed_held = false;
        if !empty {
            for entry in self.queue.range((start, Bound::Excluded(end))) {
                if found.len() >= want {
                    break;
                }
                let (key, destination) = entry?;
                if state.may_claim(&key, now) {
                    found.push_back(DueEntry {
                        key: key.clone(),
                        destination,
                    });
                } else if !state.is_taken(&key) {
                    // Held back: claimable later, so the next scan must look here again.
                    passed_held = true;
                }
                last = Some(key);
            }
        }
        state.queue(queue).cursor = if passed_held { None } else { last };
        Ok(found)
    }

    /// Drop queue entries that their deliveries no longer have (none is left behind by the
    /// writes here; this keeps the queue clean whatever happened before).
    pub async fn remove_stale_entries(&self, entries: Vec<StaleEntry>) -> Result<()> {
        self.writer
            .write_rows(entries.len(), move |tx| {
                for (key, delivery) in &entries {
                    let current = match tx.deliveries.get(delivery.as_str())? {
                        Some(raw) => queue_key(
                            &decode_delivery(&raw).map_err(ConflictableTransactionError::Abort)?,
                        ),
                        None => None,
                    };
                    if current.as_deref() != Some(key.as_slice()) {
                        tx.remove_queued(key)?;
                    }
                }
                Ok(())
            })
            .await
    }

    /// Change a claimed delivery (its attempt recorded) as [`SledStore::update_delivery`]
    /// does, answered once on disk with what it left stored (`None`: the delivery is gone, or
    /// the change declined). Changes made together share one transaction and one fsync. The
    /// claim goes into the write and is released when the writer drops it, before answering.
    pub async fn update_claimed(
        &self,
        claim: Claimed,
        change: DeliveryChange,
    ) -> Result<Option<Recorded>> {
        let Claimed { delivery, lease } = claim;
        let lease = lease
            .into_any()
            .downcast::<SledLease>()
            .map_err(|_| StoreError::Corrupt("a claim of another store".into()))?;
        let recorded = self
            .writer
            .write(move |tx| {
                let d = &*delivery;
                let update = update_delivery_tx(
                    tx,
                    &d.tenant,
                    &d.id,
                    Some((lease.stored.as_ref(), d)),
                    &change,
                )?;
                // The changed record stays on this thread: only its outcome goes back.
                Ok(match update {
                    DeliveryUpdate::Updated(changed) => {
                        lease.recorded.store(true, Ordering::Release);
                        Some(Recorded {
                            state: changed.state,
                            attempts: changed.attempts.len(),
                        })
                    }
                    DeliveryUpdate::Unchanged(_) | DeliveryUpdate::NotFound => None,
                })
            })
            .await;
        if recorded.is_err() {
            // A transaction that did not commit may have marked its lease recorded: its entry
            // is where it was.
            self.claims.lock().rewind();
        }
        recorded
    }

    /// Change a tenant's delivery atomically against concurrent writers (the worker recording
    /// an attempt), moving its queue entry. `change` returns `false` to leave it as it is; it
    /// may run more than once.
    pub async fn update_delivery(
        &self,
        tenant: &Tenant,
        id: &DeliveryId,
        change: DeliveryChange,
    ) -> Result<DeliveryUpdate> {
        let (tenant, id) = (tenant.clone(), id.clone());
        self.writer
            .write(move |tx| update_delivery_tx(tx, &tenant, &id, None, &change))
            .await
    }

    pub fn delivery(&self, tenant: &Tenant, id: &DeliveryId) -> Result<Option<Delivery>> {
        self.deliveries
            .get(keys::delivery(tenant.as_str(), id.as_str()))?
            .map(|raw| self.read_delivery(&raw, &mut Bodies::new()))
            .transpose()
    }

    /// A tenant's deliveries, newest first, optionally in one state, after the cursor.
    pub fn list_deliveries(
        &self,
        tenant: &Tenant,
        state: Option<DeliveryState>,
        after: Option<&DeliveryId>,
        limit: usize,
    ) -> Result<DeliveryPage> {
        let prefix = keys::deliveries_of(tenant.as_str());
        let upper = match after {
            Some(id) => keys::delivery(tenant.as_str(), id.as_str()).into_bytes(),
            None => {
                let mut end = prefix.clone();
                *end.last_mut().expect("prefix ends with a separator") += 1;
                end
            }
        };
        let mut deliveries: Vec<Delivery> = Vec::new();
        let mut next = None;
        let mut bodies = Bodies::new();
        for entry in self
            .deliveries
            .range(prefix.as_slice()..upper.as_slice())
            .rev()
        {
            let (_, raw) = entry?;
            let delivery = self.read_delivery(&raw, &mut bodies)?;
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
        let Some(tenant) = owner(&self.jobs, job.as_str())? else {
            return Ok(Vec::new());
        };
        let prefix = keys::owner_prefix(keys::JOB_DELIVERIES, job.as_str());
        self.deliveries_under(&tenant, &prefix)
    }

    /// A subscription's failed deliveries, oldest first.
    pub fn failed_deliveries_of_subscription(&self, sub: &SubscriptionId) -> Result<Vec<Delivery>> {
        let Some(tenant) = owner(&self.subscriptions, sub.as_str())? else {
            return Ok(Vec::new());
        };
        let prefix = keys::owner_prefix(keys::SUBSCRIPTION_FAILED, sub.as_str());
        let mut failed = self.deliveries_under(&tenant, &prefix)?;
        // The index and the records are written together; this only guards the contract.
        failed.retain(|d| d.state == DeliveryState::Failed);
        Ok(failed)
    }

    /// The deliveries of `tenant` an index lists under `prefix`.
    fn deliveries_under(&self, tenant: &Tenant, prefix: &[u8]) -> Result<Vec<Delivery>> {
        let mut found = Vec::new();
        let mut bodies = Bodies::new();
        for entry in self.index.scan_prefix(prefix) {
            let (key, value) = entry?;
            for id in keys::delivery_ids(&key, &value) {
                let key = keys::delivery(tenant.as_str(), id);
                if let Some(raw) = self.deliveries.get(key.as_str())? {
                    found.push(self.read_delivery(&raw, &mut bodies)?);
                }
            }
        }
        Ok(found)
    }

    /// When the earliest delivery of `queue` that is not claimed may be claimed (`None` while
    /// the queue is blocked: an attempt that ends wakes the worker).
    pub fn next_delivery_due_at(&self, queue: DeliveryQueue) -> Result<Option<Timestamp>> {
        let state = self.claims.lock();
        let queue_state = &state.queues[slot(queue)];
        if queue_state.blocked {
            return Ok(None);
        }
        let buffered = queue_state.due.iter().map(|entry| Ok(entry.key.clone()));
        if let Some(at) = state.earliest(buffered)? {
            return Ok(Some(at));
        }
        let stored = self.queue.scan_prefix([queue_tag(queue)]).map(|entry| {
            let (key, _) = entry?;
            Ok(key)
        });
        state.earliest(stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Destination, Event, Subscription};
    use crate::store::Storage;

    /// The store as the service sees it.
    fn api(store: &SledStore) -> &dyn Storage {
        store
    }

    fn queued(store: &SledStore, queue: DeliveryQueue) -> usize {
        let counts = store.counts.read();
        (match queue {
            DeliveryQueue::Fresh => counts.deliveries_fresh,
            DeliveryQueue::Retry => counts.deliveries_retry,
        }) as usize
    }
    use crate::store::sled::test_support::{open_when_free, reopen, temp_store};

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

    const HOST_A: &str = "http://127.0.0.1:9001";
    const HOST_B: &str = "http://127.0.0.2:9002";

    /// Fresh deliveries, one to each URL, due a millisecond apart in that order, the last one
    /// at `now`.
    async fn queue_to(store: &SledStore, urls: &[String], now: Timestamp) -> Vec<Delivery> {
        let tenant = Tenant::parse("acme").unwrap();
        let deliveries: Vec<Delivery> = urls
            .iter()
            .enumerate()
            .map(|(i, url)| {
                let at = now - chrono::Duration::milliseconds((urls.len() - 1 - i) as i64);
                let event = Event::test(tenant.clone(), at);
                let destination = Destination::Callback { url: url.clone() };
                let mut delivery = Delivery::new(&event, None, destination, at);
                delivery.state = DeliveryState::Pending;
                delivery.next_attempt_at = Some(at);
                delivery
            })
            .collect();
        api(store)
            .insert_deliveries(deliveries.clone())
            .await
            .unwrap();
        deliveries
    }

    fn urls(hosts: &[&str]) -> Vec<String> {
        hosts.iter().map(|host| format!("{host}/hook")).collect()
    }

    /// The room of a worker whose requests to `HOST_A` are all taken but `free`.
    fn room_at_a(free: usize) -> Room {
        Room::new(8, [(HOST_A, free)])
    }

    fn ids(claimed: &[Claimed]) -> Vec<DeliveryId> {
        claimed.iter().map(|c| c.delivery.id.clone()).collect()
    }

    #[tokio::test]
    async fn a_claim_passes_over_a_destination_without_room_unread_and_takes_its_deliveries_first_once_it_has_room(
    ) {
        let (store, _dir) = temp_store();
        let now = chrono::Utc::now();
        let queued = queue_to(&store, &urls(&[HOST_A, HOST_A, HOST_B, HOST_A]), now).await;
        let (a1, a2, b1, a3) = (&queued[0], &queued[1], &queued[2], &queued[3]);
        // A2's record is gone: a claim that read it would report its entry as stale.
        store.deliveries.remove(key_of(a2)).unwrap();

        let (claimed, stale) = store
            .claim_due_deliveries(DeliveryQueue::Fresh, now, 10, room_at_a(0))
            .unwrap();
        assert_eq!(ids(&claimed), vec![b1.id.clone()]);
        assert!(stale.is_empty(), "A's deliveries were read: {stale:?}");
        // A's wait for an attempt to end (which wakes the worker): nothing is due meanwhile.
        assert_eq!(
            store.next_delivery_due_at(DeliveryQueue::Fresh).unwrap(),
            None
        );

        let (first, _) = store
            .claim_due_deliveries(DeliveryQueue::Fresh, now, 10, room_at_a(1))
            .unwrap();
        assert_eq!(ids(&first), vec![a1.id.clone()], "the oldest of A's first");

        let (rest, stale) = store
            .claim_due_deliveries(DeliveryQueue::Fresh, now, 10, room_at_a(8))
            .unwrap();
        assert_eq!(ids(&rest), vec![a3.id.clone()]);
        let stale: HashSet<&str> = stale.iter().map(|(_, key)| key.as_str()).collect();
        assert_eq!(
            stale,
            HashSet::from([key_of(a2).as_str()]),
            "A2's entry, read now"
        );
        drop((claimed, first, rest));
    }

    #[tokio::test]
    async fn an_entry_that_names_no_destination_is_read_and_waits_for_its_room_too() {
        let (store, _dir) = temp_store();
        let now = chrono::Utc::now();
        let queued = queue_to(&store, &urls(&[HOST_A, HOST_B]), now).await;
        // As an earlier version wrote it: no destination in the entry.
        let key = queue_key(&queued[0]).unwrap();
        assert_eq!(
            store.queue.get(&key).unwrap().as_deref(),
            Some(DestinationKey::of(HOST_A).0.to_be_bytes().as_slice())
        );
        store.queue.insert(&key, &[]).unwrap();

        let (claimed, stale) = store
            .claim_due_deliveries(DeliveryQueue::Fresh, now, 10, room_at_a(0))
            .unwrap();
        assert_eq!(ids(&claimed), vec![queued[1].id.clone()]);
        assert!(stale.is_empty());
        let (claimed_a, _) = store
            .claim_due_deliveries(DeliveryQueue::Fresh, now, 10, room_at_a(1))
            .unwrap();
        assert_eq!(ids(&claimed_a), vec![queued[0].id.clone()]);
        drop(claimed);
    }

    #[tokio::test]
    async fn past_the_waiting_limit_a_queue_waits_for_its_busy_destination_while_it_makes_progress()
    {
        let (store, _dir) = temp_store();
        let now = chrono::Utc::now();
        let mut hosts = vec![HOST_A; WAITING_LIMIT + 2];
        hosts.push(HOST_B);
        let queued = queue_to(&store, &urls(&hosts), now).await;
        let b = queued.last().unwrap().id.clone();
        let at = |ms: i64| now + chrono::Duration::milliseconds(ms);
        let claim = |ms: i64, room: Room| {
            store
                .claim_due_deliveries(DeliveryQueue::Fresh, at(ms), usize::MAX, room)
                .unwrap()
                .0
        };

        let mut all = claim(0, room_at_a(0));
        assert!(all.is_empty(), "B is behind more than the limit");
        // Blocked: only an attempt that ends can change that, and it wakes the worker.
        assert_eq!(
            store.next_delivery_due_at(DeliveryQueue::Fresh).unwrap(),
            None
        );
        assert!(claim(900, room_at_a(0)).is_empty(), "not stalled for long");
        // A makes progress: one of its waiting deliveries goes.
        let progress = claim(900, room_at_a(1));
        assert_eq!(ids(&progress), ids_of(&queued[..1]));
        all.extend(progress);
        assert!(
            claim(1_500, room_at_a(0)).is_empty(),
            "stalled since 900 ms only"
        );
        // A second without progress: the claim goes past A's deliveries beyond the limit.
        let past = claim(2_000, room_at_a(0));
        assert_eq!(ids(&past), vec![b]);
        all.extend(past);
        // Those held back go again a little later.
        all.extend(claim(3_000, Room::unlimited()));
        assert_eq!(all.len(), queued.len(), "every one is claimed once");
        let distinct: HashSet<DeliveryId> = ids(&all).into_iter().collect();
        assert_eq!(distinct.len(), queued.len());
    }

    #[tokio::test]
    async fn scans_go_on_from_where_they_stopped_yet_find_what_comes_back_or_is_written_before() {
        let (store, _dir) = temp_store();
        let now = chrono::Utc::now();
        let queued = queue_to(&store, &urls(&[HOST_B; 2 * PREFETCH]), now).await;
        let claim = |limit| {
            store
                .claim_due_deliveries(DeliveryQueue::Fresh, now, limit, Room::unlimited())
                .unwrap()
                .0
        };
        let first = claim(10);
        assert_eq!(ids(&first), ids_of(&queued[..10]));
        assert!(
            store.claims.lock().queues[0].cursor.is_some(),
            "a partial scan"
        );
        // Released without their attempts recorded: due again.
        drop(first);
        // Written due before everything queued.
        let earlier = queue_to(&store, &urls(&[HOST_A]), now - chrono::Duration::seconds(5)).await;

        let mut again = HashSet::new();
        let mut held = Vec::new();
        loop {
            let batch = claim(64);
            if batch.is_empty() {
                break;
            }
            for claimed in &batch {
                assert!(again.insert(claimed.delivery.id.clone()), "claimed twice");
            }
            held.extend(batch);
        }
        let mut expected: HashSet<DeliveryId> = ids_of(&queued).into_iter().collect();
        expected.insert(earlier[0].id.clone());
        assert_eq!(again, expected);
    }

    #[tokio::test]
    async fn a_stalled_queue_holds_back_no_more_than_its_limit_and_its_claims_end() {
        let (store, _dir) = temp_store();
        let now = chrono::Utc::now();
        let hosts = vec![HOST_A; WAITING_LIMIT + HELD_BACK_LIMIT + PREFETCH + 100];
        queue_to(&store, &urls(&hosts), now).await;
        let at = |ms: i64| now + chrono::Duration::milliseconds(ms);
        // Stalled from the first claim on; a second later each claim holds back some of A's
        // deliveries beyond the waiting limit, and ends, until no more may be held back.
        for ms in [0].into_iter().chain(1_500..1_540) {
            let (claimed, _) = store
                .claim_due_deliveries(DeliveryQueue::Fresh, at(ms), 8, room_at_a(0))
                .unwrap();
            assert!(claimed.is_empty());
            let state = store.claims.lock();
            assert!(state.held_back.len() <= HELD_BACK_LIMIT);
            assert_eq!(state.queues[0].waiting_len, WAITING_LIMIT);
        }
        {
            let state = store.claims.lock();
            assert_eq!(state.held_back.len(), HELD_BACK_LIMIT);
            assert!(
                state.queues[0].blocked,
                "held back all it may, then blocked"
            );
        }
        // Room again: A's waiting deliveries go first, oldest first.
        let (claimed, _) = store
            .claim_due_deliveries(DeliveryQueue::Fresh, at(1_545), 8, room_at_a(8))
            .unwrap();
        assert_eq!(claimed.len(), 8);
    }

    #[tokio::test]
    async fn a_waiting_delivery_moved_by_a_manual_retry_is_claimed_at_its_new_place() {
        let (store, _dir) = temp_store();
        let now = chrono::Utc::now();
        let mut hosts = vec![HOST_A];
        hosts.extend([HOST_B; 2 * PREFETCH]);
        let queued = queue_to(&store, &urls(&hosts), now).await;
        let a = queued[0].clone();
        let claim = |ms: i64, room: Room| {
            let at = now + chrono::Duration::milliseconds(ms);
            store
                .claim_due_deliveries(DeliveryQueue::Fresh, at, 10, room)
                .unwrap()
                .0
        };
        let mut held = claim(0, room_at_a(0));
        assert!(!ids(&held).contains(&a.id), "A waits");
        // Sent again now: a new entry, ahead of where the scans have been.
        let moved = store
            .update_delivery(
                &a.tenant,
                &a.id,
                Box::new(move |d| {
                    d.next_attempt_at = Some(now + chrono::Duration::milliseconds(5));
                    true
                }),
            )
            .await
            .unwrap();
        assert!(matches!(moved, DeliveryUpdate::Updated(_)));
        // Scanned while A still waits at its old place; then A has room.
        loop {
            let batch = claim(10, room_at_a(0));
            if batch.is_empty() {
                break;
            }
            held.extend(batch);
        }
        let found = claim(10, room_at_a(8));
        assert_eq!(ids(&found), vec![a.id.clone()]);
    }

    fn ids_of(deliveries: &[Delivery]) -> Vec<DeliveryId> {
        deliveries.iter().map(|d| d.id.clone()).collect()
    }

    #[tokio::test]
    async fn update_delivery_requeues_and_is_scoped_to_the_tenant() {
        let (store, _dir) = temp_store();
        let now = chrono::Utc::now();
        let acme = Tenant::parse("acme").unwrap();
        let globex = Tenant::parse("globex").unwrap();
        let delivery = failed_delivery(&acme, now);
        api(&store)
            .insert_deliveries(vec![delivery.clone()])
            .await
            .unwrap();
        assert_eq!(queued(&store, DeliveryQueue::Fresh), 0);

        let other = store
            .update_delivery(&globex, &delivery.id, Box::new(|_| true))
            .await
            .unwrap();
        assert!(matches!(other, DeliveryUpdate::NotFound));

        let declined = store
            .update_delivery(&acme, &delivery.id, Box::new(|_| false))
            .await
            .unwrap();
        assert!(matches!(declined, DeliveryUpdate::Unchanged(_)));

        let updated = store
            .update_delivery(
                &acme,
                &delivery.id,
                Box::new(move |d| {
                    d.state = DeliveryState::Pending;
                    d.next_attempt_at = Some(now);
                    true
                }),
            )
            .await
            .unwrap();
        let DeliveryUpdate::Updated(updated) = updated else {
            panic!("expected an update");
        };
        assert_eq!(updated.message_id, delivery.message_id);
        assert_eq!(queued(&store, DeliveryQueue::Fresh), 1);
        let claimed = api(&store)
            .claim_due_deliveries(DeliveryQueue::Fresh, now, 10, Room::unlimited())
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].delivery.id, delivery.id);
    }

    /// A job stored as accepted upstream (agent `agent`) at `at`.
    async fn accepted_job(
        store: &SledStore,
        tenant: &Tenant,
        agent: &str,
        at: Timestamp,
    ) -> crate::domain::Job {
        let mut job = crate::domain::Job::new(
            tenant.clone(),
            Default::default(),
            None,
            Default::default(),
            at,
        );
        job.accepted(agent.into(), at, at);
        assert!(api(store)
            .accept_job(job.clone(), false, None)
            .await
            .unwrap());
        job
    }

    #[tokio::test]
    async fn a_fan_out_has_one_job_index_entry_read_like_one_per_delivery_and_retention_clears_it()
    {
        use crate::domain::JobStatus;
        let (store, _dir) = temp_store();
        let start = chrono::Utc::now() - chrono::Duration::hours(2);
        let acme = Tenant::parse("acme").unwrap();
        let job = accepted_job(&store, &acme, "agent-fan", start).await;
        let event = Event::test(acme.clone(), start);
        let fan_out: Vec<Delivery> = (0..3)
            .map(|i| {
                let url = format!("http://127.0.0.1:9/r{i}");
                let mut d = Delivery::new(
                    &event,
                    Some(job.id.clone()),
                    Destination::Callback { url },
                    start,
                );
                d.state = DeliveryState::Succeeded;
                d.next_attempt_at = None;
                d
            })
            .collect();
        let mut done = job.clone();
        done.finish(JobStatus::Ready, None, start);
        assert!(api(&store)
            .complete_job(&done, fan_out.clone())
            .await
            .unwrap());
        // A delivery stored later on its own (a resend) keeps the one-entry form; it failed,
        // to a subscription, which lists it among its dead letters.
        let sub = stored_subscription(&store, &acme).await;
        let mut single = failed_delivery(&acme, start);
        single.job_id = Some(job.id.clone());
        single.destination = Destination::subscription(&sub);
        api(&store)
            .insert_deliveries(vec![single.clone()])
            .await
            .unwrap();
        assert_eq!(
            indexed(&store, keys::SUBSCRIPTION_FAILED, &sub.id),
            vec![single.id.to_string()]
        );

        let prefix = keys::owner_prefix(keys::JOB_DELIVERIES, job.id.as_str());
        let entries: Vec<(IVec, IVec)> = store
            .index
            .scan_prefix(&prefix)
            .map(|e| e.unwrap())
            .collect();
        assert_eq!(
            entries.len(),
            2,
            "one entry for the fan-out, one for the resend"
        );
        assert!(entries.iter().any(|(_, v)| v.is_empty()));
        let mut listed: Vec<DeliveryId> = api(&store)
            .deliveries_of_job(&job.id)
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.id)
            .collect();
        let mut expected: Vec<DeliveryId> = fan_out
            .iter()
            .chain([&single])
            .map(|d| d.id.clone())
            .collect();
        listed.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        expected.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        assert_eq!(listed, expected);

        let report = api(&store)
            .purge_finished_before(chrono::Utc::now(), None, 10)
            .await
            .unwrap();
        assert_eq!((report.jobs, report.deliveries), (1, 4));
        assert_eq!(
            store.index.scan_prefix(&prefix).count(),
            0,
            "no index entry left"
        );
        assert!(indexed(&store, keys::SUBSCRIPTION_FAILED, &sub.id).is_empty());
        assert!(store.deliveries.is_empty(), "every record removed");
        assert!(api(&store)
            .deliveries_of_job(&job.id)
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn retention_keeps_a_job_whose_delivery_cannot_be_read_and_goes_on() {
        use crate::domain::JobStatus;
        let (store, _dir) = temp_store();
        let start = chrono::Utc::now() - chrono::Duration::hours(2);
        let acme = Tenant::parse("acme").unwrap();
        let mut ids = Vec::new();
        for name in ["agent-damaged", "agent-fine"] {
            let job = accepted_job(&store, &acme, name, start).await;
            let mut delivery = failed_delivery(&acme, start);
            delivery.job_id = Some(job.id.clone());
            let mut done = job.clone();
            done.finish(JobStatus::Ready, None, start);
            assert!(api(&store)
                .complete_job(&done, vec![delivery.clone()])
                .await
                .unwrap());
            ids.push((job.id, delivery.id));
        }
        // The first job's delivery, damaged: its body no longer UTF-8.
        let raw = store
            .deliveries
            .get(keys::delivery("acme", ids[0].1.as_str()))
            .unwrap()
            .unwrap();
        let mut damaged = raw.to_vec();
        *damaged.last_mut().unwrap() = 0xff;
        store
            .deliveries
            .insert(keys::delivery("acme", ids[0].1.as_str()), damaged.clone())
            .unwrap();

        let report = api(&store)
            .purge_finished_before(chrono::Utc::now(), None, 10)
            .await
            .unwrap();
        assert_eq!((report.jobs, report.deliveries), (1, 1), "the readable one");
        assert!(store.jobs.get(ids[0].0.as_str()).unwrap().is_some(), "kept");
        assert_eq!(
            store
                .deliveries
                .get(keys::delivery("acme", ids[0].1.as_str()))
                .unwrap()
                .as_deref(),
            Some(damaged.as_slice()),
            "left as it is"
        );
        assert!(store.jobs.get(ids[1].0.as_str()).unwrap().is_none());
    }

    fn due_delivery(tenant: &Tenant, now: Timestamp) -> Delivery {
        let mut delivery = failed_delivery(tenant, now);
        delivery.state = DeliveryState::Pending;
        delivery.next_attempt_at = Some(now);
        delivery
    }

    /// A store with two deliveries of tenant `acme`, due `now`.
    async fn two_due() -> (
        SledStore,
        tempfile::TempDir,
        Timestamp,
        Tenant,
        [Delivery; 2],
    ) {
        let (store, dir) = temp_store();
        let now = chrono::Utc::now();
        let acme = Tenant::parse("acme").unwrap();
        let (one, two) = (due_delivery(&acme, now), due_delivery(&acme, now));
        api(&store)
            .insert_deliveries(vec![one.clone(), two.clone()])
            .await
            .unwrap();
        (store, dir, now, acme, [one, two])
    }

    fn claim_ids(store: &SledStore, now: Timestamp) -> (Vec<Claimed>, Vec<DeliveryId>) {
        let (claimed, _stale) = store
            .claim_due_deliveries(DeliveryQueue::Fresh, now, 10, Room::unlimited())
            .unwrap();
        let ids = claimed.iter().map(|c| c.delivery.id.clone()).collect();
        (claimed, ids)
    }

    #[tokio::test]
    async fn a_claim_writes_nothing_and_holds_its_delivery_until_the_attempt_is_on_disk() {
        let (store, _dir, now, acme, [one, two]) = two_due().await;
        let stored = |id: &DeliveryId| store.delivery(&acme, id).unwrap().unwrap();
        let stored_one = serde_json::to_string(&stored(&one.id)).unwrap();

        let (mut claimed, mut ids) = claim_ids(&store, now);
        ids.sort();
        let mut expected = vec![one.id.clone(), two.id.clone()];
        expected.sort();
        assert_eq!(ids, expected);
        // Ids made in the same millisecond need not sort in the order made.
        if claimed[0].delivery.id != one.id {
            claimed.swap(0, 1);
        }
        assert_eq!(serde_json::to_string(&stored(&one.id)).unwrap(), stored_one);
        assert_eq!(queued(&store, DeliveryQueue::Fresh), 2);
        assert!(claim_ids(&store, now).1.is_empty(), "claimed twice");
        assert_eq!(
            store.next_delivery_due_at(DeliveryQueue::Fresh).unwrap(),
            None
        );

        // A claim whose task ends without a record is due again at once.
        drop(claimed.pop());
        assert_eq!(claim_ids(&store, now).1, vec![two.id.clone()]);

        // Recording the attempt moves the entry, then releases the claim.
        let later = now + chrono::Duration::seconds(30);
        let first = claimed.pop().unwrap();
        let update = store
            .update_claimed(
                first,
                Box::new(move |d| {
                    d.next_attempt_at = Some(later);
                    d.updated_at = later;
                    true
                }),
            )
            .await
            .unwrap();
        let pending = Recorded {
            state: DeliveryState::Pending,
            attempts: 0,
        };
        assert_eq!(update, Some(pending));
        assert_eq!(stored(&one.id).next_attempt_at, Some(later));
        assert_eq!(claim_ids(&store, now).1, vec![two.id.clone()]);
        let (_held, mut ids) = claim_ids(&store, later);
        ids.sort();
        assert_eq!(ids, expected);
    }

    #[tokio::test]
    async fn an_event_body_is_stored_once_for_all_its_deliveries_and_not_in_their_records() {
        let (store, _dir) = temp_store();
        let now = chrono::Utc::now();
        let acme = Tenant::parse("acme").unwrap();
        let event = Event::test(acme.clone(), now);
        let url = |i: usize| Destination::Callback {
            url: format!("http://127.0.0.1:9/cb{i}"),
        };
        let deliveries: Vec<Delivery> = (0..3)
            .map(|i| Delivery::new(&event, None, url(i), now))
            .collect();
        api(&store)
            .insert_deliveries(deliveries.clone())
            .await
            .unwrap();

        assert_eq!(store.events.len(), 1);
        for d in &deliveries {
            let raw = store.deliveries.get(key_of(d)).unwrap().unwrap();
            assert_ne!(raw[0], b'{', "written in the binary form");
            assert!(decode_delivery(&raw).unwrap().payload.is_absent());
            assert!(raw.len() < 300, "{} bytes", raw.len());
            let read = store.delivery(&acme, &d.id).unwrap().unwrap();
            assert_eq!(read.payload.json(), d.payload.json());
        }
        let claimed = api(&store)
            .claim_due_deliveries(DeliveryQueue::Fresh, now, 10, Room::unlimited())
            .await
            .unwrap();
        assert_eq!(claimed.len(), 3);
        assert!(claimed
            .iter()
            .all(|c| c.delivery.payload.value() == &event.payload()));
    }

    #[tokio::test]
    async fn an_events_only_delivery_holds_its_body_through_its_claim_and_record() {
        let (store, _dir) = temp_store();
        let now = chrono::Utc::now();
        let acme = Tenant::parse("acme").unwrap();
        let event = Event::test(acme.clone(), now);
        let url = Destination::Callback {
            url: "http://127.0.0.1:9/cb".into(),
        };
        let delivery = Delivery::new(&event, None, url, now);
        api(&store)
            .insert_deliveries(vec![delivery.clone()])
            .await
            .unwrap();

        assert_eq!(store.events.len(), 0, "no body apart");
        let stored = || store.deliveries.get(key_of(&delivery)).unwrap().unwrap();
        assert_eq!(Body::of(&stored()), Body::Inside);
        let read = store.delivery(&acme, &delivery.id).unwrap().unwrap();
        assert_eq!(read.payload.value(), &event.payload());

        let mut claimed = api(&store)
            .claim_due_deliveries(DeliveryQueue::Fresh, now, 10, Room::unlimited())
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].delivery.payload.value(), &event.payload());
        record_success(&store, claimed.remove(0)).await;

        assert_eq!(Body::of(&stored()), Body::Inside, "kept in its form");
        let read = store.delivery(&acme, &delivery.id).unwrap().unwrap();
        assert_eq!(read.state, DeliveryState::Succeeded);
        assert_eq!(read.payload.value(), &event.payload());
        assert_eq!(store.events.len(), 0);
    }

    #[tokio::test]
    async fn records_of_the_first_layout_are_upgraded_on_open_and_read_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let now = chrono::Utc::now();
        let acme = Tenant::parse("acme").unwrap();
        let event = Event::test(acme.clone(), now);
        let delivery = due_delivery(&acme, now);
        let mut delivery = Delivery::new(&event, None, delivery.destination, now);
        delivery.next_attempt_at = Some(now);
        {
            let store = SledStore::open(dir.path(), 8 * 1024 * 1024).unwrap();
            api(&store)
                .insert_deliveries(vec![delivery.clone()])
                .await
                .unwrap();
            // Written as layout 1 did: the body inside the record, nothing in `events`.
            let mut record = serde_json::to_value(&delivery).unwrap();
            record["payload"] = event.payload();
            as_before_layout_4(&store, &delivery, serde_json::to_vec(&record).unwrap());
            store.events.clear().unwrap();
            store.db.open_tree("meta").unwrap().clear().unwrap();
            store.flush_now().unwrap();
        }

        let store = reopen(dir.path());
        let raw = store.deliveries.get(key_of(&delivery)).unwrap().unwrap();
        assert!(
            decode_delivery(&raw).unwrap().payload.is_absent(),
            "moved out"
        );
        let read = store.delivery(&acme, &delivery.id).unwrap().unwrap();
        assert_eq!(read.payload.value(), &event.payload());
        assert_eq!(read.message_id, delivery.message_id);
        assert_eq!(queued(&store, DeliveryQueue::Fresh), 1, "still queued");
        let claimed = api(&store)
            .claim_due_deliveries(DeliveryQueue::Fresh, now, 10, Room::unlimited())
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].delivery.payload.value(), &event.payload());
    }

    /// Store `delivery` as layouts before 4 did, its record (`raw`) keyed by its id alone: its
    /// queue entry ending with the id, an index entry under its tenant.
    fn as_before_layout_4(store: &SledStore, delivery: &Delivery, raw: Vec<u8>) {
        store.deliveries.remove(key_of(delivery)).unwrap();
        store.deliveries.insert(delivery.id.as_str(), raw).unwrap();
        let id = delivery.id.as_str();
        if let Some(new) = queue_key(delivery) {
            let destination = store.queue.remove(new).unwrap().unwrap();
            let old = queue_key_ending(delivery, id).unwrap();
            store.queue.insert(old, destination).unwrap();
        }
        let tenant = delivery.tenant.as_str();
        let listed = keys::owned(keys::TENANT_DELIVERIES_BEFORE_4, tenant, id);
        store.index.insert(listed, &[]).unwrap();
    }

    #[tokio::test]
    async fn a_directory_of_a_newer_layout_is_refused_and_one_of_layout_2_is_taken_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let (acme, now) = (Tenant::parse("acme").unwrap(), chrono::Utc::now());
        let delivery = due_delivery(&acme, now);
        let set_layout = |store: &SledStore, layout: &str| {
            let meta = store.db.open_tree("meta").unwrap();
            meta.insert(LAYOUT_KEY, layout.as_bytes()).unwrap();
            store.flush_now().unwrap();
        };
        {
            let store = open_when_free(dir.path()).unwrap();
            api(&store)
                .insert_deliveries(vec![delivery.clone()])
                .await
                .unwrap();
            set_layout(&store, "5");
        }

        let message = open_when_free(dir.path()).unwrap_err().to_string();
        assert!(
            message.contains("newer version") && message.contains("layout 5"),
            "{message}"
        );

        {
            // Written back as a build of layout 2 would have left it.
            let db = (0..200)
                .find_map(|_| {
                    sled::open(dir.path()).ok().or_else(|| {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                        None
                    })
                })
                .expect("the store stayed locked");
            db.open_tree("meta")
                .unwrap()
                .insert(LAYOUT_KEY, &b"2"[..])
                .unwrap();
            db.flush().unwrap();
        }
        let store = open_when_free(dir.path()).unwrap();
        let meta = store.db.open_tree("meta").unwrap();
        assert_eq!(meta.get(LAYOUT_KEY).unwrap().as_deref(), Some(&b"4"[..]));
        let read = store.delivery(&acme, &delivery.id).unwrap().unwrap();
        assert_eq!(read.payload.json(), delivery.payload.json());
    }

    /// A subscription of `tenant`, stored.
    async fn stored_subscription(store: &SledStore, tenant: &Tenant) -> Subscription {
        let now = chrono::Utc::now();
        let sub = Subscription {
            id: SubscriptionId::generate(),
            tenant: tenant.clone(),
            url: format!("{HOST_A}/hooks"),
            event_types: vec![crate::domain::EventType::AgentReady],
            format: crate::domain::Format::Standard,
            description: None,
            enabled: true,
            disabled_reason: None,
            secrets: crate::domain::SecretSet::new("whsec_x".into()),
            failing_since: None,
            rate_limit_per_second: None,
            created_at: now,
            updated_at: now,
        };
        store.save_subscription(&sub).await.unwrap();
        sub
    }

    /// A delivery to `sub`, `state` (a pending one due `now`).
    fn to_subscription(sub: &Subscription, now: Timestamp, state: DeliveryState) -> Delivery {
        let mut delivery = due_delivery(&sub.tenant, now);
        delivery.destination = Destination::subscription(sub);
        if state == DeliveryState::Failed {
            delivery.state = state;
            delivery.next_attempt_at = None;
        }
        delivery
    }

    /// The ids listed under an index prefix.
    fn indexed(store: &SledStore, prefix: &str, sub: &SubscriptionId) -> Vec<String> {
        store
            .index
            .scan_prefix(keys::owner_prefix(prefix, sub.as_str()))
            .keys()
            .map(|key| keys::last_part(&key.unwrap()).unwrap().to_owned())
            .collect()
    }

    #[tokio::test]
    async fn a_subscription_indexes_its_deliveries_while_they_are_failed_and_only_then() {
        let (store, _dir) = temp_store();
        let (acme, now) = (Tenant::parse("acme").unwrap(), chrono::Utc::now());
        let (one, two) = (
            stored_subscription(&store, &acme).await,
            stored_subscription(&store, &acme).await,
        );
        let pending = to_subscription(&one, now, DeliveryState::Pending);
        let failed = to_subscription(&two, now, DeliveryState::Failed);
        api(&store)
            .insert_deliveries(vec![pending.clone(), failed.clone()])
            .await
            .unwrap();
        assert!(indexed(&store, keys::SUBSCRIPTION_FAILED, &one.id).is_empty());
        assert_eq!(
            indexed(&store, keys::SUBSCRIPTION_FAILED, &two.id),
            vec![failed.id.to_string()]
        );

        // Fails for good: listed; sent again: no longer.
        let fail = |d: &mut Delivery| {
            d.state = DeliveryState::Failed;
            d.next_attempt_at = None;
            true
        };
        api(&store)
            .update_delivery(&acme, &pending.id, Box::new(fail))
            .await
            .unwrap();
        let listed = api(&store)
            .failed_deliveries_of_subscription(&one.id)
            .await
            .unwrap();
        assert_eq!(ids_of(&listed), vec![pending.id.clone()]);
        let again = move |d: &mut Delivery| {
            d.state = DeliveryState::Pending;
            d.next_attempt_at = Some(now);
            true
        };
        api(&store)
            .update_delivery(&acme, &pending.id, Box::new(again))
            .await
            .unwrap();
        assert!(indexed(&store, keys::SUBSCRIPTION_FAILED, &one.id).is_empty());
        assert!(api(&store)
            .failed_deliveries_of_subscription(&one.id)
            .await
            .unwrap()
            .is_empty());
    }

    /// A directory as layout 3 left it (`interrupted`: as an upgrade to layout 4 left it when
    /// stopped after it had moved the first five records): more than an upgrade batch of
    /// deliveries to a subscription of `acme`, one failed, one no tenant entry lists, and an
    /// unreadable record (the last of them); two of `globex`, one failed. The deliveries, with `acme`'s subscription and
    /// `globex`'s.
    async fn layout_3_directory(
        path: &std::path::Path,
        interrupted: bool,
    ) -> (Vec<Delivery>, Subscription, Subscription) {
        let now = chrono::Utc::now();
        let (acme, globex) = (
            Tenant::parse("acme").unwrap(),
            Tenant::parse("globex").unwrap(),
        );
        let store = open_when_free(path).unwrap();
        let sub = stored_subscription(&store, &acme).await;
        let other = stored_subscription(&store, &globex).await;
        let mut all: Vec<Delivery> = (0..UPGRADE_BATCH + 10)
            .map(|_| to_subscription(&sub, now, DeliveryState::Pending))
            .collect();
        all[UPGRADE_BATCH + 3].state = DeliveryState::Failed;
        all[UPGRADE_BATCH + 3].next_attempt_at = None;
        all.push(to_subscription(&other, now, DeliveryState::Failed));
        all.push(to_subscription(&other, now, DeliveryState::Pending));
        api(&store).insert_deliveries(all.clone()).await.unwrap();
        let moved = if interrupted { 5 } else { 0 };
        for (i, d) in all.iter().enumerate().skip(moved) {
            // Records keyed by id, an entry per delivery under `ds`.
            let mut raw = store.deliveries.get(key_of(d)).unwrap().unwrap().to_vec();
            if i == UPGRADE_BATCH + 9 {
                raw = b"\x02not a record".to_vec();
            }
            as_before_layout_4(&store, d, raw);
            let s = d.destination.subscription_id().unwrap().as_str();
            let id = d.id.as_str();
            store
                .index
                .remove(keys::owned(keys::SUBSCRIPTION_FAILED, s, id))
                .unwrap();
            let old = keys::owned(keys::SUBSCRIPTION_DELIVERIES_BEFORE_4, s, id);
            store.index.insert(old, &[]).unwrap();
            if i == moved + 7 {
                // One whose tenant entry is missing: found by the walk over the records.
                let tenant = d.tenant.as_str();
                let listed = keys::owned(keys::TENANT_DELIVERIES_BEFORE_4, tenant, id);
                store.index.remove(listed).unwrap();
            }
        }
        let meta = store.db.open_tree("meta").unwrap();
        if interrupted {
            meta.insert(LAYOUT_KEY, &b"4"[..]).unwrap();
            meta.insert(UPGRADING_FROM_KEY, &b"3"[..]).unwrap();
        } else {
            meta.insert(LAYOUT_KEY, &b"3"[..]).unwrap();
        }
        store.flush_now().unwrap();
        (all, sub, other)
    }

    /// Open a directory made by [`layout_3_directory`] and check that it is upgraded whole.
    async fn upgraded_whole(path: &std::path::Path, all: &[Delivery], subs: [&Subscription; 2]) {
        let (acme, globex) = (&subs[0].tenant, &subs[1].tenant);
        let broken = &all[UPGRADE_BATCH + 9];
        let store = open_when_free(path).unwrap();
        let meta = store.db.open_tree("meta").unwrap();
        assert_eq!(meta.get(LAYOUT_KEY).unwrap().as_deref(), Some(&b"4"[..]));
        assert!(meta.get(UPGRADING_FROM_KEY).unwrap().is_none(), "finished");
        // Every record under its tenant's key, the unreadable one as it was; no index entry of
        // the earlier layout left.
        let record_keys: Vec<IVec> = store.deliveries.iter().keys().map(Result::unwrap).collect();
        let mut expected: Vec<String> = all.iter().map(key_of).collect();
        expected.sort();
        let found: Vec<String> = record_keys
            .iter()
            .map(|k| String::from_utf8(k.to_vec()).unwrap())
            .collect();
        assert_eq!(found, expected);
        let kept = store.deliveries.get(key_of(broken)).unwrap().unwrap();
        assert_eq!(&kept[..], b"\x02not a record");
        for old in [
            keys::SUBSCRIPTION_DELIVERIES_BEFORE_4,
            keys::TENANT_DELIVERIES_BEFORE_4,
        ] {
            let prefix = [old.as_bytes(), &[keys::SEP]].concat();
            assert_eq!(store.index.scan_prefix(prefix).count(), 0, "{old}");
        }
        // Failed ones indexed, each tenant's listed, the pending ones due and claimed whole.
        assert_eq!(
            indexed(&store, keys::SUBSCRIPTION_FAILED, &subs[0].id),
            vec![all[UPGRADE_BATCH + 3].id.to_string()]
        );
        let failed = api(&store)
            .failed_deliveries_of_subscription(&subs[1].id)
            .await
            .unwrap();
        assert_eq!(ids_of(&failed), vec![all[UPGRADE_BATCH + 10].id.clone()]);
        assert!(matches!(
            store.list_deliveries(acme, None, None, 1000),
            Err(StoreError::Corrupt(_))
        ));
        let listed = store.list_deliveries(globex, None, None, 1000).unwrap();
        assert_eq!(listed.deliveries.len(), 2);
        let now = chrono::Utc::now();
        let claimed = api(&store)
            .claim_due_deliveries(DeliveryQueue::Fresh, now, 1000, Room::unlimited())
            .await
            .unwrap();
        let readable = all.iter().filter(|d| d.id != broken.id);
        let pending: Vec<&Delivery> = readable
            .clone()
            .filter(|d| d.state == DeliveryState::Pending)
            .collect();
        assert_eq!(claimed.len(), pending.len());
        for c in &claimed {
            let d = pending.iter().find(|d| d.id == c.delivery.id).unwrap();
            assert_eq!(c.delivery.payload.json(), d.payload.json());
            assert_eq!(c.delivery.message_id, d.message_id);
        }
        for d in readable {
            let read = store.delivery(&d.tenant, &d.id).unwrap().unwrap();
            assert_eq!(
                (read.state, read.payload.json()),
                (d.state, d.payload.json())
            );
        }
    }

    #[tokio::test]
    async fn a_directory_of_layout_3_is_upgraded_in_place_records_keyed_by_tenant_and_failed_ones_indexed(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (all, sub, other) = layout_3_directory(dir.path(), false).await;
        upgraded_whole(dir.path(), &all, [&sub, &other]).await;
    }

    #[tokio::test]
    async fn an_interrupted_upgrade_goes_on_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let (all, sub, other) = layout_3_directory(dir.path(), true).await;
        upgraded_whole(dir.path(), &all, [&sub, &other]).await;
    }

    /// Record a claimed delivery's attempt as a success, as the worker does.
    async fn record_success(store: &SledStore, claimed: Claimed) {
        let update = store
            .update_claimed(
                claimed,
                Box::new(move |d| {
                    d.state = DeliveryState::Succeeded;
                    d.next_attempt_at = None;
                    true
                }),
            )
            .await
            .unwrap();
        assert_eq!(update.map(|r| r.state), Some(DeliveryState::Succeeded));
    }

    /// Rewrite a stored delivery as the first layout wrote it: JSON, its body inside the record,
    /// nothing in `events` (as an earlier version did if it ran after the upgrade to layout 2).
    fn rewrite_as_first_layout(store: &SledStore, delivery: &Delivery) {
        let mut record = serde_json::to_value(delivery).unwrap();
        record["payload"] = delivery.payload.value().clone();
        store
            .deliveries
            .insert(key_of(delivery), serde_json::to_vec(&record).unwrap())
            .unwrap();
        store.events.remove(delivery.event_id.as_str()).unwrap();
    }

    #[tokio::test]
    async fn a_first_layout_record_written_after_the_upgrade_keeps_its_body_when_recorded() {
        let (store, _dir, now, acme, [one, two]) = two_due().await;
        rewrite_as_first_layout(&store, &one);
        rewrite_as_first_layout(&store, &two);

        // Recorded by the worker: the claim moves the body out before the attempt.
        let claimed = api(&store)
            .claim_due_deliveries(DeliveryQueue::Fresh, now, 10, Room::unlimited())
            .await
            .unwrap();
        assert_eq!(claimed.len(), 2);
        let first = claimed
            .into_iter()
            .find(|c| c.delivery.id == one.id)
            .unwrap();
        record_success(&store, first).await;
        let read = store.delivery(&acme, &one.id).unwrap().unwrap();
        assert_eq!(read.state, DeliveryState::Succeeded);
        assert_eq!(read.payload.json(), one.payload.json());

        // Changed through the API (a manual retry, say) straight from the old record.
        rewrite_as_first_layout(&store, &two);
        let update = store
            .update_delivery(
                &acme,
                &two.id,
                Box::new(move |d| {
                    d.state = DeliveryState::Failed;
                    d.next_attempt_at = None;
                    true
                }),
            )
            .await
            .unwrap();
        let DeliveryUpdate::Updated(updated) = update else {
            panic!("expected an update");
        };
        assert_eq!(updated.payload.json(), two.payload.json());
        let read = store.delivery(&acme, &two.id).unwrap().unwrap();
        assert_eq!(read.state, DeliveryState::Failed);
        assert_eq!(read.payload.json(), two.payload.json());
    }

    #[tokio::test]
    async fn a_json_record_of_the_previous_version_is_claimed_read_and_rewritten_in_binary() {
        let (store, _dir, now, acme, [one, _]) = two_due().await;
        // Written as the previous version did: JSON, its body in `events`.
        store
            .deliveries
            .insert(key_of(&one), serde_json::to_vec(&one).unwrap())
            .unwrap();
        store
            .events
            .insert(one.event_id.as_str(), one.payload.json().as_bytes())
            .unwrap();
        let read = store.delivery(&acme, &one.id).unwrap().unwrap();
        assert_eq!(read.message_id, one.message_id);
        assert_eq!(read.payload.json(), one.payload.json());

        let (claimed, ids) = claim_ids(&store, now);
        assert!(ids.contains(&one.id));
        let first = claimed.into_iter().find(|c| c.delivery.id == one.id);
        record_success(&store, first.unwrap()).await;
        let raw = store.deliveries.get(key_of(&one)).unwrap().unwrap();
        assert_ne!(raw[0], b'{', "rewritten in the binary form");
        let read = store.delivery(&acme, &one.id).unwrap().unwrap();
        assert_eq!(read.state, DeliveryState::Succeeded);
        assert_eq!(read.message_id, one.message_id);
        assert_eq!(read.payload.json(), one.payload.json());
        assert_eq!(queued(&store, DeliveryQueue::Fresh), 1);
    }

    #[tokio::test]
    async fn an_unreadable_record_neither_stops_the_store_opening_nor_holds_up_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let now = chrono::Utc::now();
        let acme = Tenant::parse("acme").unwrap();
        let (bad, good) = (due_delivery(&acme, now), due_delivery(&acme, now));
        {
            let store = SledStore::open(dir.path(), 8 * 1024 * 1024).unwrap();
            api(&store)
                .insert_deliveries(vec![bad.clone(), good.clone()])
                .await
                .unwrap();
            store
                .deliveries
                .insert(key_of(&bad), b"{not json".as_slice())
                .unwrap();
            store.db.open_tree("meta").unwrap().clear().unwrap();
            store.flush_now().unwrap();
        }
        let store = reopen(dir.path());
        let claimed = api(&store)
            .claim_due_deliveries(DeliveryQueue::Fresh, now, 10, Room::unlimited())
            .await
            .unwrap();
        let ids: Vec<_> = claimed.iter().map(|c| c.delivery.id.clone()).collect();
        assert_eq!(ids, vec![good.id.clone()]);
        assert!(matches!(
            store.delivery(&acme, &bad.id),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[tokio::test]
    async fn a_delivery_put_back_waits_until_its_time() {
        let (store, _dir) = temp_store();
        let now = chrono::Utc::now();
        let acme = Tenant::parse("acme").unwrap();
        let delivery = due_delivery(&acme, now);
        api(&store)
            .insert_deliveries(vec![delivery.clone()])
            .await
            .unwrap();
        let (mut claimed, _) = claim_ids(&store, now);
        let soon = now + chrono::Duration::milliseconds(50);
        claimed.pop().unwrap().put_back(soon);
        assert!(claim_ids(&store, now).1.is_empty());
        assert_eq!(
            store.next_delivery_due_at(DeliveryQueue::Fresh).unwrap(),
            Some(soon)
        );
        assert_eq!(claim_ids(&store, soon).1, vec![delivery.id.clone()]);
    }

    #[tokio::test]
    async fn queue_counts_are_stored_with_the_entries_and_read_back_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let now = chrono::Utc::now();
        let acme = Tenant::parse("acme").unwrap();
        {
            let store = SledStore::open(dir.path(), 8 * 1024 * 1024).unwrap();
            let three = (0..3).map(|_| due_delivery(&acme, now)).collect();
            api(&store).insert_deliveries(three).await.unwrap();
            let claimed = api(&store)
                .claim_due_deliveries(DeliveryQueue::Fresh, now, 1, Room::unlimited())
                .await
                .unwrap();
            record_success(&store, claimed.into_iter().next().unwrap()).await;
            assert_eq!(queued(&store, DeliveryQueue::Fresh), 2);
        }
        let store = reopen(dir.path());
        assert_eq!(
            queued(&store, DeliveryQueue::Fresh),
            2,
            "read back, not lost"
        );
        assert_eq!(
            store.queue.scan_prefix(b"f").count(),
            2,
            "the count matches the entries"
        );
        // A directory written before counts were kept is counted on open.
        store.queue.remove(super::super::counts::COUNT_KEY).unwrap();
        store.flush_now().unwrap();
        drop(store);
        let store = reopen(dir.path());
        assert_eq!(queued(&store, DeliveryQueue::Fresh), 2);
    }
}
