//! BSON → JSON (relaxed Extended JSON v2) and the record fields derived from change events.

use crate::record::Row;
use mongodb::bson::{Bson, Document};
use serde_json::Value;

/// A document as a JSON object in relaxed Extended JSON v2 (ObjectId → `{"$oid": …}`, dates
/// → `{"$date": "…"}`, 32/64-bit integers and finite doubles → plain numbers).
pub fn document_to_row(document: Document) -> Row {
    document
        .into_iter()
        .map(|(field, value)| (field, value.into_relaxed_extjson()))
        .collect()
}

/// The record key of a document: `{"_id": …}`.
pub fn key_of(id: Bson) -> Row {
    let mut key = Row::new();
    key.insert("_id".into(), id.into_relaxed_extjson());
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

    #[test]
    fn tokens_round_trip_through_text() {
        let token = Bson::Document(doc! {"_data": "8265A1B2C3000000012B0229296E04"});
        let text = token_text(&token);
        assert_eq!(text, r#"{"_data":"8265A1B2C3000000012B0229296E04"}"#);
        assert_eq!(token_from_text(&text).unwrap(), token);
        assert!(token_from_text("nope").is_err());
    }
}
