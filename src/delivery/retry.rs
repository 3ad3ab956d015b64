//! The retry policy: what an attempt's answer means, and when the next attempt goes.
//!
//! One place decides, for every kind of receiver: [`judge`] reads an answer (status, headers,
//! body) as the receiver meant it, and [`RetryPolicy`] turns a retryable failure into the time
//! of the next attempt. Slack and Discord have rules of their own, because their answers say
//! more than the status does:
//!
//! | receiver | answer | verdict |
//! |---|---|---|
//! | any | 2xx | delivered |
//! | any | 429 or 503 with `Retry-After` | retried, not before that time |
//! | subscription | 410 | subscription disabled (nothing is deleted) |
//! | Slack | 400 `invalid_payload`, `no_text` (and other payload errors) | dead letter at once |
//! | Slack | 403 `action_prohibited`, 404 `channel_not_found`, 410 `channel_is_archived` (and other dead-channel errors) | subscription disabled with that reason |
//! | Slack | 429 | retried after `Retry-After` |
//! | Discord | 429 | retried after the longer of the body's `retry_after` and `Retry-After` |
//! | Discord | 404 (Unknown Webhook), 401 (Invalid Webhook Token) | subscription disabled |
//! | Discord | 400 (the message was refused) | dead letter at once |
//! | any | anything else (5xx, timeouts, refused connections, ...) | retried on the schedule |

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::clock::Timestamp;
use crate::domain::{ErrorClass, Format};

/// Who receives a delivery, as far as the meaning of its answers goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Receiver {
    /// A job's `callback_url`: nothing to disable; it gets the whole schedule.
    Callback,
    /// A subscription in this format.
    Subscription(Format),
}

/// What came back from one attempt.
#[derive(Clone, Copy, Debug)]
pub struct Answer<'a> {
    /// The HTTP status; `None` when no answer came.
    pub status: Option<u16>,
    /// Why the attempt failed (the transport, or `Http` for a non-2xx); `None` on success.
    pub error: Option<ErrorClass>,
    /// The `Retry-After` header, as sent.
    pub retry_after: Option<&'a str>,
    /// The start of the response body.
    pub body: &'a str,
}

/// What an answer means for the delivery and its subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Try again on the schedule, and not before `not_before` when the receiver asked for a
    /// pause (`Retry-After`, Discord's `retry_after`).
    Retry {
        not_before: Option<Duration>,
    },
    /// Retrying cannot help (the receiver refused the message itself): a dead letter now.
    DeadLetter {
        reason: String,
    },
    /// The destination is gone for good: a dead letter now, and the subscription is disabled
    /// with `reason`.
    Disable {
        reason: String,
    },
}

/// Slack's answers to a message it cannot take as it is (api.slack.com/messaging/webhooks,
/// "Handling errors"): the same body would be refused again.
const SLACK_PAYLOAD_ERRORS: [&str; 7] = [
    "invalid_payload",
    "no_text",
    "missing_text_or_fallback_or_attachments",
    "invalid_blocks",
    "invalid_blocks_format",
    "invalid_attachments",
    "too_many_attachments",
];

/// Slack's answers for a webhook that can no longer post anywhere: every later message would
/// be refused too, until someone fixes the channel or the app.
const SLACK_DEAD_CHANNEL_ERRORS: [&str; 9] = [
    "action_prohibited",
    "posting_to_general_channel_denied",
    "invalid_token",
    "channel_not_found",
    "no_service",
    "no_service_id",
    "no_team",
    "channel_is_archived",
    "team_disabled",
];

/// A pause asked for longer than this is taken as this (a receiver's typo must not park a
/// delivery for a year; the schedule still applies on top).
const MAX_PAUSE: Duration = Duration::from_secs(24 * 60 * 60);

/// What `answer` means, coming from `receiver`. `now` reads `Retry-After` dates.
pub fn judge(receiver: Receiver, answer: &Answer<'_>, now: Timestamp) -> Verdict {
    let Some(status) = answer.status else {
        return Verdict::Retry { not_before: None };
    };
    if (200..300).contains(&status) && answer.error.is_none() {
        return Verdict::Delivered;
    }
    let format = match receiver {
        Receiver::Callback => None,
        Receiver::Subscription(format) => Some(format),
    };
    let specific = match format {
        Some(Format::Slack) => judge_slack(status, answer.body),
        Some(Format::Discord) => judge_discord(status, answer, now),
        Some(Format::Standard) | None => None,
    };
    if let Some(verdict) = specific {
        return verdict;
    }
    if status == 410 && format.is_some() {
        return Verdict::Disable {
            reason: "the receiver answered 410 Gone".into(),
        };
    }
    let not_before = match status {
        429 | 503 => answer
            .retry_after
            .and_then(|value| parse_retry_after(value, now)),
        _ => None,
    };
    Verdict::Retry { not_before }
}

/// Slack answers errors as a short text (`channel_not_found`); some proxies wrap it in JSON
/// (`{"ok": false, "error": "..."}`), which is read too.
fn slack_error(body: &str) -> Option<String> {
    let body = body.trim();
    if body.starts_with('{') {
        let parsed: Value = serde_json::from_str(body).ok()?;
        return parsed.get("error")?.as_str().map(str::to_owned);
    }
    Some(body.to_owned())
}

fn judge_slack(status: u16, body: &str) -> Option<Verdict> {
    if !(400..500).contains(&status) || status == 429 {
        return None;
    }
    let error = slack_error(body)?;
    if SLACK_PAYLOAD_ERRORS.contains(&error.as_str()) {
        return Some(Verdict::DeadLetter {
            reason: format!("Slack refused the message: {status} {error}"),
        });
    }
    if SLACK_DEAD_CHANNEL_ERRORS.contains(&error.as_str()) {
        return Some(Verdict::Disable {
            reason: format!("Slack answered {status} {error}"),
        });
    }
    None
}

/// Discord's error body: `{"message": "Unknown Webhook", "code": 10015}`; on a 429,
/// `{"message": ..., "retry_after": 0.53, "global": false}`.
fn judge_discord(status: u16, answer: &Answer<'_>, now: Timestamp) -> Option<Verdict> {
    let body: Value = serde_json::from_str(answer.body.trim()).unwrap_or(Value::Null);
    let described = || {
        let message = body.get("message").and_then(Value::as_str);
        let code = body.get("code").and_then(Value::as_u64);
        match (message, code) {
            (Some(message), Some(code)) => format!("{status} {message} (code {code})"),
            (Some(message), None) => format!("{status} {message}"),
            (None, _) => status.to_string(),
        }
    };
    match status {
        429 => {
            let from_body = body
                .get("retry_after")
                .and_then(Value::as_f64)
                .and_then(seconds);
            let from_header = answer
                .retry_after
                .and_then(|value| parse_retry_after(value, now).or_else(|| seconds_text(value)));
            Some(Verdict::Retry {
                not_before: from_body.max(from_header),
            })
        }
        404 | 401 => Some(Verdict::Disable {
            reason: format!("Discord answered {}", described()),
        }),
        400 => Some(Verdict::DeadLetter {
            reason: format!("Discord refused the message: {}", described()),
        }),
        _ => None,
    }
}

/// Non-negative, finite seconds (possibly fractional) as a duration, at most [`MAX_PAUSE`].
fn seconds(value: f64) -> Option<Duration> {
    if !value.is_finite() || value < 0.0 {
        return None;
    }
    Some(Duration::from_secs_f64(value.min(MAX_PAUSE.as_secs_f64())))
}

fn seconds_text(value: &str) -> Option<Duration> {
    seconds(value.trim().parse::<f64>().ok()?)
}

/// How long from `now` a `Retry-After` value asks to wait: delay-seconds, or an HTTP-date
/// (RFC 9110, section 10.2.3; a date already past means no wait). At most [`MAX_PAUSE`].
pub fn parse_retry_after(value: &str, now: Timestamp) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_PAUSE));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some(crate::clock::until(now, at.with_timezone(&chrono::Utc)).min(MAX_PAUSE))
}

/// When retries go: the configured schedule, each delay with jitter, never before a pause the
/// receiver asked for.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    schedule: Arc<[Duration]>,
}

impl RetryPolicy {
    pub fn new(schedule: &[Duration]) -> Self {
        RetryPolicy {
            schedule: schedule.into(),
        }
    }

    /// How long to wait before the next attempt of a delivery that has now been tried
    /// `attempts_made` times and failed in a way worth retrying; `None` once the schedule is
    /// used up (a dead letter).
    pub fn next_wait(
        &self,
        attempts_made: usize,
        not_before: Option<Duration>,
    ) -> Option<Duration> {
        let delay = self.schedule.get(attempts_made)?;
        Some(with_jitter(*delay).max(not_before.unwrap_or_default()))
    }
}

/// Up to 20% later than scheduled, so retries to one receiver do not arrive in lockstep.
fn with_jitter(delay: Duration) -> Duration {
    if delay.is_zero() {
        return delay;
    }
    delay.mul_f64(1.0 + rand::random::<f64>() * 0.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        chrono::DateTime::parse_from_rfc3339("2026-11-28T16:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc)
    }

    fn answer(status: u16, body: &str) -> Answer<'_> {
        Answer {
            status: Some(status),
            error: (!(200..300).contains(&status)).then_some(ErrorClass::Http),
            retry_after: None,
            body,
        }
    }

    fn slack(status: u16, body: &str) -> Verdict {
        judge(
            Receiver::Subscription(Format::Slack),
            &answer(status, body),
            now(),
        )
    }

    fn discord(status: u16, body: &str, retry_after: Option<&str>) -> Verdict {
        let mut answer = answer(status, body);
        answer.retry_after = retry_after;
        judge(Receiver::Subscription(Format::Discord), &answer, now())
    }

    const RETRY: Verdict = Verdict::Retry { not_before: None };

    #[test]
    fn a_2xx_is_delivered_unless_the_body_broke_off() {
        for receiver in [
            Receiver::Callback,
            Receiver::Subscription(Format::Standard),
            Receiver::Subscription(Format::Slack),
            Receiver::Subscription(Format::Discord),
        ] {
            assert_eq!(
                judge(receiver, &answer(200, "ok"), now()),
                Verdict::Delivered
            );
            assert_eq!(judge(receiver, &answer(204, ""), now()), Verdict::Delivered);
            let mut broken = answer(200, "");
            broken.error = Some(ErrorClass::Other);
            assert_eq!(judge(receiver, &broken, now()), RETRY);
        }
    }

    #[test]
    fn no_answer_and_5xx_are_retried() {
        let none = Answer {
            status: None,
            error: Some(ErrorClass::Timeout),
            retry_after: None,
            body: "",
        };
        for receiver in [
            Receiver::Callback,
            Receiver::Subscription(Format::Slack),
            Receiver::Subscription(Format::Discord),
        ] {
            assert_eq!(judge(receiver, &none, now()), RETRY);
            assert_eq!(judge(receiver, &answer(500, "no"), now()), RETRY);
            assert_eq!(judge(receiver, &answer(502, ""), now()), RETRY);
        }
    }

    #[test]
    fn a_410_disables_a_subscription_of_any_format_but_not_a_callback() {
        for format in [Format::Standard, Format::Slack, Format::Discord] {
            assert!(matches!(
                judge(Receiver::Subscription(format), &answer(410, "gone"), now()),
                Verdict::Disable { reason } if reason.contains("410")
            ));
        }
        assert_eq!(judge(Receiver::Callback, &answer(410, ""), now()), RETRY);
    }

    #[test]
    fn slack_payload_errors_are_dead_letters_at_once() {
        for error in ["invalid_payload", "no_text", "invalid_blocks"] {
            assert_eq!(
                slack(400, error),
                Verdict::DeadLetter {
                    reason: format!("Slack refused the message: 400 {error}")
                }
            );
        }
        assert_eq!(
            slack(400, " no_text\n"),
            Verdict::DeadLetter {
                reason: "Slack refused the message: 400 no_text".into()
            }
        );
    }

    #[test]
    fn slack_dead_channels_disable_with_slacks_reason() {
        for (status, error) in [
            (403, "action_prohibited"),
            (404, "channel_not_found"),
            (410, "channel_is_archived"),
            (404, "no_service"),
        ] {
            assert_eq!(
                slack(status, error),
                Verdict::Disable {
                    reason: format!("Slack answered {status} {error}")
                }
            );
        }
        assert_eq!(
            slack(404, r#"{"ok":false,"error":"channel_not_found"}"#),
            Verdict::Disable {
                reason: "Slack answered 404 channel_not_found".into()
            }
        );
    }

    #[test]
    fn other_slack_answers_follow_the_general_rules() {
        assert_eq!(slack(400, "something_new"), RETRY);
        assert_eq!(slack(404, "Not Found"), RETRY);
        assert_eq!(
            slack(500, "channel_not_found"),
            RETRY,
            "only 4xx codes count"
        );
        assert!(matches!(slack(410, "gone"), Verdict::Disable { .. }));
        let mut limited = answer(429, "rate_limited");
        limited.retry_after = Some("30");
        assert_eq!(
            judge(Receiver::Subscription(Format::Slack), &limited, now()),
            Verdict::Retry {
                not_before: Some(Duration::from_secs(30))
            }
        );
    }

    #[test]
    fn slack_codes_mean_nothing_to_other_receivers() {
        for receiver in [Receiver::Callback, Receiver::Subscription(Format::Standard)] {
            assert_eq!(
                judge(receiver, &answer(400, "invalid_payload"), now()),
                RETRY
            );
            assert_eq!(
                judge(receiver, &answer(404, "channel_not_found"), now()),
                RETRY
            );
        }
    }

    #[test]
    fn discord_429_takes_the_longer_of_the_body_and_the_header() {
        let body =
            r#"{"message": "You are being rate limited.", "retry_after": 2.5, "global": false}"#;
        assert_eq!(
            discord(429, body, None),
            Verdict::Retry {
                not_before: Some(Duration::from_millis(2500))
            }
        );
        assert_eq!(
            discord(429, body, Some("4")),
            Verdict::Retry {
                not_before: Some(Duration::from_secs(4))
            }
        );
        assert_eq!(
            discord(429, body, Some("1")),
            Verdict::Retry {
                not_before: Some(Duration::from_millis(2500))
            }
        );
        assert_eq!(
            discord(429, "not json", Some("0.75")),
            Verdict::Retry {
                not_before: Some(Duration::from_millis(750))
            }
        );
        assert_eq!(discord(429, r#"{"retry_after": -1}"#, None), RETRY);
        assert_eq!(
            discord(429, r#"{"retry_after": 1e300}"#, None),
            Verdict::Retry {
                not_before: Some(MAX_PAUSE)
            }
        );
    }

    #[test]
    fn discord_unknown_webhook_disables_and_a_refused_message_is_a_dead_letter() {
        assert_eq!(
            discord(
                404,
                r#"{"message": "Unknown Webhook", "code": 10015}"#,
                None
            ),
            Verdict::Disable {
                reason: "Discord answered 404 Unknown Webhook (code 10015)".into()
            }
        );
        assert_eq!(
            discord(404, "", None),
            Verdict::Disable {
                reason: "Discord answered 404".into()
            }
        );
        assert!(matches!(
            discord(
                401,
                r#"{"message": "Invalid Webhook Token", "code": 50027}"#,
                None
            ),
            Verdict::Disable { .. }
        ));
        assert!(matches!(
            discord(400, r#"{"message": "Cannot send an empty message", "code": 50006}"#, None),
            Verdict::DeadLetter { reason } if reason.contains("50006")
        ));
        assert_eq!(discord(503, "", None), RETRY);
    }

    #[test]
    fn retry_after_is_honoured_on_429_and_503_only() {
        for status in [429, 503] {
            let mut a = answer(status, "");
            a.retry_after = Some("7");
            assert_eq!(
                judge(Receiver::Callback, &a, now()),
                Verdict::Retry {
                    not_before: Some(Duration::from_secs(7))
                }
            );
        }
        let mut a = answer(500, "");
        a.retry_after = Some("7");
        assert_eq!(judge(Receiver::Callback, &a, now()), RETRY);
    }

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        assert_eq!(parse_retry_after("2", now()), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after(" 120 ", now()),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sat, 28 Nov 2026 16:00:30 GMT", now()),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sat, 28 Nov 2026 15:00:00 GMT", now()),
            Some(Duration::ZERO),
            "a date in the past asks for no wait"
        );
        assert_eq!(parse_retry_after("99999999", now()), Some(MAX_PAUSE));
        for junk in ["", "soon", "-5", "1.5"] {
            assert_eq!(parse_retry_after(junk, now()), None, "{junk:?}");
        }
    }

    #[test]
    fn the_schedule_gives_the_next_wait_until_it_is_used_up() {
        let policy = RetryPolicy::new(&[Duration::ZERO, Duration::from_secs(5), Duration::ZERO]);
        let second = policy.next_wait(1, None).unwrap();
        assert!(second >= Duration::from_secs(5) && second <= Duration::from_secs(6));
        assert_eq!(policy.next_wait(2, None), Some(Duration::ZERO));
        assert_eq!(
            policy.next_wait(2, Some(Duration::from_secs(3))),
            Some(Duration::from_secs(3)),
            "a pause the receiver asked for comes first"
        );
        assert_eq!(policy.next_wait(3, None), None);
        assert_eq!(policy.next_wait(3, Some(Duration::from_secs(1))), None);
    }
}
