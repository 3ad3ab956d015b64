//! Memory freed by a burst of work, given back to the operating system.
//!
//! glibc's malloc keeps what is freed in the arena it came from, for later allocations there,
//! and gives back only what lies at the very end of an arena. Each thread allocates in an
//! arena of its own (up to 8 per core), and storage works on threads of its own (the writer,
//! the blocking pool's readers), so the service spreads over more arenas than its runtime
//! threads: a poller round of 1,000 jobs (1,000 upstream requests at once, their connections,
//! 1,000 writes) leaves tens of MiB free but resident, spread over arenas that the next such
//! round may not reuse. `malloc_trim` walks every arena and hands each whole free page back.
//! BENCHMARKS.md, "The storage boundary (issue 12)", has the figures.
//!
//! Sustained work (a backlog drained, a steady fan-out) frees as it goes, and the arenas keep
//! what each thread last freed: [`trim_after_work`] trims every [`WORK_INTERVAL`] while
//! deliveries are being attempted, and once more after they stop. With a million pending
//! deliveries retried and drained, the peak RSS went from 370 to 294 MiB with it (BENCHMARKS.md,
//! Bench 3c, session 5); a trim then took 0.5-26 ms.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Jobs handled in one poller round that make it a burst, followed by a trim.
pub(crate) const BURST: usize = 256;

/// At most one trim this often: under bursts one after the other, what one frees the next
/// reuses, and a trim costs 1-20 ms of a blocking-pool thread (and holds each arena's lock
/// while it walks it).
const MIN_INTERVAL: Duration = Duration::from_secs(10);

/// When the last trim was made.
struct Pacing(Mutex<Option<Instant>>);

impl Pacing {
    /// A trim made now, whatever the pacing.
    fn mark(&self, now: Instant) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
    }

    /// Whether a trim may be made now (and if so, it counts as made).
    fn take(&self, now: Instant) -> bool {
        // An `Option<Instant>` is whole after any panic: poisoning is ignored.
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| now.saturating_duration_since(t) < MIN_INTERVAL) {
            return false;
        }
        *last = Some(now);
        true
    }
}

static PACING: Pacing = Pacing(Mutex::new(None));

/// How often [`trim_after_work`] looks: at most 1 % of a core spent trimming while a large
/// backlog drains (a trim of the heap of a million pending deliveries takes up to ~50 ms).
const WORK_INTERVAL: Duration = Duration::from_secs(5);

/// Attempts recorded since [`trim_after_work`] last looked.
static WORK: AtomicUsize = AtomicUsize::new(0);

/// Count `n` units of work (recorded attempts) toward the next trim.
pub(crate) fn note_work(n: usize) {
    WORK.fetch_add(n, Ordering::Relaxed);
}

/// Until `stop` completes: every [`WORK_INTERVAL`], trim if at least [`BURST`] units of work
/// were noted since the last look (on the blocking pool; it counts as the poller's trim too).
/// The look after work stops sees the last of it, so memory freed at the end of a drain is
/// given back too. Nothing is done while idle.
pub(crate) async fn trim_after_work(stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let mut ticks = tokio::time::interval(WORK_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = ticks.tick() => {
                if WORK.swap(0, Ordering::Relaxed) >= BURST {
                    PACING.mark(Instant::now());
                    let _ = tokio::task::spawn_blocking(trim).await;
                }
            }
        }
    }
}

/// After a burst of work, once its memory is freed: give the free pages of every malloc arena
/// back to the system (on the blocking pool), unless that was done within [`MIN_INTERVAL`].
pub(crate) async fn release_after_burst() {
    if PACING.take(Instant::now()) {
        let _ = tokio::task::spawn_blocking(trim).await;
    }
}

/// Give the free pages back now, on this thread: after opening the store, whose page table
/// sled builds beside the snapshot it reads (with a million pending deliveries, 184 → 147 MiB
/// after opening; BENCHMARKS.md, "Bench 3c").
pub(crate) fn release_now() {
    trim();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    let started = Instant::now();
    // SAFETY: `malloc_trim` takes no pointer and only works on glibc's own bookkeeping; it is
    // safe to call from any thread at any time.
    let released = unsafe { libc::malloc_trim(0) };
    tracing::debug!(
        took_us = started.elapsed().as_micros() as u64,
        released = released != 0,
        "gave free memory back"
    );
}

/// Other allocators (musl, macOS) give memory back by themselves, or offer no such call.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trim_is_made_at_most_once_per_interval() {
        let pacing = Pacing(Mutex::new(None));
        let t0 = Instant::now();
        assert!(pacing.take(t0), "the first burst is trimmed");
        assert!(
            !pacing.take(t0 + MIN_INTERVAL / 2),
            "too soon after the last"
        );
        assert!(pacing.take(t0 + MIN_INTERVAL), "once the interval is over");
        assert!(
            !pacing.take(t0),
            "a clock read before the last trim is too soon"
        );
        pacing.mark(t0 + MIN_INTERVAL * 2);
        assert!(
            !pacing.take(t0 + MIN_INTERVAL * 2),
            "a trim made after work counts"
        );
    }

    #[tokio::test]
    async fn trim_after_work_runs_until_told_to_stop() {
        note_work(BURST);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(trim_after_work(async {
            let _ = rx.await;
        }));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!task.is_finished(), "it keeps looking until told to stop");
        tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("it stops when told")
            .unwrap();
    }

    #[tokio::test]
    async fn release_after_burst_returns() {
        release_after_burst().await;
        release_after_burst().await;
    }
}
