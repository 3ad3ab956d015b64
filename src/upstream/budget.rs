//! The account's request budgets. bitHuman meters requests per minute in per-account buckets
//! (generate, read); every job shares them, so one budget per bucket gates every call.
//!
//! A budget of R per minute spaces requests `60 s / R` apart with a small margin, allowing a
//! burst only as large as keeps any 60-second window at or under R. Spacing also keeps the
//! budget fully usable: a limiter that allowed the whole minute at once would have pollers
//! stampede and then idle.

use std::collections::VecDeque;
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
    /// Set when several instances share the budget (see [`Budget::shared`]).
    shared: Option<Credits>,
}

/// Grants of a budget shared by several instances: each grant comes from one budget row in the
/// shared store (`Storage::take_budget`) and must be used within [`CREDIT_TTL`] or is lost.
#[derive(Debug, Default)]
struct Credits {
    /// When each credit held expires, oldest first.
    held: Mutex<VecDeque<Timestamp>>,
}

/// How long a shared grant may wait for its request. Requests go out at most this long after
/// their grant, so a window of 60 s of requests holds at most the grants of 60 s + this.
pub const CREDIT_TTL: Duration = Duration::from_secs(1);

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
            shared: None,
        }
    }

    /// A budget of `per_minute` shared by every instance on one store. The store grants
    /// requests from one row at a spacing computed for a window of 60 s + [`CREDIT_TTL`] (a
    /// grant is used within the TTL or lost), so any 60 s of requests of all instances together
    /// stays within `per_minute`; the refill task ([`Budget::refill_from`]) keeps a few grants
    /// at hand. Spacing and burst are what [`Budget::grant_spacing`] says.
    pub fn shared(name: &'static str, per_minute: u32) -> Budget {
        let mut budget = Budget::per_minute(name, per_minute);
        let (spacing, burst) = Budget::grant_spacing(per_minute);
        budget.spacing = spacing;
        budget.burst = burst;
        budget.shared = Some(Credits::default());
        budget
    }

    /// The spacing and burst of shared grants for `per_minute`.
    pub fn grant_spacing(per_minute: u32) -> (Duration, u32) {
        let per_minute = per_minute.max(1);
        let window = WINDOW + CREDIT_TTL;
        let spacing = window.mul_f64(SPACING_MARGIN / f64::from(per_minute));
        let steady = (window.as_secs_f64() / spacing.as_secs_f64()).floor() as u32;
        // One grant more may fall in the longer window than in 60 s: keep it out of the burst.
        let burst = per_minute.saturating_sub(steady + 1).max(1);
        (spacing, burst)
    }

    /// Whether this budget is shared by several instances.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Credits held now (expired ones dropped); `None` for a local budget.
    fn credits(&self, now: Timestamp) -> Option<std::sync::MutexGuard<'_, VecDeque<Timestamp>>> {
        let credits = self.shared.as_ref()?;
        let mut held = credits.held.lock().unwrap_or_else(|e| e.into_inner());
        while held.front().is_some_and(|expiry| *expiry <= now) {
            held.pop_front();
        }
        Some(held)
    }

    /// Keep a few grants of a shared budget at hand, taken from `store`, until the runtime
    /// ends. Without the store (it fails), no grant: no request goes out, the budget is never
    /// exceeded, and work waits until the store answers again.
    pub async fn refill_from(
        &self,
        store: &crate::store::Store,
        clock: &crate::clock::SharedClock,
    ) {
        // Grants wanted at hand: what a quarter of the TTL spends, at least one.
        let want = ((CREDIT_TTL.as_secs_f64() / 4.0) / self.spacing.as_secs_f64()).ceil() as u32;
        let want = want.clamp(1, self.burst.max(1));
        let nap = self
            .spacing
            .clamp(Duration::from_millis(20), Duration::from_millis(250));
        loop {
            let now = clock.now();
            let held = self.credits(now).map_or(0, |h| h.len()) as u32;
            if held < want && !self.is_paused(now) {
                match store
                    .take_budget(self.name, now, self.spacing, self.burst, want - held)
                    .await
                {
                    Ok(granted) if granted > 0 => {
                        if let Some(mut credits) = self.credits(now) {
                            let expiry = after(now, CREDIT_TTL);
                            credits.extend(std::iter::repeat_n(expiry, granted as usize));
                        }
                        continue;
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::debug!(budget = self.name, %error, "no grant: the store did not answer");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            tokio::time::sleep(nap).await;
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
            shared: None,
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
        if self.is_shared() {
            if self.is_paused(now) {
                return false;
            }
            return self
                .credits(now)
                .is_some_and(|mut held| held.pop_front().is_some());
        }
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
        if self.is_shared() {
            if self.is_paused(now) {
                return 0;
            }
            return self.credits(now).map_or(0, |held| held.len()).min(cap);
        }
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
        if self.is_shared() {
            let held = self.credits(now).map_or(0, |held| held.len());
            let mut at = if held > 0 {
                now
            } else {
                after(now, self.spacing)
            };
            let state = self.state.lock().expect("budget lock");
            if let Some(until) = state.paused_until {
                at = at.max(until);
            }
            return at;
        }
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

    /// Budgets shared by every instance on one store (see [`Budget::shared`]).
    pub fn shared(generate_per_minute: u32, read_per_minute: u32) -> Budgets {
        Budgets {
            generate: Budget::shared("generate", generate_per_minute),
            read: Budget::shared("read", read_per_minute),
        }
    }

    /// Start the tasks that keep shared budgets' grants at hand (nothing for local budgets).
    pub fn start_refills(
        self: &std::sync::Arc<Self>,
        store: crate::store::Store,
        clock: crate::clock::SharedClock,
    ) {
        for read in [false, true] {
            let (budgets, store, clock) = (self.clone(), store.clone(), clock.clone());
            tokio::spawn(async move {
                let budget = if read {
                    &budgets.read
                } else {
                    &budgets.generate
                };
                if budget.is_shared() {
                    // The budget table may not exist yet: this starts before `serve` migrates.
                    // Migrating is idempotent and safe to race (advisory lock).
                    if let Err(error) = store.prepare().await {
                        tracing::debug!(%error, "budget refill: the store is not ready yet");
                    }
                    budget.refill_from(&store, &clock).await;
                }
            });
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
