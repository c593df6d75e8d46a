use super::*;
use serde_json::json;

fn catalog() -> Vec<ColumnInfo> {
    [
        ("id", "int8"),
        ("owner", "int4"),
        ("title", "text"),
        ("price", "numeric"),
        ("score", "float8"),
        ("done", "bool"),
        ("at", "timestamptz"),
        ("day", "date"),
        ("doc", "jsonb"),
    ]
    .iter()
    .map(|(n, t)| ColumnInfo {
        name: n.to_string(),
        type_name: t.to_string(),
    })
    .collect()
}

fn shape(filter: &str) -> Result<Shape, ShapeError> {
    Shape::new("t", Some(filter), &["7".into()], None, Some(&catalog()))
}

fn row(value: serde_json::Value) -> Row {
    value.as_object().cloned().unwrap()
}

#[test]
fn typed_comparisons_follow_the_column() {
    let r = row(json!({
        "id": "9007199254740993", "owner": 7, "title": "O'Brien — été", "price": "12.50",
        "score": 0.1, "done": true, "at": "2025-01-15T11:00:00.123456Z", "day": "2025-01-15",
        "doc": {"a": 1}
    }));
    for yes in [
        "owner = 7",
        "owner = $1",
        "owner = '7'",
        "id > 9007199254740992",
        "id = '9007199254740993'",
        "price = 12.5",
        "price > '9.99'",
        "score = 0.1",
        "done",
        "done = 't'",
        "NOT NOT done",
        "at > '2025-01-15 12:00:00+02'",
        "at < '2025-01-16'",
        "day >= '2025-01-15' AND day < '2025-01-16'",
        "title = 'O''Brien — été'",
        "title LIKE 'O''B%é'",
        "title ILIKE 'o''b_IEN%'",
        "title > 'O'",
        "owner IN (1, 7, NULL)",
        "owner NOT IN (1, 2)",
        "doc IS NOT NULL",
        "\"owner\" <> 8 OR title IS NULL",
    ] {
        assert!(shape(yes).unwrap().matches(&r), "{yes}");
    }
    for no in [
        "owner = 8",
        "owner IN (1, NULL)",
        "owner NOT IN (1, NULL)",
        "NOT done",
        "title LIKE 'o%'",
        "price < 12.5",
        "null",
        "owner = null",
        "missing_but_null IS NULL",
    ]
    .iter()
    .filter(|f| !f.contains("missing"))
    {
        assert!(!shape(no).unwrap().matches(&r), "{no}");
    }
}

#[test]
fn bad_filters_say_where() {
    for (filter, position) in [
        ("nope = 1", 1),
        ("owner = 'x'", 9),
        ("title = 5", 9),
        ("owner = 1 AND", 14),
        ("t.owner = 1", 1),
        ("owner = 1; DROP TABLE t", 10),
        ("owner = $2", 9),
        ("lower(title) = 'a'", 1),
        ("doc = 'x'", 7),
        ("owner = 1 AND (SELECT 1) = 1", 16),
    ] {
        let error = shape(filter).unwrap_err();
        assert_eq!(error.position, position, "{filter}: {error}");
    }
    let deep = format!("{}owner = 1{}", "(".repeat(500), ")".repeat(500));
    assert!(shape(&deep).is_err());
    let long = vec!["owner = 1"; 1000].join(" AND ");
    assert!(shape(&long).is_err());
    let chain = vec!["owner = 1"; 200].join(" AND ");
    assert!(shape(&chain).is_ok());
    let chain = vec!["owner = 1"; 300].join(" AND ");
    assert!(shape(&chain).is_err());
}

#[test]
fn moves_become_deletes_and_projection_keeps_keys() {
    let s = Shape::new(
        "t",
        Some("owner = 7"),
        &[],
        Some(vec!["title".into()]),
        Some(&catalog()),
    )
    .unwrap();
    let record = |op: Op, owner: i64| ChangeRecord {
        cursor: "1-1".into(),
        source: "pg".into(),
        collection: "t".into(),
        op,
        key: Some(row(json!({"id": 1}))),
        after: (!op.is_tombstone()).then(|| row(json!({"id": 1, "owner": owner, "title": "a"}))),
        before: None,
        changed: Some(vec!["owner".into(), "title".into()]),
        unchanged: vec![],
        commit_time: "2025-01-15T11:00:00.000000Z".into(),
        tx: crate::record::TxInfo {
            id: "1".into(),
            position: "0/1".into(),
        },
    };
    let sent = s.apply(&record(Op::Update, 7), Previous::Unknown).unwrap();
    assert_eq!(sent.after, Some(row(json!({"id": 1, "title": "a"}))));
    assert_eq!(sent.changed, Some(vec!["title".into()]));
    let out = s.apply(&record(Op::Update, 8), Previous::Unknown).unwrap();
    assert_eq!((out.op, out.after), (Op::Delete, None));
    assert!(s.apply(&record(Op::Update, 8), Previous::Absent).is_none());
    let was_in = row(json!({"id": 1, "owner": 7, "title": "a"}));
    assert_eq!(
        s.apply(&record(Op::Update, 8), Previous::Row(&was_in))
            .unwrap()
            .op,
        Op::Delete
    );
    // Same projected values: nothing to send.
    assert!(s
        .apply(&record(Op::Update, 7), Previous::Row(&was_in))
        .is_none());
    let was_out = row(json!({"id": 1, "owner": 8}));
    assert!(s
        .apply(&record(Op::Delete, 0), Previous::Row(&was_out))
        .is_none());
    assert!(s
        .apply(&record(Op::Delete, 0), Previous::Row(&was_in))
        .is_some());
}

#[test]
fn mongo_paths_and_extended_json() {
    let s = |f: &str| Shape::new("db.c", Some(f), &[], None, None).unwrap();
    let r = row(json!({
        "_id": {"$oid": "65a1b2c3d4e5f60718293a4b"},
        "address": {"city": "Oslo"},
        "n": 3,
        "at": {"$date": "2025-01-15T11:00:00Z"}
    }));
    assert!(s("\"address.city\" = 'Oslo'").matches(&r));
    assert!(s("_id = '65a1b2c3d4e5f60718293a4b'").matches(&r));
    assert!(s("n > 2.5 AND n IN (3, 4)").matches(&r));
    assert!(s("at > '2025-01-01'").matches(&r));
    assert!(!s("n = 'x'").matches(&r));
    assert!(!s("missing = 1").matches(&r));
}

#[test]
fn deep_nesting_is_refused_on_a_small_stack() {
    let run = || {
        for depth in [1, 10, 15, 16, 17, 20, 30, 100, 2000] {
            let deep = format!("{}owner = 1{}", "(".repeat(depth), ")".repeat(depth));
            assert_eq!(shape(&deep).is_ok(), depth <= 16, "{depth} parentheses");
            let nots = format!("{}done", "NOT ".repeat(depth));
            assert_eq!(shape(&nots).is_ok(), depth <= 16, "{depth} NOTs");
            let mixed = format!("{}done{}", "NOT (".repeat(depth), ")".repeat(depth));
            assert_eq!(shape(&mixed).is_ok(), depth <= 8, "{depth} NOT (");
            // A sign is one level, a second one the parser refuses anyway.
            let minus = format!("owner = {}1", "-".repeat(depth));
            assert!(shape(&minus).is_ok() == (depth == 1), "{depth} signs");
        }
    };
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(run)
        .unwrap()
        .join()
        .unwrap();
}
