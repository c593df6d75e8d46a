//! Evaluating a filter over a row, with SQL's three-valued logic: `None` is unknown (NULL), and
//! a row is in the shape only when its filter is `Some(true)`.

use super::number::Num;
use super::parse::{CmpOp, Column, Expr, LikeToken, Operand};
use super::types::Class;
use crate::record::Row;
use serde_json::Value;
use std::cmp::Ordering;

/// A typed value: a literal, or a row's value converted for its column's class.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Const {
    Null,
    Bool(bool),
    Num(Num),
    Text(String),
    Time(Time),
    /// `YYYY-MM-DD`
    Date(String),
}

/// A point in time; `At` holds the stored form `YYYY-MM-DDTHH:MM:SS.ffffffZ`, whose text order
/// is time order. Variant order is the sort order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Time {
    NegInf,
    At(String),
    PosInf,
}

impl Time {
    /// RFC 3339 (space or `T`, optional fraction and offset; no offset is UTC), a bare date
    /// (midnight UTC), or `infinity`/`-infinity`.
    pub fn parse(text: &str) -> Option<Time> {
        let text = text.trim();
        match text.to_ascii_lowercase().as_str() {
            "infinity" | "+infinity" => return Some(Time::PosInf),
            "-infinity" => return Some(Time::NegInf),
            _ => {}
        }
        let mut owned = text.to_string();
        if owned.len() == 10 {
            owned.push_str("T00:00:00");
        }
        // `+02` as Postgres prints it is `+02:00`.
        let b = owned.as_bytes();
        if b.len() > 19
            && matches!(b[b.len() - 3], b'+' | b'-')
            && !owned[b.len() - 3..].contains(':')
        {
            owned.push_str(":00");
        }
        crate::time::parse_rfc3339(&owned).ok().map(Time::At)
    }
}

pub fn eval(expr: &Expr, row: &Row) -> Option<bool> {
    match expr {
        Expr::And(a, b) => match (eval(a, row), eval(b, row)) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        },
        Expr::Or(a, b) => match (eval(a, row), eval(b, row)) {
            (Some(true), _) | (_, Some(true)) => Some(true),
            (Some(false), Some(false)) => Some(false),
            _ => None,
        },
        Expr::Not(a) => eval(a, row).map(|b| !b),
        Expr::Cmp { left, op, right } => {
            let ordering = compare(&operand(left, row)?, &operand(right, row)?)?;
            Some(match op {
                CmpOp::Eq => ordering == Ordering::Equal,
                CmpOp::NotEq => ordering != Ordering::Equal,
                CmpOp::Lt => ordering == Ordering::Less,
                CmpOp::LtEq => ordering != Ordering::Greater,
                CmpOp::Gt => ordering == Ordering::Greater,
                CmpOp::GtEq => ordering != Ordering::Less,
            })
        }
        Expr::In {
            column,
            list,
            negated,
        } => {
            let value = column_value(column, row)?;
            let mut unknown = false;
            for item in list {
                match compare(&value, item) {
                    Some(Ordering::Equal) => return Some(!negated),
                    Some(_) => {}
                    None => unknown = true,
                }
            }
            (!unknown).then_some(*negated)
        }
        Expr::IsNull { operand, negated } => {
            let null = match operand {
                Operand::Const(c) => *c == Const::Null,
                Operand::Column(c) => lookup(row, c).map_or(true, Value::is_null),
            };
            Some(null != *negated)
        }
        Expr::Like {
            column,
            pattern,
            negated,
            case_insensitive,
        } => {
            let Const::Text(text) = column_value(column, row)? else {
                return None;
            };
            Some(like(&text, pattern, *case_insensitive) != *negated)
        }
        Expr::Truth(operand_) => match operand(operand_, row)? {
            Const::Bool(b) => Some(b),
            _ => None,
        },
    }
}

/// `None` for NULL.
fn operand(operand: &Operand, row: &Row) -> Option<Const> {
    match operand {
        Operand::Const(Const::Null) => None,
        Operand::Const(c) => Some(c.clone()),
        Operand::Column(c) => column_value(c, row),
    }
}

/// A column's value in a row (a top-level field, else a dotted path into documents when there
/// is no catalog).
pub fn lookup<'a>(row: &'a Row, column: &Column) -> Option<&'a Value> {
    if let Some(value) = row.get(&column.name) {
        return Some(value);
    }
    if column.class != Class::Dynamic || !column.name.contains('.') {
        return None;
    }
    let mut parts = column.name.split('.');
    let mut value = row.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

fn column_value(column: &Column, row: &Row) -> Option<Const> {
    convert(lookup(row, column)?, column.class)
}

/// A row's value as its column's class reads it; `None` for NULL (or a value of another kind).
pub fn convert(value: &Value, class: Class) -> Option<Const> {
    Some(match (class, value) {
        (_, Value::Null) | (Class::Opaque, _) => return None,
        (Class::Integer(_) | Class::Numeric, Value::Number(n)) => {
            Const::Num(Num::parse(&n.to_string())?)
        }
        (Class::Integer(_) | Class::Numeric | Class::Float, Value::String(s)) => {
            Const::Num(Num::parse(s)?)
        }
        (Class::Float, Value::Number(n)) => Const::Num(Num::from_f64(n.as_f64()?)),
        (Class::Bool | Class::Dynamic, Value::Bool(b)) => Const::Bool(*b),
        (Class::Text | Class::Dynamic, Value::String(s)) => Const::Text(s.clone()),
        (Class::Timestamp, Value::String(s)) => Const::Time(Time::parse(s)?),
        (Class::Date, Value::String(s)) => Const::Date(s.clone()),
        (Class::Dynamic, Value::Number(n)) => Const::Num(Num::parse(&n.to_string())?),
        // Relaxed Extended JSON: ObjectIds compare as their hex, dates in time order, and
        // numbers that JSON cannot hold exactly as numbers.
        (Class::Dynamic, Value::Object(o)) if o.len() == 1 => match o.iter().next()? {
            (k, Value::String(s)) if k == "$oid" => Const::Text(s.clone()),
            (k, Value::String(s)) if k == "$date" => Const::Time(Time::parse(s)?),
            (k, Value::String(s)) if k == "$numberDecimal" || k == "$numberLong" => {
                Const::Num(Num::parse(s)?)
            }
            _ => return None,
        },
        _ => return None,
    })
}

/// Order of two values of one class; `None` when they cannot be compared (only without a
/// catalog, where kinds can differ row by row).
fn compare(a: &Const, b: &Const) -> Option<Ordering> {
    Some(match (a, b) {
        (Const::Num(x), Const::Num(y)) => x.cmp(y),
        (Const::Text(x), Const::Text(y)) => x.cmp(y),
        (Const::Bool(x), Const::Bool(y)) => x.cmp(y),
        (Const::Time(x), Const::Time(y)) => x.cmp(y),
        (Const::Date(x), Const::Date(y)) => x.cmp(y),
        (Const::Time(x), Const::Text(y)) => x.cmp(&Time::parse(y)?),
        (Const::Text(x), Const::Time(y)) => Time::parse(x)?.cmp(y),
        _ => return None,
    })
}

/// LIKE: `%` any run, `_` one character; ILIKE folds ASCII letters (Postgres in the C locale).
fn like(text: &str, pattern: &[LikeToken], case_insensitive: bool) -> bool {
    let fold = |c: char| {
        if case_insensitive {
            c.to_ascii_lowercase()
        } else {
            c
        }
    };
    let text: Vec<char> = text.chars().map(fold).collect();
    let (mut t, mut p) = (0, 0);
    // Where the last `%` was and the text position it currently swallows up to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        let step = match pattern.get(p) {
            Some(LikeToken::Any) => {
                star = Some((p, t));
                p += 1;
                continue;
            }
            Some(LikeToken::One) => true,
            Some(LikeToken::Char(c)) => fold(*c) == text[t],
            None => false,
        };
        if step {
            t += 1;
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|tok| *tok == LikeToken::Any)
}
