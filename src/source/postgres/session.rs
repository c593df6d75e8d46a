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
use super::Lsn;
use crate::log::{Log, LogError, LogTxn};
use crate::record::{Change, Op, TxMeta};
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
        "reconnecting to stream the append-only tables' publication, which the slot has now passed"
    )]
    Rejoin,
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
    config: PostgresConfig,
    /// The tables' column lists and row filters as the last session resolved them.
    specs: std::sync::Mutex<Arc<BTreeMap<String, TableSpec>>>,
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
        let copied = match source
            .log
            .position(&CopiedTables::key(&source.name))
            .await?
        {
            Some(text) => Some(CopiedTables::parse(&text)?),
            None => None,
        };
        let stored_specs = copied.as_ref().map(|c| c.specs.clone()).unwrap_or_default();
        let prepared = bounded(
            limit,
            "checking the server, tables and publication",
            async {
                catalog::check_wal_level(&client).await?;
                tables::prepare(&client, &source.config, &stored_specs).await
            },
        )
        .await?;
        source.report_unsynced(&prepared.problems);
        let mut tables = prepared.tables;
        *source.specs.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(prepared.specs);
        let mut stored = source.log.position(&source.name).await?;

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
        let slot_at = slot.as_ref().and_then(|s| s.confirmed_flush);
        let (with_append, append_wait) = source
            .append_publication_start(&prepared.append_tables, prepared.append_created, slot_at)
            .await?;
        if append_wait.is_some() {
            tables.retain(|t| !prepared.append_tables.contains(t));
        }
        let partitions = bounded(
            limit,
            "reading partitions",
            PartitionSets::read(&client, &tables),
        )
        .await?;
        let mut copy_task = None;
        let mut respec = prepared.respec;
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
            partitions.store(&source.log, &source.name).await?;
        } else {
            let done = copied.unwrap_or_default();
            for (table, from) in &done.append_from {
                if let Ok(from) = from.parse::<Lsn>() {
                    let until = respec.entry(table.clone()).or_insert(from);
                    *until = (*until).max(from);
                }
            }
            // A configured table that cannot be synced now keeps what the log has of it.
            let configured = if source.all_tables {
                &tables
            } else {
                &source.tables
            };
            let done = source
                .forget_removed_tables(&client, configured, done)
                .await?;
            let specs = source.specs();
            let mut pending: Vec<String> = tables
                .iter()
                .filter(|t| !done.has(t, specs.get(*t)))
                .cloned()
                .collect();
            // Partitions attached or detached while the relay was away: copy those again.
            let before = PartitionSets::stored(&source.log, &source.name).await?;
            for root in partitions.changed_since(&before) {
                if !pending.contains(&root) {
                    tracing::info!(source = %source.name, table = %root, "its partitions changed while the relay was stopped: copying it again");
                    pending.push(root);
                }
            }
            if pending.is_empty() {
                if partitions != before {
                    partitions.store(&source.log, &source.name).await?;
                }
                source
                    .status
                    .send_modify(|s| s.initial_copy.state = CopyState::Done);
            } else {
                let (task, snapshot_at) = source
                    .copy_beside_stream(pending.clone(), done, partitions.clone())
                    .await?;
                copy_task = Some(task);
                if let Some(at) = snapshot_at {
                    for table in pending.iter().filter(|t| source.config.is_append_only(t)) {
                        respec.insert(table.clone(), at);
                    }
                }
            }
        }

        let durable = match &stored {
            Some(text) => text.parse::<Lsn>().map_err(|e| SourceError::Config {
                source_name: source.name.to_string(),
                message: format!("the log holds an unreadable position: {e}"),
            })?,
            None => Lsn(0),
        };
        let publication = if with_append {
            format!(
                "{},{}",
                source.publication,
                source.config.append_publication()
            )
        } else {
            source.publication.clone()
        };
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
            synced: tables.iter().cloned().collect(),
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
            partitions,
            respec,
            fresh: Freshness::new(&source.status),
            append_wait,
        })
    }

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
            specs: self.specs(),
            append_only: Arc::new(
                self.config
                    .table_options
                    .values()
                    .filter(|o| o.append_only)
                    .map(|o| o.name.clone())
                    .collect(),
            ),
        }
    }

    /// Whether to stream the append-only publication now, and if not, the position the slot
    /// must pass first. A slot cannot decode with a publication created after the position
    /// it decodes from, so a publication created just now (recorded in the log under
    /// `<source>#append`) joins once the slot has passed its creation; with a new slot
    /// (`slot_at` is `None`) it joins at once.
    async fn append_publication_start(
        &self,
        append_tables: &[String],
        created: Option<Lsn>,
        slot_at: Option<Lsn>,
    ) -> Result<(bool, Option<Lsn>), SourceError> {
        if self.all_tables {
            return Ok((false, None));
        }
        let key = format!("{}#append", self.name);
        if let Some(created) = created {
            self.log
                .begin()
                .await?
                .commit(&key, created.to_string())
                .await?;
        }
        let from = match self.log.position(&key).await? {
            Some(text) => text.parse::<Lsn>().map_err(|e| SourceError::Config {
                source_name: self.name.to_string(),
                message: format!("the log holds an unreadable position under {key}: {e}"),
            })?,
            None => Lsn(0),
        };
        match slot_at {
            Some(at) if at < from => {
                if !append_tables.is_empty() {
                    tracing::info!(source = %self.name, tables = ?append_tables, position = %from,
                        "the append-only tables join once the stream has passed their new publication");
                }
                Ok((false, (!append_tables.is_empty()).then_some(from)))
            }
            _ => Ok((true, None)),
        }
    }

    fn specs(&self) -> Arc<BTreeMap<String, TableSpec>> {
        self.specs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Says loudly which configured tables cannot be synced (the others flow) and the fix,
    /// in the log output, `/v1/status` and `/metrics`.
    fn report_unsynced(&self, problems: &[catalog::TableProblem]) {
        for problem in problems {
            log_unsynced(&self.name, problem);
        }
        let unsynced: Vec<UnsyncedTable> = problems.iter().map(unsynced_entry).collect();
        let count = unsynced.len();
        self.status.send_modify(|s| s.unsynced_tables = unsynced);
        metrics::gauge!(telemetry::TABLES_UNSYNCED, "source" => self.name.to_string())
            .set(count as f64);
    }

    /// [`PostgresSource::report_unsynced`] for one more table found while streaming.
    fn report_unsynced_more(&self, problem: &catalog::TableProblem) {
        log_unsynced(&self.name, problem);
        let mut count = 0;
        self.status.send_modify(|s| {
            s.unsynced_tables.retain(|t| t.table != problem.table);
            s.unsynced_tables.push(unsynced_entry(problem));
            count = s.unsynced_tables.len();
        });
        metrics::gauge!(telemetry::TABLES_UNSYNCED, "source" => self.name.to_string())
            .set(count as f64);
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
    /// `partitions` are stored as copied once it has finished.
    ///
    /// With append-only tables among them the snapshot is taken before this returns, and its
    /// position is returned: their rows the stream delivers from before it are the copy's
    /// (under other synthetic keys), so the stream drops them. Otherwise it is taken in the
    /// background (it waits for running transactions) while the stream runs.
    async fn copy_beside_stream(
        &self,
        pending: Vec<String>,
        copied: CopiedTables,
        partitions: PartitionSets,
    ) -> Result<(CopyTask, Option<Lsn>), SourceError> {
        let (log, name) = (self.log.clone(), self.name.clone());
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
        let early = if pending.iter().any(|t| self.config.is_append_only(t)) {
            let mut conn =
                ReplicationConnection::connect_tls(&pg_config, &tls, SESSION_PARAMS).await?;
            let created = conn.create_temporary_snapshot_slot(&temporary).await?;
            Some((conn, created))
        } else {
            None
        };
        let snapshot_at = early.as_ref().map(|(_, created)| created.consistent_point);
        let handle = tokio::spawn(async move {
            let (conn, created) = match early {
                Some(early) => early,
                None => {
                    let mut conn =
                        ReplicationConnection::connect_tls(&pg_config, &tls, SESSION_PARAMS)
                            .await?;
                    let created = conn.create_temporary_snapshot_slot(&temporary).await?;
                    (conn, created)
                }
            };
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
            partitions.store(&log, &name).await?;
            Ok(copied)
        });
        Ok((CopyTask(handle), snapshot_at))
    }
}

fn log_unsynced(source: &str, problem: &catalog::TableProblem) {
    tracing::error!(
        source,
        table = %problem.table,
        fix = %problem.fix,
        "TABLE NOT SYNCED (the other tables are): {}; fix: {}",
        problem.detail,
        problem.fix
    );
}

fn unsynced_entry(problem: &catalog::TableProblem) -> UnsyncedTable {
    UnsyncedTable {
        table: problem.table.clone(),
        problem: problem.detail.clone(),
        fix: problem.fix.clone(),
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
