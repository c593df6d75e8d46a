//! `/v1/changes` and the small endpoints, over a real socket.

use deltarelay::source::CopyState;
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use testkit::http::*;

/// Upstream transactions of random sizes over a small key space (so compaction happens), some
/// of them larger than the page limits used below; returns how many were committed.
async fn build_log(server: &Server, seed: u64, transactions: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut id = 0;
    while id < transactions {
        let mut local = Vec::new();
        for _ in 0..rng.gen_range(1..4) {
            id += 1;
            let size = if rng.gen_bool(0.05) {
                rng.gen_range(20..40)
            } else {
                rng.gen_range(1..6)
            };
            let changes = (0..size)
                .map(|_| {
                    let collection = if rng.gen_bool(0.3) {
                        "public.b"
                    } else {
                        "public.a"
                    };
                    let key = rng.gen_range(0..200);
                    if rng.gen_bool(0.1) {
                        delete(collection, key)
                    } else {
                        upsert(collection, key, json!(rng.gen::<u32>()))
                    }
                })
                .collect();
            local.push((tx(id), changes));
        }
        commit(&server.log, local).await;
    }
}

/// Walks `/v1/changes` from 0; returns every page's records.
async fn walk(server: &Server, limit: usize, extra: &str) -> Vec<Vec<Value>> {
    let mut since = "0".to_string();
    let mut pages = Vec::new();
    loop {
        let response = server
            .get(&format!("/v1/changes?since={since}&limit={limit}{extra}"))
            .await;
        assert_eq!(response.status, 200, "{}", response.body);
        assert_eq!(response.header("content-type"), Some("application/json"));
        let body = response.json();
        let changes = body["changes"].as_array().unwrap().clone();
        let cursor = body["cursor"].as_str().unwrap().to_string();
        match changes.last() {
            Some(last) => assert_eq!(last["cursor"].as_str().unwrap(), cursor),
            None => assert_eq!(cursor, since),
        }
        assert!(changes.len() <= limit);
        let has_more = body["has_more"].as_bool().unwrap();
        if changes.is_empty() {
            assert!(!has_more);
            break;
        }
        pages.push(changes);
        since = cursor;
        if !has_more {
            // One more request: nothing after the end.
            let after = server
                .get(&format!("/v1/changes?since={since}{extra}"))
                .await
                .json();
            assert_eq!(after["changes"], json!([]));
            assert_eq!(after["cursor"], json!(since));
            break;
        }
    }
    pages
}

#[tokio::test]
async fn paging_from_zero_yields_the_whole_log_once_without_splitting_transactions() {
    let server = Server::start().await;
    build_log(&server, 7, 600).await;
    let expected = log_records(&server.log);
    assert!(expected.len() > 300, "{}", expected.len());

    for limit in [1, 7, 25, 1000] {
        let pages = walk(&server, limit, "").await;
        let all: Vec<Value> = pages.iter().flatten().cloned().collect();
        assert_eq!(
            all, expected,
            "limit {limit}: the walk is the log, once, in order"
        );
        let seqs: Vec<u64> = all
            .iter()
            .map(|r| seq_of(r["cursor"].as_str().unwrap()))
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "strictly increasing cursors"
        );
        let mut splits = 0;
        for pair in pages.windows(2) {
            let (page, next) = (&pair[0], &pair[1]);
            let (last, first) = (&page.last().unwrap()["tx"]["id"], &next[0]["tx"]["id"]);
            if last == first {
                // Allowed only when the whole page is that one transaction (it exceeds the limit).
                assert_eq!(
                    page.len(),
                    limit,
                    "limit {limit}: a page ends inside transaction {last}"
                );
                assert!(
                    page.iter().all(|r| &r["tx"]["id"] == last),
                    "limit {limit}: split of {last}"
                );
                splits += 1;
            }
        }
        println!(
            "limit {limit}: {} pages, {} oversized transactions split",
            pages.len(),
            splits
        );
    }

    // A collection filter: exactly that collection's records.
    let only_b: Vec<Value> = walk(&server, 10, "&collections=public.b")
        .await
        .into_iter()
        .flatten()
        .collect();
    let expected_b: Vec<Value> = expected
        .iter()
        .filter(|r| r["collection"] == "public.b")
        .cloned()
        .collect();
    assert_eq!(only_b, expected_b);
    let both: Vec<Value> = walk(&server, 50, "&collections=public.b,public.a")
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(both, expected);
}

#[tokio::test]
async fn since_a_timestamp_returns_later_commits() {
    let server = Server::start().await;
    let times = [
        "2025-01-15T10:00:00.000000Z",
        "2025-01-15T11:00:00.000000Z",
        "2025-01-15T11:00:00.000001Z",
    ];
    for (i, time) in times.iter().enumerate() {
        commit(
            &server.log,
            vec![(
                tx_at(i as u64 + 1, time),
                vec![upsert("public.a", i as i64, json!(i))],
            )],
        )
        .await;
    }
    let ids = |body: &Value| -> Vec<i64> {
        body["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["key"]["id"].as_i64().unwrap())
            .collect()
    };
    let body = server
        .get("/v1/changes?since=2025-01-15T11:00:00Z")
        .await
        .json();
    assert_eq!(ids(&body), vec![2]);
    let body = server
        .get("/v1/changes?since=2025-01-15T12:00:00%2B02:00")
        .await
        .json();
    assert_eq!(
        ids(&body),
        vec![1, 2],
        "10:00Z is not after 12:00+02:00, 11:00Z is"
    );
    let body = server
        .get("/v1/changes?since=2030-01-01T00:00:00Z")
        .await
        .json();
    assert_eq!(body["changes"], json!([]));
}

#[tokio::test]
async fn long_poll_returns_promptly_after_a_commit_and_empty_after_wait() {
    let server = Server::start().await;
    commit(
        &server.log,
        vec![(tx(1), vec![upsert("public.a", 1, json!(1))])],
    )
    .await;
    let since = format!("{}-{}", server.epoch(), server.head());

    // Nothing arrives: an empty page after `wait` seconds.
    let started = Instant::now();
    let body = server
        .get(&format!("/v1/changes?since={since}&wait=1"))
        .await
        .json();
    let waited = started.elapsed();
    assert_eq!(
        body,
        json!({"changes": [], "cursor": since, "has_more": false, "lag_ms": 0})
    );
    assert!(
        waited >= Duration::from_millis(950) && waited < Duration::from_millis(1500),
        "{waited:?}"
    );

    // A commit during the wait: answered within 50 ms of it.
    let addr = server.addr;
    let path = format!("/v1/changes?since={since}&wait=30");
    let poll = tokio::spawn(async move {
        let response = get(addr, &path, &[]).await;
        (Instant::now(), response)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    commit(
        &server.log,
        vec![(tx(2), vec![upsert("public.a", 2, json!(2))])],
    )
    .await;
    let committed = Instant::now();
    let (answered, response) = poll.await.unwrap();
    let body = response.json();
    assert_eq!(body["changes"].as_array().unwrap().len(), 1);
    assert_eq!(body["changes"][0]["key"], json!({"id": 2}));
    let latency = answered.saturating_duration_since(committed);
    println!("long poll answered {latency:?} after the commit");
    assert!(latency < Duration::from_millis(50), "{latency:?}");

    // A long poll filtered on one collection is not woken by another's commits.
    commit(
        &server.log,
        vec![(tx(3), vec![upsert("public.b", 1, json!(1))])],
    )
    .await;
    let since = format!("{}-{}", server.epoch(), server.head());
    let path = format!("/v1/changes?since={since}&wait=30&collections=public.b");
    let poll = tokio::spawn(async move { get(addr, &path, &[]).await });
    commit(
        &server.log,
        vec![(tx(4), vec![upsert("public.a", 9, json!(9))])],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!poll.is_finished(), "woken by another collection's commit");
    commit(
        &server.log,
        vec![(tx(5), vec![upsert("public.b", 2, json!(2))])],
    )
    .await;
    let body = poll.await.unwrap().json();
    assert_eq!(body["changes"].as_array().unwrap().len(), 1);
    assert_eq!(body["changes"][0]["key"], json!({"id": 2}));
}

#[tokio::test]
async fn long_polls_end_on_shutdown() {
    let server = Server::start().await;
    let addr = server.addr;
    let poll = tokio::spawn(async move { get(addr, "/v1/changes?wait=60", &[]).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    server.shutdown.send(true).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status, 200);
    tokio::time::timeout(Duration::from_secs(5), server.served)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn every_bad_parameter_gets_the_right_status_and_json_body() {
    let server = Server::start().await;
    commit(
        &server.log,
        vec![(
            tx(1),
            vec![
                upsert("public.a", 1, json!(1)),
                upsert("public.a", 2, json!(2)),
            ],
        )],
    )
    .await;
    let epoch = server.epoch();
    let other_epoch = if epoch == 1 { 2 } else { epoch - 1 };
    let cases: Vec<(String, u16, &str, &str)> = vec![
        (
            "/v1/changes?since=banana".into(),
            400,
            "invalid_parameter",
            "since",
        ),
        (
            "/v1/changes?since=1-2-3".into(),
            400,
            "invalid_parameter",
            "since",
        ),
        (
            "/v1/changes?since=2025-13-45T00:00:00Z".into(),
            400,
            "invalid_parameter",
            "since",
        ),
        (
            "/v1/changes?limit=0".into(),
            400,
            "invalid_parameter",
            "limit",
        ),
        (
            "/v1/changes?limit=10001".into(),
            400,
            "invalid_parameter",
            "limit",
        ),
        (
            "/v1/changes?limit=abc".into(),
            400,
            "invalid_parameter",
            "limit",
        ),
        (
            "/v1/changes?limit=".into(),
            400,
            "invalid_parameter",
            "limit",
        ),
        (
            "/v1/changes?wait=61".into(),
            400,
            "invalid_parameter",
            "wait",
        ),
        (
            "/v1/changes?wait=-1".into(),
            400,
            "invalid_parameter",
            "wait",
        ),
        (
            "/v1/changes?wait=soon".into(),
            400,
            "invalid_parameter",
            "wait",
        ),
        (
            "/v1/changes?limit=5&limit=6".into(),
            400,
            "invalid_parameter",
            "limit",
        ),
        (
            "/v1/changes?collections=public.nope".into(),
            404,
            "unknown_collection",
            "public.nope",
        ),
        (
            "/v1/changes?collections=public.a,public.nope".into(),
            404,
            "unknown_collection",
            "public.nope",
        ),
        (
            format!("/v1/changes?since={other_epoch}-1"),
            410,
            "cursor_expired",
            "another incarnation",
        ),
        (
            format!("/v1/changes?since={epoch}-999"),
            410,
            "cursor_expired",
            "ahead",
        ),
        (
            "/v1/stream?since=banana".into(),
            400,
            "invalid_parameter",
            "since",
        ),
        (
            "/v1/stream?collections=public.nope".into(),
            404,
            "unknown_collection",
            "public.nope",
        ),
        (
            format!("/v1/stream?since={other_epoch}-1"),
            410,
            "cursor_expired",
            "another incarnation",
        ),
        ("/v1/nothing".into(), 404, "not_found", "endpoint"),
    ];
    for (path, status, code, mentions) in &cases {
        let response = server.get(path).await;
        assert_eq!(response.status, *status, "{path}: {}", response.body);
        assert_eq!(
            response.header("content-type"),
            Some("application/json"),
            "{path}"
        );
        let body = response.json();
        assert_eq!(body["error"], *code, "{path}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(mentions), "{path}: {message}");
        assert_eq!(body.as_object().unwrap().len(), 2, "{path}: {body}");
    }
    // Last-Event-ID is a parameter too.
    let response = get(server.addr, "/v1/stream", &[("Last-Event-ID", "junk")]).await;
    assert_eq!(response.status, 400);
    assert!(response.json()["message"]
        .as_str()
        .unwrap()
        .contains("Last-Event-ID"));
    let response = get(
        server.addr,
        "/v1/stream",
        &[("Last-Event-ID", &format!("{other_epoch}-1"))],
    )
    .await;
    assert_eq!(response.status, 410);

    // Purged tombstones (written by retention, issue 4) expire older cursors.
    {
        let conn = rusqlite::Connection::open(server.dir.path().join("changes.sqlite3")).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        conn.execute(
            "INSERT INTO meta (name, value) VALUES ('purged_seq', '2')",
            [],
        )
        .unwrap();
    }
    for path in [
        format!("/v1/changes?since={epoch}-1"),
        format!("/v1/stream?since={epoch}-1"),
    ] {
        let response = server.get(&path).await;
        assert_eq!(response.status, 410, "{path}");
        assert_eq!(response.json()["error"], "cursor_expired");
    }
    assert_eq!(
        server
            .get(&format!("/v1/changes?since={epoch}-2"))
            .await
            .status,
        200
    );

    // Still healthy, and the log unchanged.
    assert_eq!(server.get("/healthz").await.status, 200);
    let body = server.get("/v1/changes").await.json();
    assert_eq!(body["changes"].as_array().unwrap().len(), 2);
    assert_eq!(server.head(), 2);
}

#[tokio::test]
async fn collections_status_readyz_and_metrics() {
    let server = Server::start().await;
    commit(
        &server.log,
        vec![(
            tx(1),
            vec![
                upsert("public.a", 1, json!(1)),
                upsert("public.b", 1, json!(1)),
            ],
        )],
    )
    .await;
    let body = server.get("/v1/collections").await.json();
    assert_eq!(
        body,
        json!({"collections": [
            {"name": "public.a", "source": "pg", "key_columns": ["id"], "columns": null},
            {"name": "public.b", "source": "pg", "key_columns": ["id"], "columns": null},
        ]})
    );

    let status = server.get("/v1/status").await.json();
    assert_eq!(
        status["log"]["head_cursor"],
        format!("{}-2", server.epoch())
    );
    assert_eq!(status["log"]["entries"], 2);
    assert!(status["log"]["bytes"].as_u64().unwrap() > 0);
    assert_eq!(status["subscribers"], 0);
    assert_eq!(status["sources"], json!([]));

    let ready = server.get("/readyz").await;
    assert_eq!(ready.status, 200, "no sources: ready");
    assert_eq!(server.get("/healthz").await.status, 200);

    let metrics = server.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    let text = metrics.body;
    assert!(
        text.lines()
            .any(|l| l.starts_with("deltarelay_http_requests_total{")
                && l.contains("route=\"/v1/collections\"")
                && l.contains("status=\"200\"")),
        "{text}"
    );
    assert!(text.contains("deltarelay_log_head_seq 2"), "{text}");
}

#[tokio::test]
async fn readyz_reports_disconnected_sources() {
    use deltarelay::http::AppState;
    use deltarelay::source::SourceStatus;
    let dir = tempfile::tempdir().unwrap();
    let log = deltarelay::log::Log::open(dir.path()).unwrap();
    let (status_tx, status) = tokio::sync::watch::channel(SourceStatus {
        name: "app_pg".into(),
        kind: "postgres",
        last_error: Some("connection refused".into()),
        ..SourceStatus::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(deltarelay::http::serve(
        listener,
        AppState {
            log,
            sources: vec![status],
        },
        stop,
    ));

    let response = get(addr, "/readyz", &[]).await;
    assert_eq!(response.status, 503);
    let body = response.json();
    assert_eq!(body["error"], "not_ready");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("app_pg is not connected: connection refused"),
        "{body}"
    );
    let status = get(addr, "/v1/status", &[]).await.json();
    assert_eq!(status["sources"][0]["name"], "app_pg");
    assert_eq!(status["sources"][0]["connected"], false);

    // Connected but still copying: not ready either.
    status_tx.send_modify(|s| {
        s.connected = true;
        s.last_error = None;
        s.initial_copy.state = CopyState::Copying;
        s.initial_copy.tables_total = 2;
    });
    let response = get(addr, "/readyz", &[]).await;
    assert_eq!(response.status, 503);
    assert!(
        response.json()["message"]
            .as_str()
            .unwrap()
            .contains("app_pg is copying existing rows (0 of 2 tables"),
        "{}",
        response.json()
    );
    status_tx.send_modify(|s| s.initial_copy.state = CopyState::Done);
    assert_eq!(get(addr, "/readyz", &[]).await.status, 200);
}

/// `GET /v1/openapi.json` serves docs/openapi.yaml (OpenAPI 3.1, in YAML's JSON form), and what
/// each documented route answers, good request or bad, is a status and content type that the
/// document lists for it.
#[tokio::test]
async fn the_openapi_document_describes_what_each_route_answers() {
    let server = Server::start().await;
    commit(
        &server.log,
        vec![(tx(1), vec![upsert("public.a", 1, json!(1))])],
    )
    .await;
    let response = server.get("/v1/openapi.json").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let doc = response.json();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let mut routes: Vec<&str> = paths.keys().map(String::as_str).collect();
    routes.sort();
    assert_eq!(
        routes,
        [
            "/healthz",
            "/metrics",
            "/readyz",
            "/v1/changes",
            "/v1/collections",
            "/v1/mutations",
            "/v1/openapi.json",
            "/v1/status",
            "/v1/stream",
        ]
    );
    let requests = [
        "/healthz",
        "/metrics",
        "/readyz",
        "/v1/changes",
        "/v1/changes?since=0&limit=1&collections=public.a",
        "/v1/changes?limit=0",
        "/v1/changes?collections=public.nope",
        "/v1/changes?since=1-99",
        "/v1/changes?collections=public.a&where=id%20%3D%20%241&params[1]=1&columns=id",
        "/v1/changes?collections=public.a&where=nope%20%3D%201",
        "/v1/changes?where=id%20%3D%201",
        "/v1/collections",
        "/v1/openapi.json",
        "/v1/status",
        "/v1/stream?since=nonsense",
        "/v1/stream?collections=public.nope",
    ];
    let posts = [
        ("/v1/mutations", "not json"),
        ("/v1/mutations", r#"{"mutations": []}"#),
        (
            "/v1/mutations",
            r#"{"mutations": [{"id": "a", "collection": "public.nope", "op": "delete", "key": {"id": 1}}]}"#,
        ),
    ];
    let mut answers = Vec::new();
    for request in requests {
        answers.push(("get", request, server.get(request).await));
    }
    for (request, body) in posts {
        let response = testkit::http::post(server.addr, request, &[], body)
            .await
            .unwrap();
        answers.push(("post", request, response));
    }
    for (method, request, response) in answers {
        let path = request.split('?').next().unwrap();
        let documented = &paths[path][method]["responses"][response.status.to_string()];
        assert!(
            !documented.is_null(),
            "{request}: {} is not documented",
            response.status
        );
        let documented = match documented["$ref"].as_str() {
            Some(r) => &doc["components"]["responses"][r.rsplit('/').next().unwrap()],
            None => documented,
        };
        let content_type = response.header("content-type").unwrap_or_default();
        let media = content_type.split(';').next().unwrap();
        assert!(
            documented["content"][media].is_object(),
            "{request}: {media} is not documented for {}",
            response.status
        );
    }
}
