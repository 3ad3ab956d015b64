//! When a failed delivery is tried again: one value holding the schedule, the jitter and how a
//! receiver's `Retry-After` is honoured, used by the worker for every attempt.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::Timestamp;
use crate::config::DeliverySettings;

/// Retries are spread up to this share later than scheduled, so that the retries to one
/// receiver do not arrive in lockstep.
pub const JITTER: f64 = 0.2;

/// The retry policy of deliveries: `schedule[n]` is the wait before attempt `n + 1` after `n`
/// attempts failed; once the schedule is used up a delivery is a dead letter. A receiver that
/// answers `429` or `503` with `Retry-After` is not tried again before it asked.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    schedule: Arc<[Duration]>,
    jitter: f64,
}

impl RetryPolicy {
    pub fn new(schedule: &[Duration]) -> RetryPolicy {
        RetryPolicy {
            schedule: schedule.into(),
            jitter: JITTER,
        }
    }

    pub fn of(settings: &DeliverySettings) -> RetryPolicy {
        RetryPolicy::new(&settings.retry_schedule)
    }

    /// How long after the last of `attempts` failed attempts the next one is due, or `None`
    /// when the schedule is used up (the delivery is dead-lettered). `retry_after` (from
    /// [`RetryPolicy::retry_after`]) is a floor under the scheduled, jittered wait.
    pub fn next_wait(&self, attempts: usize, retry_after: Option<Duration>) -> Option<Duration> {
        let delay = *self.schedule.get(attempts)?;
        Some(with_jitter(delay, self.jitter).max(retry_after.unwrap_or_default()))
    }

    /// The wait a receiver asked for with a `Retry-After` header; honoured only on `429` and
    /// `503`, where it is meant as a wait.
    pub fn retry_after(status: u16, header: Option<&str>, now: Timestamp) -> Option<Duration> {
        if status != 429 && status != 503 {
            return None;
        }
        parse_retry_after(header?, now)
    }
}

/// How long from `now` a `Retry-After` value asks to wait: delay-seconds, or an HTTP-date
/// (RFC 9110, section 10.2.3; a date already past means no wait).
fn parse_retry_after(value: &str, now: Timestamp) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some(crate::clock::until(now, at.with_timezone(&chrono::Utc)))
}

/// Up to `jitter` (a share) later than `delay`.
fn with_jitter(delay: Duration, jitter: f64) -> Duration {
    if delay.is_zero() {
        return delay;
    }
    delay.mul_f64(1.0 + rand::random::<f64>() * jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        chrono::DateTime::parse_from_rfc3339("2026-11-28T16:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc)
    }

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        let now = now();
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sat, 28 Nov 2026 16:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sat, 28 Nov 2026 15:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past asks for no wait"
        );
        for junk in ["", "soon", "-5", "1.5"] {
            assert_eq!(parse_retry_after(junk, now), None, "{junk:?}");
        }
    }

    #[test]
    fn retry_after_counts_only_on_429_and_503() {
        let now = now();
        for status in [429, 503] {
            assert_eq!(
                RetryPolicy::retry_after(status, Some("7"), now),
                Some(Duration::from_secs(7))
            );
        }
        for status in [200, 410, 500, 502] {
            assert_eq!(RetryPolicy::retry_after(status, Some("7"), now), None);
        }
        assert_eq!(RetryPolicy::retry_after(429, None, now), None);
    }

    #[test]
    fn the_schedule_is_followed_with_at_most_20_percent_jitter_then_ends() {
        let policy = RetryPolicy::new(&[Duration::ZERO, Duration::from_secs(10)]);
        assert_eq!(policy.next_wait(0, None), Some(Duration::ZERO));
        for _ in 0..100 {
            let wait = policy.next_wait(1, None).unwrap();
            assert!(wait >= Duration::from_secs(10), "{wait:?}");
            assert!(wait <= Duration::from_secs(12), "{wait:?}");
        }
        assert_eq!(policy.next_wait(2, None), None, "the schedule is used up");
        assert_eq!(
            policy.next_wait(2, Some(Duration::from_secs(60))),
            None,
            "Retry-After does not extend the schedule"
        );
    }

    #[test]
    fn retry_after_is_a_floor_under_the_scheduled_wait() {
        let policy = RetryPolicy::new(&[Duration::ZERO, Duration::from_secs(10)]);
        assert_eq!(
            policy.next_wait(0, Some(Duration::from_secs(3))),
            Some(Duration::from_secs(3))
        );
        let wait = policy.next_wait(1, Some(Duration::from_secs(1))).unwrap();
        assert!(wait >= Duration::from_secs(10));
    }
}
