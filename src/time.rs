//! Time in the forms the relay meets: Postgres' epoch (µs since 2000-01-01), Unix
//! milliseconds (MongoDB), and the one text form records carry, RFC 3339 UTC with exactly six
//! fractional digits. One civil-date routine serves them all.

use std::time::{SystemTime, UNIX_EPOCH};

const MICROS_PER_SECOND: i64 = 1_000_000;
const SECONDS_PER_DAY: i64 = 86_400;
/// Days from 1970-01-01 (Unix) to 2000-01-01 (Postgres).
const PG_EPOCH_DAYS: i64 = 10_957;
/// Microseconds from 1970-01-01 (Unix) to 2000-01-01 (Postgres).
pub const PG_EPOCH_OFFSET_MICROS: i64 = PG_EPOCH_DAYS * SECONDS_PER_DAY * MICROS_PER_SECOND;

/// Postgres epoch (2000-01-01) microseconds → RFC 3339 UTC with exactly 6 fractional digits,
/// e.g. "2025-01-15T11:00:00.123456Z".
///
/// `i64::MAX`/`i64::MIN` are Postgres' `infinity`/`-infinity` and come back as those words.
/// Years outside 0000..=9999 (which RFC 3339 cannot express) use the ISO 8601 expanded form
/// with a sign and six digits, as JavaScript's `Date` does, e.g. "+294276-12-31T…Z".
pub fn pg_micros_to_rfc3339(micros: i64) -> String {
    match micros {
        i64::MAX => return "infinity".to_string(),
        i64::MIN => return "-infinity".to_string(),
        _ => {}
    }
    let fraction = micros.rem_euclid(MICROS_PER_SECOND);
    let seconds = micros.div_euclid(MICROS_PER_SECOND);
    let days = seconds.div_euclid(SECONDS_PER_DAY);
    let second_of_day = seconds.rem_euclid(SECONDS_PER_DAY);
    let (year, month, day) = civil_from_days(days + PG_EPOCH_DAYS);
    let year = if (0..=9999).contains(&year) {
        format!("{year:04}")
    } else {
        format!("{year:+07}")
    };
    format!(
        "{year}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{fraction:06}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60,
    )
}

/// µs since 2000-01-01 UTC for "now" (the Postgres protocol's clock).
pub fn pg_now_micros() -> i64 {
    let unix_micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    unix_micros - PG_EPOCH_OFFSET_MICROS
}

/// Unix milliseconds → RFC 3339 UTC with microseconds.
pub fn unix_millis_to_rfc3339(millis: i64) -> String {
    let micros = millis
        .saturating_sub(PG_EPOCH_OFFSET_MICROS / 1000)
        .saturating_mul(1000);
    pg_micros_to_rfc3339(micros)
}

/// Parses an RFC 3339 timestamp (`T`, `t` or a space between date and time; optional
/// fraction; `Z` or `±HH:MM`, or nothing for UTC) into the stored form
/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` in UTC. Sub-microsecond digits are dropped: stored times are
/// whole microseconds, so "after t" and "after t truncated" select the same records.
pub fn parse_rfc3339(text: &str) -> Result<String, String> {
    let bad = || {
        format!(
            "malformed timestamp {:?}",
            text.chars().take(60).collect::<String>()
        )
    };
    let b = text.as_bytes();
    if b.len() < 19 {
        return Err(bad());
    }
    let num = |range: std::ops::Range<usize>| -> Result<i64, String> {
        let part = &b[range];
        if part.iter().all(u8::is_ascii_digit) {
            Ok(part.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
        } else {
            Err(bad())
        }
    };
    let sep_ok = b[4] == b'-'
        && b[7] == b'-'
        && matches!(b[10], b'T' | b't' | b' ')
        && b[13] == b':'
        && b[16] == b':';
    if !sep_ok {
        return Err(bad());
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return Err(format!("{} (a date or time field is out of range)", bad()));
    }
    let mut rest = &b[19..];
    let mut micros = 0i64;
    if let Some((b'.', tail)) = rest.split_first() {
        let digits = tail.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err(bad());
        }
        for i in 0..6 {
            micros = micros * 10
                + tail
                    .get(i)
                    .filter(|_| i < digits)
                    .map_or(0, |d| i64::from(d - b'0'));
        }
        rest = &tail[digits..];
    }
    let offset_seconds = match rest {
        [] | [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return Err(bad());
            }
            let hours = i64::from(h1 - b'0') * 10 + i64::from(h2 - b'0');
            let minutes = i64::from(m1 - b'0') * 10 + i64::from(m2 - b'0');
            if hours > 23 || minutes > 59 {
                return Err(bad());
            }
            let total = hours * 3600 + minutes * 60;
            if *sign == b'+' {
                total
            } else {
                -total
            }
        }
        _ => return Err(bad()),
    };
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset_seconds;
    let (days, second_of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    if !(0..=9999).contains(&year) {
        return Err(format!("{} (year out of range)", bad()));
    }
    Ok(format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    ))
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days since 1970-01-01 → proleptic Gregorian (year, month, day); the inverse of
/// [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_timestamps() {
        assert_eq!(pg_micros_to_rfc3339(0), "2000-01-01T00:00:00.000000Z");
        // 2025-01-15T11:00:00Z is Unix 1736938800; the Postgres epoch is Unix 946684800.
        let micros = (1_736_938_800 - 946_684_800) * MICROS_PER_SECOND + 123_456;
        assert_eq!(pg_micros_to_rfc3339(micros), "2025-01-15T11:00:00.123456Z");
        assert_eq!(pg_micros_to_rfc3339(1), "2000-01-01T00:00:00.000001Z");
    }

    #[test]
    fn formats_negative_timestamps() {
        assert_eq!(pg_micros_to_rfc3339(-1), "1999-12-31T23:59:59.999999Z");
        assert_eq!(
            pg_micros_to_rfc3339(-MICROS_PER_SECOND),
            "1999-12-31T23:59:59.000000Z"
        );
        // 1900-03-01 is Unix -2203891200.
        let micros = (-2_203_891_200 - 946_684_800) * MICROS_PER_SECOND;
        assert_eq!(pg_micros_to_rfc3339(micros), "1900-03-01T00:00:00.000000Z");
        // 1970-01-01, the Unix epoch.
        assert_eq!(
            pg_micros_to_rfc3339(-946_684_800 * MICROS_PER_SECOND),
            "1970-01-01T00:00:00.000000Z"
        );
    }

    #[test]
    fn formats_leap_years() {
        let at = |unix: i64| pg_micros_to_rfc3339((unix - 946_684_800) * MICROS_PER_SECOND);
        assert_eq!(at(1_709_251_199), "2024-02-29T23:59:59.000000Z");
        assert_eq!(at(1_709_251_200), "2024-03-01T00:00:00.000000Z");
        // 2000 is a leap year (divisible by 400): Feb 29 exists.
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00.000000Z");
        // 2100 is not (divisible by 100): Feb 28 is followed by Mar 1.
        assert_eq!(at(4_107_456_000), "2100-02-28T00:00:00.000000Z");
        assert_eq!(at(4_107_456_000 + 86_400), "2100-03-01T00:00:00.000000Z");
        // 1600 is (divisible by 400), before the epoch.
        assert_eq!(at(-11_670_955_200), "1600-02-29T12:00:00.000000Z");
        assert_eq!(
            at(-11_670_955_200 - 12 * 3600 - 1),
            "1600-02-28T23:59:59.000000Z"
        );
    }

    #[test]
    fn formats_extreme_timestamps() {
        assert_eq!(pg_micros_to_rfc3339(i64::MAX), "infinity");
        assert_eq!(pg_micros_to_rfc3339(i64::MIN), "-infinity");
        // Near the ends of the range nothing overflows and the year gets a sign.
        assert_eq!(
            pg_micros_to_rfc3339(i64::MAX - 1),
            "+294277-01-09T04:00:54.775806Z"
        );
        assert_eq!(
            pg_micros_to_rfc3339(i64::MIN + 1),
            "-290278-12-22T19:59:05.224193Z"
        );
        // The last and first four-digit years.
        let day = 86_400 * MICROS_PER_SECOND;
        let year_10000 = (253_402_300_800 - 946_684_800) * MICROS_PER_SECOND;
        assert_eq!(
            pg_micros_to_rfc3339(year_10000 - 1),
            "9999-12-31T23:59:59.999999Z"
        );
        assert_eq!(
            pg_micros_to_rfc3339(year_10000),
            "+010000-01-01T00:00:00.000000Z"
        );
        let year_0 = (-62_167_219_200 - 946_684_800) * MICROS_PER_SECOND;
        assert_eq!(pg_micros_to_rfc3339(year_0), "0000-01-01T00:00:00.000000Z");
        assert_eq!(
            pg_micros_to_rfc3339(year_0 - day),
            "-000001-12-31T00:00:00.000000Z"
        );
    }

    #[test]
    fn civil_dates_round_trip_day_by_day() {
        // Walk ~900 years across the epoch and check each day follows the previous one.
        let mut prev = civil_from_days(-200_000);
        for days in -199_999..130_000 {
            let (y, m, d) = civil_from_days(days);
            let expected = if prev.2 < days_in_month(prev.0, prev.1) {
                (prev.0, prev.1, prev.2 + 1)
            } else if prev.1 < 12 {
                (prev.0, prev.1 + 1, 1)
            } else {
                (prev.0 + 1, 1, 1)
            };
            assert_eq!((y, m, d), expected, "day {days}");
            prev = (y, m, d);
        }
    }

    #[test]
    fn normalises_timestamps_to_the_stored_form() {
        let cases = [
            ("2025-01-15T11:00:00Z", "2025-01-15T11:00:00.000000Z"),
            (
                "2025-01-15t11:00:00.123456789z",
                "2025-01-15T11:00:00.123456Z",
            ),
            ("2025-01-15 11:00:00.5", "2025-01-15T11:00:00.500000Z"),
            ("2025-01-15T01:30:00+02:00", "2025-01-14T23:30:00.000000Z"),
            (
                "2024-02-29T23:59:59.999999-00:30",
                "2024-03-01T00:29:59.999999Z",
            ),
            ("1969-12-31T23:59:59Z", "1969-12-31T23:59:59.000000Z"),
        ];
        for (input, want) in cases {
            assert_eq!(parse_rfc3339(input).as_deref(), Ok(want), "{input}");
        }
        for bad in [
            "2025-01-15",
            "2025-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2025-01-15T24:00:00Z",
            "2025-01-15T11:00:00.Z",
            "2025-01-15T11:00:00+2:00",
            "2025-01-15T11:00:00Zjunk",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pg_epoch() {
        // 2000-01-01 was long ago, and the value is in microseconds.
        let now = pg_now_micros();
        assert!(now > 20 * 365 * 24 * 3600 * 1_000_000);
    }

    #[test]
    fn formats_wall_time_with_microseconds() {
        assert_eq!(
            unix_millis_to_rfc3339(1_736_938_800_123),
            "2025-01-15T11:00:00.123000Z"
        );
    }
}
