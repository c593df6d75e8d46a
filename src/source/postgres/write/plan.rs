//! A mutation turned into SQL: identifiers from the catalog only, every value a bound text
//! parameter cast to its column's type. Shape problems are found here, before any SQL runs.

use super::encode::to_text;
use super::table::Table;
use crate::config::ConflictPolicy;
use crate::record::Row;
use crate::source::write::{self, Mutation, MutationOp, Permit, WriteError};
use serde_json::Value;
use std::sync::Arc;

/// SQL text and its parameters, built together so that `$n` always matches.
#[derive(Debug, Default, Clone)]
pub struct Sql {
    pub text: String,
    pub params: Vec<Option<String>>,
}

impl Sql {
    /// A parameter cast to `sql_type`.
    fn bind(&mut self, value: Option<String>, sql_type: &str) -> String {
        self.params.push(value);
        format!("(${}::text::{sql_type})", self.params.len())
    }
}

/// What to do for one mutation.
#[derive(Debug)]
pub enum Plan {
    /// Refused without touching the database.
    Denied(String),
    Run(Box<Statements>),
}

#[derive(Debug)]
pub struct Statements {
    pub table: Arc<Table>,
    /// The write; returns the key columns as text, no row when its conditions do not hold.
    pub write: Sql,
    /// The row as it is (all columns as text), plus with last-writer-wins whether the stored
    /// time is at or after `at` (then the write is stale).
    pub probe: Sql,
    pub probes_staleness: bool,
    /// `SET LOCAL ROLE` to this (quoted) role first.
    pub role: Option<String>,
}

/// The plan of `mutation` (the `index`th of its batch) on `table`.
pub fn plan(index: usize, m: &Mutation, table: Arc<Table>) -> Result<Plan, WriteError> {
    let (rules, scope) = match &m.permit {
        Permit::Denied(why) => return Ok(Plan::Denied(why.clone())),
        Permit::Allowed { rules, scope } => (rules, scope),
    };
    let invalid = |field: String, message: String| WriteError::Invalid {
        index,
        field,
        message,
    };
    let column_of = |field: &'static str, name: &str| {
        table.column(name).ok_or_else(|| WriteError::UnknownColumn {
            index,
            field,
            collection: m.collection.clone(),
            column: name.to_string(),
        })
    };
    let text_of = |field: &str, column: usize, value: &Value| {
        let c = &table.columns[column];
        to_text(c.value_type, value).map_err(|why| {
            invalid(
                format!("{field}.{}", c.name),
                format!("{} ({})", why, c.sql_type),
            )
        })
    };
    // Relay-managed columns must exist.
    let version = rules
        .version_column
        .as_deref()
        .map(|c| column_of("value", c))
        .transpose()?;
    let lww = rules
        .lww_column
        .as_deref()
        .map(|c| column_of("value", c))
        .transpose()?;
    let lww_policy = rules.conflict == ConflictPolicy::LastWriteWins;
    if lww_policy && m.at.is_none() {
        return Err(invalid(
            "at".into(),
            "this collection resolves conflicts by last_write_wins: send the change's time as \"at\" (RFC 3339)".into(),
        ));
    }
    if table.key.is_empty() && m.op != MutationOp::Insert {
        return Err(invalid(
            "key".into(),
            "the table has no primary key or replica identity index, so rows cannot be named"
                .into(),
        ));
    }

    // The values to write, by column.
    let mut values: Vec<(usize, Option<String>)> = Vec::new();
    for (name, value) in m.value.iter().flatten() {
        let column = column_of("value", name)?;
        let managed = table.is_key(column) || Some(column) == version || Some(column) == lww;
        let writable = write::writable(name, managed, rules, scope.as_ref());
        if !writable {
            return Ok(Plan::Denied(format!(
                "column {name:?} of {:?} is not writable (write.columns)",
                m.collection
            )));
        }
        values.push((column, text_of("value", column, value)?));
    }
    let scope = match scope {
        Some(scope) => {
            let column = column_of("value", &scope.column)?;
            if let Some(why) = write::scope_refusal(m, scope) {
                return Ok(Plan::Denied(why));
            }
            Some((column, scope.value.clone()))
        }
        None => None,
    };
    let key: Vec<(usize, Option<String>)> = match m.op {
        MutationOp::Insert => Vec::new(),
        MutationOp::Update | MutationOp::Delete => {
            let given = m.key.as_ref().ok_or_else(|| {
                invalid(
                    "key".into(),
                    "required for update and delete: the row's key columns".into(),
                )
            })?;
            for name in given.keys() {
                if !table.is_key(column_of("key", name)?) {
                    return Err(invalid(format!("key.{name}"), "is not a key column".into()));
                }
            }
            let mut key = Vec::new();
            for &k in &table.key {
                let name = &table.columns[k].name;
                let value = given.get(name).filter(|v| !v.is_null()).ok_or_else(|| {
                    invalid(
                        format!("key.{name}"),
                        "missing: give every key column".into(),
                    )
                })?;
                key.push((k, text_of("key", k, value)?));
            }
            key
        }
    };
    let mut expect: Vec<(usize, Option<String>)> = Vec::new();
    if rules.conflict != ConflictPolicy::ClientWins {
        for (name, value) in m.expect.iter().flatten() {
            let column = column_of("if", name)?;
            expect.push((column, text_of("if", column, value)?));
        }
    }
    let at = match (lww, &m.at) {
        (Some(column), Some(at)) => Some((column, at.clone())),
        _ => None,
    };

    let t = &table;
    let key_columns: Vec<usize> = table.key.clone();
    let returning = format!(" RETURNING {}", t.select_text(&key_columns));
    let mut write = Sql::default();
    match m.op {
        MutationOp::Insert => {
            let mut columns: Vec<(usize, Option<String>)> = values
                .into_iter()
                .filter(|(c, _)| {
                    Some(*c) != scope.as_ref().map(|s| s.0) && Some(*c) != at.as_ref().map(|a| a.0)
                })
                .collect();
            if let Some((column, value)) = &scope {
                columns.push((*column, Some(value.clone())));
            }
            if let Some((column, at)) = &at {
                columns.push((*column, Some(at.clone())));
            }
            if columns.is_empty() {
                write.text = format!("INSERT INTO {} DEFAULT VALUES", t.ident);
            } else {
                let names: Vec<&str> = columns
                    .iter()
                    .map(|(c, _)| t.columns[*c].ident.as_str())
                    .collect();
                let mut binds = Vec::new();
                for (c, v) in columns {
                    binds.push(write.bind(v, &t.columns[c].sql_type));
                }
                write.text = format!(
                    "INSERT INTO {} ({}) VALUES ({})",
                    t.ident,
                    names.join(", "),
                    binds.join(", ")
                );
            }
        }
        MutationOp::Update => {
            let mut sets = Vec::new();
            for (c, v) in values {
                if Some(c) == version || Some(c) == at.as_ref().map(|a| a.0) {
                    continue;
                }
                let bound = write.bind(v, &t.columns[c].sql_type);
                sets.push(format!("{} = {bound}", t.columns[c].ident));
            }
            if let Some(v) = version {
                let ident = &t.columns[v].ident;
                sets.push(format!("{ident} = {ident} + 1"));
            }
            if let Some((c, at)) = &at {
                let bound = write.bind(Some(at.clone()), &t.columns[*c].sql_type);
                sets.push(format!("{} = {bound}", t.columns[*c].ident));
            }
            if sets.is_empty() {
                let k = &t.columns[key_columns[0]].ident;
                sets.push(format!("{k} = {k}"));
            }
            write.text = format!("UPDATE {} SET {}", t.ident, sets.join(", "));
        }
        MutationOp::Delete => write.text = format!("DELETE FROM {}", t.ident),
    }
    if m.op != MutationOp::Insert {
        let mut conditions = identity(t, &key, scope.as_ref(), &mut write);
        for (c, v) in &expect {
            let bound = write.bind(v.clone(), &t.columns[*c].sql_type);
            conditions.push(format!(
                "{} IS NOT DISTINCT FROM {bound}",
                t.columns[*c].ident
            ));
        }
        if let (true, Some((c, at))) = (lww_policy, &at) {
            let bound = write.bind(Some(at.clone()), &t.columns[*c].sql_type);
            let ident = &t.columns[*c].ident;
            conditions.push(format!("({ident} IS NULL OR {ident} < {bound})"));
        }
        write.text.push_str(" WHERE ");
        write.text.push_str(&conditions.join(" AND "));
    }
    write.text.push_str(&returning);

    let mut probe = Sql::default();
    let mut probe_columns = t.select_text(&t.all_columns());
    let probes_staleness = lww_policy && at.is_some() && m.op != MutationOp::Insert;
    if probes_staleness {
        if let Some((c, at)) = &at {
            let bound = probe.bind(Some(at.clone()), &t.columns[*c].sql_type);
            probe_columns.push_str(&format!(", ({} >= {bound})", t.columns[*c].ident));
        }
    }
    let mut conditions = identity(t, &key, scope.as_ref(), &mut probe);
    if m.op == MutationOp::Insert {
        // An insert writes or fails; it never needs the current row.
        conditions = vec!["false".to_string()];
    }
    probe.text = format!(
        "SELECT {probe_columns} FROM {} WHERE {}",
        t.ident,
        conditions.join(" AND ")
    );
    Ok(Plan::Run(Box::new(Statements {
        table,
        write,
        probe,
        probes_staleness,
        role: rules
            .db_role
            .as_deref()
            .map(super::super::catalog::quote_ident),
    })))
}

/// `key = … AND scope = …`, bound into `sql`.
fn identity(
    t: &Table,
    key: &[(usize, Option<String>)],
    scope: Option<&(usize, String)>,
    sql: &mut Sql,
) -> Vec<String> {
    let mut conditions = Vec::new();
    for (c, v) in key {
        let bound = sql.bind(v.clone(), &t.columns[*c].sql_type);
        conditions.push(format!("{} = {bound}", t.columns[*c].ident));
    }
    if let Some((c, v)) = scope {
        let bound = sql.bind(Some(v.clone()), &t.columns[*c].sql_type);
        conditions.push(format!("{} = {bound}", t.columns[*c].ident));
    }
    conditions
}

/// The key of a written row, as the read side maps it.
pub fn key_of(table: &Table, row: &tokio_postgres::Row) -> Row {
    table.row_from_text(&table.key, row)
}
