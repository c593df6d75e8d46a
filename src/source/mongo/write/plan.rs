//! A mutation turned into MongoDB operations: every value converted from Extended JSON (the
//! inverse of the read side's mapping), field names checked (no operators, no dotted paths),
//! writable fields and the caller's scope enforced. Shape problems are found here, before any
//! transaction starts.

use super::super::values::{field_name_problem, json_to_bson};
use crate::config::ConflictPolicy;
use crate::record::Row;
use crate::source::write::{self, Mutation, MutationOp, Permit, WriteError};
use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Document};

/// What to do for one mutation.
#[derive(Debug)]
pub enum Plan {
    /// Refused without touching the database.
    Denied(String),
    Run(Box<Op>),
}

#[derive(Debug)]
pub struct Op {
    pub collection: String,
    pub kind: MutationOp,
    /// Insert: the document (with its `_id`).
    pub document: Document,
    /// Update/delete: `_id` and the scope field.
    pub filter: Document,
    /// The `if` conditions (equality), unless the policy is `client_wins`.
    pub expect: Document,
    /// Update: `$set` (and `$inc` of the version field).
    pub update: Document,
    /// `last_write_wins`: the time field and the change's time; a stored time at or after it
    /// makes the mutation stale.
    pub lww: Option<(String, DateTime)>,
}

/// The plan of `m`, the `index`th mutation of its batch, on the database's collection `name`.
pub fn plan(index: usize, name: &str, m: &Mutation) -> Result<Plan, WriteError> {
    let (rules, scope) = match &m.permit {
        Permit::Denied(why) => return Ok(Plan::Denied(why.clone())),
        Permit::Allowed { rules, scope } => (rules, scope),
    };
    let invalid = |field: String, message: String| WriteError::Invalid {
        index,
        field,
        message,
    };
    if rules.db_role.is_some() {
        return Ok(Plan::Denied(format!(
            "write.db_role of {:?} applies to Postgres sources only: MongoDB writes run as the source's user (remove it)",
            m.collection
        )));
    }
    let at = match &m.at {
        Some(text) => Some(DateTime::parse_rfc3339_str(text).map_err(|e| {
            invalid(
                "at".into(),
                format!("not an RFC 3339 time ({e}): e.g. \"2025-01-15T11:00:00.123Z\""),
            )
        })?),
        None => None,
    };
    let lww_policy = rules.conflict == ConflictPolicy::LastWriteWins;
    if lww_policy && at.is_none() {
        return Err(invalid(
            "at".into(),
            "this collection resolves conflicts by last_write_wins: send the change's time as \"at\" (RFC 3339)".into(),
        ));
    }
    let version = rules.version_column.as_deref();
    let lww_field = rules.lww_column.as_deref();
    let fields = |field: &str, row: Option<&Row>| -> Result<Document, WriteError> {
        let mut out = Document::new();
        for (name, value) in row.into_iter().flatten() {
            if let Some(why) = field_name_problem(name) {
                return Err(invalid(format!("{field}.{name}"), why.into()));
            }
            let bson =
                json_to_bson(value).map_err(|why| invalid(format!("{field}.{name}"), why))?;
            out.insert(name.clone(), bson);
        }
        Ok(out)
    };
    let values = fields("value", m.value.as_ref())?;
    for name in values.keys() {
        let managed =
            name == "_id" || Some(name.as_str()) == version || Some(name.as_str()) == lww_field;
        if !write::writable(name, managed, rules, scope.as_ref()) {
            return Ok(Plan::Denied(format!(
                "field {name:?} of {:?} is not writable (write.columns)",
                m.collection
            )));
        }
    }
    if let Some(why) = scope.as_ref().and_then(|s| write::scope_refusal(m, s)) {
        return Ok(Plan::Denied(why));
    }
    let key = match m.op {
        MutationOp::Insert => None,
        MutationOp::Update | MutationOp::Delete => {
            let given = m.key.as_ref().ok_or_else(|| {
                invalid(
                    "key".into(),
                    "required for update and delete: {\"_id\": …} as /v1/changes gives it".into(),
                )
            })?;
            if let Some(other) = given.keys().find(|k| *k != "_id") {
                return Err(invalid(
                    format!("key.{other}"),
                    "is not the key: MongoDB documents are named by _id alone".into(),
                ));
            }
            let id = given.get("_id").filter(|v| !v.is_null()).ok_or_else(|| {
                invalid("key._id".into(), "missing: give the document's _id".into())
            })?;
            Some(json_to_bson(id).map_err(|why| invalid("key._id".into(), why))?)
        }
    };
    // Checked whatever the policy; client_wins then ignores it.
    let mut expect = fields("if", m.expect.as_ref())?;
    if rules.conflict == ConflictPolicy::ClientWins {
        expect.clear();
    }
    let lww = match (lww_field, at) {
        (Some(field), Some(at)) => Some((field.to_string(), at)),
        _ => None,
    };
    let scope_value = scope
        .as_ref()
        .map(|s| (s.column.clone(), Bson::String(s.value.clone())));

    let mut op = Op {
        collection: name.to_string(),
        kind: m.op,
        document: Document::new(),
        filter: Document::new(),
        expect,
        update: Document::new(),
        lww: if lww_policy { lww.clone() } else { None },
    };
    match key {
        None => {
            let id = values
                .get("_id")
                .cloned()
                .unwrap_or_else(|| Bson::ObjectId(ObjectId::new()));
            op.document.insert("_id", id);
            for (name, value) in values {
                if name != "_id" {
                    op.document.insert(name, value);
                }
            }
            if let Some((field, value)) = &scope_value {
                // The caller's own value, unless they gave it (checked equal) in its own type.
                if !op.document.contains_key(field) {
                    op.document.insert(field.clone(), value.clone());
                }
            }
            if let Some((field, at)) = &lww {
                op.document.insert(field.clone(), *at);
            }
        }
        Some(id) => {
            if let Some(given) = values.get("_id") {
                if *given != id {
                    return Err(invalid(
                        "value._id".into(),
                        "differs from key._id: a document's _id cannot change".into(),
                    ));
                }
            }
            op.filter.insert("_id", id.clone());
            if let Some((field, value)) = scope_value {
                op.filter.insert(field, value);
            }
            if m.op == MutationOp::Update {
                let mut set = Document::new();
                for (name, value) in values {
                    if name != "_id"
                        && Some(name.as_str()) != version
                        && Some(name.as_str()) != lww_field
                    {
                        set.insert(name, value);
                    }
                }
                if let Some((field, at)) = &lww {
                    set.insert(field.clone(), *at);
                }
                if set.is_empty() && version.is_none() {
                    // Nothing to change: an update that changes nothing still checks `if`.
                    set.insert("_id", id);
                }
                if !set.is_empty() {
                    op.update.insert("$set", set);
                }
                if let Some(field) = version {
                    op.update.insert("$inc", doc! {field: 1});
                }
            }
        }
    }
    Ok(Plan::Run(Box::new(op)))
}

/// Whether a stored last-write time is at or after the change's time (then the change is
/// stale). A stored value that is neither a date nor RFC 3339 text never makes it stale.
pub fn is_stale(stored: Option<&Bson>, at: DateTime) -> bool {
    match stored {
        Some(Bson::DateTime(t)) => *t >= at,
        Some(Bson::String(text)) => DateTime::parse_rfc3339_str(text).is_ok_and(|t| t >= at),
        _ => false,
    }
}
