//! Postgres text → JSON for each ValueType: the first byte picks the type (a built-in scalar,
//! a built-in array, or an array of a scalar with the second byte as delimiter), the rest is
//! the value's text. Nothing may panic, and text of a type kept as text comes back unchanged.
#![no_main]

use deltarelay::time::pg_micros_to_rfc3339;
use deltarelay::source::postgres::values::{builtin_value_type, oid, text_to_json, ValueType};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Types with a mapping of their own, then types kept as text, then arrays.
const TYPES: &[u32] = &[
    oid::INT2,
    oid::INT4,
    oid::INT8,
    oid::OID,
    oid::XID,
    oid::XID8,
    oid::FLOAT4,
    oid::FLOAT8,
    oid::BOOL,
    oid::JSON,
    oid::JSONB,
    oid::BYTEA,
    oid::TIMESTAMP,
    oid::TIMESTAMPTZ,
    oid::TEXT,
    oid::BOX,
    oid::INT4_ARRAY,
    oid::INT8_ARRAY,
    oid::FLOAT8_ARRAY,
    oid::TEXT_ARRAY,
    oid::BOX_ARRAY,
    oid::BYTEA_ARRAY,
    oid::JSON_ARRAY,
    oid::TIMESTAMP_ARRAY,
    oid::BOOL_ARRAY,
];

fuzz_target!(|data: &[u8]| {
    let [selector, delimiter, rest @ ..] = data else {
        return;
    };
    if rest.len() >= 8 {
        let micros = i64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
        let text = pg_micros_to_rfc3339(micros);
        assert!(text.is_ascii());
    }
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let chosen = TYPES[usize::from(*selector) % TYPES.len()];
    let ty = if selector & 0x80 != 0 {
        ValueType::Array {
            element: chosen,
            delimiter: *delimiter,
        }
    } else {
        builtin_value_type(chosen).expect("a built-in type")
    };
    let value = text_to_json(ty, text);
    if ty == ValueType::Scalar(oid::TEXT) || ty == ValueType::Scalar(oid::BOX) {
        assert_eq!(value, Value::String(text.to_string()));
    }
    if let (ValueType::Scalar(oid::INT2 | oid::INT4 | oid::INT8), Value::Number(n)) = (ty, &value) {
        assert_eq!(
            Some(n.to_string()),
            text.parse::<i64>().ok().map(|i| i.to_string())
        );
    }
    let json = value.to_string();
    let _: Value = serde_json::from_str(&json).expect("the JSON parses back");
});
