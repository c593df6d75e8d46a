//! Query parameters shared by `/v1/changes` and `/v1/stream`.

use super::error::ApiError;
use crate::log::Cursor;
use crate::time::parse_rfc3339;
use std::time::Duration;

pub const DEFAULT_LIMIT: usize = 1000;
pub const MAX_LIMIT: usize = 10_000;
pub const MAX_WAIT_SECONDS: f64 = 60.0;
/// `params[1]` … `params[MAX_PARAMS]`.
const MAX_PARAMS: usize = 100;
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
    /// A shape's filter, projection and `$n` parameters (`params[n]=…`).
    pub where_: Option<String>,
    pub columns: Option<String>,
    pub params: Vec<(usize, String)>,
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
                "where" => &mut raw.where_,
                "columns" => &mut raw.columns,
                _ => {
                    if let Some(n) = name
                        .strip_prefix("params[")
                        .and_then(|n| n.strip_suffix(']'))
                    {
                        let index = n
                            .parse::<usize>()
                            .ok()
                            .filter(|i| (1..=MAX_PARAMS).contains(i))
                            .ok_or_else(|| {
                                // Not the name itself: it may be long.
                                ApiError::bad_parameter(
                                    "params[n]",
                                    format!("parameters are numbered 1 to {MAX_PARAMS}"),
                                )
                            })?;
                        if raw.params.iter().any(|(i, _)| *i == index) {
                            return Err(ApiError::bad_parameter(&name, "given more than once"));
                        }
                        raw.params.push((index, value));
                    }
                    continue;
                }
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
    // A decimal or exponent form (`1.5`, `1e-7`: what JavaScript's `String(n)` gives), unsigned
    // so `-0` stays out; `inf`/`nan` fail is_finite below.
    let plain = value.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && value
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(parse_wait(Some("1e1")), Ok(Duration::from_secs(10)));
        assert_eq!(parse_wait(Some("1.5E-28")), Ok(Duration::ZERO));
        for bad in [
            "61", "-1", "-0", "+1", "nan", "inf", "6e1.5", "1e2", "", "x", "e1",
        ] {
            assert!(parse_wait(Some(bad)).is_err(), "{bad}");
        }
    }
}
