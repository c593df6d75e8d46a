//! Query strings of `/v1/changes` and `/v1/stream`, parsed as the handlers do (axum's `Query`
//! into pairs, then each parameter); also `Last-Event-ID` and RFC 3339 `since` values.
//! Every input is either accepted or a 400 with a bounded message; nothing panics.
#![no_main]

use axum::extract::Query;
use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use deltarelay::http::params::{self, RawParams, Since};
use deltarelay::http::ApiError;
use libfuzzer_sys::fuzz_target;

fn check_error(error: ApiError) {
    let response = error.into_response();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

fn parse(query: &str) -> Result<(), ApiError> {
    let Ok(uri) = format!("/v1/changes?{query}").parse::<Uri>() else {
        return Ok(());
    };
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .map_err(|e| ApiError::bad_parameter("query string", e.body_text()))?;
    let raw = RawParams::from_pairs(pairs)?;
    let since = params::parse_since("since", raw.since.as_deref())?;
    if let Since::Time(time) = &since {
        // The normalised form is what the log stores: it parses to itself.
        assert_eq!(deltarelay::time::parse_rfc3339(time).as_deref(), Ok(time.as_str()));
    }
    let limit = params::parse_limit(raw.limit.as_deref())?;
    assert!((1..=params::MAX_LIMIT).contains(&limit));
    let wait = params::parse_wait(raw.wait.as_deref())?;
    assert!(wait.as_secs_f64() <= params::MAX_WAIT_SECONDS);
    params::parse_collections(raw.collections.as_deref())?;
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = parse(&text) {
        check_error(e);
    }
    if let Err(e) = params::parse_since("Last-Event-ID", Some(&text)) {
        check_error(e);
    }
});
