//! RFC 3339 ⇄ protobuf timestamps, in the one format the contract promises.
//!
//! Every time a client sees is UTC with millisecond precision and a `Z` suffix
//! (`2026-11-28T15:20:11.123Z`); input may carry any offset.

use std::time::SystemTime;

use chrono::{DateTime, SecondsFormat, Utc};
use prost_types::Timestamp;

/// Parses any RFC 3339 timestamp (any offset, any fraction); `None` when it is not one.
pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
    let dt = DateTime::parse_from_rfc3339(s).ok()?;
    // A leap second (`:60`) shows up as nanos ≥ 1e9, which a protobuf timestamp cannot hold.
    let nanos = dt.timestamp_subsec_nanos().min(999_999_999);
    Some(Timestamp {
        seconds: dt.timestamp(),
        nanos: i32::try_from(nanos).ok()?,
    })
}

/// Formats as UTC with millisecond precision and a `Z` suffix, the contract's only format.
///
/// A timestamp outside chrono's range (never produced by this crate) formats as the epoch
/// rather than failing, so rendering an envelope cannot fail.
pub fn format_rfc3339(ts: &Timestamp) -> String {
    to_datetime(ts)
        .unwrap_or(DateTime::UNIX_EPOCH)
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The current time, e.g. for `accepted_at`.
pub fn now() -> Timestamp {
    from_system(SystemTime::now())
}

/// Converts a system time; times before the epoch are represented as negative seconds.
pub fn from_system(t: SystemTime) -> Timestamp {
    Timestamp::from(t)
}

/// The system time of a timestamp; times before the epoch read as the epoch.
pub fn to_system(ts: &Timestamp) -> SystemTime {
    let ms = to_unix_ms(ts);
    SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// Milliseconds since the Unix epoch, for comparisons and latency arithmetic.
pub fn to_unix_ms(ts: &Timestamp) -> i64 {
    let ts = normalized(ts);
    ts.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(ts.nanos / 1_000_000))
}

/// The chrono view of a timestamp; `None` when it is out of range.
pub(crate) fn to_datetime(ts: &Timestamp) -> Option<DateTime<Utc>> {
    let ts = normalized(ts);
    DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).ok()?)
}

/// Brings `nanos` into `0..1e9`, as protobuf requires and chrono expects.
fn normalized(ts: &Timestamp) -> Timestamp {
    let mut ts = *ts;
    ts.normalize();
    ts
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn formats_utc_with_milliseconds_and_z() {
        let ts = parse_rfc3339("2026-11-28T15:20:11.123456Z").unwrap();
        assert_eq!(format_rfc3339(&ts), "2026-11-28T15:20:11.123Z");
    }

    #[test]
    fn parses_any_offset_into_utc() {
        let ts = parse_rfc3339("2026-11-28T17:20:11+02:00").unwrap();
        assert_eq!(format_rfc3339(&ts), "2026-11-28T15:20:11.000Z");
    }

    #[test]
    fn rejects_what_is_not_rfc_3339() {
        for s in [
            "",
            "2026-11-28",
            "2026-11-28T15:20:11",
            "yesterday",
            "1764343211",
        ] {
            assert!(parse_rfc3339(s).is_none(), "{s}");
        }
    }

    #[test]
    fn unix_ms_agrees_with_system_time() {
        let t = UNIX_EPOCH + Duration::from_millis(1_764_343_211_123);
        assert_eq!(to_unix_ms(&from_system(t)), 1_764_343_211_123);
    }

    #[test]
    fn unnormalized_timestamps_still_format() {
        let ts = Timestamp {
            seconds: 10,
            nanos: -500_000_000,
        };
        assert_eq!(format_rfc3339(&ts), "1970-01-01T00:00:09.500Z");
        assert_eq!(to_unix_ms(&ts), 9_500);
    }

    #[test]
    fn now_is_after_2025() {
        assert!(to_unix_ms(&now()) > 1_735_689_600_000);
    }
}
