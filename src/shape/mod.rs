//! Shapes: a client's row filter (`where`) and column projection (`columns`) over one
//! collection (DESIGN.md, "Shapes: row filters and column projection").
//!
//! A [`Shape`] turns each stored record into what its client receives: the record with only
//! the projected columns when the row is in the shape, a `delete` of its key when the row left
//! the shape (or may have, when the row's previous version is not known), nothing when the row
//! is neither in the shape nor was before.

mod eval;
mod number;
mod parse;
pub mod types;

pub use eval::{convert, Const};
pub use number::Num;
pub use parse::{Column, Expr, MAX_WHERE_CHARS};
pub use types::{Class, ColumnInfo};

use crate::record::{ChangeRecord, Op, Row};

/// A refused filter: what is wrong and where (1-based character position in `where`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at position {position}: {message}")]
pub struct ShapeError {
    pub position: usize,
    pub message: String,
}

impl ShapeError {
    fn at(position: usize, message: String) -> ShapeError {
        ShapeError { position, message }
    }
}

/// An equality every row of a shape satisfies: its column holds one of `values`. Live commits
/// are matched against shapes through it (an index by value) rather than one by one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Equality {
    pub column: Column,
    pub values: Vec<Const>,
}

/// A column's value in a row as an [`Equality`] compares it (`None`: NULL, absent, or not
/// comparable).
pub fn value_in(row: &Row, column: &Column) -> Option<Const> {
    eval::convert(eval::lookup(row, column)?, column.class)
}

/// What is known of a row just before the record being shaped.
#[derive(Debug, Clone, Copy)]
pub enum Previous<'a> {
    /// Unknown (catch-up from a cursor: the client may hold any version).
    Unknown,
    /// The client has no version of it (catch-up from the beginning, or a new row).
    Absent,
    Row(&'a Row),
}

/// One client's filter and projection over one collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub collection: String,
    filter: Option<Expr>,
    /// `None`: every column.
    columns: Option<Vec<String>>,
}

impl Shape {
    /// `catalog`: the collection's columns and types, when its source knows them (Postgres);
    /// without one (Mongo) any field name is accepted and values compare by their JSON kind.
    pub fn new(
        collection: &str,
        filter: Option<&str>,
        params: &[String],
        columns: Option<Vec<String>>,
        catalog: Option<&[ColumnInfo]>,
    ) -> Result<Shape, ShapeError> {
        let filter = match filter.filter(|f| !f.trim().is_empty()) {
            None => None,
            Some(text) => {
                let cx = parse::Context {
                    columns: catalog,
                    params,
                    text,
                };
                Some(parse::parse(&cx, text)?)
            }
        };
        Ok(Shape {
            collection: collection.to_string(),
            filter,
            columns,
        })
    }

    /// Whether the shape changes anything (else records pass as they are).
    pub fn is_everything(&self) -> bool {
        self.filter.is_none() && self.columns.is_none()
    }

    /// Whether a row image is in the shape.
    pub fn matches(&self, row: &Row) -> bool {
        match &self.filter {
            None => true,
            Some(expr) => eval::eval(expr, row) == Some(true),
        }
    }

    /// An equality the filter implies (`col = v` or `col IN (…)` at its top level, or in one
    /// arm of a top-level AND), for indexing. Without a catalog only numbers and booleans are
    /// indexed: a text compares equal to a Mongo date of the same instant, which an index by
    /// value would miss.
    pub fn equality(&self) -> Option<Equality> {
        fn find(expr: &Expr) -> Option<Equality> {
            let indexable = |c: &Column, v: &Const| {
                c.class != Class::Dynamic || matches!(v, Const::Num(_) | Const::Bool(_))
            };
            match expr {
                Expr::And(a, b) => find(a).or_else(|| find(b)),
                Expr::Cmp {
                    left: parse::Operand::Column(c),
                    op: parse::CmpOp::Eq,
                    right: parse::Operand::Const(v),
                }
                | Expr::Cmp {
                    left: parse::Operand::Const(v),
                    op: parse::CmpOp::Eq,
                    right: parse::Operand::Column(c),
                } if indexable(c, v) => Some(Equality {
                    column: c.clone(),
                    values: vec![v.clone()],
                }),
                Expr::In {
                    column,
                    list,
                    negated: false,
                } if list
                    .iter()
                    .all(|v| *v == Const::Null || indexable(column, v)) =>
                {
                    Some(Equality {
                        column: column.clone(),
                        values: list
                            .iter()
                            .filter(|v| **v != Const::Null)
                            .cloned()
                            .collect(),
                    })
                }
                _ => None,
            }
        }
        self.filter.as_ref().and_then(find)
    }

    /// What the client receives for `record` (`None`: nothing).
    pub fn apply(&self, record: &ChangeRecord, previous: Previous) -> Option<ChangeRecord> {
        if record.collection != self.collection || record.op == Op::Truncate {
            return Some(record.clone());
        }
        let was_in = match previous {
            Previous::Unknown => None,
            Previous::Absent => Some(false),
            Previous::Row(row) => Some(self.matches(row)),
        };
        let now_in =
            !record.op.is_tombstone() && record.after.as_ref().is_some_and(|r| self.matches(r));
        if now_in {
            if let (Some(true), Previous::Row(before), Some(after)) =
                (was_in, previous, record.after.as_ref())
            {
                if record.op == Op::Update && self.same_projection(before, after) {
                    return None;
                }
            }
            return Some(self.project(record));
        }
        if was_in == Some(false) {
            return None;
        }
        Some(ChangeRecord {
            op: Op::Delete,
            after: None,
            before: None,
            changed: None,
            unchanged: Vec::new(),
            ..record.clone()
        })
    }

    fn keeps(&self, column: &str, key: Option<&Row>) -> bool {
        match &self.columns {
            None => true,
            Some(columns) => {
                columns.iter().any(|c| c == column) || key.is_some_and(|k| k.contains_key(column))
            }
        }
    }

    /// Whether two versions of a row look the same through the projection.
    fn same_projection(&self, before: &Row, after: &Row) -> bool {
        match &self.columns {
            None => before == after,
            Some(columns) => columns.iter().all(|c| before.get(c) == after.get(c)),
        }
    }

    fn project(&self, record: &ChangeRecord) -> ChangeRecord {
        if self.columns.is_none() {
            return record.clone();
        }
        let key = record.key.as_ref();
        let image = |row: &Option<Row>| {
            row.as_ref().map(|r| {
                r.iter()
                    .filter(|(name, _)| self.keeps(name, key))
                    .map(|(n, v)| (n.clone(), v.clone()))
                    .collect::<Row>()
            })
        };
        ChangeRecord {
            after: image(&record.after),
            before: image(&record.before),
            changed: record.changed.as_ref().map(|names| {
                names
                    .iter()
                    .filter(|n| self.keeps(n, key))
                    .cloned()
                    .collect()
            }),
            unchanged: record
                .unchanged
                .iter()
                .filter(|n| self.keeps(n, key))
                .cloned()
                .collect(),
            ..record.clone()
        }
    }
}

#[cfg(test)]
mod tests;
