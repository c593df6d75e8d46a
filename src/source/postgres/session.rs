//! One Postgres source: connect, check, stream the slot into the log, acknowledge, reconnect.

use super::ack::AckTracker;
use super::catalog::{self, CatalogError, TypeCache};
use super::changes::{ShapeError, TableShape};
use super::config::PostgresConfig;
use super::copy::{CopiedTables, Copier, CopyError};
use super::pgoutput::{self, DecodeError, PgOutputMessage, Relation};
use super::replication::{
    ReplicationConnection, ReplicationError, ReplicationMessage, ReplicationStream,
};
use super::tls::PgTls;
use super::Lsn;
use crate::log::{Log, LogError, LogTxn};
use crate::record::{Change, TxMeta};
use crate::source::{CopyState, ErrorKind, Source, SourceStatus};
use crate::telemetry;
use std::collections::{HashMap, HashSet};
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

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source {source_name}: {message}")]
    Config {
        source_name: String,
        message: String,
    },
    #[error("catalog: {0}")]
    Catalog(#[from] CatalogError),
    #[error("replication connection: {0}")]
    Replication(#[from] ReplicationError),
    #[error("pgoutput: {0}")]
    Decode(#[from] DecodeError),
    #[error("{0}")]
    Shape(#[from] ShapeError),
    #[error("log: {0}")]
    Log(#[from] LogError),
    #[error("initial copy: {0}")]
    Copy(#[from] CopyError),
    #[error("the initial copy task failed: {0}")]
    CopyTask(String),
    #[error("unexpected replication message: {0}")]
    Protocol(String),
    #[error("the server ended the replication stream")]
    StreamEnded,
    #[error(
        "no answer from Postgres within {after:?} while {what}: the connection looks dead \
         (dropped by the network?); reconnecting (see replication_timeout)"
    )]
    Timeout { what: &'static str, after: Duration },
}

/// Bounds one network step: a connection the network dropped silently never answers.
async fn bounded<T, E: Into<SourceError>>(
    limit: Duration,
    what: &'static str,
    step: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, SourceError> {
    match tokio::time::timeout(limit, step).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(SourceError::Timeout { what, after: limit }),
    }
}

impl SourceError {
    /// Errors that retrying cannot fix stop the relay; a login or privilege the server
    /// refuses is the operator's to fix, and said so while it is retried.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SourceError::Config { .. }
            | SourceError::Copy(CopyError::Shape(_))
            | SourceError::Catalog(CatalogError::Unusable(_)) => ErrorKind::Fatal,
            SourceError::Log(e) if e.is_fatal() => ErrorKind::Fatal,
            _ if self
                .sqlstate()
                .is_some_and(super::pg_error::is_configuration) =>
            {
                ErrorKind::Config
            }
            SourceError::Replication(ReplicationError::Auth(_)) => ErrorKind::Config,
            _ => ErrorKind::Retry,
        }
    }

    /// The server's SQLSTATE, when the server refused something.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            SourceError::Catalog(CatalogError::Query(e)) => super::pg_error::sqlstate(e),
            SourceError::Copy(CopyError::Query { source, .. } | CopyError::Snapshot(source)) => {
                super::pg_error::sqlstate(source)
            }
            SourceError::Copy(CopyError::Catalog(CatalogError::Query(e))) => {
                super::pg_error::sqlstate(e)
            }
            SourceError::Replication(e) => e.sqlstate(),
            _ => None,
        }
    }
}

pub struct PostgresSource {
    name: Arc<str>,
    pg_config: tokio_postgres::Config,
    tls: PgTls,
    slot: String,
    publication: String,
    tables: Vec<String>,
    all_tables: bool,
    /// How long a connection may stay silent (see `SourceConfig::replication_timeout`).
    timeout: Duration,
    log: Log,
    status: Arc<watch::Sender<SourceStatus>>,
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
            log,
            status: Arc::new(watch::channel(status).0),
        })
    }

    pub fn status_receiver(&self) -> watch::Receiver<SourceStatus> {
        self.status.subscribe()
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
}

impl<'a> Session<'a> {
    async fn open(source: &'a PostgresSource) -> Result<Session<'a>, SourceError> {
        // Every network step but the slot's creation and the copy (both may rightly take
        // long) is bounded, so a connection lost in a network black hole is given up.
        let limit = source.timeout;
        let client = bounded(limit, "connecting", async {
            catalog::connect_tls(&source.pg_config, &source.tls)
                .await
                .map_err(CatalogError::from)
        })
        .await?;
        let tables = bounded(
            limit,
            "checking the server, tables and publication",
            async {
                catalog::check_wal_level(&client).await?;
                catalog::check_tables(&client, &source.tables).await?;
                catalog::ensure_publication(
                    &client,
                    &source.publication,
                    &source.tables,
                    source.all_tables,
                )
                .await?;
                if source.all_tables {
                    catalog::published_tables_with_keys(&client, &source.publication).await
                } else {
                    Ok(source.tables.clone())
                }
            },
        )
        .await?;

        let mut stored = source.log.position(&source.name).await?;
        let copied = match source
            .log
            .position(&CopiedTables::key(&source.name))
            .await?
        {
            Some(text) => Some(CopiedTables::parse(&text)?),
            None => None,
        };

        let (mut conn, system) = bounded(limit, "opening the replication connection", async {
            let mut conn =
                ReplicationConnection::connect_tls(&source.pg_config, &source.tls, SESSION_PARAMS)
                    .await?;
            let system = conn.identify_system().await?;
            Ok::<_, ReplicationError>((conn, system))
        })
        .await?;
        source.status.send_modify(|s| {
            s.connected = true;
            s.upstream_position = Some(system.xlog_pos.to_string());
        });
        let slot = bounded(
            limit,
            "reading the slot's state",
            catalog::slot_state(&client, &source.slot),
        )
        .await?;
        if let Some(plugin) = slot.as_ref().and_then(|s| s.plugin.as_deref()) {
            if plugin != "pgoutput" {
                return Err(SourceError::Config {
                    source_name: source.name.to_string(),
                    message: format!(
                        "replication slot {} exists but uses plugin {plugin:?}, not pgoutput: drop it or configure another slot name",
                        source.slot
                    ),
                });
            }
        }
        let lost = match &slot {
            None => Some("missing"),
            Some(slot) if slot.wal_status.as_deref() == Some("lost") => Some(
                "invalidated (Postgres removed WAL it still needed, see max_slot_wal_keep_size)",
            ),
            Some(_) => None,
        };
        let mut copy_task = None;
        if let Some(state) = lost {
            if stored.is_some() || copied.is_some() || source.has_entries().await? {
                start_over(source, state, stored.as_deref()).await?;
                stored = None;
            }
            if slot.is_some() {
                catalog::drop_slot(&client, &source.slot).await?;
            }
            // First start: the new slot's snapshot is the copy's, and streaming starts where
            // the snapshot ends.
            let created = conn.create_logical_slot(&source.slot, true).await?;
            tracing::info!(source = %source.name, slot = %source.slot, consistent_point = %created.consistent_point, "created replication slot");
            let snapshot = created.snapshot_name.clone().ok_or_else(|| {
                SourceError::Protocol("CREATE_REPLICATION_SLOT exported no snapshot".into())
            })?;
            let copier = source.copier(created.consistent_point, false);
            copier
                .run(
                    &source.pg_config,
                    SESSION_PARAMS,
                    &snapshot,
                    &tables,
                    CopiedTables::default(),
                )
                .await?;
        } else {
            let done = copied.unwrap_or_default();
            let done = source.forget_removed_tables(&client, &tables, done).await?;
            let pending: Vec<String> = tables
                .iter()
                .filter(|t| !done.tables.contains(*t))
                .cloned()
                .collect();
            if pending.is_empty() {
                source
                    .status
                    .send_modify(|s| s.initial_copy.state = CopyState::Done);
            } else {
                copy_task = Some(source.copy_beside_stream(pending, done));
            }
        }

        let durable = match &stored {
            Some(text) => text.parse::<Lsn>().map_err(|e| SourceError::Config {
                source_name: source.name.to_string(),
                message: format!("the log holds an unreadable position: {e}"),
            })?,
            None => Lsn(0),
        };
        let publication = source.publication.clone();
        let stream = bounded(
            limit,
            "starting replication",
            conn.start_logical_replication(
                &source.slot,
                durable,
                &[("proto_version", "1"), ("publication_names", &publication)],
            ),
        )
        .await?;
        tracing::info!(
            source = %source.name, slot = %source.slot, from = %durable, server_wal = %system.xlog_pos,
            "streaming changes"
        );
        source.status.send_modify(|s| {
            s.connected = true;
            s.last_error = None;
            s.position = stored.clone();
            s.upstream_position = Some(system.xlog_pos.to_string());
            s.lag_bytes = Some(system.xlog_pos.0.saturating_sub(durable.0));
        });
        Ok(Session {
            source,
            client,
            stream,
            types: TypeCache::default(),
            tables: HashMap::new(),
            ingested: HashMap::new(),
            synced: source.tables.iter().cloned().collect(),
            ack: AckTracker::new(durable),
            durable,
            upstream: None,
            local: None,
            local_changes: 0,
            local_started: None,
            pending_end: None,
            upstream_end: system.xlog_pos,
            copy_task,
            heard: Instant::now(),
        })
    }

    async fn stream_changes(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), SourceError> {
        let mut status_timer = tokio::time::interval(STATUS_INTERVAL.min(self.source.timeout / 4));
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
                copied = wait_for_copy(&mut self.copy_task) => {
                    self.copy_task = None;
                    let copied = copied?;
                    tracing::info!(source = %self.source.name, tables = copied.tables.len(), "every table is copied");
                }
            }
        }
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
        let limit = self.source.timeout;
        let silent = self.heard.elapsed();
        if silent >= limit {
            return Err(SourceError::Timeout {
                what: "streaming",
                after: limit,
            });
        }
        bounded(
            limit,
            "sending a status update",
            self.send_status(silent >= limit / 2),
        )
        .await
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
                self.upstream = Some(Upstream {
                    meta: Arc::new(TxMeta {
                        source: self.source.name.clone(),
                        commit_time: crate::time::pg_micros_to_rfc3339(commit_time),
                        id: xid.to_string(),
                        position: final_lsn.to_string(),
                    }),
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
        if !self.source.all_tables && !self.synced.contains(&collection) {
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
        let shape = match TableShape::new(&relation, &primary_key, value_types) {
            Ok(shape) => Some(shape),
            Err(e @ ShapeError::NoKey(..)) if self.source.all_tables => {
                tracing::warn!(source = %self.source.name, error = %e, "skipping a table without a key");
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
        let changes = make(table)?;
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
        self.ack.on_durable(end);
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
    fn publish_progress(&self) {
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

impl PostgresSource {
    /// A copier for the first start (`beside_stream = false`: nothing else writes this source
    /// meanwhile) or for a copy beside the running stream (its floor is the log's head now).
    fn copier(&self, position: Lsn, beside_stream: bool) -> Copier {
        Copier {
            source: self.name.clone(),
            log: self.log.clone(),
            status: self.status.clone(),
            floor: beside_stream.then(|| *self.log.head().borrow()),
            position,
            tls: self.tls.clone(),
        }
    }

    async fn has_entries(&self) -> Result<bool, SourceError> {
        Ok(self.log.has_entries_of(&self.name).await?)
    }

    /// Tables copied earlier but no longer configured: their entries leave the log and the
    /// table leaves the publication, so they stop being served.
    async fn forget_removed_tables(
        &self,
        client: &tokio_postgres::Client,
        tables: &[String],
        mut copied: CopiedTables,
    ) -> Result<CopiedTables, SourceError> {
        let removed: Vec<String> = copied
            .tables
            .iter()
            .filter(|t| !tables.contains(t))
            .cloned()
            .collect();
        if removed.is_empty() {
            return Ok(copied);
        }
        if !self.all_tables {
            for table in &removed {
                catalog::remove_from_publication(client, &self.publication, table).await?;
            }
        }
        let mut txn = self.log.begin().await?;
        for table in &removed {
            tracing::info!(source = %self.name, table, "table is no longer configured: removing its entries from the log");
            txn.remove_collection(table).await?;
            copied.tables.remove(table);
        }
        txn.commit(&CopiedTables::key(&self.name), copied.to_json())
            .await?;
        Ok(copied)
    }

    /// Copies `pending` from a temporary slot's snapshot while the permanent slot streams.
    fn copy_beside_stream(&self, pending: Vec<String>, copied: CopiedTables) -> CopyTask {
        let floor_copier = self.copier(Lsn(0), true);
        let pg_config = self.pg_config.clone();
        let tls = self.tls.clone();
        // Temporary slots vanish with their connection; the name only has to be unique now.
        let temporary = format!(
            "{}_copy_{}_{}",
            self.slot,
            std::process::id(),
            rand::random::<u16>()
        );
        let handle = tokio::spawn(async move {
            let mut conn =
                ReplicationConnection::connect_tls(&pg_config, &tls, SESSION_PARAMS).await?;
            let created = conn.create_temporary_snapshot_slot(&temporary).await?;
            let snapshot = created.snapshot_name.clone().ok_or_else(|| {
                SourceError::Protocol("CREATE_REPLICATION_SLOT exported no snapshot".into())
            })?;
            let copier = Copier {
                position: created.consistent_point,
                ..floor_copier
            };
            let copied = copier
                .run(&pg_config, SESSION_PARAMS, &snapshot, &pending, copied)
                .await?;
            // Keeps the snapshot's slot alive until the copy is done.
            drop(conn);
            Ok(copied)
        });
        CopyTask(handle)
    }
}

/// The upstream history this source was built from is gone: say so loudly, forget what the log
/// holds of it (every client cursor expires), and let the caller copy everything again.
async fn start_over(
    source: &PostgresSource,
    state: &str,
    stored: Option<&str>,
) -> Result<(), SourceError> {
    let message = format!(
        "replication slot {} is {state}, so the changes after position {} can no longer be read: \
         starting over with a new copy of every table; clients' cursors expire (410) and they \
         must sync again from the beginning",
        source.slot,
        stored.unwrap_or("(copy in progress)")
    );
    tracing::error!(source = %source.name, "{message}");
    metrics::counter!(telemetry::SOURCE_RESETS, "source" => source.name.to_string()).increment(1);
    let mark = source.log.reset_source(&source.name).await?;
    tracing::warn!(source = %source.name, expired_before = mark, "log entries of this source removed; cursors expired");
    source.status.send_modify(|s| {
        s.last_error = Some(message);
        s.position = None;
    });
    Ok(())
}

/// A copy task that stops when its session ends.
struct CopyTask(tokio::task::JoinHandle<Result<CopiedTables, SourceError>>);

impl Drop for CopyTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Waits for the copy task when there is one, forever otherwise (a `select!` branch).
async fn wait_for_copy(task: &mut Option<CopyTask>) -> Result<CopiedTables, SourceError> {
    match task {
        Some(task) => match (&mut task.0).await {
            Ok(result) => result,
            Err(e) => Err(SourceError::CopyTask(e.to_string())),
        },
        None => std::future::pending().await,
    }
}
