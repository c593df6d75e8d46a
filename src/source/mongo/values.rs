//! BSON → JSON (relaxed Extended JSON v2) and the record fields derived from change events, and
//! back (JSON → BSON, for writes).
//!
//! The mapping (docs/DESIGN.md has the table): relaxed Extended JSON v2, except that a 64-bit
//! integer a JavaScript number cannot hold exactly (beyond ±(2^53 − 1)) keeps its canonical
//! form `{"$numberLong": "…"}`, and every NaN is `{"$numberDouble": "NaN"}` (Extended JSON has
//! no "-NaN").

use crate::record::Row;
use mongodb::bson::{Bson, Document, JavaScriptCodeWithScope};
use serde_json::{json, Value};

/// The largest integer a JavaScript number (an IEEE double) holds exactly: 2^53 − 1.
const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// A document as a JSON object (ObjectId → `{"$oid": …}`, dates → `{"$date": "…"}`, 32-bit
/// and safe 64-bit integers and finite doubles → plain numbers).
pub fn document_to_row(document: Document) -> Row {
    document
        .into_iter()
        .map(|(field, value)| (field, bson_to_json(value)))
        .collect()
}

/// One BSON value as JSON.
pub fn bson_to_json(value: Bson) -> Value {
    match value {
        Bson::Document(d) => Value::Object(document_to_row(d)),
        Bson::Array(list) => Value::Array(list.into_iter().map(bson_to_json).collect()),
        Bson::Int64(n) if !(-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(&n) => {
            json!({"$numberLong": n.to_string()})
        }
        Bson::Double(f) if f.is_nan() => json!({"$numberDouble": "NaN"}),
        Bson::JavaScriptCodeWithScope(JavaScriptCodeWithScope { code, scope }) => {
            json!({"$code": code, "$scope": Value::Object(document_to_row(scope))})
        }
        other => other.into_relaxed_extjson(),
    }
}

/// The record key of a document: `{"_id": …}`.
pub fn key_of(id: Bson) -> Row {
    let mut key = Row::new();
    key.insert("_id".into(), bson_to_json(id));
    key
}

/// A resume token as text: its relaxed Extended JSON (`{"_data":"8263…"}` on current servers).
pub fn token_text(token: &Bson) -> String {
    token.clone().into_relaxed_extjson().to_string()
}

/// The text of a stored token back to BSON.
pub fn token_from_text(text: &str) -> Result<Bson, String> {
    let json: Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON ({e}): {text:?}"))?;
    Bson::try_from(json).map_err(|e| format!("not Extended JSON ({e}): {text:?}"))
}

/// The inverse of [`bson_to_json`], for writes: Extended JSON (relaxed or canonical) to BSON.
/// A plain integer becomes an Int32 when it fits, an Int64 otherwise (relaxed Extended JSON
/// keeps no more than that); a fraction or exponent, a Double. Field names of documents must
/// be storable: not empty, not starting with `$`, no `.` and no NUL (the error names the path).
pub fn json_to_bson(value: &Value) -> Result<Bson, String> {
    let bson =
        Bson::try_from(value.clone()).map_err(|e| format!("not valid Extended JSON: {e}"))?;
    check_names(&bson, "")?;
    Ok(bson)
}

/// Why `name` cannot be a stored field name, if it cannot.
pub fn field_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("field names must not be empty")
    } else if name.starts_with('$') {
        Some("field names must not start with '$' (operators are not accepted in values)")
    } else if name.contains('.') {
        Some("field names must not contain '.' (give nested documents instead of dotted paths)")
    } else if name.contains('\0') {
        Some("field names must not contain NUL")
    } else {
        None
    }
}

fn check_names(bson: &Bson, path: &str) -> Result<(), String> {
    match bson {
        Bson::Document(d) => {
            for (name, value) in d {
                if let Some(why) = field_name_problem(name) {
                    return Err(format!("{path}{name:?}: {why}"));
                }
                check_names(value, &format!("{path}{name}."))?;
            }
        }
        Bson::Array(list) => {
            for (i, value) in list.iter().enumerate() {
                check_names(value, &format!("{path}{i}."))?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{doc, oid::ObjectId, DateTime};
    use serde_json::json;

    #[test]
    fn maps_bson_to_relaxed_extended_json() {
        let oid = ObjectId::parse_str("65a1b2c3d4e5f60718293a4b").unwrap();
        let row = document_to_row(doc! {
            "_id": oid, "n": 5, "big": 1i64 << 40, "f": 1.5, "s": "x", "b": true, "none": Bson::Null,
            "at": DateTime::from_millis(1_736_938_800_123), "list": [1, "a"], "sub": {"k": 1},
        });
        assert_eq!(
            Value::Object(row),
            json!({
                "_id": {"$oid": "65a1b2c3d4e5f60718293a4b"}, "n": 5, "big": 1i64 << 40, "f": 1.5,
                "s": "x", "b": true, "none": null, "at": {"$date": "2025-01-15T11:00:00.123Z"},
                "list": [1, "a"], "sub": {"k": 1},
            })
        );
        assert_eq!(
            Value::Object(key_of(Bson::ObjectId(oid))),
            json!({"_id": {"$oid": "65a1b2c3d4e5f60718293a4b"}})
        );
    }

    /// Every BSON type, against hard-coded JSON (not against a conversion function).
    #[test]
    fn maps_every_bson_type() {
        use mongodb::bson::{spec::BinarySubtype, Binary, Decimal128, Regex, Timestamp};
        let cases: Vec<(Bson, &str)> = vec![
            (Bson::Int32(-7), "-7"),
            (Bson::Int64(9_007_199_254_740_991), "9007199254740991"),
            (Bson::Int64(-9_007_199_254_740_991), "-9007199254740991"),
            (
                Bson::Int64(9_007_199_254_740_992),
                r#"{"$numberLong":"9007199254740992"}"#,
            ),
            (
                Bson::Int64(i64::MIN),
                r#"{"$numberLong":"-9223372036854775808"}"#,
            ),
            (Bson::Double(1.5), "1.5"),
            (Bson::Double(2.0), "2.0"),
            (Bson::Double(-0.0), "-0.0"),
            (Bson::Double(f64::NAN), r#"{"$numberDouble":"NaN"}"#),
            (Bson::Double(-f64::NAN), r#"{"$numberDouble":"NaN"}"#),
            (
                Bson::Double(f64::INFINITY),
                r#"{"$numberDouble":"Infinity"}"#,
            ),
            (
                Bson::Double(f64::NEG_INFINITY),
                r#"{"$numberDouble":"-Infinity"}"#,
            ),
            (
                Bson::Decimal128("1.10".parse::<Decimal128>().unwrap()),
                r#"{"$numberDecimal":"1.10"}"#,
            ),
            (Bson::String("é\"".into()), r#""é\"""#),
            (Bson::Boolean(false), "false"),
            (Bson::Null, "null"),
            (
                Bson::DateTime(DateTime::from_millis(0)),
                r#"{"$date":"1970-01-01T00:00:00Z"}"#,
            ),
            (
                Bson::DateTime(DateTime::from_millis(-1)),
                r#"{"$date":{"$numberLong":"-1"}}"#,
            ),
            (
                Bson::Binary(Binary {
                    subtype: BinarySubtype::Generic,
                    bytes: vec![1, 2, 255],
                }),
                r#"{"$binary":{"base64":"AQL/","subType":"00"}}"#,
            ),
            (
                Bson::Binary(Binary {
                    subtype: BinarySubtype::Uuid,
                    bytes: vec![0xab; 16],
                }),
                r#"{"$binary":{"base64":"q6urq6urq6urq6urq6urqw==","subType":"04"}}"#,
            ),
            (
                Bson::Timestamp(Timestamp {
                    time: 1_736_938_800,
                    increment: 7,
                }),
                r#"{"$timestamp":{"t":1736938800,"i":7}}"#,
            ),
            (
                Bson::RegularExpression(Regex {
                    pattern: "^a".into(),
                    options: "mi".into(),
                }),
                r#"{"$regularExpression":{"pattern":"^a","options":"im"}}"#,
            ),
            (Bson::JavaScriptCode("f()".into()), r#"{"$code":"f()"}"#),
            (
                Bson::JavaScriptCodeWithScope(JavaScriptCodeWithScope {
                    code: "f(x)".into(),
                    scope: doc! {"x": 1i64 << 60},
                }),
                r#"{"$code":"f(x)","$scope":{"x":{"$numberLong":"1152921504606846976"}}}"#,
            ),
            (Bson::Symbol("s".into()), r#"{"$symbol":"s"}"#),
            (Bson::Undefined, r#"{"$undefined":true}"#),
            (Bson::MinKey, r#"{"$minKey":1}"#),
            (Bson::MaxKey, r#"{"$maxKey":1}"#),
            (
                Bson::Array(vec![
                    Bson::Int64(1 << 62),
                    Bson::Document(doc! {"n": f64::NAN}),
                ]),
                r#"[{"$numberLong":"4611686018427387904"},{"n":{"$numberDouble":"NaN"}}]"#,
            ),
        ];
        for (value, expected) in cases {
            let text = bson_to_json(value.clone()).to_string();
            assert_eq!(text, expected, "{value:?}");
        }
        assert_eq!(
            Value::Object(key_of(Bson::Int64(-(1 << 60)))).to_string(),
            r#"{"_id":{"$numberLong":"-1152921504606846976"}}"#
        );
    }

    #[test]
    fn tokens_round_trip_through_text() {
        let token = Bson::Document(doc! {"_data": "8265A1B2C3000000012B0229296E04"});
        let text = token_text(&token);
        assert_eq!(text, r#"{"_data":"8265A1B2C3000000012B0229296E04"}"#);
        assert_eq!(token_from_text(&text).unwrap(), token);
        assert!(token_from_text("nope").is_err());
    }

    /// What the read side gives back, written back, is the same BSON (types included).
    #[test]
    fn json_to_bson_inverts_the_read_mapping() {
        use mongodb::bson::{spec::BinarySubtype, Binary, Decimal128};
        let original = doc! {
            "_id": mongodb::bson::oid::ObjectId::parse_str("65a1b2c3d4e5f60718293a4b").unwrap(),
            "n": 5, "big": 9_007_199_254_740_993i64, "neg": -(1i64 << 60), "f": 1.5, "two": 2.0,
            "s": "x", "b": true, "none": Bson::Null,
            "at": DateTime::from_millis(1_736_938_800_123),
            "d": Bson::Decimal128("1.10".parse::<Decimal128>().unwrap()),
            "bin": Binary { subtype: BinarySubtype::Generic, bytes: vec![0, 1, 255] },
            "nan": f64::NAN,
            "list": [1, "a", {"k": [2.5]}], "sub": {"k": {"deep": 1}},
        };
        let json = Value::Object(document_to_row(original.clone()));
        let back = json_to_bson(&json).unwrap();
        let back = back.as_document().unwrap();
        for (k, v) in &original {
            if k == "nan" {
                assert!(back.get_f64("nan").unwrap().is_nan());
            } else {
                assert_eq!(back.get(k), Some(v), "{k}");
            }
        }
    }

    #[test]
    fn json_to_bson_refuses_operators_dots_and_bad_extended_json() {
        assert!(json_to_bson(&json!({"$oid": "zz"})).is_err());
        let e = json_to_bson(&json!({"a": {"$where": "1"}})).unwrap_err();
        assert!(e.contains("$where"), "{e}");
        let e = json_to_bson(&json!({"a": [{"b.c": 1}]})).unwrap_err();
        assert!(e.contains("a.0.") && e.contains("b.c"), "{e}");
        assert!(field_name_problem("ok").is_none());
        assert!(field_name_problem("a.b").is_some());
        assert!(field_name_problem("$set").is_some());
    }
}
