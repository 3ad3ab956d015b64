//! The counts of the two queues (`due`: jobs by kind; `queue`: deliveries by queue), for
//! `/metrics`. Each tree keeps its own under [`COUNT_KEY`] (a key no queue entry can have: entries
//! begin with their queue's letter), written in the same transaction as the entries it counts,
//! so it is right after a crash and is read, not counted, when the store opens. The writer
//! collects what a transaction added to and removed from the queues ([`Deltas`]), writes the
//! counts inside it, and moves the copy kept in memory once it has committed (a transaction
//! that sled runs again is not counted twice). A directory written before the counts were kept
//! is counted once when it is opened.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use sled::transaction::TransactionalTree;

use super::keys;
use super::writer::TxResult;
use super::Result;
use crate::store::Counts;

/// Where each queue tree keeps the count of its entries: two big-endian i64, one per queue.
pub(crate) const COUNT_KEY: &[u8] = b"#count";

/// Queue tags, in the order [`Deltas`] keeps them.
const TAGS: [u8; 4] = [b's', b'p', b'f', b'r'];

fn slot(key: &[u8]) -> Option<usize> {
    let tag = *key.first()?;
    TAGS.iter().position(|t| *t == tag)
}

/// Entries added (+) and removed (-) by one transaction, per queue tag, and the earliest due
/// time (millis) of the delivery entries it wrote, fresh and retry (`u64::MAX`: none).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deltas([i64; 4], [u64; 2]);

impl Default for Deltas {
    fn default() -> Self {
        Deltas([0; 4], [u64::MAX; 2])
    }
}

impl Deltas {
    /// An entry `key` was written; `existed` says whether it was there before.
    pub fn inserted(&mut self, key: &[u8], existed: bool) {
        let Some(i) = slot(key) else {
            return;
        };
        if !existed {
            self.0[i] += 1;
        }
        if let (Some(delivery_queue), Some((due, _))) = (i.checked_sub(2), keys::parse_timed(key)) {
            self.1[delivery_queue] = self.1[delivery_queue].min(due);
        }
    }

    /// An entry `key` was removed; `existed` says whether it was there.
    pub fn removed(&mut self, key: &[u8], existed: bool) {
        if let (Some(i), true) = (slot(key), existed) {
            self.0[i] -= 1;
        }
    }

    /// Add these changes to the counts stored in `due` and `queue`, inside the transaction.
    pub fn persist(&self, due: &TransactionalTree, queue: &TransactionalTree) -> TxResult<()> {
        for (tree, first) in [(due, 0), (queue, 2)] {
            let changes = [self.0[first], self.0[first + 1]];
            if changes == [0, 0] {
                continue;
            }
            let mut stored = decode(tree.get(COUNT_KEY)?.as_deref());
            stored[0] += changes[0];
            stored[1] += changes[1];
            tree.insert(COUNT_KEY, encode(stored).as_slice())?;
        }
        Ok(())
    }
}

fn decode(raw: Option<&[u8]>) -> [i64; 2] {
    let mut counts = [0; 2];
    if let Some(raw) = raw.filter(|r| r.len() == 16) {
        for (i, count) in counts.iter_mut().enumerate() {
            let bytes: [u8; 8] = raw[i * 8..i * 8 + 8].try_into().expect("8 bytes");
            *count = i64::from_be_bytes(bytes);
        }
    }
    counts
}

fn encode(counts: [i64; 2]) -> [u8; 16] {
    let mut raw = [0; 16];
    raw[..8].copy_from_slice(&counts[0].to_be_bytes());
    raw[8..].copy_from_slice(&counts[1].to_be_bytes());
    raw
}

#[derive(Clone, Debug)]
pub(crate) struct QueueCounts(Arc<[AtomicI64; 4]>, Arc<[AtomicU64; 2]>);

impl Default for QueueCounts {
    fn default() -> Self {
        QueueCounts(
            Arc::default(),
            Arc::new([AtomicU64::new(u64::MAX), AtomicU64::new(u64::MAX)]),
        )
    }
}

impl QueueCounts {
    /// The counts as the queue trees keep them; counted (once, and then kept) in a directory
    /// written before they were.
    pub fn open(due: &sled::Tree, queue: &sled::Tree) -> Result<QueueCounts> {
        let counts = QueueCounts::default();
        for (tree, first) in [(due, 0), (queue, 2)] {
            let stored = match tree.get(COUNT_KEY)? {
                Some(raw) => decode(Some(&raw)),
                None => {
                    let mut counted = [0; 2];
                    for entry in tree.iter().keys() {
                        if let Some(i) = slot(&entry?) {
                            counted[i - first] += 1;
                        }
                    }
                    tree.insert(COUNT_KEY, encode(counted).as_slice())?;
                    counted
                }
            };
            counts.0[first].store(stored[0], Ordering::Relaxed);
            counts.0[first + 1].store(stored[1], Ordering::Relaxed);
        }
        Ok(counts)
    }

    pub fn apply(&self, deltas: Deltas) {
        for (count, delta) in self.0.iter().zip(deltas.0) {
            if delta != 0 {
                count.fetch_add(delta, Ordering::Relaxed);
            }
        }
        for (earliest, due) in self.1.iter().zip(deltas.1) {
            if due != u64::MAX {
                earliest.fetch_min(due, Ordering::AcqRel);
            }
        }
    }

    /// The earliest due time (millis) of the entries written to delivery queue `queue` (0:
    /// fresh, 1: retry) since the last call, if any: a claim scanning on from where it stopped
    /// looks from there too (see `deliveries::Claims`).
    pub fn take_earliest_written(&self, queue: usize) -> Option<u64> {
        Some(self.1[queue].swap(u64::MAX, Ordering::AcqRel)).filter(|due| *due != u64::MAX)
    }

    pub fn read(&self) -> Counts {
        let get = |i: usize| self.0[i].load(Ordering::Relaxed).max(0) as u64;
        Counts {
            jobs_submitting: get(0),
            jobs_processing: get(1),
            deliveries_fresh: get(2),
            deliveries_retry: get(3),
        }
    }
}
