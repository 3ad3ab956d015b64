//! Deliveries claimed while their destination was at its limit, kept by the worker until it has
//! room.
//!
//! A claim reads each delivery before the worker knows its destination, so when one receiver
//! holds the whole queue (a backlog after an outage) most of what a claim finds is for a
//! destination already at its limit. Putting those back and claiming again read every delivery
//! several times before it went. Parked instead, a delivery keeps its claim and goes as soon as
//! an attempt to its destination ends, without another read. Parked deliveries count against
//! their queue's room, so a claim asks only for what could be sent; one parked longer than
//! [`PARK_LIMIT`] is put back, so that a slow destination holds no room that other
//! destinations could use.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::store::{Claimed, DeliveryQueue};

/// How long a delivery stays parked at most. Parked deliveries hold their queue's room, which
/// deliveries to other destinations, further on in the queue, may be waiting for: this is the
/// longest they wait behind a destination that answers slowly. A destination that answers
/// quickly takes its parked deliveries well within it (a backlog draining at 16,000/s to one
/// receiver parks each for 1-2 ms).
pub const PARK_LIMIT: Duration = Duration::from_millis(20);

/// A parked delivery and its destination (see `worker::destination_key`).
pub struct Parked<T = Claimed> {
    pub claimed: T,
    pub destination: String,
    since: Instant,
}

/// The parked deliveries of each queue, oldest first.
pub struct ParkingLot<T = Claimed> {
    queues: [Mutex<VecDeque<Parked<T>>>; 2],
}

impl<T> Default for ParkingLot<T> {
    fn default() -> Self {
        ParkingLot {
            queues: [Mutex::default(), Mutex::default()],
        }
    }
}

/// What [`ParkingLot::take`] found: the parked deliveries that go now, with what `admit` gave
/// each, and those parked too long.
pub struct Taken<T, P> {
    pub ready: Vec<(Parked<T>, P)>,
    pub expired: Vec<Parked<T>>,
}

impl<T> ParkingLot<T> {
    fn queue(&self, queue: DeliveryQueue) -> std::sync::MutexGuard<'_, VecDeque<Parked<T>>> {
        self.queues[usize::from(queue == DeliveryQueue::Retry)]
            .lock()
            // A deque of whole entries, whatever panicked while it was held.
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Deliveries of `queue` parked now.
    pub fn len(&self, queue: DeliveryQueue) -> usize {
        self.queue(queue).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len(DeliveryQueue::Fresh) + self.len(DeliveryQueue::Retry) == 0
    }

    pub fn park(&self, queue: DeliveryQueue, claimed: T, destination: String, now: Instant) {
        self.queue(queue).push_back(Parked {
            claimed,
            destination,
            since: now,
        });
    }

    /// Take, oldest first, each parked delivery of `queue` that `admit` lets go (it returns
    /// the permits the delivery goes with), and every one parked for [`PARK_LIMIT`] or longer.
    /// Once `admit` refuses a destination, later deliveries to it stay parked, in order.
    pub fn take<P>(
        &self,
        queue: DeliveryQueue,
        now: Instant,
        mut admit: impl FnMut(&Parked<T>) -> Option<P>,
    ) -> Taken<T, P> {
        let mut taken = Taken {
            ready: Vec::new(),
            expired: Vec::new(),
        };
        let mut parked = self.queue(queue);
        let mut refused: Vec<String> = Vec::new();
        let mut kept = VecDeque::with_capacity(parked.len());
        for entry in parked.drain(..) {
            if now.saturating_duration_since(entry.since) >= PARK_LIMIT {
                taken.expired.push(entry);
                continue;
            }
            if refused.contains(&entry.destination) {
                kept.push_back(entry);
                continue;
            }
            match admit(&entry) {
                Some(permits) => taken.ready.push((entry, permits)),
                None => {
                    refused.push(entry.destination.clone());
                    kept.push_back(entry);
                }
            }
        }
        *parked = kept;
        taken
    }

    /// Everything parked, from both queues (at shutdown).
    pub fn take_all(&self) -> Vec<Parked<T>> {
        let mut all: Vec<Parked<T>> = self.queue(DeliveryQueue::Fresh).drain(..).collect();
        all.extend(self.queue(DeliveryQueue::Retry).drain(..));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids<T: Copy, P>(entries: &[(Parked<T>, P)]) -> Vec<T> {
        entries.iter().map(|(p, _)| p.claimed).collect()
    }

    #[test]
    fn parked_deliveries_go_in_order_as_their_destination_has_room() {
        let lot: ParkingLot<u32> = ParkingLot::default();
        let t0 = Instant::now();
        for (id, dest) in [(1, "a"), (2, "b"), (3, "a"), (4, "a"), (5, "b")] {
            lot.park(DeliveryQueue::Retry, id, dest.into(), t0);
        }
        assert_eq!(lot.len(DeliveryQueue::Retry), 5);
        assert_eq!(lot.len(DeliveryQueue::Fresh), 0, "queues are apart");

        // Room for one more to `a` and none to `b`.
        let mut room_a = 1;
        let taken = lot.take(DeliveryQueue::Retry, t0, |p| {
            (p.destination == "a" && room_a > 0).then(|| room_a -= 1)
        });
        assert_eq!(ids(&taken.ready), vec![1], "the oldest to `a`");
        assert!(taken.expired.is_empty());
        assert_eq!(lot.len(DeliveryQueue::Retry), 4);

        // Once `a` refuses, the later ones to `a` are not asked about (nor taken out of order).
        let mut asked = Vec::new();
        let taken = lot.take(DeliveryQueue::Retry, t0, |p| {
            asked.push(p.claimed);
            (p.destination == "b").then_some(())
        });
        assert_eq!(ids(&taken.ready), vec![2, 5]);
        assert_eq!(asked, vec![2, 3, 5], "4 waits behind 3 without being asked");
        assert_eq!(lot.len(DeliveryQueue::Retry), 2);
    }

    #[test]
    fn a_delivery_parked_too_long_is_handed_back() {
        let lot: ParkingLot<u32> = ParkingLot::default();
        let t0 = Instant::now();
        lot.park(DeliveryQueue::Fresh, 1, "a".into(), t0);
        lot.park(DeliveryQueue::Fresh, 2, "a".into(), t0 + PARK_LIMIT / 2);

        let taken = lot.take(DeliveryQueue::Fresh, t0 + PARK_LIMIT, |_| None::<()>);
        assert!(taken.ready.is_empty());
        assert_eq!(
            taken.expired.iter().map(|p| p.claimed).collect::<Vec<_>>(),
            vec![1]
        );
        assert_eq!(lot.len(DeliveryQueue::Fresh), 1, "the younger one stays");

        let rest = lot.take_all();
        assert_eq!(rest.len(), 1);
        assert_eq!(lot.len(DeliveryQueue::Fresh), 0);
    }
}
