//! Housekeeping in the background: what has outlived its use leaves storage in small batches,
//! so neither the API nor the workers ever wait for a long sweep.
//!
//! - idempotency records, kept [`IDEMPOTENCY_TTL`] (after that a key admits a new request
//!   anyway);
//! - finished jobs older than `storage.retention`, with their events, deliveries and attempts
//!   (dead letters included); pending work stays whatever its age;
//! - and the stored totals for `/metrics` (records per kind, bytes on disk), counted here
//!   rather than at every scrape.
//!
//! Each batch is one write, which the writer commits in one round with whatever the API and
//! the workers wrote meanwhile; between batches the sweep yields, so it never holds them up.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::{before, SharedClock};
use crate::domain::JobId;
use crate::signals::Signals;
use crate::store::{Store, StoreError, IDEMPOTENCY_TTL};

/// Idempotency records removed per write.
const BATCH: usize = 256;
/// Finished jobs removed per write (each with its deliveries, events and index entries).
const JOB_BATCH: usize = 64;
/// How often a sweep runs (more often when the retention is shorter than a few minutes).
const EVERY: Duration = Duration::from_secs(60);

/// A count of the stored records is made again only once this many times as long as the last
/// one took has passed: sled counts a tree by walking it, which at a million pending deliveries
/// takes seconds of CPU and passes every record through the page cache (a quick count is made
/// at every sweep).
const TOTALS_COST_FACTOR: u32 = 100;

/// A count of the stored totals that took this long walked enough records (~10,000 with sled)
/// to leave memory worth giving back (+62 MiB resident after a count of 100,000 pending
/// deliveries, until then; BENCHMARKS.md, Bench 3c, session 6).
const COUNT_WORTH_A_TRIM: Duration = Duration::from_millis(20);

/// When the stored totals may be counted again: a count that took `d` is made again only after
/// [`TOTALS_COST_FACTOR`] × `d`, so counting takes at most 1 % of a core however much is stored
/// (a store that counts in milliseconds is counted at every sweep).
#[derive(Default)]
struct CountPacing(std::sync::Mutex<Option<std::time::Instant>>);

impl CountPacing {
    fn may_count(&self, now: std::time::Instant) -> bool {
        // An `Option<Instant>` is whole whatever panicked while it was held.
        let after = *self.0.lock().unwrap_or_else(|e| e.into_inner());
        after.is_none_or(|after| now >= after)
    }

    /// A count began at `started` and took `took`.
    fn counted(&self, started: std::time::Instant, took: Duration) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(started + took * TOTALS_COST_FACTOR);
    }
}

pub struct Maintenance {
    store: Store,
    clock: SharedClock,
    signals: Arc<Signals>,
    retention: Duration,
    /// When the stored totals may be counted again.
    totals: CountPacing,
}

/// What one sweep removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    pub idempotency_keys: usize,
    pub jobs: usize,
    pub deliveries: usize,
}

impl Maintenance {
    pub fn new(store: Store, clock: SharedClock, signals: Arc<Signals>) -> Self {
        Maintenance {
            store,
            clock,
            signals,
            retention: crate::config::DEFAULT_RETENTION,
            totals: CountPacing::default(),
        }
    }

    /// Keep finished jobs this long (`storage.retention`).
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// One sweep: expired idempotency records, then finished jobs past retention, a batch per
    /// write; then the stored totals.
    pub async fn step(&self) -> Result<Sweep, StoreError> {
        let mut sweep = Sweep {
            idempotency_keys: self.purge_idempotency().await?,
            ..Sweep::default()
        };
        let (jobs, deliveries) = self.purge_finished().await?;
        sweep.jobs = jobs;
        sweep.deliveries = deliveries;
        self.publish_totals().await;
        Ok(sweep)
    }

    async fn purge_idempotency(&self) -> Result<usize, StoreError> {
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

    /// Finished jobs that ended more than the retention ago, with everything they caused.
    async fn purge_finished(&self) -> Result<(usize, usize), StoreError> {
        let cutoff = before(self.clock.now(), self.retention);
        let (mut jobs, mut deliveries) = (0, 0);
        let mut after: Option<JobId> = None;
        loop {
            let report = self
                .store
                .purge_finished_before(cutoff, after.as_ref(), JOB_BATCH)
                .await?;
            jobs += report.jobs;
            deliveries += report.deliveries;
            after = report.next;
            if after.is_none() || self.signals.is_shutting_down() {
                break;
            }
            tokio::task::yield_now().await;
        }
        if jobs > 0 {
            metrics::counter!("agenthook_retention_jobs_purged_total").increment(jobs as u64);
            metrics::counter!("agenthook_retention_deliveries_purged_total")
                .increment(deliveries as u64);
            tracing::debug!(jobs, deliveries, "finished jobs past retention removed");
        }
        Ok((jobs, deliveries))
    }

    /// Set the stored totals' gauges (left as they were if storage cannot count now, or if the
    /// last count was too costly to make again yet).
    async fn publish_totals(&self) {
        let started = std::time::Instant::now();
        if !self.totals.may_count(started) {
            return;
        }
        let counted = self.store.stored_totals().await;
        let took = started.elapsed();
        self.totals.counted(started, took);
        if took >= COUNT_WORTH_A_TRIM {
            // sled walked every record: what its reads allocated is free, and given back.
            crate::memory::release_after_burst().await;
        }
        match counted {
            Ok(totals) => {
                for (kind, count) in [
                    ("jobs", totals.jobs),
                    ("deliveries", totals.deliveries),
                    ("events", totals.events),
                ] {
                    metrics::gauge!("agenthook_stored_records", "kind" => kind).set(count as f64);
                }
                metrics::gauge!("agenthook_storage_size_bytes").set(totals.bytes as f64);
            }
            Err(error) => tracing::debug!(%error, "stored totals could not be counted"),
        }
    }

    /// How long between sweeps: [`EVERY`], or a quarter of a short retention.
    fn every(&self) -> Duration {
        EVERY.min(self.retention / 4).max(Duration::from_secs(1))
    }

    /// Sweep every [`EVERY`] (or sooner, see [`Maintenance::every`]) until shutdown.
    pub async fn run(self) {
        while !self.signals.is_shutting_down() {
            // While storage fails its tracker has said so; a sweep could only fail too.
            if self.store.current_fault().is_some() {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
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
                _ = tokio::time::sleep(self.every()) => {}
                _ = wake => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_costly_count_is_made_again_only_after_a_hundred_times_as_long() {
        let pacing = CountPacing::default();
        let t0 = Instant::now();
        assert!(pacing.may_count(t0), "the first sweep counts");

        // A count of a million records: 3 s.
        pacing.counted(t0, Duration::from_secs(3));
        for later in [Duration::from_secs(60), Duration::from_secs(299)] {
            assert!(!pacing.may_count(t0 + later), "not {later:?} after it");
        }
        assert!(pacing.may_count(t0 + Duration::from_secs(300)));

        // A quick count (2 ms) allows the next sweep's, a minute later.
        let t1 = t0 + Duration::from_secs(300);
        pacing.counted(t1, Duration::from_millis(2));
        assert!(!pacing.may_count(t1 + Duration::from_millis(100)));
        assert!(pacing.may_count(t1 + EVERY));
    }
}
