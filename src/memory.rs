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
//! deliveries are being attempted (about 200 a second or more), and once more after they
//! stop. A million pending deliveries retried and drained peaked at 278-294 MiB with a trim
//! every 10 s against 314-370 without, and at 222-232 MiB every 5 s with the smaller records of
//! that session (BENCHMARKS.md, Bench 3c, session 5); a trim took 0.5-26 ms at 300,000.

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
    /// Whether a trim may be made now, none having been made for `interval` (and if so, it
    /// counts as made).
    fn take(&self, now: Instant, interval: Duration) -> bool {
        // An `Option<Instant>` is whole after any panic: poisoning is ignored.
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| now.saturating_duration_since(t) < interval) {
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

/// Attempts recorded within one [`WORK_INTERVAL`] that make it busy (about 200 a second):
/// under a steadier flow what is freed is soon allocated again, and is not worth a walk of the
/// arenas, which holds each arena's lock while it goes.
const WORK_BURST: usize = 1024;

/// Attempts recorded since [`trim_after_work`] last looked.
static WORK: AtomicUsize = AtomicUsize::new(0);

/// Count `n` units of work (recorded attempts) toward the next trim.
pub(crate) fn note_work(n: usize) {
    WORK.fetch_add(n, Ordering::Relaxed);
}

/// Until `stop` completes: every [`WORK_INTERVAL`] that was busy ([`WORK_BURST`] attempts or
/// more) and the one after the last busy one (what the end of a drain freed), trim on the
/// blocking pool, unless a trim was made within the interval (the poller's after a burst).
/// Nothing is done while idle.
pub(crate) async fn trim_after_work(stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    let mut ticks = tokio::time::interval(WORK_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut looks = Looks::default();
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = ticks.tick() => {
                if looks.worth_a_trim(WORK.swap(0, Ordering::Relaxed))
                    && PACING.take(Instant::now(), WORK_INTERVAL)
                {
                    let _ = tokio::task::spawn_blocking(trim).await;
                }
            }
        }
    }
}

/// What [`trim_after_work`] saw at its last look.
#[derive(Default)]
struct Looks {
    was_busy: bool,
}

impl Looks {
    /// Whether the interval that did `work` attempts is worth a trim after it: a busy one, or
    /// the first quiet one after a busy one.
    fn worth_a_trim(&mut self, work: usize) -> bool {
        let busy = work >= WORK_BURST;
        let worth = busy || self.was_busy;
        self.was_busy = busy;
        worth
    }
}

/// After a burst of work, once its memory is freed: give the free pages of every malloc arena
/// back to the system (on the blocking pool), unless that was done within [`MIN_INTERVAL`].
pub(crate) async fn release_after_burst() {
    if PACING.take(Instant::now(), MIN_INTERVAL) {
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
        assert!(pacing.take(t0, MIN_INTERVAL), "the first burst is trimmed");
        assert!(
            !pacing.take(t0 + MIN_INTERVAL / 2, MIN_INTERVAL),
            "too soon after the last"
        );
        assert!(
            pacing.take(t0 + MIN_INTERVAL, MIN_INTERVAL),
            "once the interval is over"
        );
        assert!(
            !pacing.take(t0, MIN_INTERVAL),
            "a clock read before the last trim is too soon"
        );
        assert!(
            !pacing.take(t0 + MIN_INTERVAL + WORK_INTERVAL / 2, WORK_INTERVAL),
            "a trim after work waits for one made within its own interval"
        );
    }

    #[test]
    fn busy_intervals_and_the_first_quiet_one_after_them_are_worth_a_trim() {
        let mut looks = Looks::default();
        assert!(!looks.worth_a_trim(0), "idle");
        assert!(!looks.worth_a_trim(WORK_BURST - 1), "a steady trickle");
        assert!(looks.worth_a_trim(WORK_BURST), "busy");
        assert!(looks.worth_a_trim(WORK_BURST * 10), "still busy");
        assert!(looks.worth_a_trim(3), "the end of the drain");
        assert!(!looks.worth_a_trim(3), "once only");
        assert!(!looks.worth_a_trim(0));
    }

    #[tokio::test]
    async fn trim_after_work_runs_until_told_to_stop() {
        note_work(WORK_BURST);
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
