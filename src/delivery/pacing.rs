//! Pacing: how fast deliveries may go to one destination, and pauses a receiver asks for.
//!
//! A *lane* is one thing with a limit: a Slack incoming webhook URL (Slack takes about one
//! message per second on each), a subscription with `rate_limit_per_second`, a Discord webhook
//! URL (no pace of its own, but a `429` pauses all of it). A delivery may run in several lanes
//! at once; it goes when every one of them lets it.
//!
//! A delivery that may not go yet is not dropped and holds no request slot: the worker puts
//! its claim back until the time [`Pacer::admit`] names, and goes on with other deliveries, so
//! a busy lane never delays other destinations. That time is a place kept for it in each lane
//! (the first waiting gets the next free time, the second the one after, ...), so a backlog
//! leaves in order, one per interval, without being looked at again in between.
//!
//! Pacing is in memory: after a restart, lanes start empty (at most one extra message at
//! once). It reads time only from the `now` it is given, so tests move a manual clock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::clock::{after, Timestamp};
use crate::domain::{Format, Subscription};

/// Slack's limit for an incoming webhook: one message per second.
pub const SLACK_INTERVAL: Duration = Duration::from_secs(1);

/// A place kept for a delivery that never came back for it (deleted meanwhile, say) is
/// forgotten this long after its time.
const ABANDONED_AFTER: Duration = Duration::from_secs(600);
/// Idle lanes and abandoned places are swept at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// One lane a delivery runs in: its name and the least time between two sends in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lane {
    pub key: String,
    pub interval: Duration,
}

/// The lanes of a delivery to `sub` as it is now: its Slack or Discord URL, and its own rate
/// limit. A callback, or a standard subscription without a limit, has none.
pub fn lanes_of(sub: &Subscription) -> Vec<Lane> {
    let mut lanes = Vec::new();
    match sub.format {
        Format::Slack => lanes.push(Lane {
            key: format!("slack {}", sub.url),
            interval: SLACK_INTERVAL,
        }),
        Format::Discord => lanes.push(Lane {
            key: format!("discord {}", sub.url),
            interval: Duration::ZERO,
        }),
        Format::Standard => {}
    }
    if let Some(per_second) = sub.rate_limit_per_second.filter(|r| *r > 0) {
        lanes.push(Lane {
            key: format!("subscription {}", sub.id),
            interval: Duration::from_secs(1) / per_second,
        });
    }
    lanes
}

#[derive(Debug)]
struct LaneState {
    interval: Duration,
    /// The first time not yet given to anyone.
    next_free: Timestamp,
    last_sent: Option<Timestamp>,
    /// Nothing goes before this (a `429` with a pause).
    paused_until: Option<Timestamp>,
    /// Places kept, by delivery id.
    kept: HashMap<String, Timestamp>,
}

impl LaneState {
    fn new(interval: Duration, now: Timestamp) -> Self {
        LaneState {
            interval,
            next_free: now,
            last_sent: None,
            paused_until: None,
            kept: HashMap::new(),
        }
    }

    /// The earliest a send may happen in this lane, whoever sends.
    fn floor(&self, now: Timestamp) -> Timestamp {
        let mut floor = now;
        if let Some(last) = self.last_sent {
            floor = floor.max(after(last, self.interval));
        }
        if let Some(paused) = self.paused_until {
            floor = floor.max(paused);
        }
        floor
    }

    /// When `id` may go: its place if one is kept for it and still good, else the next free
    /// time.
    fn time_for(&self, id: &str, now: Timestamp) -> Timestamp {
        let floor = self.floor(now);
        match self.kept.get(id) {
            // Kept for later (it came early, after a manual retry say): that place.
            Some(&place) if place > now => place.max(floor),
            // Its time has come and nothing stands in the way.
            Some(_) if floor <= now => now,
            // Its place went by while the lane was paused or late: a new place.
            _ => floor.max(self.next_free),
        }
    }

    fn sent(&mut self, id: &str, now: Timestamp) {
        self.kept.remove(id);
        self.last_sent = Some(now);
        self.next_free = self.next_free.max(after(now, self.interval));
    }

    fn keep(&mut self, id: &str, at: Timestamp) {
        if self.kept.get(id) == Some(&at) {
            return;
        }
        self.kept.insert(id.to_owned(), at);
        self.next_free = self.next_free.max(after(at, self.interval));
    }

    fn is_idle(&self, now: Timestamp) -> bool {
        self.kept.is_empty() && self.floor(now) <= now && self.next_free <= now
    }
}

/// Every lane's state, shared by the worker's dispatch and its attempts.
#[derive(Debug, Default)]
pub struct Pacer {
    state: Mutex<PacerState>,
}

#[derive(Debug, Default)]
struct PacerState {
    lanes: HashMap<String, LaneState>,
    swept_at: Option<Timestamp>,
}

impl Pacer {
    /// Whether the delivery `id`, running in `lanes`, may be sent at `now`. `Ok`: it is
    /// counted as sent now in each lane. `Err(at)`: not before `at`, a place kept for it in
    /// each lane; ask again then.
    pub fn admit(&self, id: &str, lanes: &[Lane], now: Timestamp) -> Result<(), Timestamp> {
        if lanes.is_empty() {
            return Ok(());
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.sweep(now);
        let mut at = now;
        for lane in lanes {
            let lane_state = state
                .lanes
                .entry(lane.key.clone())
                .or_insert_with(|| LaneState::new(lane.interval, now));
            // A subscription's limit may have changed since the lane was made.
            lane_state.interval = lane.interval;
            at = at.max(lane_state.time_for(id, now));
        }
        for lane in lanes {
            let lane_state = state.lanes.get_mut(&lane.key).expect("made above");
            if at <= now {
                lane_state.sent(id, now);
            } else {
                lane_state.keep(id, at);
            }
        }
        if at <= now {
            Ok(())
        } else {
            Err(at)
        }
    }

    /// Nothing goes in `lanes` before `until` (the receiver answered 429 with a pause).
    pub fn pause(&self, lanes: &[Lane], until: Timestamp) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for lane in lanes {
            let lane_state = state
                .lanes
                .entry(lane.key.clone())
                .or_insert_with(|| LaneState::new(lane.interval, until));
            lane_state.paused_until = Some(lane_state.paused_until.map_or(until, |p| p.max(until)));
            lane_state.next_free = lane_state.next_free.max(until);
        }
    }

    #[cfg(test)]
    fn lane_count(&self) -> usize {
        self.state.lock().unwrap().lanes.len()
    }
}

impl PacerState {
    /// Forget idle lanes and places nobody came back for.
    fn sweep(&mut self, now: Timestamp) {
        if self.swept_at.is_some_and(|at| after(at, SWEEP_EVERY) > now) {
            return;
        }
        self.swept_at = Some(now);
        for lane in self.lanes.values_mut() {
            lane.kept
                .retain(|_, place| after(*place, ABANDONED_AFTER) > now);
        }
        self.lanes.retain(|_, lane| !lane.is_idle(now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Timestamp {
        chrono::DateTime::parse_from_rfc3339("2026-11-28T16:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc)
    }

    fn at_ms(ms: u64) -> Timestamp {
        after(t0(), Duration::from_millis(ms))
    }

    fn lane(key: &str, interval_ms: u64) -> Lane {
        Lane {
            key: key.into(),
            interval: Duration::from_millis(interval_ms),
        }
    }

    #[test]
    fn a_backlog_leaves_one_per_interval_in_order_of_arrival() {
        let pacer = Pacer::default();
        let slack = [lane("slack a", 1000)];
        assert_eq!(pacer.admit("d1", &slack, t0()), Ok(()));
        assert_eq!(pacer.admit("d2", &slack, t0()), Err(at_ms(1000)));
        assert_eq!(pacer.admit("d3", &slack, t0()), Err(at_ms(2000)));
        // Asked again before their time, they keep their places.
        assert_eq!(pacer.admit("d3", &slack, at_ms(500)), Err(at_ms(2000)));
        assert_eq!(pacer.admit("d2", &slack, at_ms(999)), Err(at_ms(1000)));
        assert_eq!(pacer.admit("d2", &slack, at_ms(1000)), Ok(()));
        // A newcomer goes after the last place kept.
        assert_eq!(pacer.admit("d4", &slack, at_ms(1000)), Err(at_ms(3000)));
        assert_eq!(pacer.admit("d3", &slack, at_ms(2000)), Ok(()));
        assert_eq!(pacer.admit("d4", &slack, at_ms(3000)), Ok(()));
    }

    #[test]
    fn a_late_send_pushes_the_next_one_so_no_two_are_closer_than_the_interval() {
        let pacer = Pacer::default();
        let slack = [lane("slack a", 1000)];
        assert_eq!(pacer.admit("d1", &slack, t0()), Ok(()));
        assert_eq!(pacer.admit("d2", &slack, t0()), Err(at_ms(1000)));
        assert_eq!(pacer.admit("d3", &slack, t0()), Err(at_ms(2000)));
        // d2 could only go 1.5 s in (no request slot before): d3's place is too early now, so
        // it takes the next free one rather than crowding whoever holds the place after it.
        assert_eq!(pacer.admit("d2", &slack, at_ms(1500)), Ok(()));
        assert_eq!(pacer.admit("d3", &slack, at_ms(2000)), Err(at_ms(3000)));
        assert_eq!(pacer.admit("d3", &slack, at_ms(2999)), Err(at_ms(3000)));
        assert_eq!(pacer.admit("d3", &slack, at_ms(3000)), Ok(()));
    }

    #[test]
    fn lanes_do_not_hold_each_other_up() {
        let pacer = Pacer::default();
        assert_eq!(pacer.admit("a1", &[lane("slack a", 1000)], t0()), Ok(()));
        assert!(pacer.admit("a2", &[lane("slack a", 1000)], t0()).is_err());
        assert_eq!(pacer.admit("b1", &[lane("slack b", 1000)], t0()), Ok(()));
        assert_eq!(pacer.admit("c1", &[], t0()), Ok(()));
    }

    #[test]
    fn a_delivery_in_two_lanes_waits_for_the_slower() {
        let pacer = Pacer::default();
        let slack = lane("slack a", 1000);
        let limit = lane("subscription s", 250);
        assert_eq!(
            pacer.admit("d1", &[slack.clone(), limit.clone()], t0()),
            Ok(())
        );
        assert_eq!(
            pacer.admit("d2", &[slack.clone(), limit.clone()], t0()),
            Err(at_ms(1000))
        );
        // Another subscription to the same Slack URL queues behind it.
        assert_eq!(
            pacer.admit("e1", std::slice::from_ref(&slack), t0()),
            Err(at_ms(2000))
        );
        assert_eq!(pacer.admit("d2", &[slack, limit], at_ms(1000)), Ok(()));
    }

    #[test]
    fn a_rate_of_n_per_second_sends_at_most_n_in_any_second() {
        let pacer = Pacer::default();
        let limit = [lane("subscription s", 1000 / 4)];
        let mut sent = Vec::new();
        let mut now = t0();
        let mut waiting: Vec<String> = (0..10).map(|i| format!("d{i}")).collect();
        while !waiting.is_empty() {
            let mut next = None::<Timestamp>;
            waiting.retain(|id| match pacer.admit(id, &limit, now) {
                Ok(()) => {
                    sent.push(now);
                    false
                }
                Err(at) => {
                    next = Some(next.map_or(at, |n| n.min(at)));
                    true
                }
            });
            if let Some(next) = next {
                now = next;
            }
        }
        assert_eq!(sent.len(), 10);
        for window in sent.windows(5) {
            assert!(
                window[4] - window[0] >= chrono::Duration::seconds(1),
                "{window:?}"
            );
        }
        assert_eq!(sent[9], at_ms(9 * 250));
    }

    #[test]
    fn a_pause_holds_every_delivery_of_the_lane_then_they_go_on_at_the_pace() {
        let pacer = Pacer::default();
        let slack = [lane("slack a", 1000)];
        assert_eq!(pacer.admit("d1", &slack, t0()), Ok(()));
        assert_eq!(pacer.admit("d2", &slack, t0()), Err(at_ms(1000)));
        pacer.pause(&slack, at_ms(30_000));
        assert_eq!(pacer.admit("d2", &slack, at_ms(1000)), Err(at_ms(30_000)));
        assert_eq!(pacer.admit("d3", &slack, at_ms(1000)), Err(at_ms(31_000)));
        assert_eq!(pacer.admit("d2", &slack, at_ms(30_000)), Ok(()));
        assert_eq!(pacer.admit("d3", &slack, at_ms(31_000)), Ok(()));
    }

    #[test]
    fn a_lane_without_pace_only_pauses() {
        let pacer = Pacer::default();
        let discord = [lane("discord a", 0)];
        for i in 0..5 {
            assert_eq!(pacer.admit(&format!("d{i}"), &discord, t0()), Ok(()));
        }
        pacer.pause(&discord, at_ms(2500));
        assert_eq!(pacer.admit("x", &discord, at_ms(100)), Err(at_ms(2500)));
        assert_eq!(pacer.admit("y", &discord, at_ms(100)), Err(at_ms(2500)));
        assert_eq!(pacer.admit("x", &discord, at_ms(2500)), Ok(()));
        assert_eq!(pacer.admit("y", &discord, at_ms(2500)), Ok(()));
    }

    #[test]
    fn idle_lanes_and_abandoned_places_are_forgotten() {
        let pacer = Pacer::default();
        let slack = [lane("slack a", 1000)];
        assert_eq!(pacer.admit("d1", &slack, t0()), Ok(()));
        assert!(pacer.admit("gone", &slack, t0()).is_err());
        assert_eq!(pacer.admit("z", &[lane("slack b", 1000)], t0()), Ok(()));
        assert_eq!(pacer.lane_count(), 2);
        // Later, the next admit sweeps: lane b is idle; lane a's place for "gone" was abandoned.
        let later = at_ms(1000 + ABANDONED_AFTER.as_millis() as u64 + 1);
        assert_eq!(pacer.admit("q", &[lane("slack c", 1000)], later), Ok(()));
        assert_eq!(pacer.lane_count(), 1);
    }
}
