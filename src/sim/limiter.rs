//! bitHuman's per-minute request budgets, simulated as sliding windows.
//!
//! A sliding-window log is exact where a refilling token bucket is not: a client that never
//! sends more than N requests in any 60 seconds is never refused, and one that does is always
//! refused. That makes the simulator a strict but fair judge of the service's own budgeting.

use std::collections::VecDeque;
use std::time::Duration;

use crate::clock::Timestamp;

/// The length of every window: the budgets are "per minute".
pub const WINDOW: Duration = Duration::from_secs(60);

fn window() -> chrono::Duration {
    chrono::Duration::seconds(60)
}

/// Admits at most `limit` requests in any 60-second window.
#[derive(Debug, Default, Clone)]
pub struct SlidingWindowLimiter {
    admitted: VecDeque<Timestamp>,
}

impl SlidingWindowLimiter {
    /// Admits a request at `now` when fewer than `limit` were admitted in the window
    /// `(now - 60 s, now]`; otherwise answers how long until one of them leaves the window.
    /// The limit is an argument, not a field, because it may change at run time.
    pub fn try_acquire(&mut self, now: Timestamp, limit: u32) -> Result<(), Duration> {
        self.forget_before(now);
        let limit = limit as usize;
        if self.admitted.len() < limit {
            self.admitted.push_back(now);
            return Ok(());
        }
        // With `len >= limit`, admitting needs `len - limit + 1` entries to expire; the last of
        // those sits at index `len - limit`.
        let wait = match self.admitted.get(self.admitted.len() - limit) {
            Some(frees_slot) => (*frees_slot + window() - now)
                .to_std()
                .unwrap_or(Duration::ZERO),
            None => WINDOW, // limit 0: nothing will ever free a slot; suggest a minute.
        };
        Err(wait)
    }

    fn forget_before(&mut self, now: Timestamp) {
        while self
            .admitted
            .front()
            .is_some_and(|oldest| *oldest <= now - window())
        {
            self.admitted.pop_front();
        }
    }
}

/// Remembers the largest number of events seen in any 60-second window.
///
/// Every window that holds a maximum can be slid to end on an event, so it suffices to count
/// the events in `(t - 60 s, t]` at each event time `t`.
#[derive(Debug, Default, Clone)]
pub struct WindowPeak {
    recent: VecDeque<Timestamp>,
    peak: usize,
}

impl WindowPeak {
    pub fn record(&mut self, at: Timestamp) {
        while self
            .recent
            .front()
            .is_some_and(|oldest| *oldest <= at - window())
        {
            self.recent.pop_front();
        }
        self.recent.push_back(at);
        self.peak = self.peak.max(self.recent.len());
    }

    pub fn peak(&self) -> usize {
        self.peak
    }
}

/// Whole seconds for a `Retry-After` header: rounded up, and at least 1 so a client never
/// retries in a tight loop.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let whole = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    whole.max(1)
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;

    use super::*;

    fn at_ms(ms: i64) -> Timestamp {
        Utc.timestamp_opt(1_700_000_000, 0).unwrap() + chrono::Duration::milliseconds(ms)
    }

    #[test]
    fn a_client_at_exactly_n_per_minute_is_never_refused() {
        let mut limiter = SlidingWindowLimiter::default();
        // 4 per minute, evenly spaced, for an hour.
        for i in 0..240 {
            assert_eq!(
                limiter.try_acquire(at_ms(i * 15_000), 4),
                Ok(()),
                "request {i}"
            );
        }
    }

    #[test]
    fn a_full_burst_may_repeat_exactly_one_window_later() {
        let mut limiter = SlidingWindowLimiter::default();
        for _ in 0..4 {
            assert!(limiter.try_acquire(at_ms(0), 4).is_ok());
        }
        for _ in 0..4 {
            assert!(limiter.try_acquire(at_ms(60_000), 4).is_ok());
        }
    }

    #[test]
    fn one_over_the_limit_is_refused_with_the_time_until_a_slot_frees() {
        let mut limiter = SlidingWindowLimiter::default();
        assert!(limiter.try_acquire(at_ms(0), 2).is_ok());
        assert!(limiter.try_acquire(at_ms(10_000), 2).is_ok());
        assert_eq!(
            limiter.try_acquire(at_ms(59_999), 2),
            Err(Duration::from_millis(1))
        );
        // Refused requests take no slot: the first one frees at 60 s as promised.
        assert!(limiter.try_acquire(at_ms(60_000), 2).is_ok());
        assert_eq!(
            limiter.try_acquire(at_ms(60_000), 2),
            Err(Duration::from_secs(10))
        );
    }

    #[test]
    fn lowering_the_limit_waits_for_enough_slots_to_free() {
        let mut limiter = SlidingWindowLimiter::default();
        for s in 0..4 {
            assert!(limiter.try_acquire(at_ms(s * 1_000), 4).is_ok());
        }
        // With a limit of 2, only one may remain before a new one fits: the three oldest
        // (0, 1 and 2 s) must expire, so wait until 62 s.
        assert_eq!(
            limiter.try_acquire(at_ms(5_000), 2),
            Err(Duration::from_secs(57))
        );
    }

    #[test]
    fn a_zero_limit_refuses_everything() {
        let mut limiter = SlidingWindowLimiter::default();
        assert_eq!(limiter.try_acquire(at_ms(0), 0), Err(WINDOW));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_of_at_least_one() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(10_001)), 11);
        assert_eq!(retry_after_secs(Duration::from_secs(10)), 10);
    }

    #[test]
    fn the_peak_is_the_busiest_sixty_seconds() {
        let mut peak = WindowPeak::default();
        for ms in [0, 1_000, 2_000, 61_000, 62_000, 62_500, 63_000] {
            peak.record(at_ms(ms));
        }
        // (3 s, 63 s] holds 61, 62, 62.5 and 63 s.
        assert_eq!(peak.peak(), 4);
    }

    /// Keeps the arrivals a client respecting `limit` per window would send.
    fn respecting(limit: u32, arrivals: &[i64]) -> Vec<i64> {
        let mut kept: Vec<i64> = Vec::new();
        for &t in arrivals {
            let in_window = kept.iter().filter(|&&k| k > t - 60_000).count();
            if in_window < limit as usize {
                kept.push(t);
            }
        }
        kept
    }

    proptest! {
        #[test]
        fn clients_within_the_limit_are_never_refused(
            limit in 1u32..8,
            gaps in prop::collection::vec(0i64..30_000, 1..200),
        ) {
            let arrivals: Vec<i64> = gaps.iter().scan(0, |t, g| { *t += g; Some(*t) }).collect();
            let mut limiter = SlidingWindowLimiter::default();
            for t in respecting(limit, &arrivals) {
                prop_assert!(limiter.try_acquire(at_ms(t), limit).is_ok(), "refused at {t} ms");
            }
        }

        #[test]
        fn no_window_ever_admits_more_than_the_limit(
            limit in 1u32..8,
            gaps in prop::collection::vec(0i64..20_000, 1..200),
        ) {
            let mut limiter = SlidingWindowLimiter::default();
            let mut admitted = WindowPeak::default();
            let mut t = 0;
            for gap in gaps {
                t += gap;
                if limiter.try_acquire(at_ms(t), limit).is_ok() {
                    admitted.record(at_ms(t));
                }
            }
            prop_assert!(admitted.peak() <= limit as usize);
        }
    }
}
