//! Shapes: any `where` text, with and without a catalog, either parses or is refused with a
//! position inside it (or just past its end); a parsed filter evaluates over any row without
//! panicking. Input: the filter, then a newline and a JSON row (optional).
#![no_main]

use deltarelay::record::Row;
use deltarelay::shape::{ColumnInfo, Shape};
use libfuzzer_sys::fuzz_target;
use serde_json::json;

fn catalog() -> Vec<ColumnInfo> {
    [
        ("id", "int8"),
        ("owner", "int4"),
        ("n", "numeric"),
        ("f", "float8"),
        ("title", "text"),
        ("done", "bool"),
        ("at", "timestamptz"),
        ("day", "date"),
        ("doc", "jsonb"),
    ]
    .iter()
    .map(|(n, t)| ColumnInfo {
        name: n.to_string(),
        type_name: t.to_string(),
    })
    .collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (filter, row) = text.split_once('\n').unwrap_or((text, ""));
    let mut rows: Vec<Row> = vec![
        json!({"id": "9223372036854775807", "owner": 7, "n": "NaN", "f": "Infinity", "title": "O'Brien",
               "done": true, "at": "2025-01-15T11:00:00.000000Z", "day": "2025-01-15", "doc": {"a": [1]}}),
        json!({"id": null, "owner": "x", "n": 1e300, "f": -0.0, "title": 5, "done": "t", "at": "nope",
               "day": 3, "address": {"city": "Oslo"}}),
    ]
    .into_iter()
    .filter_map(|v| v.as_object().cloned())
    .collect();
    if let Ok(serde_json::Value::Object(row)) = serde_json::from_str(row) {
        rows.push(row);
    }
    let params = vec!["7".to_string(), "'".to_string(), "2025-01-15".to_string()];
    let catalog = catalog();
    for catalog in [Some(catalog.as_slice()), None] {
        match Shape::new("public.t", Some(filter), &params, Some(vec!["title".into()]), catalog) {
            Ok(shape) => {
                for row in &rows {
                    let _ = shape.matches(row);
                    let _ = deltarelay::shape::value_in(row, &deltarelay::shape::Column {
                        name: "owner".into(),
                        class: deltarelay::shape::Class::Integer(32),
                    });
                }
                let _ = shape.equality();
            }
            Err(e) => {
                let limit = filter.chars().count() + 1;
                assert!(e.position >= 1 && e.position <= limit.max(deltarelay::shape::MAX_WHERE_CHARS + 1),
                    "position {} of {} characters: {e}", e.position, limit - 1);
                assert!(e.message.len() < 2000, "{} bytes", e.message.len());
            }
        }
    }
});
