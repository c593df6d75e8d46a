//! Shapes: the relay's filter evaluator against Postgres itself. Random filters from the
//! contract's grammar over random rows (NULLs, big and exact numbers, floats with NaN and
//! infinities, timestamps, quotes, non-ASCII) must select exactly the rows that
//! `SELECT … WHERE <the same expression>` selects; a filter Postgres refuses must be refused.

use deltarelay::record::Row;
use deltarelay::shape::{ColumnInfo, Shape};
use deltarelay::source::postgres::values::{text_to_json, ValueType};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use testkit::pg::PgServer;

/// (name, SQL type, type oid)
const COLUMNS: &[(&str, &str, u32)] = &[
    ("owner", "int4", 23),
    ("big", "int8", 20),
    ("price", "numeric", 1700),
    ("score", "float8", 701),
    ("title", "text", 25),
    ("done", "bool", 16),
    ("at", "timestamptz", 1184),
    ("day", "date", 1082),
];

const ROWS: usize = 150;
const CASES: usize = 3000;

fn pick<'a>(rng: &mut StdRng, items: &[&'a str]) -> &'a str {
    items.choose(rng).unwrap()
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

const TEXTS: &[&str] = &[
    "",
    "a",
    "A",
    "b",
    "O'Brien",
    "o'brien",
    "été",
    "Été",
    "日本語",
    "naïve café",
    "a%b",
    "a_b",
    "back\\slash",
    "zz",
    "Z",
    "10",
    "9",
    "'; DROP TABLE t; --",
    "tab\there",
    "😀",
];
const NUMBERS: &[&str] = &[
    "0",
    "-0",
    "1",
    "-1",
    "7",
    "42",
    "-42",
    "2.5",
    "-2.5",
    "0.1",
    "1e3",
    "1.5e-3",
    "100000",
    "2147483647",
    "-2147483648",
    "9007199254740991",
    "9007199254740992",
    "9007199254740993",
    "9223372036854775807",
    "-9223372036854775808",
    "123456789012345678901234567890.123456789",
    "1e-300",
    "12.50",
];
const TIMES: &[&str] = &[
    "2025-01-15 11:00:00+00",
    "2025-01-15 11:00:00.000001+00",
    "2025-01-15 10:59:59.999999+00",
    "2025-01-15 13:00:00+02",
    "2024-02-29 23:59:59.5+00",
    "2026-12-31 00:00:00+00",
    "1999-12-31 23:59:59+00",
    "2025-01-15",
    "infinity",
    "-infinity",
];
const DAYS: &[&str] = &[
    "2025-01-15",
    "2025-01-14",
    "2024-02-29",
    "2000-01-01",
    "2026-12-31",
];
const PATTERNS: &[&str] = &[
    "%", "a%", "%a", "%a%", "_", "__", "O''%", "o''b%", "%é%", "É%", "%\\%%", "a\\_b", "%日本%",
    "%b", "a%b", "%\\\\%", "", "%😀",
];

/// One random row value in Postgres text, or NULL.
fn row_value(rng: &mut StdRng, ty: &str) -> String {
    if rng.gen_bool(0.15) {
        return "NULL".into();
    }
    match ty {
        "int4" => rng.gen_range(-5..=10).to_string(),
        "int8" => pick(
            rng,
            &[
                "0",
                "7",
                "-42",
                "9007199254740991",
                "9007199254740992",
                "9007199254740993",
                "9223372036854775807",
                "-9223372036854775808",
            ],
        )
        .into(),
        "numeric" => quote(pick(
            rng,
            &[
                "0",
                "12.50",
                "12.5",
                "-2.5",
                "0.1",
                "123456789012345678901234567890.123456789",
                "1e3",
                "NaN",
                "7",
            ],
        )),
        "float8" => quote(pick(
            rng,
            &[
                "0",
                "0.1",
                "2.5",
                "-2.5",
                "1e-300",
                "1e300",
                "NaN",
                "Infinity",
                "-Infinity",
                "7",
            ],
        )),
        "text" => quote(pick(rng, TEXTS)),
        "bool" => pick(rng, &["true", "false"]).into(),
        "timestamptz" => quote(pick(rng, TIMES)),
        "date" => quote(pick(rng, DAYS)),
        _ => unreachable!(),
    }
}

/// A literal for a column of `ty`: (the SQL Postgres reads, what the relay reads, the value of
/// a `$n` parameter when the relay's side uses one).
fn literal(rng: &mut StdRng, ty: &str, params: &mut Vec<String>) -> (String, String) {
    if rng.gen_bool(0.05) {
        return ("NULL".into(), "NULL".into());
    }
    let (text, quoted) = match ty {
        "int4" | "int8" => {
            let n = if rng.gen_bool(0.5) {
                rng.gen_range(-5..=10).to_string()
            } else {
                pick(rng, NUMBERS).to_string()
            };
            // An integer column takes quoted integers; a decimal literal compares exactly.
            let quoted = !n.contains(['.', 'e']) && rng.gen_bool(0.3);
            (n, quoted)
        }
        "numeric" => {
            let n = pick(rng, NUMBERS).to_string();
            (n, rng.gen_bool(0.3))
        }
        "float8" => match rng.gen_range(0..10) {
            0 => (
                pick(rng, &["NaN", "Infinity", "-Infinity"]).to_string(),
                true,
            ),
            _ => {
                let n = pick(
                    rng,
                    &[
                        "0",
                        "0.1",
                        "2.5",
                        "-2.5",
                        "1e-300",
                        "1e300",
                        "7",
                        "-1",
                        "0.30000000000000004",
                    ],
                )
                .to_string();
                (n, rng.gen_bool(0.3))
            }
        },
        "text" => (pick(rng, TEXTS).to_string(), true),
        "bool" => {
            let b = pick(rng, &["true", "false"]).to_string();
            if rng.gen_bool(0.3) {
                (pick(rng, &["t", "f", "yes", "no"]).to_string(), true)
            } else {
                (b, false)
            }
        }
        "timestamptz" => (pick(rng, TIMES).to_string(), true),
        "date" => (pick(rng, DAYS).to_string(), true),
        _ => unreachable!(),
    };
    let sql = if quoted { quote(&text) } else { text.clone() };
    // A quoted literal may travel as a parameter instead (same meaning: text typed by its column).
    if quoted && rng.gen_bool(0.25) {
        params.push(text);
        return (sql, format!("${}", params.len()));
    }
    (sql.clone(), sql)
}

fn column_name(rng: &mut StdRng, name: &str) -> String {
    if rng.gen_bool(0.2) {
        format!("\"{name}\"")
    } else if rng.gen_bool(0.1) {
        name.to_uppercase()
    } else {
        name.to_string()
    }
}

/// A random condition, as (Postgres's SQL, the relay's SQL).
fn condition(rng: &mut StdRng, depth: u32, params: &mut Vec<String>) -> (String, String) {
    if depth > 0 && rng.gen_bool(0.45) {
        let (a, b) = (
            condition(rng, depth - 1, params),
            condition(rng, depth - 1, params),
        );
        return match rng.gen_range(0..3) {
            0 => (
                format!("({} AND {})", a.0, b.0),
                format!("({} AND {})", a.1, b.1),
            ),
            1 => (
                format!("({} OR {})", a.0, b.0),
                format!("({} OR {})", a.1, b.1),
            ),
            _ => (format!("NOT ({})", a.0), format!("NOT ({})", a.1)),
        };
    }
    let (name, ty, _) = *COLUMNS.choose(rng).unwrap();
    let col = column_name(rng, name);
    match rng.gen_range(0..10) {
        0 => {
            let not = if rng.gen_bool(0.5) { " NOT" } else { "" };
            let s = format!("{col} IS{not} NULL");
            (s.clone(), s)
        }
        1 => {
            let n = rng.gen_range(1..4);
            let not = if rng.gen_bool(0.3) { " NOT" } else { "" };
            let items: Vec<(String, String)> = (0..n).map(|_| literal(rng, ty, params)).collect();
            let pg: Vec<&str> = items.iter().map(|i| i.0.as_str()).collect();
            let ours: Vec<&str> = items.iter().map(|i| i.1.as_str()).collect();
            (
                format!("{col}{not} IN ({})", pg.join(", ")),
                format!("{col}{not} IN ({})", ours.join(", ")),
            )
        }
        2 if ty == "text" => {
            let op = pick(rng, &["LIKE", "ILIKE", "NOT LIKE", "NOT ILIKE"]);
            let s = format!("{col} {op} '{}'", pick(rng, PATTERNS));
            (s.clone(), s)
        }
        3 if ty == "bool" => {
            let s = if rng.gen_bool(0.5) {
                col.clone()
            } else {
                format!("NOT {col}")
            };
            (s.clone(), s)
        }
        4 if ty == "int4" => {
            // Column against column of the same type.
            let op = pick(rng, &["=", "<>", "<", ">="]);
            let s = format!("{col} {op} owner");
            (s.clone(), s)
        }
        _ => {
            let op = pick(rng, &["=", "<>", "!=", "<", "<=", ">", ">="]);
            let (pg, ours) = literal(rng, ty, params);
            if rng.gen_bool(0.2) {
                (format!("{pg} {op} {col}"), format!("{ours} {op} {col}"))
            } else {
                (format!("{col} {op} {pg}"), format!("{col} {op} {ours}"))
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_filters_select_what_postgres_selects() {
    let pg = PgServer::start();
    let client = testkit::pg::connect(&pg.url("postgres")).await.unwrap();
    let seed: u64 = std::env::var("SHAPE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("SHAPE_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let columns: Vec<String> = COLUMNS.iter().map(|(n, t, _)| format!("{n} {t}")).collect();
    client
        .batch_execute(&format!(
            "SET TimeZone = 'UTC'; CREATE TABLE t (id int8 PRIMARY KEY, {})",
            columns.join(", ")
        ))
        .await
        .unwrap();
    for id in 0..ROWS {
        let values: Vec<String> = COLUMNS
            .iter()
            .map(|(_, t, _)| row_value(&mut rng, t))
            .collect();
        client
            .batch_execute(&format!(
                "INSERT INTO t VALUES ({id}, {})",
                values.join(", ")
            ))
            .await
            .unwrap();
    }
    // The rows as the relay records them: each column's text through the source's mapping.
    let select: Vec<String> = COLUMNS.iter().map(|(n, _, _)| n.to_string()).collect();
    let mut rows: Vec<(i64, Row)> = Vec::new();
    for message in client
        .simple_query(&format!(
            "SELECT id, {} FROM t ORDER BY id",
            select.join(", ")
        ))
        .await
        .unwrap()
    {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = message {
            let id: i64 = r.get(0).unwrap().parse().unwrap();
            let mut row = Row::new();
            row.insert("id".into(), id.into());
            for (i, (name, _, oid)) in COLUMNS.iter().enumerate() {
                let value = r.get(i + 1).map_or(serde_json::Value::Null, |t| {
                    text_to_json(ValueType::Scalar(*oid), t)
                });
                row.insert(name.to_string(), value);
            }
            rows.push((id, row));
        }
    }
    let catalog: Vec<ColumnInfo> = std::iter::once(("id", "int8"))
        .chain(COLUMNS.iter().map(|(n, t, _)| (*n, *t)))
        .map(|(n, t)| ColumnInfo {
            name: n.into(),
            type_name: t.into(),
        })
        .collect();
    let (mut agreed, mut refused) = (0, 0);
    for case in 0..CASES {
        let mut params = Vec::new();
        let depth = rng.gen_range(0..4);
        let (pg_sql, ours) = condition(&mut rng, depth, &mut params);
        let expected = client
            .simple_query(&format!("SELECT id FROM t WHERE {pg_sql} ORDER BY id"))
            .await;
        let shape = Shape::new("public.t", Some(&ours), &params, None, Some(&catalog));
        match (expected, shape) {
            (Ok(messages), Ok(shape)) => {
                let expected: BTreeSet<i64> = messages
                    .iter()
                    .filter_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0)?.parse().ok(),
                        _ => None,
                    })
                    .collect();
                let got: BTreeSet<i64> = rows
                    .iter()
                    .filter(|(_, row)| shape.matches(row))
                    .map(|(id, _)| *id)
                    .collect();
                if got != expected {
                    let differ: Vec<_> = got.symmetric_difference(&expected).take(3).collect();
                    let shown: Vec<_> = differ
                        .iter()
                        .map(|id| &rows.iter().find(|(i, _)| i == *id).unwrap().1)
                        .collect();
                    panic!(
                        "case {case} (SHAPE_SEED={seed}): {ours} with {params:?} (Postgres: {pg_sql})\nrows that differ: {shown:#?}\nrelay: {} rows, Postgres: {} rows",
                        got.len(),
                        expected.len()
                    );
                }
                agreed += 1;
            }
            (Err(_), Err(_)) => refused += 1,
            (Ok(_), Err(e)) => panic!("case {case} (SHAPE_SEED={seed}): relay refused {ours:?} that Postgres runs: {e}"),
            (Err(e), Ok(_)) => panic!("case {case} (SHAPE_SEED={seed}): relay accepted {ours:?} that Postgres refuses: {e:?}"),
        }
    }
    eprintln!("{agreed} filters agreed with Postgres, {refused} refused by both");
    assert!(agreed > CASES * 8 / 10, "too few filters ran: {agreed}");
}
