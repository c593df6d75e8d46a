//! For the HTTP tests: an in-process server over a log in a temp dir, a raw HTTP/1.1
//! client and a Server-Sent Events client over `TcpStream` (no HTTP client dependency).

use deltarelay::http::{self, AppState};
use deltarelay::log::Log;
use deltarelay::record::{Change, Op, Row, TxMeta};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;

pub struct Server {
    pub addr: SocketAddr,
    pub log: Log,
    pub shutdown: watch::Sender<bool>,
    pub served: tokio::task::JoinHandle<std::io::Result<()>>,
    pub dir: tempfile::TempDir,
}

impl Server {
    pub async fn start() -> Server {
        Server::start_with(Default::default(), http::HttpOptions::default()).await
    }

    /// A server over a log with these row-scope columns, with auth and limits as `options` say.
    pub async fn start_with(
        scopes: deltarelay::log::scope::ScopeColumns,
        options: http::HttpOptions,
    ) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open_scoped(dir.path(), scopes).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, stop) = watch::channel(false);
        let state = AppState {
            log: log.clone(),
            sources: Vec::new(),
        };
        let served = tokio::spawn(http::serve_with(listener, state, options, stop));
        Server {
            addr,
            log,
            shutdown,
            served,
            dir,
        }
    }

    pub fn epoch(&self) -> u32 {
        self.log.epoch()
    }

    pub fn head(&self) -> u64 {
        *self.log.head().borrow()
    }

    pub async fn get(&self, path: &str) -> Response {
        get(self.addr, path, &[]).await
    }
}

// ---------------------------------------------------------------- building a log

pub fn row(value: Value) -> Row {
    value.as_object().cloned().unwrap()
}

pub fn tx(id: u64) -> Arc<TxMeta> {
    tx_at(id, "2025-01-15T11:00:00.000000Z")
}

pub fn tx_at(id: u64, commit_time: &str) -> Arc<TxMeta> {
    Arc::new(TxMeta {
        source: "pg".into(),
        commit_time: commit_time.into(),
        id: id.to_string(),
        position: format!("0/{id:X}"),
    })
}

pub fn upsert(collection: &str, id: i64, v: Value) -> Change {
    Change {
        collection: collection.into(),
        op: Op::Update,
        key: Some(row(json!({ "id": id }))),
        after: Some(row(json!({ "id": id, "v": v }))),
        ..Change::default()
    }
}

pub fn delete(collection: &str, id: i64) -> Change {
    Change {
        collection: collection.into(),
        op: Op::Delete,
        key: Some(row(json!({ "id": id }))),
        ..Change::default()
    }
}

/// Commits upstream transactions (each a list of changes) in one local transaction.
pub async fn commit(log: &Log, txs: Vec<(Arc<TxMeta>, Vec<Change>)>) {
    let mut txn = log.begin().await.unwrap();
    let position = txs.last().map(|(t, _)| t.id.clone()).unwrap_or_default();
    for (meta, changes) in txs {
        txn.append(meta, changes).await.unwrap();
    }
    txn.commit("pg", position).await.unwrap();
}

/// The state a client builds by applying `records` in order: (collection, key) → after.
pub type State = BTreeMap<(String, String), Value>;

pub fn apply(state: &mut State, record: &Value) {
    let id = (
        record["collection"].as_str().unwrap().to_string(),
        record["key"].to_string(),
    );
    match record["op"].as_str().unwrap() {
        "insert" | "update" => {
            state.insert(id, record["after"].clone());
        }
        "delete" => {
            state.remove(&id);
        }
        other => panic!("unexpected op {other}"),
    }
}

/// The log's current state and its records, read directly.
pub fn log_records(log: &Log) -> Vec<Value> {
    log.reader()
        .unwrap()
        .entries_after(0, usize::MAX >> 1)
        .unwrap()
        .into_iter()
        .map(|e| serde_json::from_str(&e.record).unwrap())
        .collect()
}

pub fn seq_of(cursor: &str) -> u64 {
    cursor.split_once('-').unwrap().1.parse().unwrap()
}

// ---------------------------------------------------------------- raw HTTP client

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

async fn send_request(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

async fn read_head(reader: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>) {
    try_read_head(reader).await.expect("a response head")
}

/// The status and headers, or `None` when the connection ends or errs before they are whole.
async fn try_read_head(reader: &mut BufReader<TcpStream>) -> Option<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    reader.read_line(&mut line).await.ok()?;
    let status: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        let (name, value) = trimmed.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    Some((status, headers))
}

pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response {
    let stream = send_request(addr, path, headers).await;
    let mut reader = BufReader::new(stream);
    let (status, headers) = read_head(&mut reader).await;
    let mut raw = Vec::new();
    reader.read_to_end(&mut raw).await.unwrap();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(&raw) } else { raw };
    Response {
        status,
        headers,
        body: String::from_utf8(body).unwrap(),
    }
}

/// A `POST` with a body (`Content-Type: application/json` unless `headers` say otherwise).
/// `None` when the connection ends before a response head (e.g. the relay died).
pub async fn post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<Response> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
    {
        request.push_str("Content-Type: application/json\r\n");
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    // A server may answer (413) before reading everything; a failed write is not an error.
    let _ = stream.write_all(body.as_bytes()).await;
    let mut reader = BufReader::new(stream);
    let (status, headers) = try_read_head(&mut reader).await?;
    let mut raw = Vec::new();
    reader.read_to_end(&mut raw).await.ok()?;
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(&raw) } else { raw };
    Some(Response {
        status,
        headers,
        body: String::from_utf8(body).ok()?,
    })
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..line_end]).unwrap().trim(), 16)
            .unwrap();
        raw = &raw[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

// ---------------------------------------------------------------- SSE client

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

/// The record a `change` event carries; its `id` must be the record's cursor.
pub fn record_of(event: &Event) -> Value {
    assert_eq!(event.event, "change", "{event:?}");
    let record: Value = serde_json::from_str(&event.data).unwrap();
    assert_eq!(
        event.id.as_deref(),
        record["cursor"].as_str(),
        "id is the record's cursor"
    );
    record
}

pub struct SseClient {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
    chunked: bool,
    /// Decoded body bytes not parsed yet.
    pending: Vec<u8>,
    pub comments: usize,
    pub retry: Option<u64>,
    pub ended: bool,
    /// `event: heartbeat`s received; they are returned by `next` only when this is set
    /// (tests of other things read changes and `ready` only).
    pub heartbeats: usize,
    pub keep_heartbeats: bool,
}

impl SseClient {
    pub async fn connect(addr: SocketAddr, path: &str, last_event_id: Option<&str>) -> SseClient {
        let mut headers = vec![("Accept", "text/event-stream")];
        if let Some(id) = last_event_id {
            headers.push(("Last-Event-ID", id));
        }
        SseClient::connect_with(addr, path, &headers).await
    }

    /// Connects with these request headers.
    pub async fn connect_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> SseClient {
        let stream = send_request(addr, path, headers).await;
        SseClient::over(stream).await
    }

    pub async fn over(stream: TcpStream) -> SseClient {
        SseClient::try_over(stream).await.expect("a response head")
    }

    /// Like `over`, but `None` when the response head does not arrive whole (the server
    /// went away); later read errors end the stream instead of panicking.
    pub async fn try_over(stream: TcpStream) -> Option<SseClient> {
        let mut reader = BufReader::with_capacity(64 * 1024, stream);
        let (status, headers) = try_read_head(&mut reader).await?;
        let chunked = headers
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
        Some(SseClient {
            status,
            headers,
            reader,
            chunked,
            pending: Vec::new(),
            comments: 0,
            retry: None,
            ended: false,
            heartbeats: 0,
            keep_heartbeats: false,
        })
    }

    /// Reads more of the body into `pending`; false at its end.
    async fn fill(&mut self) -> bool {
        if self.ended {
            return false;
        }
        if !self.chunked {
            let mut buf = [0u8; 16 * 1024];
            let n = self.reader.read(&mut buf).await.unwrap_or(0);
            self.pending.extend_from_slice(&buf[..n]);
            self.ended = n == 0;
            return n > 0;
        }
        let mut line = String::new();
        if self.reader.read_line(&mut line).await.unwrap_or(0) == 0 {
            self.ended = true;
            return false;
        }
        // A connection cut mid-chunk ends the stream.
        let size = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
        if size == 0 {
            self.ended = true;
            return false;
        }
        let start = self.pending.len();
        self.pending.resize(start + size + 2, 0);
        if self
            .reader
            .read_exact(&mut self.pending[start..])
            .await
            .is_err()
        {
            self.pending.truncate(start);
            self.ended = true;
            return false;
        }
        self.pending.truncate(start + size);
        true
    }

    /// The next event (comments, `retry:` and heartbeats are recorded, not returned, unless
    /// `keep_heartbeats`); `None` at the end.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            while let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.pending.drain(..end + 2).collect();
                let text = String::from_utf8(block).unwrap();
                let mut event = Event {
                    id: None,
                    event: "message".into(),
                    data: String::new(),
                };
                let mut has_data = false;
                for line in text.lines() {
                    if line.starts_with(':') {
                        self.comments += 1;
                        continue;
                    }
                    let (field, value) = line.split_once(": ").unwrap_or((line, ""));
                    match field {
                        "id" => event.id = Some(value.to_string()),
                        "event" => event.event = value.to_string(),
                        "data" => {
                            if has_data {
                                event.data.push('\n');
                            }
                            event.data.push_str(value);
                            has_data = true;
                        }
                        "retry" => self.retry = value.parse().ok(),
                        "" => {}
                        other => panic!("unexpected SSE field {other:?}"),
                    }
                }
                if event.event == "heartbeat" {
                    self.heartbeats += 1;
                    if !self.keep_heartbeats {
                        continue;
                    }
                }
                if has_data {
                    return Some(event);
                }
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    pub async fn next_within(&mut self, limit: Duration) -> Option<Event> {
        tokio::time::timeout(limit, self.next())
            .await
            .expect("no SSE event in time")
    }
}

/// The value of metric `name` (no labels) in Prometheus text `metrics`; 0 when absent.
pub fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
}
