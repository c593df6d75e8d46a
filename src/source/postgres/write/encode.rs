//! JSON values → the text a column's type parses, the inverse of the read side's mapping
//! (`values`): a value read from `/v1/changes` and written back is the same value.
//! The text is always a bound parameter, cast to the column's type; never SQL.

use super::super::values::{oid, ValueType};
use base64::Engine as _;
use serde_json::Value;

/// `None` for JSON null (SQL NULL); `Err` names what the column expects.
pub fn to_text(ty: ValueType, value: &Value) -> Result<Option<String>, String> {
    if value.is_null() {
        return Ok(None);
    }
    match ty {
        ValueType::Scalar(type_oid) => scalar(type_oid, value).map(Some),
        ValueType::Array { element, delimiter } => match value {
            Value::Array(_) => {
                let mut out = String::new();
                array_literal(element, char::from(delimiter), value, &mut out, 0)?;
                Ok(Some(out))
            }
            // The read side keeps arrays it cannot parse as their text.
            Value::String(text) => Ok(Some(text.clone())),
            _ => Err("expects an array".into()),
        },
    }
}

fn scalar(type_oid: u32, value: &Value) -> Result<String, String> {
    use oid::*;
    match (type_oid, value) {
        (JSON | JSONB, value) => Ok(value.to_string()),
        (INT2 | INT4 | INT8 | OID | XID | CID | XID8, Value::Number(n)) if !n.is_f64() => {
            Ok(n.to_string())
        }
        (INT2 | INT4 | INT8 | OID | XID | CID | XID8, Value::String(s))
            if s.parse::<i128>().is_ok() =>
        {
            Ok(s.clone())
        }
        (INT2 | INT4 | INT8 | OID | XID | CID | XID8, _) => Err("expects an integer".into()),
        (FLOAT4 | FLOAT8 | NUMERIC, Value::Number(n)) => Ok(n.to_string()),
        // NaN, Infinity and exact numerics beyond a double travel as text.
        (FLOAT4 | FLOAT8 | NUMERIC, Value::String(s)) => Ok(s.clone()),
        (FLOAT4 | FLOAT8 | NUMERIC, _) => Err("expects a number".into()),
        (BOOL, Value::Bool(b)) => Ok(b.to_string()),
        (BOOL, _) => Err("expects true or false".into()),
        (BYTEA, Value::String(s)) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .map(|bytes| {
                let mut hex = String::with_capacity(2 + 2 * bytes.len());
                hex.push_str("\\x");
                for b in bytes {
                    hex.push_str(&format!("{b:02x}"));
                }
                hex
            })
            .map_err(|_| "expects base64 (standard alphabet, padded)".into()),
        (_, Value::String(s)) => Ok(s.clone()),
        (_, Value::Number(n)) => Ok(n.to_string()),
        (_, Value::Bool(b)) => Ok(b.to_string()),
        (_, _) => Err("expects a string".into()),
    }
}

/// `{"a","b",NULL}`: every element quoted, so no element text can change the literal's shape.
fn array_literal(
    element: u32,
    delimiter: char,
    value: &Value,
    out: &mut String,
    depth: usize,
) -> Result<(), String> {
    if depth >= 6 {
        return Err("has more than 6 array dimensions".into());
    }
    let Value::Array(items) = value else {
        unreachable!("called on arrays only")
    };
    out.push('{');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(delimiter);
        }
        match item {
            Value::Null => out.push_str("NULL"),
            Value::Array(_) => array_literal(element, delimiter, item, out, depth + 1)?,
            scalar_value => {
                let text = scalar(element, scalar_value)?;
                out.push('"');
                for c in text.chars() {
                    if c == '"' || c == '\\' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push('"');
            }
        }
    }
    out.push('}');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_become_the_text_their_type_parses() {
        let int = ValueType::Scalar(oid::INT4);
        assert_eq!(to_text(int, &json!(7)).unwrap().unwrap(), "7");
        assert_eq!(to_text(int, &json!(null)).unwrap(), None);
        assert!(to_text(int, &json!("x")).is_err());
        assert!(to_text(int, &json!(1.5)).is_err());
        let bytes = ValueType::Scalar(oid::BYTEA);
        assert_eq!(
            to_text(bytes, &json!("AAH/")).unwrap().unwrap(),
            "\\x0001ff"
        );
        let jsonb = ValueType::Scalar(oid::JSONB);
        assert_eq!(to_text(jsonb, &json!("s")).unwrap().unwrap(), "\"s\"");
        let texts = ValueType::Array {
            element: oid::TEXT,
            delimiter: b',',
        };
        assert_eq!(
            to_text(texts, &json!([["a\"}", null], ["\\", "NULL"]]))
                .unwrap()
                .unwrap(),
            r#"{{"a\"}",NULL},{"\\","NULL"}}"#
        );
        assert!(to_text(texts, &json!({"a": 1})).is_err());
    }
}
