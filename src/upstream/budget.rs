//! The account's request budgets. bitHuman meters requests per minute in per-account buckets
//! (generate, read); every job shares them, so one budget per bucket gates every call.
//!
//! A budget of R per minute spaces requests `60 s / R` apart with a small margin, allowing a
//! burst only as large as keeps any 60-second window at or under R. Spacing also keeps the
//! budget fully usable: a limiter that allowed the whole minute at once would have pollers
//! stampede and then idle.

use std::sync::Mutex;
use std::time::Duration;

use crate::clock::{after, Timestamp};

/// Spacing margin: upstream's clock and network jitter must never make two of our windows
/// look like one of theirs.
const SPACING_MARGIN: f64 = 1.02;
const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Budget {
    name: &'static str,
    per_minute: u32,
    spacing: Duration,
    burst: u32,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The theoretical arrival time of the next request (GCRA).
    next_at: Option<Timestamp>,
    paused_until: Option<Timestamp>,
}

impl Budget {
    pub fn per_minute(name: &'static str, per_minute: u32) -> Budget {
        let per_minute = per_minute.max(1);
        let spacing = WINDOW.mul_f64(SPACING_MARGIN / f64::from(per_minute));
        // In any window: `burst` at once, then one per `spacing`. Keep that at or under R.
        let steady = (WINDOW.as_secs_f64() / spacing.as_secs_f64()).floor() as u32;
        let burst = per_minute.saturating_sub(steady).max(1);
        Budget {
            name,
            per_minute,
            spacing,
            burst,
            state: Mutex::new(State {
                next_at: None,
                paused_until: None,
            }),
        }
    }

    /// A budget of `per_minute` evenly spaced requests that also allows bursts of `burst`
    /// (for clients of our own API, where short bursts are normal).
    pub fn with_burst(name: &'static str, per_minute: u32, burst: u32) -> Budget {
        let per_minute = per_minute.max(1);
        Budget {
            name,
            per_minute,
            spacing: WINDOW / per_minute,
            burst: burst.max(1),
            state: Mutex::new(State {
                next_at: None,
                paused_until: None,
            }),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn limit_per_minute(&self) -> u32 {
        self.per_minute
    }

    /// Take one request's worth if available at `now`.
    pub fn try_acquire(&self, now: Timestamp) -> bool {
        let mut state = self.state.lock().expect("budget lock");
        if state.paused_until.is_some_and(|until| until > now) {
            return false;
        }
        let next_at = state.next_at.unwrap_or(now).max(now);
        let allowed_from = next_at - self.burst_span();
        if allowed_from > now {
            return false;
        }
        state.next_at = Some(after(next_at, self.spacing));
        true
    }

    /// How many requests could be taken at `now`, at most `cap`.
    pub fn available(&self, now: Timestamp, cap: usize) -> usize {
        let state = self.state.lock().expect("budget lock");
        if state.paused_until.is_some_and(|until| until > now) {
            return 0;
        }
        let next_at = state.next_at.unwrap_or(now).max(now);
        let ahead = (next_at - now).to_std().unwrap_or_default();
        let used = (ahead.as_secs_f64() / self.spacing.as_secs_f64()).ceil() as usize;
        (self.burst as usize).saturating_sub(used).min(cap)
    }

    /// When the next request may be taken.
    pub fn next_available_at(&self, now: Timestamp) -> Timestamp {
        let state = self.state.lock().expect("budget lock");
        let next_at = state.next_at.unwrap_or(now).max(now);
        let mut at = (next_at - self.burst_span()).max(now);
        if let Some(until) = state.paused_until {
            at = at.max(until);
        }
        at
    }

    /// Upstream said 429: take nothing from this bucket until `until`.
    pub fn pause_until(&self, until: Timestamp) {
        let mut state = self.state.lock().expect("budget lock");
        state.paused_until = Some(state.paused_until.map_or(until, |p| p.max(until)));
    }

    pub fn is_paused(&self, now: Timestamp) -> bool {
        let state = self.state.lock().expect("budget lock");
        state.paused_until.is_some_and(|until| until > now)
    }

    fn burst_span(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.spacing * (self.burst - 1)).unwrap_or_default()
    }
}

/// The two buckets of a bitHuman account.
#[derive(Debug)]
pub struct Budgets {
    pub generate: Budget,
    pub read: Budget,
}

impl Budgets {
    pub fn new(generate_per_minute: u32, read_per_minute: u32) -> Budgets {
        Budgets {
            generate: Budget::per_minute("generate", generate_per_minute),
            read: Budget::per_minute("read", read_per_minute),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    /// Drive a budget greedily for `span` in steps of `step`; return the acquisition times.
    fn drive(budget: &Budget, span: Duration, step: Duration) -> Vec<Timestamp> {
        let start = Utc::now();
        let mut now = start;
        let mut taken = Vec::new();
        while now < after(start, span) {
            while budget.try_acquire(now) {
                taken.push(now);
            }
            now = after(now, step);
        }
        taken
    }

    fn max_in_any_window(times: &[Timestamp]) -> usize {
        let mut max = 0;
        for (i, start) in times.iter().enumerate() {
            let end = after(*start, WINDOW);
            let n = times[i..].iter().take_while(|t| **t < end).count();
            max = max.max(n);
        }
        max
    }

    #[test]
    fn no_sixty_second_window_ever_exceeds_the_budget() {
        for per_minute in [1, 4, 10, 120, 720, 2880] {
            let budget = Budget::per_minute("read", per_minute);
            let times = drive(&budget, Duration::from_secs(300), Duration::from_millis(7));
            assert!(
                max_in_any_window(&times) <= per_minute as usize,
                "{per_minute}/min: {} in one window",
                max_in_any_window(&times)
            );
        }
    }

    #[test]
    fn a_greedy_caller_uses_at_least_95_percent_of_the_budget() {
        for per_minute in [4, 120, 720] {
            let budget = Budget::per_minute("read", per_minute);
            let times = drive(&budget, Duration::from_secs(600), Duration::from_millis(5));
            let expected = per_minute as f64 * 10.0;
            assert!(
                times.len() as f64 >= 0.95 * expected,
                "{per_minute}/min: {} of {expected}",
                times.len()
            );
        }
    }

    #[test]
    fn a_pause_stops_acquisition_until_it_ends() {
        let budget = Budget::per_minute("read", 120);
        let now = Utc::now();
        budget.pause_until(after(now, Duration::from_secs(30)));
        assert!(!budget.try_acquire(now));
        assert_eq!(budget.available(now, 10), 0);
        assert!(!budget.try_acquire(after(now, Duration::from_secs(29))));
        assert!(budget.try_acquire(after(now, Duration::from_secs(30))));
    }

    #[test]
    fn available_matches_what_can_be_acquired() {
        let budget = Budget::per_minute("read", 120);
        let now = Utc::now();
        let n = budget.available(now, 100);
        for _ in 0..n {
            assert!(budget.try_acquire(now));
        }
        assert!(!budget.try_acquire(now));
        assert_eq!(budget.available(now, 100), 0);
        assert!(budget.next_available_at(now) > now);
    }
}
