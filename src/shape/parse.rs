//! `where` text → our own small expression type. The SQL is parsed by `sqlparser` (Postgres
//! dialect); only the contract's grammar is translated, everything else is refused with the
//! position of the offending part. Literals are typed by the column they are compared with
//! here, once, so that evaluating a row only converts the row's values.

use super::eval::{Const, Time};
use super::number::Num;
use super::types::{Class, ColumnInfo};
use super::ShapeError;
use sqlparser::ast::{self, BinaryOperator, Expr as Sql, InTarget, Spanned, UnaryOperator};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

/// Longer `where` texts are refused before parsing (they also bound the tree's depth).
pub const MAX_WHERE_CHARS: usize = 4096;
/// Trees deeper than this are refused (long AND/OR chains; use IN).
const MAX_DEPTH: usize = 256;
/// Parentheses and signs or NOTs nested deeper than this are refused before parsing: the
/// parser recurses for each, with large frames (tens of KiB each in a debug build).
const MAX_NESTING: usize = 16;
/// The parser's own recursion limit, a second fence behind MAX_NESTING.
const PARSER_RECURSION: usize = 40;

/// A filter, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Cmp {
        left: Operand,
        op: CmpOp,
        right: Operand,
    },
    In {
        column: Column,
        list: Vec<Const>,
        negated: bool,
    },
    IsNull {
        operand: Operand,
        negated: bool,
    },
    Like {
        column: Column,
        pattern: Vec<LikeToken>,
        negated: bool,
        case_insensitive: bool,
    },
    /// A boolean column or literal standing alone.
    Truth(Operand),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operand {
    Column(Column),
    Const(Const),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub class: Class,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LikeToken {
    Char(char),
    /// `_`
    One,
    /// `%`
    Any,
}

/// A literal before it meets its column.
enum Lit {
    Null,
    Bool(bool),
    Num(String),
    Text(String),
}

pub struct Context<'a> {
    /// `None`: no catalog (Mongo), any field name, values compared by their JSON kind.
    pub columns: Option<&'a [ColumnInfo]>,
    /// `$1…$n`.
    pub params: &'a [String],
    pub text: &'a str,
}

pub fn parse(cx: &Context, text: &str) -> Result<Expr, ShapeError> {
    if text.chars().count() > MAX_WHERE_CHARS {
        return Err(ShapeError::at(
            MAX_WHERE_CHARS + 1,
            format!("the filter is longer than {MAX_WHERE_CHARS} characters"),
        ));
    }
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, text)
        .tokenize_with_location()
        .map_err(|e| parser_error(text, ParserError::TokenizerError(e.to_string())))?;
    check_nesting(text, &tokens)?;
    let mut parser = Parser::new(&dialect)
        .with_recursion_limit(PARSER_RECURSION)
        .with_tokens_with_locations(tokens);
    let sql = parser.parse_expr().map_err(|e| parser_error(text, e))?;
    let next = parser.peek_token();
    if next.token != Token::EOF {
        return Err(ShapeError::at(
            position(text, next.span.start),
            format!("unexpected {} after the end of the expression", next.token),
        ));
    }
    translate(cx, &sql, 0)
}

/// Refuses nesting the parser would recurse into too deeply: each open parenthesis, and each
/// sign or NOT in a row, is one level.
fn check_nesting(text: &str, tokens: &[TokenWithSpan]) -> Result<(), ShapeError> {
    let mut open: Vec<usize> = Vec::new();
    let mut run = 0;
    for token in tokens {
        match &token.token {
            Token::Whitespace(_) => continue,
            Token::LParen => {
                open.push(open.last().copied().unwrap_or(0) + run + 1);
                run = 0;
            }
            Token::RParen => {
                open.pop();
                run = 0;
            }
            Token::Minus | Token::Plus => run += 1,
            Token::Word(w) if w.keyword == Keyword::NOT => run += 1,
            _ => run = 0,
        }
        if open.last().copied().unwrap_or(0) + run > MAX_NESTING {
            return Err(ShapeError::at(
                position(text, token.span.start),
                format!("the filter nests more than {MAX_NESTING} levels deep"),
            ));
        }
    }
    Ok(())
}

/// 1-based character offset of a parser location (line and column, both 1-based).
fn position(text: &str, at: sqlparser::tokenizer::Location) -> usize {
    if at.line == 0 {
        return 1;
    }
    let before: usize = text
        .split('\n')
        .take(at.line as usize - 1)
        .map(|l| l.chars().count() + 1)
        .sum();
    before + at.column.max(1) as usize
}

fn parser_error(text: &str, error: ParserError) -> ShapeError {
    let message = match error {
        ParserError::RecursionLimitExceeded => {
            return ShapeError::at(1, "the filter is nested too deeply".into())
        }
        ParserError::TokenizerError(m) | ParserError::ParserError(m) => m,
    };
    // sqlparser ends its messages with " at Line: L, Column: C".
    let mut at = 1;
    let mut message = message.as_str();
    if let Some(i) = message.rfind(" at Line: ") {
        let mut numbers = message[i + 10..]
            .split(", Column: ")
            .map(|n| n.trim().parse::<u64>().ok());
        if let (Some(Some(line)), Some(Some(column))) = (numbers.next(), numbers.next()) {
            at = position(text, sqlparser::tokenizer::Location { line, column });
        }
        message = &message[..i];
    } else if message.ends_with("EOF") {
        at = text.chars().count() + 1;
    }
    ShapeError::at(at, format!("syntax error: {message}"))
}

fn refuse(cx: &Context, sql: &Sql, what: impl Into<String>) -> ShapeError {
    ShapeError::at(position(cx.text, sql.span().start), what.into())
}

fn translate(cx: &Context, sql: &Sql, depth: usize) -> Result<Expr, ShapeError> {
    if depth > MAX_DEPTH {
        return Err(refuse(cx, sql, "the filter is nested too deeply"));
    }
    let deeper = |e: &Sql| translate(cx, e, depth + 1).map(Box::new);
    Ok(match sql {
        Sql::Nested(inner) => return translate(cx, inner, depth + 1),
        Sql::BinaryOp { left, op, right } => match op {
            BinaryOperator::And => Expr::And(deeper(left)?, deeper(right)?),
            BinaryOperator::Or => Expr::Or(deeper(left)?, deeper(right)?),
            _ => {
                let op = match op {
                    BinaryOperator::Eq => CmpOp::Eq,
                    BinaryOperator::NotEq => CmpOp::NotEq,
                    BinaryOperator::Lt => CmpOp::Lt,
                    BinaryOperator::LtEq => CmpOp::LtEq,
                    BinaryOperator::Gt => CmpOp::Gt,
                    BinaryOperator::GtEq => CmpOp::GtEq,
                    other => {
                        return Err(refuse(
                            cx,
                            sql,
                            format!("operator {other} is not supported; use = <> != < <= > >=, AND, OR, NOT, IN, IS [NOT] NULL, LIKE or ILIKE"),
                        ))
                    }
                };
                comparison(cx, left, op, right)?
            }
        },
        Sql::UnaryOp {
            op: UnaryOperator::Not,
            expr,
        } => Expr::Not(deeper(expr)?),
        Sql::IsNull(e) | Sql::IsNotNull(e) => Expr::IsNull {
            operand: match column_or_literal(cx, e)? {
                Either::Column(c) => Operand::Column(c),
                Either::Lit(l) => Operand::Const(untyped(l)),
            },
            negated: matches!(sql, Sql::IsNotNull(_)),
        },
        Sql::In {
            expr,
            target: InTarget::List(list),
            negated,
            ..
        } => {
            let column = column(cx, expr)?;
            if list.len() > 1000 {
                return Err(refuse(cx, sql, "IN lists hold at most 1000 values"));
            }
            let lits = list
                .iter()
                .map(|item| literal(cx, item))
                .collect::<Result<Vec<_>, _>>()?;
            let class = in_list_class(column.class, &lits);
            let list = list
                .iter()
                .zip(lits)
                .map(|(item, lit)| typed(cx, item, lit, class))
                .collect::<Result<_, _>>()?;
            Expr::In {
                column,
                list,
                negated: *negated,
            }
        }
        Sql::Like {
            negated,
            any: false,
            expr,
            pattern,
            escape_char: None,
        }
        | Sql::ILike {
            negated,
            any: false,
            expr,
            pattern,
            escape_char: None,
        } => {
            let column = column(cx, expr)?;
            if !matches!(column.class, Class::Text | Class::Dynamic) {
                return Err(refuse(
                    cx,
                    expr,
                    format!("LIKE needs a text column; {} is not one", column.name),
                ));
            }
            let Lit::Text(text) = literal(cx, pattern)? else {
                return Err(refuse(cx, pattern, "a LIKE pattern must be a quoted text"));
            };
            Expr::Like {
                column,
                pattern: like_pattern(&text).map_err(|why| refuse(cx, pattern, why))?,
                negated: *negated,
                case_insensitive: matches!(sql, Sql::ILike { .. }),
            }
        }
        Sql::Identifier(_) | Sql::Value(_) => match column_or_literal(cx, sql)? {
            Either::Column(c) if matches!(c.class, Class::Bool | Class::Dynamic) => {
                Expr::Truth(Operand::Column(c))
            }
            Either::Lit(Lit::Bool(b)) => Expr::Truth(Operand::Const(Const::Bool(b))),
            Either::Lit(Lit::Null) => Expr::Truth(Operand::Const(Const::Null)),
            _ => return Err(refuse(cx, sql, "expected a condition, not a value")),
        },
        other => {
            return Err(refuse(
                cx,
                other,
                "not supported in a filter: use column names, literals, = <> != < <= > >=, AND, OR, NOT, parentheses, IN (…), IS [NOT] NULL, LIKE, ILIKE and $n parameters",
            ))
        }
    })
}

enum Either {
    Column(Column),
    Lit(Lit),
}

fn comparison(cx: &Context, left: &Sql, op: CmpOp, right: &Sql) -> Result<Expr, ShapeError> {
    let (l, r) = (column_or_literal(cx, left)?, column_or_literal(cx, right)?);
    let (left, right) = match (l, r) {
        (Either::Column(a), Either::Column(b)) => {
            if a.class != b.class || a.class == Class::Opaque {
                return Err(refuse(
                    cx,
                    right,
                    format!(
                        "{} and {} have types that cannot be compared",
                        a.name, b.name
                    ),
                ));
            }
            (Operand::Column(a), Operand::Column(b))
        }
        (Either::Column(c), Either::Lit(lit)) => {
            let value = typed(cx, right, lit, c.class)?;
            (Operand::Column(c), Operand::Const(value))
        }
        (Either::Lit(lit), Either::Column(c)) => {
            let value = typed(cx, left, lit, c.class)?;
            (Operand::Const(value), Operand::Column(c))
        }
        (Either::Lit(_), Either::Lit(_)) => {
            return Err(refuse(cx, left, "a comparison needs a column on one side"))
        }
    };
    Ok(Expr::Cmp { left, op, right })
}

fn column(cx: &Context, sql: &Sql) -> Result<Column, ShapeError> {
    match column_or_literal(cx, sql)? {
        Either::Column(c) => Ok(c),
        Either::Lit(_) => Err(refuse(cx, sql, "expected a column name here")),
    }
}

fn column_or_literal(cx: &Context, sql: &Sql) -> Result<Either, ShapeError> {
    match sql {
        Sql::Nested(inner) => column_or_literal(cx, inner),
        Sql::Identifier(ident) => {
            // Unquoted names fold to lower case, as in Postgres.
            let name = match ident.quote_style {
                None => ident.value.to_lowercase(),
                Some('"') => ident.value.clone(),
                Some(_) => return Err(refuse(cx, sql, "quote column names with \"")),
            };
            let class = match cx.columns {
                None => Class::Dynamic,
                Some(columns) => match columns.iter().find(|c| c.name == name) {
                    Some(c) => Class::of(&c.type_name),
                    None => {
                        return Err(refuse(
                            cx,
                            sql,
                            format!("unknown column {name:?} (GET /v1/collections lists the columns)"),
                        ))
                    }
                },
            };
            Ok(Either::Column(Column { name, class }))
        }
        Sql::CompoundIdentifier(_) => Err(refuse(
            cx,
            sql,
            "a filter names columns of its one collection only; quote a dotted field path as \"a.b\"",
        )),
        _ => literal(cx, sql).map(Either::Lit),
    }
}

fn literal(cx: &Context, sql: &Sql) -> Result<Lit, ShapeError> {
    let negative = |e: &Sql| match e {
        Sql::Value(v) => match &v.value {
            ast::Value::Number(n, _) => Some(n.clone()),
            _ => None,
        },
        _ => None,
    };
    Ok(match sql {
        Sql::Nested(inner) => literal(cx, inner)?,
        Sql::UnaryOp {
            op: op @ (UnaryOperator::Minus | UnaryOperator::Plus),
            expr,
        } => match negative(expr) {
            Some(n) if *op == UnaryOperator::Minus => Lit::Num(format!("-{n}")),
            Some(n) => Lit::Num(n),
            None => return Err(refuse(cx, sql, "a sign goes before a number only")),
        },
        Sql::Value(v) => match &v.value {
            ast::Value::Null => Lit::Null,
            ast::Value::Boolean(b) => Lit::Bool(*b),
            ast::Value::Number(n, _) => Lit::Num(n.clone()),
            ast::Value::SingleQuotedString(s) => Lit::Text(s.clone()),
            ast::Value::Placeholder(p) => {
                let index = p
                    .strip_prefix('$')
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| refuse(cx, sql, "parameters are written $1, $2, …"))?;
                match cx.params.get(index - 1) {
                    Some(value) => Lit::Text(value.clone()),
                    None => {
                        return Err(refuse(
                            cx,
                            sql,
                            format!("${index} has no value: pass it as params[{index}]=…"),
                        ))
                    }
                }
            }
            other => {
                return Err(refuse(
                    cx,
                    sql,
                    format!("literal {other} is not supported: write 'text' (with '' for a quote), numbers, true, false or null"),
                ))
            }
        },
        _ => return Err(refuse(cx, sql, "expected a column name or a literal")),
    })
}

/// A literal as the value of a column of `class`, as Postgres would cast it.
fn typed(cx: &Context, sql: &Sql, lit: Lit, class: Class) -> Result<Const, ShapeError> {
    let wrong = |what: &str| refuse(cx, sql, format!("wrong type: {what}"));
    Ok(match (lit, class) {
        (Lit::Null, _) => Const::Null,
        (_, Class::Opaque) => {
            return Err(wrong(
                "this column's type cannot be compared in a filter; only IS [NOT] NULL",
            ))
        }
        (Lit::Bool(b), Class::Bool | Class::Dynamic) => Const::Bool(b),
        (Lit::Text(t), Class::Bool) => Const::Bool(
            bool_text(&t).ok_or_else(|| wrong("expected true or false for a boolean column"))?,
        ),
        (Lit::Bool(_), _) => return Err(wrong("a boolean compared with a non-boolean column")),
        (Lit::Num(n) | Lit::Text(n), Class::Float) => {
            let value: f64 = match n.trim() {
                t if t.eq_ignore_ascii_case("nan") => f64::NAN,
                t if t.eq_ignore_ascii_case("infinity") || t.eq_ignore_ascii_case("+infinity") => {
                    f64::INFINITY
                }
                t if t.eq_ignore_ascii_case("-infinity") => f64::NEG_INFINITY,
                t => t
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| wrong("expected a number for a float column"))?,
            };
            Const::Num(Num::from_f64(value))
        }
        (Lit::Num(n), Class::Integer(_) | Class::Numeric | Class::Dynamic) => {
            Const::Num(Num::parse(&n).ok_or_else(|| wrong("malformed number"))?)
        }
        (Lit::Text(t), Class::Integer(bits)) => {
            // Postgres casts quoted text to the column's type, so it must fit it.
            let (low, high) = match bits {
                16 => (i16::MIN as i64, i16::MAX as i64),
                32 => (i32::MIN as i64, i32::MAX as i64),
                33 => (0, u32::MAX as i64),
                _ => (i64::MIN, i64::MAX),
            };
            let n = Num::parse(t.trim())
                .filter(|n| n.is_integer())
                .filter(|n| *n >= Num::from_i64(low) && *n <= Num::from_i64(high))
                .ok_or_else(|| wrong(&format!("expected an integer from {low} to {high}")))?;
            Const::Num(n)
        }
        (Lit::Text(t), Class::Numeric) => {
            Const::Num(Num::parse(t.trim()).ok_or_else(|| wrong("expected a number"))?)
        }
        (Lit::Text(t), Class::Text | Class::Dynamic) => Const::Text(t),
        (Lit::Num(_), _) => return Err(wrong("a number compared with a non-numeric column")),
        (Lit::Text(t), Class::Timestamp) => Const::Time(
            Time::parse(&t)
                .ok_or_else(|| wrong("expected a timestamp such as '2025-01-15 11:00:00Z'"))?,
        ),
        (Lit::Text(t), Class::Date) => {
            Const::Date(date(&t).ok_or_else(|| wrong("expected a date such as '2025-01-15'"))?)
        }
    })
}

/// The type quoted items of an integer column's IN list are read as: Postgres resolves the
/// list's common type from the column and its unquoted numbers (`int4` widens to `int8` or
/// `numeric`), and only then casts the quoted ones.
fn in_list_class(class: Class, lits: &[Lit]) -> Class {
    let Class::Integer(mut bits) = class else {
        return class;
    };
    for lit in lits {
        if let Lit::Num(n) = lit {
            match n.parse::<i64>() {
                Ok(v) if i32::try_from(v).is_ok() => bits = bits.max(32),
                Ok(_) => bits = bits.max(64),
                Err(_) => return Class::Numeric,
            }
        }
    }
    Class::Integer(bits)
}

/// A literal where no column decides its type (`IS NULL` of a literal).
fn untyped(lit: Lit) -> Const {
    match lit {
        Lit::Null => Const::Null,
        Lit::Bool(b) => Const::Bool(b),
        Lit::Num(n) => Num::parse(&n).map_or(Const::Text(n), Const::Num),
        Lit::Text(t) => Const::Text(t),
    }
}

fn bool_text(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "t" | "true" | "y" | "yes" | "on" | "1" => Some(true),
        "f" | "false" | "n" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// `YYYY-MM-DD`, as stored.
pub fn date(text: &str) -> Option<String> {
    let text = text.trim();
    let b = text.as_bytes();
    let ok = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    ok.then(|| crate::time::parse_rfc3339(&format!("{text}T00:00:00Z")).ok())
        .flatten()
        .map(|_| text.to_string())
}

/// LIKE's pattern with `\` as the escape character, as Postgres reads it.
fn like_pattern(text: &str) -> Result<Vec<LikeToken>, &'static str> {
    let mut tokens = Vec::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        tokens.push(match c {
            '%' => LikeToken::Any,
            '_' => LikeToken::One,
            '\\' => LikeToken::Char(
                chars
                    .next()
                    .ok_or("a LIKE pattern must not end with the escape character \\")?,
            ),
            c => LikeToken::Char(c),
        });
    }
    Ok(tokens)
}
