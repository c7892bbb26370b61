//! `RetryPolicy`: what to do after an attempt, as a pure function of the attempt number, how
//! it went and the receiver's `Retry-After`.
//!
//! `max_attempts` counts the first attempt; `schedule[i]` is the delay before attempt `i + 2`,
//! and the last delay repeats when the schedule is shorter than needed. The default is the
//! Standard Webhooks example: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h and
//! 24 h later (ten attempts over about three days).

use std::time::Duration;

use proto::v1::Subscription;

const S: u64 = 1000;
const DEFAULT_SCHEDULE_MS: [u64; 9] = [
    5 * S,
    300 * S,
    1800 * S,
    7200 * S,
    18000 * S,
    36000 * S,
    50400 * S,
    72000 * S,
    86400 * S,
];
/// The longest a `Retry-After` may push a retry out.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// A subscription's retry policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub schedule: Vec<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: DEFAULT_SCHEDULE_MS.len() as u32 + 1,
            schedule: DEFAULT_SCHEDULE_MS
                .iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect(),
        }
    }
}

/// How an attempt went, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A `2xx`.
    Success,
    /// 408, 429, 5xx, other non-`2xx` that is not a client error, timeouts, connection errors.
    Retryable,
    /// `410 Gone`: the endpoint asks to be unsubscribed.
    Gone,
    /// Any other 4xx: sending the same request again will not help.
    Permanent,
}

/// Classifies an HTTP status (`None` for a transport error).
pub fn classify(status: Option<u16>) -> Class {
    match status {
        Some(200..=299) => Class::Success,
        Some(410) => Class::Gone,
        Some(408 | 429) => Class::Retryable,
        Some(400..=499) => Class::Permanent,
        _ => Class::Retryable,
    }
}

/// What to do with the task after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Done,
    /// Attempt again after this delay.
    Retry(Duration),
    /// Never again: dead-letter with this reason.
    DeadLetter(&'static str),
    /// The endpoint is gone: disable the subscription and park the task.
    Disable,
}

impl RetryPolicy {
    /// The subscription's own policy, with defaults for what it leaves out.
    pub fn of(sub: &Subscription) -> Self {
        let mut policy = Self::default();
        if let Some(retry) = &sub.retry {
            if retry.max_attempts > 0 {
                policy.max_attempts = retry.max_attempts;
            }
            if !retry.schedule_ms.is_empty() {
                policy.schedule = retry
                    .schedule_ms
                    .iter()
                    .map(|ms| Duration::from_millis(*ms))
                    .collect();
            }
        }
        policy
    }

    /// The delay before attempt `next` (2-based: the first retry is attempt 2).
    pub fn delay_before(&self, next: u32) -> Duration {
        let i = next.saturating_sub(2) as usize;
        self.schedule
            .get(i)
            .or(self.schedule.last())
            .copied()
            .unwrap_or_default()
    }

    /// The decision after attempt `attempt` (1-based) went as `class`. `jitter` scales the
    /// schedule's delay (callers pass a random factor around 1.0; tests pass 1.0), and a
    /// `Retry-After` stretches it, never shortens it, up to a day.
    pub fn decide(
        &self,
        attempt: u32,
        class: Class,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Decision {
        match class {
            Class::Success => Decision::Done,
            Class::Gone => Decision::Disable,
            Class::Permanent => Decision::DeadLetter("permanent_failure"),
            Class::Retryable if attempt >= self.max_attempts => {
                Decision::DeadLetter("attempts_exhausted")
            }
            Class::Retryable => {
                let delay = self
                    .delay_before(attempt + 1)
                    .mul_f64(jitter.clamp(0.0, 2.0));
                let delay = match retry_after {
                    Some(ra) => delay.max(ra.min(MAX_RETRY_AFTER)),
                    None => delay,
                };
                Decision::Retry(delay)
            }
        }
    }
}

/// A random factor in [0.8, 1.2]: retries of many tasks that failed together spread out.
pub fn jitter() -> f64 {
    0.8 + rand::random::<f64>() * 0.4
}

/// `Retry-After` in seconds or as an HTTP date.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn policy(max: u32, schedule_ms: &[u64]) -> RetryPolicy {
        RetryPolicy {
            max_attempts: max,
            schedule: schedule_ms
                .iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect(),
        }
    }

    #[test]
    fn statuses_are_classified_as_the_contract_says() {
        for (status, class) in [
            (Some(200), Class::Success),
            (Some(204), Class::Success),
            (Some(299), Class::Success),
            (Some(301), Class::Retryable),
            (Some(400), Class::Permanent),
            (Some(401), Class::Permanent),
            (Some(404), Class::Permanent),
            (Some(408), Class::Retryable),
            (Some(410), Class::Gone),
            (Some(422), Class::Permanent),
            (Some(429), Class::Retryable),
            (Some(500), Class::Retryable),
            (Some(503), Class::Retryable),
            (None, Class::Retryable),
        ] {
            assert_eq!(classify(status), class, "{status:?}");
        }
    }

    #[test]
    fn the_default_is_the_standard_webhooks_schedule_of_ten_attempts_over_about_three_days() {
        let p = RetryPolicy::default();
        assert_eq!(p.max_attempts, 10);
        assert_eq!(p.delay_before(2), Duration::from_secs(5));
        assert_eq!(p.delay_before(3), Duration::from_secs(300));
        assert_eq!(p.delay_before(10), Duration::from_secs(86400));
        let total: Duration = (2..=10).map(|n| p.delay_before(n)).sum();
        assert_eq!(
            total.as_secs(),
            5 + 300 + 1800 + 7200 + 18000 + 36000 + 50400 + 72000 + 86400
        );
        assert!((2.9..3.3).contains(&(total.as_secs_f64() / 86400.0)));
    }

    #[test]
    fn decisions_follow_attempt_class_and_retry_after() {
        let p = policy(3, &[100, 200]);
        let table = [
            (1, Class::Success, None, Decision::Done),
            (
                1,
                Class::Retryable,
                None,
                Decision::Retry(Duration::from_millis(100)),
            ),
            (
                2,
                Class::Retryable,
                None,
                Decision::Retry(Duration::from_millis(200)),
            ),
            (
                3,
                Class::Retryable,
                None,
                Decision::DeadLetter("attempts_exhausted"),
            ),
            (
                1,
                Class::Permanent,
                None,
                Decision::DeadLetter("permanent_failure"),
            ),
            (1, Class::Gone, None, Decision::Disable),
            // Retry-After longer than the schedule wins; shorter does not shorten it.
            (
                1,
                Class::Retryable,
                Some(Duration::from_secs(7)),
                Decision::Retry(Duration::from_secs(7)),
            ),
            (
                1,
                Class::Retryable,
                Some(Duration::from_millis(1)),
                Decision::Retry(Duration::from_millis(100)),
            ),
            // A Retry-After of a week is clamped to a day.
            (
                1,
                Class::Retryable,
                Some(Duration::from_secs(7 * 86400)),
                Decision::Retry(Duration::from_secs(86400)),
            ),
        ];
        for (attempt, class, ra, want) in table {
            assert_eq!(
                p.decide(attempt, class, ra, 1.0),
                want,
                "{attempt} {class:?} {ra:?}"
            );
        }
    }

    #[test]
    fn a_short_schedule_repeats_its_last_delay_and_max_attempts_counts_the_first() {
        let p = policy(5, &[10, 20]);
        assert_eq!(p.delay_before(4), Duration::from_millis(20));
        assert_eq!(p.delay_before(5), Duration::from_millis(20));
        assert_eq!(
            p.decide(4, Class::Retryable, None, 1.0),
            Decision::Retry(Duration::from_millis(20))
        );
        assert_eq!(
            p.decide(5, Class::Retryable, None, 1.0),
            Decision::DeadLetter("attempts_exhausted")
        );
        let once = policy(1, &[]);
        assert_eq!(
            once.decide(1, Class::Retryable, None, 1.0),
            Decision::DeadLetter("attempts_exhausted")
        );
    }

    #[test]
    fn a_subscriptions_own_policy_overrides_the_default_field_by_field() {
        let mut sub = Subscription::default();
        assert_eq!(RetryPolicy::of(&sub), RetryPolicy::default());
        sub.retry = Some(proto::v1::RetryPolicy {
            max_attempts: 3,
            schedule_ms: vec![],
        });
        let p = RetryPolicy::of(&sub);
        assert_eq!((p.max_attempts, p.schedule.len()), (3, 9));
        sub.retry = Some(proto::v1::RetryPolicy {
            max_attempts: 0,
            schedule_ms: vec![50],
        });
        let p = RetryPolicy::of(&sub);
        assert_eq!(
            (p.max_attempts, p.delay_before(7)),
            (10, Duration::from_millis(50))
        );
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        for _ in 0..1000 {
            assert!((0.8..=1.2).contains(&jitter()));
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 09 Sep 2001 01:48:40 GMT", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 09 Sep 2001 01:46:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
