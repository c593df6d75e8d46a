//! The body of `POST /v1/mutations`, checked field by field: every problem names the
//! mutation's 0-based index and the field, and says what to send instead.

use super::error::ApiError;
use crate::record::Row;
use crate::source::write::MutationOp;
use axum::http::StatusCode;
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::time::Duration;

pub const MAX_MUTATIONS: usize = 1000;
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);
pub const MAX_WAIT_SECONDS: f64 = 30.0;
const MAX_ID_LEN: usize = 128;

/// One mutation as sent, before authorization.
#[derive(Debug)]
pub struct RawMutation {
    pub id: String,
    pub collection: String,
    pub op: MutationOp,
    pub key: Option<Row>,
    pub value: Option<Row>,
    pub expect: Option<Row>,
    pub at: Option<String>,
}

#[derive(Debug)]
pub struct Body {
    pub mutations: Vec<RawMutation>,
    pub atomic: bool,
    pub wait: Duration,
    pub since: Option<String>,
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_mutation", message)
}

pub fn parse(bytes: &[u8]) -> Result<Body, ApiError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        bad(format!(
            "the body is not valid JSON ({e}): send {{\"mutations\": [...]}}"
        ))
    })?;
    let Value::Object(mut top) = value else {
        return Err(bad(
            "the body must be a JSON object: {\"mutations\": [...]}",
        ));
    };
    let mutations = match top.remove("mutations") {
        Some(Value::Array(items)) => items,
        Some(_) => return Err(bad("mutations must be an array of mutation objects")),
        None => return Err(bad("mutations is missing: send {\"mutations\": [...]}")),
    };
    if mutations.is_empty() {
        return Err(bad("mutations is empty: send 1 to 1000 mutations"));
    }
    if mutations.len() > MAX_MUTATIONS {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "{} mutations in one request; at most {MAX_MUTATIONS}: split the batch",
                mutations.len()
            ),
        ));
    }
    let atomic = match top.remove("atomic") {
        None => true,
        Some(Value::Bool(b)) => b,
        Some(_) => return Err(bad("atomic must be true or false")),
    };
    let wait = match top.remove("wait") {
        None => DEFAULT_WAIT,
        Some(Value::Number(n)) => match n.as_f64() {
            Some(s) if (0.0..=MAX_WAIT_SECONDS).contains(&s) => Duration::from_secs_f64(s),
            _ => return Err(bad("wait must be a number of seconds from 0 to 30")),
        },
        Some(_) => return Err(bad("wait must be a number of seconds from 0 to 30")),
    };
    let since = match top.remove("since") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(bad("since must be a cursor string")),
    };
    if let Some(name) = top.keys().next() {
        return Err(bad(format!(
            "unknown field {name:?}: the body has mutations, atomic, wait and since"
        )));
    }
    let mut ids = HashSet::new();
    let mut parsed = Vec::with_capacity(mutations.len());
    for (index, item) in mutations.into_iter().enumerate() {
        let mutation = mutation(index, item)?;
        if !ids.insert(mutation.id.clone()) {
            return Err(bad(format!(
                "mutations[{index}].id: {:?} is used twice in this request; give each mutation its own id",
                mutation.id
            )));
        }
        parsed.push(mutation);
    }
    Ok(Body {
        mutations: parsed,
        atomic,
        wait,
        since,
    })
}

fn mutation(index: usize, item: Value) -> Result<RawMutation, ApiError> {
    let at = |field: &str, message: &str| bad(format!("mutations[{index}].{field}: {message}"));
    let Value::Object(mut fields) = item else {
        return Err(bad(format!(
            "mutations[{index}] must be an object with id, collection and op"
        )));
    };
    let mut text = |name: &str, required: bool| match fields.remove(name) {
        Some(Value::String(s)) => Ok(Some(s)),
        None | Some(Value::Null) if !required => Ok(None),
        None | Some(Value::Null) => Err(at(name, "is required")),
        Some(_) => Err(at(name, "must be a string")),
    };
    let id = text("id", true)?.unwrap_or_default();
    let url_safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~');
    if id.is_empty() || id.len() > MAX_ID_LEN || !id.chars().all(url_safe) {
        return Err(at(
            "id",
            "must be 1-128 URL-safe characters (A-Z a-z 0-9 - _ . ~)",
        ));
    }
    let collection = text("collection", true)?.unwrap_or_default();
    let op = match text("op", true)?.as_deref() {
        Some("insert") => MutationOp::Insert,
        Some("update") => MutationOp::Update,
        Some("delete") => MutationOp::Delete,
        _ => return Err(at("op", "must be \"insert\", \"update\" or \"delete\"")),
    };
    let at_time = text("at", false)?;
    if at_time
        .as_ref()
        .is_some_and(|t| t.is_empty() || t.len() > 64)
    {
        return Err(at(
            "at",
            "must be an RFC 3339 time, e.g. \"2026-11-21T10:00:00Z\"",
        ));
    }
    let mut object = |name: &str| match fields.remove(name) {
        Some(Value::Object(map)) => Ok(Some(map)),
        None | Some(Value::Null) => Ok(None),
        Some(_) => Err(at(name, "must be an object of column names to values")),
    };
    let key = object("key")?;
    let value = object("value")?;
    let expect = object("if")?;
    if let Some(name) = fields.keys().next() {
        return Err(at(
            name,
            "is not a mutation field: use id, collection, op, key, value, if and at",
        ));
    }
    let empty = |m: &Option<Map<String, Value>>| m.as_ref().map_or(true, Map::is_empty);
    match op {
        MutationOp::Insert if empty(&value) => {
            return Err(at("value", "an insert needs the row's columns"))
        }
        MutationOp::Update | MutationOp::Delete if empty(&key) => {
            return Err(at("key", "update and delete need the row's key columns"))
        }
        MutationOp::Update if value.is_none() => {
            return Err(at("value", "an update needs the columns to change"))
        }
        MutationOp::Delete if value.is_some() => {
            return Err(at("value", "a delete takes no value"))
        }
        _ => {}
    }
    Ok(RawMutation {
        id,
        collection,
        op,
        key,
        value,
        expect,
        at: at_time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(body: &str) -> String {
        parse(body.as_bytes()).unwrap_err().message
    }

    #[test]
    fn problems_name_the_index_and_field() {
        let one = r#"{"id":"a","collection":"public.t","op":"insert","value":{"x":1}}"#;
        assert!(parse(format!(r#"{{"mutations":[{one}]}}"#).as_bytes()).is_ok());
        assert!(message("{").contains("not valid JSON"));
        assert!(message(r#"{"mutations":[]}"#).contains("empty"));
        assert!(message(&format!(r#"{{"mutations":[{one},{one}]}}"#)).contains("mutations[1].id"));
        let bad_op = one.replace("insert", "upsert");
        assert!(message(&format!(r#"{{"mutations":[{bad_op}]}}"#)).contains("mutations[0].op"));
        let bad_id = one.replace("\"a\"", "\"a b\"");
        assert!(message(&format!(r#"{{"mutations":[{bad_id}]}}"#)).contains("mutations[0].id"));
        let extra = one.replace("\"op\"", "\"colour\":1,\"op\"");
        assert!(message(&format!(r#"{{"mutations":[{extra}]}}"#)).contains("colour"));
        assert!(message(&format!(r#"{{"mutations":[{one}],"wait":99}}"#)).contains("wait"));
        let many = vec![one; 1001].join(",");
        let err = parse(format!(r#"{{"mutations":[{many}]}}"#).as_bytes()).unwrap_err();
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
    }
}
