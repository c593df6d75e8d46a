//! A real browser's `EventSource` on `/v1/stream`: headless Chromium (Debian package
//! `chromium`) loads a page from a small test server, which also reverse-proxies `/v1/stream` to
//! the relay (same origin, so no CORS is needed). The page reports back to the test server with
//! `fetch`: `/loaded` when the stream's `ready` event arrives, `/seen?data=...` for each change.
//! A row committed in Postgres after `/loaded` must come back through the browser.
//!
//! Skipped (with a message) when `/usr/bin/chromium` is absent, unless `CI=true` (then it
//! fails).

use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use testkit::browser::{chromium_available, Browser};
use testkit::pg::PgServer;
use testkit::relay::start_ready_relay;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>deltarelay EventSource</title></head>
<body><ul id="log"></ul>
<script>
const es = new EventSource('/v1/stream');
es.addEventListener('ready', () => fetch('/loaded'));
es.addEventListener('change', (e) => {
  const li = document.createElement('li');
  li.textContent = e.data;
  document.getElementById('log').appendChild(li);
  fetch('/seen?id=' + encodeURIComponent(e.lastEventId) + '&data=' + encodeURIComponent(e.data));
});
es.onerror = () => fetch('/error');
</script></body></html>
"#;

/// What the page told the test server.
#[derive(Debug)]
enum Report {
    Loaded,
    Seen { id: String, data: String },
    Error,
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| percent_decode(v))
}

/// One connection to the test server: serves the page and the reports, proxies `/v1/...`.
async fn serve_one(
    mut client: TcpStream,
    relay: SocketAddr,
    reports: mpsc::UnboundedSender<Report>,
) {
    let mut reader = BufReader::new(&mut client);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        head.push_str(&line);
        if line == "\r\n" || line == "\n" {
            break;
        }
    }
    // GET requests only: nothing follows the head.
    drop(reader);
    let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    if path.starts_with("/v1/") {
        let mut upstream = TcpStream::connect(relay).await.unwrap();
        upstream.write_all(head.as_bytes()).await.unwrap();
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        return;
    }
    let (status, content_type, body) = match path {
        "/" => ("200 OK", "text/html; charset=utf-8", PAGE),
        "/loaded" => {
            let _ = reports.send(Report::Loaded);
            ("200 OK", "text/plain", "ok")
        }
        "/seen" => {
            let _ = reports.send(Report::Seen {
                id: query_param(query, "id").unwrap_or_default(),
                data: query_param(query, "data").unwrap_or_default(),
            });
            ("200 OK", "text/plain", "ok")
        }
        "/error" => {
            let _ = reports.send(Report::Error);
            ("200 OK", "text/plain", "ok")
        }
        _ => ("404 Not Found", "text/plain", "not found"),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(response.as_bytes()).await;
    let _ = client.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_eventsource_receives_a_change_committed_after_the_page_loaded() {
    if !chromium_available() {
        return;
    }
    let started = Instant::now();

    let pg = PgServer::start();
    pg.psql(
        "app",
        "CREATE TABLE items (id int PRIMARY KEY, name text, qty int, flag bool)",
    );
    let dir = tempfile::tempdir().unwrap();
    let (mut relay, relay_addr) = start_ready_relay(&pg.url("app"), dir.path(), &["public.items"]);

    // The page's server (and proxy to the relay).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_addr = listener.local_addr().unwrap();
    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            tokio::spawn(serve_one(socket, relay_addr, reports_tx.clone()));
        }
    });

    let profile = tempfile::tempdir().unwrap();
    let browser_log = dir.path().join("chromium.log");
    let browser = Browser::open(
        &format!("http://{page_addr}/"),
        profile.path(),
        &browser_log,
        &[],
    );
    let browser_output = || std::fs::read_to_string(&browser_log).unwrap_or_default();

    // The page opens the stream and signals `ready` (the log is empty: nothing to replay).
    match tokio::time::timeout(Duration::from_secs(60), reports.recv()).await {
        Ok(Some(Report::Loaded)) => {}
        Ok(Some(Report::Seen { data, .. })) => panic!("a change before any commit: {data}"),
        Ok(Some(Report::Error)) => panic!("EventSource error before ready"),
        Ok(None) | Err(_) => panic!(
            "the page did not report `ready` in time\nchromium:\n{}",
            browser_output()
        ),
    }
    println!(
        "browser: page loaded and stream ready after {:?}",
        started.elapsed()
    );

    // Committed after the page loaded.
    let committed = Instant::now();
    pg.psql(
        "app",
        "INSERT INTO items VALUES (2, 'committed after the page loaded', 42, true)",
    );
    let (id, data) = loop {
        match tokio::time::timeout(Duration::from_secs(30), reports.recv()).await {
            Ok(Some(Report::Seen { id, data })) => break (id, data),
            Ok(Some(other)) => println!("browser: {other:?}"),
            Ok(None) | Err(_) => panic!(
                "the change did not reach the browser\nchromium:\n{}\nrelay:\n{}",
                browser_output(),
                relay.output()
            ),
        }
    };
    println!(
        "browser: change reached the page and came back {:?} after the commit",
        committed.elapsed()
    );
    let record: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(record["collection"], "public.items");
    assert_eq!(record["op"], "insert");
    assert_eq!(
        record["after"],
        json!({"id": 2, "name": "committed after the page loaded", "qty": 42, "flag": true})
    );
    assert_eq!(
        record["cursor"].as_str(),
        Some(id.as_str()),
        "lastEventId is the cursor"
    );
    drop(browser);
    relay.assert_running();
    assert_eq!(relay.terminate(), Some(0));
    println!("browser: total {:?}", started.elapsed());
}
