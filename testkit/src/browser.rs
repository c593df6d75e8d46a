//! Headless Chromium (Debian's `chromium`) for the browser tests, and a minimal DevTools-protocol
//! client ([`Cdp`]) to read the page a user would see.

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Whether Chromium is there; when absent the test should return, skipped (see
/// [`crate::require`]: under `CI=true` its absence fails the test).
pub fn chromium_available() -> bool {
    crate::require(
        Path::new(CHROMIUM).exists(),
        &format!("{CHROMIUM} is absent (apt-get install chromium)"),
    )
}

/// Chromium in its own process group, killed (the whole group) on drop.
pub struct Browser(Child);

impl Browser {
    /// Opens `url` headless with a fresh profile in `profile` and remote debugging on a free
    /// port (written to `profile/DevToolsActivePort`); stderr goes to `log`.
    pub fn open(url: &str, profile: &Path, log: &Path, extra_args: &[&str]) -> Browser {
        let child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--remote-debugging-port=0",
            ])
            .args(extra_args)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("create the browser log"))
            .process_group(0)
            .spawn()
            .expect("start chromium");
        Browser(child)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The wrapper script /usr/bin/chromium does not exec: end its whole process group.
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

/// A DevTools-protocol session over a WebSocket (RFC 6455, text frames only).
pub struct Cdp {
    stream: TcpStream,
    next_id: u64,
}

impl Cdp {
    /// `ws_url`: `ws://127.0.0.1:PORT/devtools/page/ID`.
    pub fn connect(ws_url: &str) -> Cdp {
        let rest = ws_url.strip_prefix("ws://").expect("ws:// URL");
        let (host, path) = rest.split_once('/').expect("ws URL path");
        let mut stream = TcpStream::connect(host).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        // No Origin header: Chromium admits origin-less DevTools clients.
        write!(
            stream,
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "no upgrade: {head}");
        Cdp { stream, next_id: 1 }
    }

    fn send_text(&mut self, text: &str) {
        let payload = text.as_bytes();
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        let mut frame = vec![0x81u8];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).unwrap();
    }

    /// The next complete text message.
    fn recv_text(&mut self) -> String {
        let mut message = Vec::new();
        loop {
            let mut head = [0u8; 2];
            self.stream.read_exact(&mut head).unwrap();
            let fin = head[0] & 0x80 != 0;
            let opcode = head[0] & 0x0f;
            let len = match head[1] & 0x7f {
                126 => {
                    let mut b = [0u8; 2];
                    self.stream.read_exact(&mut b).unwrap();
                    u16::from_be_bytes(b) as usize
                }
                127 => {
                    let mut b = [0u8; 8];
                    self.stream.read_exact(&mut b).unwrap();
                    u64::from_be_bytes(b) as usize
                }
                n => n as usize,
            };
            let mut payload = vec![0u8; len];
            self.stream.read_exact(&mut payload).unwrap();
            match opcode {
                0 | 1 => message.extend_from_slice(&payload),
                8 => panic!("DevTools closed the connection"),
                _ => continue, // ping/pong/binary: not used by DevTools here
            }
            if fin {
                return String::from_utf8(message).unwrap();
            }
        }
    }

    /// Calls `method` and returns its `result` (events in between are skipped).
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send_text(&json!({"id": id, "method": method, "params": params}).to_string());
        loop {
            let message: Value = serde_json::from_str(&self.recv_text()).unwrap();
            if message["id"] == json!(id) {
                assert!(message.get("error").is_none(), "{method}: {message}");
                return message["result"].clone();
            }
        }
    }

    /// Evaluates a JavaScript expression in the page; its value as JSON.
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        result["result"]["value"].clone()
    }

    pub fn eval_until(&mut self, what: &str, expression: &str, check: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let value = self.eval(expression);
            if check(&value) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {value}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A `GET` to Chromium's DevTools HTTP endpoint (HTTP/1.1; it keeps the connection open, so
/// read exactly Content-Length bytes); the body.
fn devtools_get(addr: &str, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).ok()?;
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))?
        .trim()
        .parse()
        .ok()?;
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).ok()?;
    String::from_utf8(body).ok()
}

/// The DevTools WebSocket URL of the page showing `url`, once Chromium has opened it.
pub fn page_target(profile: &Path, url: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let port = std::fs::read_to_string(profile.join("DevToolsActivePort"))
            .ok()
            .and_then(|t| t.lines().next().map(str::to_string));
        if let Some(list) = port.and_then(|p| devtools_get(&format!("127.0.0.1:{p}"), "/json/list"))
        {
            let targets: Vec<Value> = serde_json::from_str(&list).unwrap_or_default();
            if let Some(t) = targets
                .iter()
                .find(|t| t["type"] == "page" && t["url"].as_str() == Some(url))
            {
                return t["webSocketDebuggerUrl"].as_str().unwrap().to_string();
            }
        }
        assert!(Instant::now() < deadline, "Chromium did not open {url}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
