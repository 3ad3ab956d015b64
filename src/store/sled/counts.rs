//! The counts of the two queues (`due`: jobs by kind; `queue`: deliveries by queue), kept in
//! memory for `/metrics`. They are counted once when the store opens (the queues hold pending
//! work only, never history) and then moved by every committed write: the writer collects what
//! a transaction added to and removed from the queues ([`Deltas`]) and applies it once the
//! transaction has committed, so a transaction that sled runs again is not counted twice.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use super::Result;
use crate::store::Counts;

/// Queue tags, in the order [`Deltas`] keeps them.
const TAGS: [u8; 4] = [b's', b'p', b'f', b'r'];

fn slot(key: &[u8]) -> Option<usize> {
    let tag = *key.first()?;
    TAGS.iter().position(|t| *t == tag)
}

/// Entries added (+) and removed (-) by one transaction, per queue tag.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Deltas([i64; 4]);

impl Deltas {
    /// An entry `key` was written; `existed` says whether it was there before.
    pub fn inserted(&mut self, key: &[u8], existed: bool) {
        if let (Some(i), false) = (slot(key), existed) {
            self.0[i] += 1;
        }
    }

    /// An entry `key` was removed; `existed` says whether it was there.
    pub fn removed(&mut self, key: &[u8], existed: bool) {
        if let (Some(i), true) = (slot(key), existed) {
            self.0[i] -= 1;
        }
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) struct QueueCounts(Arc<[AtomicI64; 4]>);

impl QueueCounts {
    /// Count the entries of the queues as stored.
    pub fn count(due: &sled::Tree, queue: &sled::Tree) -> Result<QueueCounts> {
        let counts = QueueCounts::default();
        for tree in [due, queue] {
            for entry in tree.iter().keys() {
                if let Some(i) = slot(&entry?) {
                    counts.0[i].fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(counts)
    }

    pub fn apply(&self, deltas: Deltas) {
        for (count, delta) in self.0.iter().zip(deltas.0) {
            if delta != 0 {
                count.fetch_add(delta, Ordering::Relaxed);
            }
        }
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
