//! Time as the scheduling logic sees it. Nothing that decides when to poll or retry reads the wall
//! clock directly, so tests can move time instead of sleeping.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration as ChronoDuration, Utc};

pub type Timestamp = DateTime<Utc>;

pub trait Clock: Send + Sync + Debug {
    fn now(&self) -> Timestamp;
}

pub type SharedClock = Arc<dyn Clock>;

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Utc::now()
    }
}

/// A clock that only moves when told to.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<Timestamp>,
}

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        Self {
            now: Mutex::new(start),
        }
    }

    pub fn starting_now() -> Arc<Self> {
        Arc::new(Self::new(Utc::now()))
    }

    pub fn advance(&self, by: std::time::Duration) {
        let mut now = self.now.lock().expect("clock lock");
        *now += ChronoDuration::from_std(by).expect("duration in range");
    }

    pub fn set(&self, to: Timestamp) {
        *self.now.lock().expect("clock lock") = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.lock().expect("clock lock")
    }
}

pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// `t + d`, saturating instead of panicking on absurd durations.
pub fn after(t: Timestamp, d: std::time::Duration) -> Timestamp {
    ChronoDuration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `t - d`, saturating instead of panicking on absurd durations.
pub fn before(t: Timestamp, d: std::time::Duration) -> Timestamp {
    ChronoDuration::from_std(d)
        .ok()
        .and_then(|d| t.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Milliseconds since the Unix epoch, clamped at zero; the sort key of time indexes.
pub fn millis(t: Timestamp) -> u64 {
    t.timestamp_millis().max(0) as u64
}

/// How long from `from` until `to`, zero when `to` is not in the future.
pub fn until(from: Timestamp, to: Timestamp) -> std::time::Duration {
    (to - from).to_std().unwrap_or_default()
}
