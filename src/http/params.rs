//! Query parameters shared by `/v1/changes` and `/v1/stream`.

use super::error::ApiError;
use crate::log::Cursor;
use std::time::Duration;

pub const DEFAULT_LIMIT: usize = 1000;
pub const MAX_LIMIT: usize = 10_000;
pub const MAX_WAIT_SECONDS: f64 = 60.0;
/// More names than this in `collections` is a malformed request, not a filter.
const MAX_COLLECTIONS: usize = 1000;

/// Where a client starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    /// Absent or `0`.
    Start,
    Cursor(Cursor),
    /// An RFC 3339 instant, normalised to the stored `commit_time` form.
    Time(String),
}

/// The parameters of interest, each at most once. Unknown names are ignored (e.g.
/// `access_token`, read by the auth layer).
#[derive(Debug, Default)]
pub struct RawParams {
    pub since: Option<String>,
    pub collections: Option<String>,
    pub limit: Option<String>,
    pub wait: Option<String>,
}

impl RawParams {
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Result<RawParams, ApiError> {
        let mut raw = RawParams::default();
        for (name, value) in pairs {
            let slot = match name.as_str() {
                "since" => &mut raw.since,
                "collections" => &mut raw.collections,
                "limit" => &mut raw.limit,
                "wait" => &mut raw.wait,
                _ => continue,
            };
            if slot.is_some() {
                return Err(ApiError::bad_parameter(&name, "given more than once"));
            }
            *slot = Some(value);
        }
        Ok(raw)
    }
}

pub fn parse_since(name: &str, value: Option<&str>) -> Result<Since, ApiError> {
    let value = match value.map(str::trim) {
        None | Some("") | Some("0") => return Ok(Since::Start),
        Some(v) => v,
    };
    if let Ok(cursor) = value.parse::<Cursor>() {
        return Ok(Since::Cursor(cursor));
    }
    let looks_like_time =
        value.len() >= 10 && value.as_bytes()[4] == b'-' && value.as_bytes()[7] == b'-';
    if looks_like_time {
        return parse_rfc3339(value).map(Since::Time).map_err(|why| {
            ApiError::bad_parameter(
                name,
                format!("{why}; expected a cursor from an earlier response, 0, or an RFC 3339 timestamp such as 2025-01-15T11:00:00Z"),
            )
        });
    }
    let shown: String = value.chars().take(100).collect();
    Err(ApiError::bad_parameter(
        name,
        format!("malformed cursor {shown:?}: pass back a cursor exactly as the relay returned it, 0 to start from the beginning, or an RFC 3339 timestamp"),
    ))
}

pub fn parse_limit(value: Option<&str>) -> Result<usize, ApiError> {
    let Some(value) = value else {
        return Ok(DEFAULT_LIMIT);
    };
    let value = value.trim();
    let parsed =
        (!value.is_empty() && value.len() <= 6 && value.bytes().all(|b| b.is_ascii_digit()))
            .then(|| value.parse::<usize>().ok())
            .flatten();
    match parsed {
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_parameter(
            "limit",
            format!("must be an integer from 1 to {MAX_LIMIT}"),
        )),
    }
}

pub fn parse_wait(value: Option<&str>) -> Result<Duration, ApiError> {
    let Some(value) = value else {
        return Ok(Duration::ZERO);
    };
    let value = value.trim();
    let plain = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    match value.parse::<f64>() {
        Ok(s) if plain && s.is_finite() && (0.0..=MAX_WAIT_SECONDS).contains(&s) => {
            Ok(Duration::from_secs_f64(s))
        }
        _ => Err(ApiError::bad_parameter(
            "wait",
            "must be a number of seconds from 0 to 60",
        )),
    }
}

/// `None` = every collection; otherwise the distinct names in request order.
pub fn parse_collections(value: Option<&str>) -> Result<Option<Vec<String>>, ApiError> {
    let Some(value) = value else { return Ok(None) };
    let mut names: Vec<String> = Vec::new();
    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    if names.len() > MAX_COLLECTIONS {
        return Err(ApiError::bad_parameter(
            "collections",
            format!("at most {MAX_COLLECTIONS} names"),
        ));
    }
    Ok((!names.is_empty()).then_some(names))
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
    fn parses_since() {
        assert_eq!(parse_since("since", None), Ok(Since::Start));
        assert_eq!(parse_since("since", Some("0")), Ok(Since::Start));
        assert_eq!(
            parse_since("since", Some("7-42")),
            Ok(Since::Cursor(Cursor { epoch: 7, seq: 42 }))
        );
        assert!(matches!(
            parse_since("since", Some("2025-01-15T11:00:00Z")),
            Ok(Since::Time(_))
        ));
        for bad in ["x", "7-", "-1", "2025-01-15", "1-2-3"] {
            let err = parse_since("since", Some(bad)).unwrap_err();
            assert_eq!(err.status, axum::http::StatusCode::BAD_REQUEST, "{bad}");
            assert!(err.message.contains("since"), "{}", err.message);
        }
    }

    #[test]
    fn parses_limit_and_wait() {
        assert_eq!(parse_limit(None), Ok(DEFAULT_LIMIT));
        assert_eq!(parse_limit(Some("10000")), Ok(10_000));
        for bad in ["0", "10001", "abc", "-1", "", "1.5", "99999999999999999999"] {
            assert!(parse_limit(Some(bad)).is_err(), "{bad}");
        }
        assert_eq!(parse_wait(Some("60")), Ok(Duration::from_secs(60)));
        assert_eq!(parse_wait(Some("0.5")), Ok(Duration::from_millis(500)));
        for bad in ["61", "-1", "nan", "inf", "1e1", "", "x"] {
            assert!(parse_wait(Some(bad)).is_err(), "{bad}");
        }
    }
}
