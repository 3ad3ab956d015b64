//! Housekeeping in the background: what has outlived its use leaves storage in small batches,
//! so neither the API nor the workers ever wait for a long sweep.
//!
//! Today that is the idempotency records, kept [`IDEMPOTENCY_TTL`] (after that a key admits a
//! new request anyway).

use std::sync::Arc;
use std::time::Duration;

use crate::clock::SharedClock;
use crate::signals::Signals;
use crate::store::{Store, StoreError, IDEMPOTENCY_TTL};

/// Records removed per write.
const BATCH: usize = 256;
/// How often a sweep runs.
const EVERY: Duration = Duration::from_secs(60);

pub struct Maintenance {
    store: Store,
    clock: SharedClock,
    signals: Arc<Signals>,
}

impl Maintenance {
    pub fn new(store: Store, clock: SharedClock, signals: Arc<Signals>) -> Self {
        Maintenance {
            store,
            clock,
            signals,
        }
    }

    /// One sweep: remove every expired idempotency record, a batch per write. Returns how many
    /// went.
    pub async fn step(&self) -> Result<usize, StoreError> {
        let mut purged = 0;
        loop {
            let now = self.clock.now();
            let batch = self
                .store
                .purge_idempotency(now, IDEMPOTENCY_TTL, BATCH)
                .await?;
            purged += batch;
            if batch < BATCH || self.signals.is_shutting_down() {
                break;
            }
            tokio::task::yield_now().await;
        }
        if purged > 0 {
            metrics::counter!("agenthook_idempotency_keys_purged_total").increment(purged as u64);
            tracing::debug!(purged, "expired idempotency keys removed");
        }
        Ok(purged)
    }

    /// Sweep every [`EVERY`] until shutdown.
    pub async fn run(self) {
        while !self.signals.is_shutting_down() {
            if let Err(error) = self.step().await {
                tracing::warn!(%error, "housekeeping failed; trying again later");
            }
            let wake = self.signals.maintenance_wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            if self.signals.is_shutting_down() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(EVERY) => {}
                _ = wake => {}
            }
        }
    }
}
