//! Conversions between unix seconds (the crate's time currency) and the types of rcgen / der.

use time::OffsetDateTime;

/// Unix seconds → `OffsetDateTime`, clamped into the range X.509 can express.
pub(crate) fn to_datetime(unix: i64) -> OffsetDateTime {
    // X.509 GeneralizedTime cannot go past 9999-12-31; clamp so arithmetic on caller-provided
    // values can never make a conversion fail.
    const MAX: i64 = 253_402_300_799;
    OffsetDateTime::from_unix_timestamp(unix.clamp(0, MAX)).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Unix seconds → `der::DateTime`.
pub(crate) fn to_der_datetime(unix: i64) -> der::DateTime {
    der::DateTime::from_unix_duration(std::time::Duration::from_secs(unix.max(0) as u64))
        .unwrap_or(der::DateTime::INFINITY)
}
