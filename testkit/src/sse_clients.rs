//! Many SSE clients at once, for the fan-out benchmarks: each counts the change events it
//! reads, and a few sampled ones report every event's key and arrival time for latency.

use crate::bench::{data_lines, key_id, latencies_ms, read_sse, Acked};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

/// Clients connecting at the same time (the rest wait for their `ready` events).
const CONNECTING: usize = 256;

/// The connected clients; dropping them closes their connections.
pub struct SseClients {
    sampled: usize,
    counters: Vec<Arc<AtomicU64>>,
    samples: Vec<mpsc::UnboundedReceiver<(i64, Instant)>>,
    tasks: Vec<JoinHandle<()>>,
}

impl SseClients {
    /// No clients yet; up to `sampled` of those connected later are timed.
    pub fn new(sampled: usize) -> SseClients {
        SseClients {
            sampled,
            counters: Vec::new(),
            samples: Vec::new(),
            tasks: Vec::new(),
        }
    }

    /// Connects clients until there are `n`, round-robin over `addrs`, each from its node's
    /// log head, and waits until each has its `ready` event.
    pub async fn grow_to(&mut self, addrs: &[SocketAddr], n: usize) {
        let mut heads = Vec::new();
        for &addr in addrs {
            let status = crate::http::get(addr, "/v1/status", &[]).await.json();
            let head = status["log"]["head_cursor"]
                .as_str()
                .expect("status has log.head_cursor")
                .to_string();
            heads.push(head);
        }
        let gate = Arc::new(Semaphore::new(CONNECTING));
        let (ready_tx, mut ready_rx) = mpsc::channel::<()>(n.max(1));
        let adding = n.saturating_sub(self.counters.len());
        for i in 0..adding {
            let counter = Arc::new(AtomicU64::new(0));
            self.counters.push(counter.clone());
            let every = (adding / self.sampled.max(1)).max(1);
            let sample = if self.samples.len() < self.sampled && i % every == 0 {
                let (tx, rx) = mpsc::unbounded_channel();
                self.samples.push(rx);
                Some(tx)
            } else {
                None
            };
            let permit = gate.clone().acquire_owned().await.expect("semaphore");
            let ready = ready_tx.clone();
            let node = i % addrs.len();
            let (addr, path) = (addrs[node], format!("/v1/stream?since={}", heads[node]));
            self.tasks.push(tokio::spawn(async move {
                const CHANGE: &[u8] = b"event: change\n";
                read_sse(addr, &path, ready, permit, |lines, now| {
                    let changes = memchr::memmem::find_iter(lines, CHANGE).count() as u64;
                    if changes > 0 {
                        counter.fetch_add(changes, Ordering::Relaxed);
                    }
                    if let Some(sample) = &sample {
                        for id in data_lines(lines).filter_map(key_id) {
                            let _ = sample.send((id, now));
                        }
                    }
                })
                .await
            }));
        }
        drop(ready_tx);
        for _ in 0..adding {
            ready_rx
                .recv()
                .await
                .expect("a client ended before its ready event");
        }
    }

    /// Change events delivered to all clients so far.
    pub fn delivered(&self) -> u64 {
        self.counters
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Waits until `expected` events have been delivered in all; panics when delivery makes
    /// no progress for `stall`, or when more arrive than expected.
    pub async fn wait_for(&self, expected: u64, stall: Duration) {
        let mut last = self.delivered();
        let mut progress = Instant::now();
        while last < expected {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let now = self.delivered();
            if now > last {
                last = now;
                progress = Instant::now();
            }
            assert!(
                progress.elapsed() < stall,
                "delivery stalled at {last} of {expected} events"
            );
        }
        assert_eq!(last, expected, "more events delivered than committed");
    }

    /// Milliseconds from acknowledgement to arrival of every row in `acks`, on every sampled
    /// client (each must have got them all).
    pub fn latencies(&mut self, acks: &[Acked]) -> Vec<f64> {
        let mut all = Vec::new();
        for sample in &mut self.samples {
            let mut got = Vec::new();
            while let Ok(arrival) = sample.try_recv() {
                got.push(arrival);
            }
            let (values, missing) = latencies_ms(acks, &got);
            assert_eq!(missing, 0, "a sampled client missed rows");
            all.extend(values);
        }
        all
    }
}

impl Drop for SseClients {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
