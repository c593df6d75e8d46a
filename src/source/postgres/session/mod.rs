//! One Postgres source: connect, check, stream the slot into the log, acknowledge, reconnect.

use super::ack::AckTracker;
use super::catalog::{self, CatalogError, TypeCache};
use super::changes::{ShapeError, TableShape};
use super::config::PostgresConfig;
use super::copy::{CopiedTables, Copier, CopyError};
use super::filters::TableSpec;
use super::partitions::{self, PartitionSets};
use super::pgoutput::{self, DecodeError, PgOutputMessage, Relation};
use super::replication::{
    ReplicationConnection, ReplicationError, ReplicationMessage, ReplicationStream,
};
use super::tables;
use super::tls::PgTls;
use super::write::PgWriter;
use super::Lsn;
use crate::log::{Log, LogError, LogTxn};
use crate::record::{Change, Op, TxMeta};
use crate::source::logged::LoggedThrough;
use crate::source::{CopyState, ErrorKind, Freshness, Source, SourceStatus, UnsyncedTable};
use crate::telemetry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Changes handed to the log writer per message.
const APPEND_BATCH: usize = 1000;
/// A local commit is made once this many changes, or this much time, has gathered, even if more
/// upstream transactions are already waiting (group commit amortizes the fsync otherwise).
const GROUP_MAX_CHANGES: usize = 20_000;
const GROUP_MAX_AGE: Duration = Duration::from_millis(20);
/// Postgres expects a standby status update at least this often (wal_sender_timeout is 60 s).
const STATUS_INTERVAL: Duration = Duration::from_secs(5);

/// Session parameters of the replication and copy connections: they fix the text form of
/// values, so that streamed and copied rows read the same.
const SESSION_PARAMS: &[(&str, &str)] = &[
    ("client_encoding", "UTF8"),
    ("DateStyle", "ISO, MDY"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
    ("IntervalStyle", "postgres"),
];

mod error;
mod open;
mod source;

use error::bounded;
pub use error::SourceError;
use source::{wait_for_copy, CopyTask};

pub struct PostgresSource {
    name: Arc<str>,
    pg_config: tokio_postgres::Config,
    tls: PgTls,
    slot: String,
    publication: String,
    tables: Vec<String>,
    all_tables: bool,
    config: PostgresConfig,
    /// The tables' column lists and row filters as the last session resolved them.
    specs: std::sync::Mutex<Arc<BTreeMap<String, TableSpec>>>,
    /// How long a connection may stay silent (see `SourceConfig::replication_timeout`).
    timeout: Duration,
    log: Log,
    status: Arc<watch::Sender<SourceStatus>>,
    /// How far upstream is logged, for writers waiting to read their writes.
    logged: Arc<LoggedThrough>,
}

impl PostgresSource {
    pub fn new(config: &PostgresConfig, log: Log) -> Result<PostgresSource, SourceError> {
        let (pg_config, tls) = super::tls::parse(&config.url).map_err(|e| SourceError::Config {
            source_name: config.name.clone(),
            message: e.to_string(),
        })?;
        let status = SourceStatus {
            name: config.name.clone(),
            kind: "postgres",
            slot: Some(config.slot.clone()),
            // Not connected yet: what upstream holds is not known to be in the log.
            behind_since_ms: Some(crate::source::now_ms()),
            ..SourceStatus::default()
        };
        Ok(PostgresSource {
            name: config.name.as_str().into(),
            pg_config,
            tls,
            slot: config.slot.clone(),
            publication: config.publication.clone(),
            all_tables: config.all_tables,
            timeout: config.replication_timeout,
            tables: config.tables.clone(),
            config: config.clone(),
            specs: Default::default(),
            log,
            status: Arc::new(watch::channel(status).0),
            logged: Arc::default(),
        })
    }

    pub fn status_receiver(&self) -> watch::Receiver<SourceStatus> {
        self.status.subscribe()
    }

    /// This source's writer (`POST /v1/mutations`), on its own connection pool.
    pub fn writer(&self, writes: &crate::config::WritesConfig) -> PgWriter {
        PgWriter::new(
            &self.name,
            self.pg_config.clone(),
            self.tls.clone(),
            self.tables.clone(),
            self.all_tables,
            writes,
            self.logged.clone(),
        )
    }

    async fn one_session(&self, shutdown: &mut watch::Receiver<bool>) -> Result<(), SourceError> {
        // Opening may run a long first copy: a stop request must not wait for it.
        let mut session = tokio::select! {
            opened = Session::open(self) => opened?,
            _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
        };
        match session.stream_changes(shutdown).await {
            Ok(()) => {
                // CopyDone, so the server sees a clean end rather than a dropped connection.
                if let Err(e) = session.stream.close().await {
                    tracing::debug!(source = %self.name, error = %e, "closing the replication stream");
                }
                Ok(())
            }
            Err(e) => {
                tracing::debug!(source = %self.name, error = %e, "abandoning the open local transaction");
                session.abandon().await;
                Err(e)
            }
        }
    }
}

impl Source for PostgresSource {
    type Error = SourceError;

    fn status(&self) -> &watch::Sender<SourceStatus> {
        &self.status
    }

    async fn session(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<(), SourceError> {
        self.one_session(shutdown).await
    }

    fn classify(error: &SourceError) -> ErrorKind {
        error.kind()
    }
}

/// The upstream transaction being received.
struct Upstream {
    meta: Arc<TxMeta>,
    final_lsn: Lsn,
    /// Rows of append-only tables so far in this transaction (their synthetic keys).
    append_rows: u64,
    buffer: Vec<Change>,
    /// Already in the log (Postgres resent it after a restart).
    skip: bool,
}

struct Session<'a> {
    source: &'a PostgresSource,
    client: tokio_postgres::Client,
    stream: ReplicationStream,
    types: TypeCache,
    /// Tables by relation id; `None` for relations we do not sync.
    tables: HashMap<u32, Option<TableShape>>,
    /// Per-table ingest counters, by relation id.
    ingested: HashMap<u32, metrics::Counter>,
    synced: HashSet<String>,
    ack: AckTracker,
    /// The position the log holds durably.
    durable: Lsn,
    upstream: Option<Upstream>,
    /// The open local transaction, possibly spanning several upstream transactions.
    local: Option<LogTxn>,
    local_changes: usize,
    local_started: Option<Instant>,
    /// End LSN of the last upstream commit appended to `local`.
    pending_end: Option<Lsn>,
    /// The furthest WAL end upstream has reported.
    upstream_end: Lsn,
    /// A copy of added (or unfinished) tables running beside the stream.
    copy_task: Option<CopyTask>,
    /// When the replication connection last delivered a message.
    heard: Instant,
    /// The synced partitioned tables' partitions as last seen (watched for attach/detach).
    partitions: PartitionSets,
    /// Tables whose columns or row filter changed at this start: their changes committed
    /// before this position carry the old spec and are dropped (the copy covers them).
    respec: HashMap<String, Lsn>,
    /// Since when the log lacks something upstream committed (`lag_ms` for clients).
    fresh: Freshness,
    /// The append-only tables wait until the slot has passed this position (their
    /// publication was created after it): the session then reconnects to stream them.
    append_wait: Option<Lsn>,
}

impl<'a> Session<'a> {
    async fn stream_changes(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), SourceError> {
        let mut status_timer = tokio::time::interval(STATUS_INTERVAL.min(self.source.timeout / 4));
        let mut partition_timer = tokio::time::interval(partitions::POLL_EVERY);
        loop {
            // Work through what has already arrived before touching the network: a burst of
            // upstream transactions becomes one local commit.
            while let Some(message) = self.stream.next_buffered()? {
                self.handle(message).await?;
                if self.upstream.is_none() && self.group_is_full() {
                    self.commit_local().await?;
                }
            }
            if self.upstream.is_none() {
                self.commit_local().await?;
            }
            if *shutdown.borrow() {
                return self.finish().await;
            }
            tokio::select! {
                biased;
                _ = shutdown.changed() => return self.finish().await,
                message = self.stream.next_message() => match message? {
                    Some(message) => self.handle(message).await?,
                    None => return Err(SourceError::StreamEnded),
                },
                _ = status_timer.tick() => self.keep_alive().await?,
                _ = partition_timer.tick(), if !self.partitions.is_empty() => self.watch_partitions().await?,
                // A writer waits to read its write: ask where upstream's WAL stands.
                _ = self.source.logged.nudged() => self.send_status(true).await?,
                copied = wait_for_copy(&mut self.copy_task) => {
                    self.copy_task = None;
                    let copied = copied?;
                    tracing::info!(source = %self.source.name, tables = copied.tables.len(), "every table is copied");
                }
            }
        }
    }

    /// A partition attached or detached changes the root's rows without row changes: copy
    /// the root again beside the stream (one copy at a time; a change seen meanwhile waits).
    async fn watch_partitions(&mut self) -> Result<(), SourceError> {
        if self.copy_task.is_some() {
            return Ok(());
        }
        let now = bounded(
            self.source.timeout,
            "reading partitions",
            self.partitions.reread(&self.client),
        )
        .await?;
        let changed = now.changed_since(&self.partitions);
        if changed.is_empty() {
            return Ok(());
        }
        tracing::info!(source = %self.source.name, tables = ?changed, "partitions attached or detached: copying those tables again");
        let copied = match self
            .source
            .log
            .position(&CopiedTables::key(&self.source.name))
            .await?
        {
            Some(text) => CopiedTables::parse(&text)?,
            None => CopiedTables::default(),
        };
        let (task, snapshot_at) = self
            .source
            .copy_beside_stream(changed.clone(), copied, now.clone())
            .await?;
        self.copy_task = Some(task);
        if let Some(at) = snapshot_at {
            for table in changed
                .iter()
                .filter(|t| self.source.config.is_append_only(t))
            {
                self.respec.insert(table.clone(), at);
            }
        }
        self.partitions = now;
        Ok(())
    }

    fn group_is_full(&self) -> bool {
        self.local_changes >= GROUP_MAX_CHANGES
            || self
                .local_started
                .is_some_and(|t| t.elapsed() >= GROUP_MAX_AGE)
    }

    /// The periodic status update, which also watches the connection: Postgres sends nothing
    /// on an idle slot we have acknowledged, so after half the timeout in silence we ask it
    /// to answer, and after the whole timeout we give the connection up.
    async fn keep_alive(&mut self) -> Result<(), SourceError> {
        if let Some(from) = self.append_wait {
            if self.upstream.is_none() && self.ack.flushed() >= from {
                self.commit_local().await?;
                self.send_status(false).await?;
                return Err(SourceError::Rejoin);
            }
        }
        if self.upstream.is_none()
            && self.pending_end.is_none()
            && self.ack.flushed() >= self.upstream_end
        {
            // An idle, caught-up slot may get no keepalive for long.
            self.fresh.caught_up(&self.source.status);
        }
        let limit = self.source.timeout;
        let silent = self.heard.elapsed();
        if silent >= limit {
            return Err(SourceError::Timeout {
                what: "streaming",
                after: limit,
            });
        }
        // Waiting for the slot to pass a new publication: ask for an answer at every update, so
        // that an idle slot's position moves on now rather than after half the timeout.
        let reply = silent >= limit / 2 || self.append_wait.is_some();
        bounded(limit, "sending a status update", self.send_status(reply)).await
    }

    async fn handle(&mut self, message: ReplicationMessage) -> Result<(), SourceError> {
        self.heard = Instant::now();
        match message {
            ReplicationMessage::XLogData { data, wal_end, .. } => {
                self.note_upstream_end(wal_end);
                self.handle_pgoutput(pgoutput::decode(data)?).await
            }
            ReplicationMessage::Keepalive {
                wal_end,
                reply_requested,
                ..
            } => {
                self.note_upstream_end(wal_end);
                // Nothing received is still unlogged: every commit before `wal_end` is logged.
                if self.upstream.is_none() && self.pending_end.is_none() {
                    self.source.logged.advance(wal_end.max(self.durable).0);
                }
                let before = self.ack.flushed();
                self.ack.on_keepalive(wal_end);
                self.publish_progress();
                // Reply at once when asked, and when an idle slot can move forward: Postgres
                // sends these keepalives only while our reported position lags its own.
                if reply_requested || self.ack.flushed() > before {
                    self.send_status(false).await?;
                }
                Ok(())
            }
        }
    }

    async fn handle_pgoutput(&mut self, message: PgOutputMessage) -> Result<(), SourceError> {
        match message {
            PgOutputMessage::Begin {
                final_lsn,
                commit_time,
                xid,
            } => {
                if self.upstream.is_some() {
                    return Err(SourceError::Protocol(format!(
                        "Begin of {xid} inside another transaction"
                    )));
                }
                self.ack.on_begin();
                if final_lsn >= self.durable {
                    // µs since 2000-01-01 → Unix ms.
                    let unix_ms = commit_time / 1000 + 946_684_800_000;
                    self.fresh
                        .behind(&self.source.status, u64::try_from(unix_ms).unwrap_or(0));
                }
                self.upstream = Some(Upstream {
                    meta: Arc::new(TxMeta {
                        source: self.source.name.clone(),
                        commit_time: crate::time::pg_micros_to_rfc3339(commit_time),
                        id: xid.to_string(),
                        position: final_lsn.to_string(),
                    }),
                    final_lsn,
                    append_rows: 0,
                    buffer: Vec::new(),
                    // A commit that starts before the stored end is at or before it: logged.
                    skip: final_lsn < self.durable,
                });
            }
            PgOutputMessage::Commit { end_lsn, .. } => {
                let upstream = self.upstream.take().ok_or_else(|| {
                    SourceError::Protocol(format!(
                        "Commit ending at {end_lsn} outside a transaction"
                    ))
                })?;
                if upstream.skip {
                    self.ack.on_skipped_commit(end_lsn);
                } else {
                    self.append(upstream.meta, upstream.buffer).await?;
                    self.pending_end = Some(end_lsn);
                    self.ack.on_commit(end_lsn);
                }
            }
            PgOutputMessage::Relation(relation) => self.learn(relation).await?,
            PgOutputMessage::Insert { relation_id, new } => {
                self.change(relation_id, |table| table.insert(&new).map(|c| vec![c]))
                    .await?
            }
            PgOutputMessage::Update {
                relation_id,
                old,
                new,
            } => {
                self.change(relation_id, |table| {
                    table.update(old.as_ref(), &new).map(|c| vec![c])
                })
                .await?
            }
            PgOutputMessage::Delete { relation_id, old } => {
                self.change(relation_id, |table| table.delete(&old).map(|c| vec![c]))
                    .await?
            }
            PgOutputMessage::Truncate { relation_ids, .. } => {
                for relation_id in relation_ids {
                    self.change(relation_id, |table| Ok(vec![table.truncate()]))
                        .await?;
                }
            }
            PgOutputMessage::Type { .. }
            | PgOutputMessage::Origin { .. }
            | PgOutputMessage::Message { .. } => {}
        }
        Ok(())
    }

    /// (Re-)learns a table's shape: sent before its first change in every session and again
    /// after its schema changed.
    async fn learn(&mut self, relation: Relation) -> Result<(), SourceError> {
        let collection = format!("{}.{}", relation.namespace, relation.name);
        // `deltarelay.*` is the relay's own bookkeeping (applied mutation ids), never synced.
        let own = relation.namespace == "deltarelay";
        if own || (!self.source.all_tables && !self.synced.contains(&collection)) {
            tracing::debug!(source = %self.source.name, %collection, "ignoring a table that is not configured");
            self.tables.insert(relation.id, None);
            return Ok(());
        }
        let (value_types, primary_key) = bounded(
            self.source.timeout,
            "reading a table's columns and key",
            async {
                let mut value_types = Vec::with_capacity(relation.columns.len());
                for column in &relation.columns {
                    value_types.push(self.types.resolve(&self.client, column.type_oid).await?);
                }
                let primary_key = catalog::primary_key(&self.client, relation.id).await?;
                Ok::<_, CatalogError>((value_types, primary_key))
            },
        )
        .await?;
        let shape = match TableShape::new(&relation, &primary_key, value_types.clone()) {
            _ if self.source.config.is_append_only(&collection) => {
                Some(TableShape::new_append_only(&relation, value_types))
            }
            Ok(shape) => Some(shape),
            Err(e @ ShapeError::NoKey(..)) if self.source.all_tables => {
                tracing::warn!(source = %self.source.name, error = %e, "skipping a table without a key");
                None
            }
            // Its key went away while streaming: this table stops, the others flow on.
            Err(ShapeError::NoKey(table, identity)) => {
                let problem = catalog::TableProblem {
                    detail: format!(
                        "table {table} lost its key while streaming (no primary key, REPLICA IDENTITY {identity})"
                    ),
                    fix: format!(
                        "add a primary key or run ALTER TABLE {} REPLICA IDENTITY FULL, then restart the relay",
                        catalog::quote_table(&table)
                    ),
                    table,
                };
                self.source.report_unsynced_more(&problem);
                None
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(shape) = &shape {
            self.source
                .log
                .set_columns(&shape.collection, &shape.column_infos())
                .await?;
            let counter = metrics::counter!(
                telemetry::CHANGES_INGESTED,
                "source" => self.source.name.to_string(),
                "collection" => shape.collection.clone()
            );
            self.ingested.insert(relation.id, counter);
        }
        self.tables.insert(relation.id, shape);
        Ok(())
    }

    async fn change(
        &mut self,
        relation_id: u32,
        make: impl FnOnce(&TableShape) -> Result<Vec<Change>, ShapeError>,
    ) -> Result<(), SourceError> {
        let upstream = self.upstream.as_mut().ok_or_else(|| {
            SourceError::Protocol(format!(
                "a row change of relation {relation_id} outside a transaction"
            ))
        })?;
        if upstream.skip {
            return Ok(());
        }
        let table = self.tables.get(&relation_id).ok_or_else(|| {
            SourceError::Protocol(format!(
                "a row change of relation {relation_id} before its Relation message"
            ))
        })?;
        let Some(table) = table else { return Ok(()) };
        if self
            .respec
            .get(&table.collection)
            .is_some_and(|until| upstream.final_lsn < *until)
        {
            return Ok(());
        }
        let mut changes = make(table)?;
        if table.append_only {
            // Only inserts and truncates are published for it; each row keyed by its origin.
            changes.retain(|c| matches!(c.op, Op::Insert | Op::Truncate));
            for change in changes.iter_mut().filter(|c| c.op == Op::Insert) {
                upstream.append_rows += 1;
                change.key = Some(TableShape::synthetic_key(format!(
                    "{}:{}",
                    upstream.final_lsn, upstream.append_rows
                )));
            }
        }
        if let Some(counter) = self.ingested.get(&relation_id) {
            counter.increment(changes.len() as u64);
        }
        upstream.buffer.extend(changes);
        if upstream.buffer.len() >= APPEND_BATCH {
            let meta = upstream.meta.clone();
            let batch = std::mem::take(&mut upstream.buffer);
            self.append(meta, batch).await?;
        }
        Ok(())
    }

    /// Streams changes into the open local transaction (opening one if needed), so a huge
    /// upstream transaction never sits in memory.
    async fn append(&mut self, meta: Arc<TxMeta>, changes: Vec<Change>) -> Result<(), SourceError> {
        if self.local.is_none() {
            self.local = Some(self.source.log.begin().await?);
            self.local_started = Some(Instant::now());
        }
        if changes.is_empty() {
            return Ok(());
        }
        self.local_changes += changes.len();
        if let Some(local) = self.local.as_mut() {
            local.append(meta, changes).await?;
        }
        Ok(())
    }

    /// Makes everything appended durable with the new position, then acknowledges upstream.
    async fn commit_local(&mut self) -> Result<(), SourceError> {
        let Some(end) = self.pending_end.take() else {
            return Ok(());
        };
        let local = match self.local.take() {
            Some(local) => local,
            None => self.source.log.begin().await?,
        };
        let started = Instant::now();
        let committed = local.commit(&self.source.name, end.to_string()).await?;
        metrics::histogram!(telemetry::LOG_COMMIT_SECONDS, "source" => self.source.name.to_string())
            .record(started.elapsed().as_secs_f64());
        tracing::trace!(source = %self.source.name, position = %end, last_seq = committed.last_seq, "log commit");
        self.local_changes = 0;
        self.local_started = None;
        self.durable = end;
        self.source.logged.advance(end.0);
        self.ack.on_durable(end);
        let more = self.upstream.is_some() || self.upstream_end > self.ack.flushed();
        self.fresh.committed(&self.source.status, more);
        self.publish_progress();
        self.send_status(false).await
    }

    /// Clean stop: keep what is complete, drop a half-received transaction (Postgres resends
    /// it), and tell upstream what is durable.
    async fn finish(&mut self) -> Result<(), SourceError> {
        if self.upstream.is_some() {
            self.abandon().await;
        } else {
            self.commit_local().await?;
        }
        self.send_status(false).await?;
        tracing::info!(source = %self.source.name, position = %self.durable, "stopped streaming");
        Ok(())
    }

    async fn abandon(&mut self) {
        self.pending_end = None;
        if let Some(local) = self.local.take() {
            local.rollback().await;
        }
    }

    async fn send_status(&mut self, reply_requested: bool) -> Result<(), SourceError> {
        let flushed = self.ack.flushed();
        self.stream
            .send_status(self.ack.received(), flushed, flushed, reply_requested)
            .await?;
        Ok(())
    }

    /// Cheap, per message: remember how far upstream's WAL reaches.
    fn note_upstream_end(&mut self, wal_end: Lsn) {
        self.upstream_end = self.upstream_end.max(wal_end);
    }

    /// Publishes position and lag to `/v1/status` and the metrics (on commits and keepalives).
    fn publish_progress(&mut self) {
        if self.upstream.is_none() && self.ack.flushed() >= self.upstream_end {
            self.fresh.caught_up(&self.source.status);
        } else {
            self.fresh
                .behind(&self.source.status, crate::source::now_ms());
        }
        let lag = self.upstream_end.0.saturating_sub(self.durable.0);
        let (durable, upstream_end) = (self.durable, self.upstream_end);
        self.source.status.send_modify(|s| {
            if durable.0 != 0 {
                s.position = Some(durable.to_string());
            }
            s.upstream_position = Some(upstream_end.to_string());
            s.lag_bytes = Some(lag);
        });
        metrics::gauge!(telemetry::REPLICATION_LAG_BYTES, "source" => self.source.name.to_string())
            .set(lag as f64);
    }
}
