//! A small MongoDB wire-protocol server for tests: the real `mongodb` driver (in the tests and
//! in the relay process) talks to it over TCP as if it were a single-node replica set.
//!
//! Emulated (following the OP_MSG, server discovery/monitoring and change-stream specs, and a
//! 7.0 server's behaviour where the relay depends on it):
//! - OP_MSG with section kinds 0 and 1 (the checksum flag is accepted and ignored,
//!   `moreToCome` requests get no reply). Nothing else: the driver sends only OP_MSG.
//! - `hello`/`isMaster` as the primary of replica set `rs0` (`helloOk`, `isWritablePrimary`,
//!   `setName`, `hosts` = its own address, wire versions 0..21, size limits,
//!   `logicalSessionTimeoutMinutes`), or as a secondary without a primary after a step-down
//!   (writes then fail with 10107 NotWritablePrimary, open change-stream `getMore`s with 11602
//!   labelled resumable). No `topologyVersion`, so the driver polls instead of streaming.
//! - `ping`, `buildInfo` (7.0.0 unless a test sets another version), `endSessions`, `insert`,
//!   `update` (`$set`, `$unset`, `$inc` on dotted paths, `$push`, `$pop`, or a replacement
//!   document; `upsert`, `multi`), `delete` (`limit` 0/1), `find` (equality filters on
//!   top-level fields, always in `_id` order, `batchSize`, `limit`), `getMore`, `killCursors`,
//!   `drop`, `dropDatabase`, `create`/`collMod` (`changeStreamPreAndPostImages`),
//!   `renameCollection`, `listCollections` (with its `filter`: equality or `$in` on dotted
//!   paths), and `find` on `local.oplog.rs` (first/last entry's `ts` and `wall`).
//! - Transactions: writes with `autocommit: false` are applied at once but their oplog entries
//!   are held back until `commitTransaction` and then appear together, sharing one
//!   `clusterTime` and carrying `lsid` (`{id, uid}`) and `txnNumber`. `abortTransaction` puts
//!   the collections the transaction wrote back as they were and drops its entries
//!   (`txn_undo`). Replies carry `operationTime` and `$clusterTime`; a taken `_id` is write
//!   error 11000 with `keyPattern`/`keyValue`; `createIndexes` is accepted (not emulated).
//!   Resume tokens start with a clusterTime like a server's (`82` + 8 bytes).
//! - `aggregate` with a `$changeStream` first stage (database- or collection-wide) over an
//!   in-memory oplog: resume tokens (`{_data: hex}`, naming this deployment), a distinct
//!   high-water-mark token before the first event, `postBatchResumeToken` in every batch,
//!   `getMore` that waits for new entries up to `maxTimeMS` (1 s by default),
//!   `resumeAfter`/`startAfter`/`startAtOperationTime`, `fullDocument` (`default`,
//!   `updateLookup`, `whenAvailable`, `required` → 47 without a post-image),
//!   `fullDocumentBeforeChange`, `showExpandedEvents` (only `disambiguatedPaths`), `invalidate`
//!   after a collection stream's collection is dropped or renamed and after `dropDatabase`
//!   for database streams, `$match` stages (`$or`/`$and` of dotted paths compared by equality
//!   or `$in`), events with their fields in a 7.0 server's order and `updateDescription` as it
//!   reports it (dotted `updatedFields`, appends as `arr.<n>`, `truncatedArrays`).
//!   `$changeStreamSplitLargeEvent`: fragments of top-level fields (`_id` and `splitEvent`
//!   first), a stream resumed from a fragment's token starts at the next fragment, 7182500
//!   for a field too large to split, and 10334 for an event over 16 MiB without the stage.
//!   Errors as a server gives them: 286 (`ChangeStreamHistoryLost`) when a resume point fell out
//!   of the oplog window (the newest `window` entries), 136 (`CappedPositionLost`) when a live
//!   cursor's next entry did, 280 (`ChangeStreamFatalError`, "resume token was not found") for
//!   another deployment's token or the token of an event the stream's `$match` leaves out, 43
//!   (`CursorNotFound`) after a cursor's idle timeout. An idle server writes a no-op every 10 s
//!   (`periodicNoopIntervalSecs`), which moves `postBatchResumeToken`s.
//! - Faults and behaviours a test turns on ([`faults`]): drop every open socket, resumable
//!   errors on change-stream `getMore`s, errors on `find` cursors' `getMore`s, change streams
//!   held between fragments or after events (like `failCommand`'s `blockConnection`), an older
//!   version, step-down, cursor idle timeout, the no-op interval, a small oplog window
//!   (`start_with_window`).
//!
//! The modules: `commands` (handshake, CRUD, DDL, cursors), `transactions` (writes in a
//! transaction held back until `commitTransaction`), `updates` (update
//! documents and their `updateDescription`), `change_streams` (aggregate/getMore, tokens,
//! split events), `faults`, `id_order` (the server's `_id` order).
//!
//! Not emulated: authentication, TLS, compression, read/write concerns (accepted and ignored),
//! sessions beyond reading `lsid`, retryable-write deduplication (`txnNumber` outside
//! transactions), transaction isolation and write conflicts, other pipeline stages or `$match` operators in change
//! streams, query operators in CRUD commands, `$pull`/`$addToSet`/array filters and update
//! pipelines, indexes, expanded DDL events (`create`, `createIndexes`, `modify`,
//! `shardCollection`…) and `collectionUUID`, events of other databases' renames, pre-/post-image
//! expiry, sharding and mongos, more than one node (elections, rollback, majority commit,
//! secondaries' reads), and the exact bytes of real resume tokens.

mod change_streams;
mod commands;
mod faults;
mod id_order;
mod transactions;
mod txn_undo;
mod updates;

use commands::run_command;
pub use faults::Hold;
use id_order::IdKey;

use bson::{doc, Bson, DateTime, Document, Timestamp};
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};

const OP_MSG: i32 = 2013;
const MAX_BSON: usize = 16 * 1024 * 1024;
const MAX_MESSAGE: usize = 48_000_000;
const WIRE_VERSION: i32 = 21;
const SET_NAME: &str = "rs0";

/// The server: dropping it stops accepting and closes every connection.
pub struct MongoWire {
    addr: SocketAddr,
    shared: Arc<Shared>,
    kill: broadcast::Sender<()>,
    runtime: Option<tokio::runtime::Runtime>,
}

struct Shared {
    addr: SocketAddr,
    state: Mutex<State>,
    head: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    colls: BTreeMap<String, Coll>,
    oplog: VecDeque<Entry>,
    /// Seq of the newest entry (0 = none yet).
    head: u64,
    window: usize,
    cursors: HashMap<i64, CursorState>,
    /// When each cursor was last used (for idle timeouts).
    cursor_used: HashMap<i64, Instant>,
    /// Cursors a `getMore` is running on: never idle, whatever it waits for.
    cursors_in_use: std::collections::HashSet<i64>,
    /// The clusterTime of the transaction being committed: all its events share it.
    txn_time: Option<Timestamp>,
    next_cursor: i64,
    next_connection: i32,
    /// Faults and behaviours a test asked for ([`faults`]).
    faults: faults::Faults,
    /// Identifies this deployment in its resume tokens: another server's token is unknown here.
    deployment: u32,
    /// Open transactions' oplog entries, held back until their commit ([`transactions`]).
    txns: HashMap<transactions::TxnKey, Vec<Document>>,
    /// Open transactions' collections as they were before their first write ([`txn_undo`]).
    undo: HashMap<transactions::TxnKey, BTreeMap<String, Option<Coll>>>,
    /// Change events sent to clients so far.
    events_sent: std::sync::atomic::AtomicU64,
    boot_secs: u32,
}

#[derive(Default, Clone)]
struct Coll {
    docs: BTreeMap<IdKey, Document>,
    images: bool,
}

/// One oplog entry: the change event without its `_id`, plus the images it may need.
struct Entry {
    seq: u64,
    ts: Timestamp,
    wall: DateTime,
    event: Document,
    pre: Option<Document>,
    post: Option<Document>,
}

enum CursorState {
    Find {
        ns: String,
        docs: VecDeque<Document>,
    },
    Change(ChangeCursor),
}

struct ChangeCursor {
    db: String,
    /// `None` for a database-wide stream.
    coll: Option<String>,
    /// Oplog seq of the next entry to look at.
    next_seq: u64,
    /// Next fragment to return of a split event at `next_seq`.
    next_fragment: u32,
    full_document: String,
    before_change: String,
    split: bool,
    /// `$match` stages, all of which an event must pass.
    filters: Vec<Document>,
    batch_size: usize,
    ns: String,
    invalidated: bool,
    /// Held between two fragments of a split event until the test releases it.
    held: bool,
    /// `showExpandedEvents`: `updateDescription.disambiguatedPaths` (DDL events are not
    /// emulated).
    show_expanded: bool,
}

impl MongoWire {
    /// Starts on a free port with an oplog window of 1,000,000 entries.
    pub fn start() -> MongoWire {
        MongoWire::start_with_window(1_000_000)
    }

    /// Starts on its own runtime (so that tests may block their own threads freely), keeping
    /// only the newest `window` oplog entries.
    pub fn start_with_window(window: usize) -> MongoWire {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mongo-wire")
            .enable_all()
            .build()
            .unwrap();
        // Bound without block_on: tests call this from inside their own runtime.
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let listener = {
            let _context = runtime.enter();
            TcpListener::from_std(std_listener).unwrap()
        };
        let addr = listener.local_addr().unwrap();
        let boot_secs = DateTime::now().timestamp_millis() / 1000;
        let shared = Arc::new(Shared {
            addr,
            state: Mutex::new(State {
                window,
                next_cursor: 1000,
                deployment: rand_u32(),
                boot_secs: boot_secs as u32,
                ..State::default()
            }),
            head: watch::channel(0).0,
        });
        runtime.spawn(faults::write_noops(shared.clone()));
        let (kill, _) = broadcast::channel(4);
        {
            let shared = shared.clone();
            let kill = kill.clone();
            runtime.spawn(async move {
                while let Ok((socket, _)) = listener.accept().await {
                    let _ = socket.set_nodelay(true);
                    let shared = shared.clone();
                    let mut killed = kill.subscribe();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = serve_connection(socket, shared) => {}
                            _ = killed.recv() => {}
                        }
                    });
                }
            });
        }
        MongoWire {
            addr,
            shared,
            kill,
            runtime: Some(runtime),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A connection string the driver accepts for this server.
    pub fn uri(&self) -> String {
        format!(
            "mongodb://{}/?replicaSet={SET_NAME}&serverSelectionTimeoutMS=5000",
            self.addr
        )
    }

    /// Closes every open connection (the listener keeps accepting).
    pub fn drop_connections(&self) {
        let _ = self.kill.send(());
    }

    /// The documents of `db.coll` in `_id` order.
    pub fn documents(&self, ns: &str) -> Vec<Document> {
        let state = self.shared.lock();
        state
            .colls
            .get(ns)
            .map(|c| c.docs.values().cloned().collect())
            .unwrap_or_default()
    }

    /// How many entries the oplog has had (its newest entry's number).
    pub fn oplog_head(&self) -> u64 {
        self.shared.lock().head
    }

    /// Change events sent to clients so far (after `$match`).
    pub fn events_sent(&self) -> u64 {
        let state = self.shared.lock();
        state.events_sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Open cursors, for tests that check the driver killed what it left.
    pub fn open_cursors(&self) -> usize {
        self.shared.lock().cursors.len()
    }
}

impl Drop for MongoWire {
    fn drop(&mut self) {
        let _ = self.kill.send(());
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A different value in each server (seeded from the clock and the address).
fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish() as u32
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

// ---------------------------------------------------------------------------------------------
// Framing

async fn serve_connection(mut socket: TcpStream, shared: Arc<Shared>) {
    let connection_id = {
        let mut state = shared.lock();
        state.next_connection += 1;
        state.next_connection
    };
    loop {
        let mut header = [0u8; 16];
        if socket.read_exact(&mut header).await.is_err() {
            return;
        }
        let len = i32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
        let request_id = i32::from_le_bytes(header[4..8].try_into().unwrap());
        let op_code = i32::from_le_bytes(header[12..16].try_into().unwrap());
        if !(21..=MAX_MESSAGE).contains(&len) || op_code != OP_MSG {
            return;
        }
        let mut body = vec![0u8; len - 16];
        if socket.read_exact(&mut body).await.is_err() {
            return;
        }
        let Some((flags, command)) = parse_op_msg(&body) else {
            return;
        };
        let reply = run_command(&shared, command, connection_id).await;
        if flags & 2 != 0 {
            continue; // moreToCome: the client expects no reply
        }
        let mut payload = Vec::new();
        reply.to_writer(&mut payload).unwrap();
        let total = 16 + 4 + 1 + payload.len();
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(&(total as i32).to_le_bytes());
        out.extend_from_slice(&request_id.wrapping_add(1_000_000).to_le_bytes());
        out.extend_from_slice(&request_id.to_le_bytes());
        out.extend_from_slice(&OP_MSG.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.push(0);
        out.extend_from_slice(&payload);
        if socket.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// Flag bits and the command: the kind-0 body with every kind-1 sequence added as an array.
fn parse_op_msg(body: &[u8]) -> Option<(u32, Document)> {
    let flags = u32::from_le_bytes(body.get(0..4)?.try_into().ok()?);
    let end = if flags & 1 != 0 {
        body.len().checked_sub(4)?
    } else {
        body.len()
    };
    let mut at = 4;
    let mut command: Option<Document> = None;
    let mut sequences = Vec::new();
    while at < end {
        let kind = body[at];
        at += 1;
        let size = i32::from_le_bytes(body.get(at..at + 4)?.try_into().ok()?) as usize;
        let section = body.get(at..at + size)?;
        match kind {
            0 => command = Some(Document::from_reader(&mut &section[..]).ok()?),
            1 => {
                let rest = &section[4..];
                let nul = rest.iter().position(|b| *b == 0)?;
                let name = String::from_utf8(rest[..nul].to_vec()).ok()?;
                let mut docs = &rest[nul + 1..];
                let mut list = Vec::new();
                while !docs.is_empty() {
                    list.push(Bson::Document(Document::from_reader(&mut docs).ok()?));
                }
                sequences.push((name, list));
            }
            _ => return None,
        }
        at += size;
    }
    let mut command = command?;
    for (name, list) in sequences {
        command.insert(name, list);
    }
    Some((flags, command))
}
