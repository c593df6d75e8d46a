//! One MongoDB source: open the change stream, copy on first start, stream into the log,
//! resume after errors, re-copy when upstream history is lost.

use super::config::{FullDocumentMode, MongoConfig};
pub use super::errors::MongoError;
use super::errors::{classify, Upstream};
use super::events::{Mapper, Reassembly};
use super::position::Position;
use super::values::document_to_row;
use crate::log::Log;
use crate::record::{Change, TxMeta};
use crate::source::logged::LoggedThrough;
use crate::source::{CopyState, ErrorKind, Freshness, Source, SourceStatus};
use crate::telemetry;
use mongodb::bson::{doc, Bson, Document};
use mongodb::change_stream::event::ResumeToken;
use mongodb::change_stream::ChangeStream;
use mongodb::error::ErrorKind as DriverErrorKind;
use mongodb::options::{ClientOptions, FullDocumentBeforeChangeType, FullDocumentType};
use mongodb::{Client, Database};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, OnceCell};

/// Changes per local commit while streaming (more wait for the next commit).
const GROUP_MAX_CHANGES: usize = 5_000;
/// How long an idle `getMore` waits on the server before answering with an empty batch.
const AWAIT_TIME: Duration = Duration::from_secs(1);
/// Events that arrived are committed once the next `getMore` has waited this long for more
/// (an idle one waits AWAIT_TIME on the server): a change is logged, and a write made through
/// the relay visible, within this of its arrival instead of when the wait ends.
const GROUP_WAIT: Duration = Duration::from_millis(10);
/// An idle stream's fresh `postBatchResumeToken` is stored at most this often.
const IDLE_TOKEN_INTERVAL: Duration = Duration::from_secs(5);
pub struct MongoSource {
    pub(super) name: Arc<str>,
    url: String,
    pub(super) mapper: Mapper,
    full_document: FullDocumentMode,
    pub(super) log: Log,
    pub(super) status: watch::Sender<SourceStatus>,
    /// Kept across sessions (the driver reconnects by itself) and shared with the writer.
    client: Arc<OnceCell<Client>>,
    /// How far upstream is logged, for the writer's read-your-writes.
    logged: Arc<LoggedThrough>,
}

/// A client for `url` (parsing resolves mongodb+srv:// names, so it belongs to the retried
/// part).
pub(super) async fn connect(url: &str) -> Result<Client, mongodb::error::Error> {
    let mut options = ClientOptions::parse(url).await?;
    options.app_name.get_or_insert_with(|| "deltarelay".into());
    Client::with_options(options)
}

/// The clusterTime a resume token starts with (KeyString type 0x82, then the timestamp's 8
/// bytes big-endian), as a commit mark.
fn token_time(token: &Bson) -> Option<u64> {
    let data = token.as_document()?.get_str("_data").ok()?;
    let hex = data.strip_prefix("82")?.get(..16)?;
    u64::from_str_radix(hex, 16).ok()
}

impl MongoSource {
    pub fn new(config: &MongoConfig, log: Log) -> MongoSource {
        let status = SourceStatus {
            name: config.name.clone(),
            kind: "mongodb",
            // Not connected yet: what upstream holds is not known to be in the log.
            behind_since_ms: Some(crate::source::now_ms()),
            ..SourceStatus::default()
        };
        MongoSource {
            name: config.name.as_str().into(),
            url: config.url.clone(),
            mapper: Mapper {
                source: config.name.as_str().into(),
                database: config.database.clone(),
                collections: (!config.all_collections)
                    .then(|| config.collections.iter().cloned().collect()),
                pre_images: config.pre_images,
                full_document: config.full_document,
            },
            full_document: config.full_document,
            log,
            status: watch::channel(status).0,
            client: Arc::default(),
            logged: Arc::default(),
        }
    }

    /// This source's writer (`POST /v1/mutations`), on its client.
    pub fn writer(&self, writes: &crate::config::WritesConfig) -> super::write::MongoWriter {
        super::write::MongoWriter::new(
            &self.name,
            &self.mapper.database,
            self.mapper.collections.clone(),
            &self.url,
            self.client.clone(),
            writes,
            self.logged.clone(),
        )
    }

    pub fn status_receiver(&self) -> watch::Receiver<SourceStatus> {
        self.status.subscribe()
    }

    async fn one_session(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), MongoError> {
        let client = self
            .client
            .get_or_try_init(|| connect(&self.url))
            .await?
            .clone();
        let db = client.database(&self.mapper.database);
        let split = supports_split_events(&db).await?;
        let stored = self.log.position(&self.name).await?;
        let start = match stored.as_deref() {
            None => None,
            Some(text) => Some(Position::parse(text).map_err(|e| MongoError::Config {
                source_name: self.name.to_string(),
                message: format!("the log holds an unreadable position: {e}"),
            })?),
        };
        let from = start.as_ref().map(|p| p.token().clone());
        let mut stream = match self.open(&db, from, split).await {
            Ok(stream) => stream,
            Err(e) => return Err(self.upstream_error(e).await),
        };
        let token = stream.resume_token().ok_or(MongoError::NoToken)?;
        let token = token_bson(&token)?;
        self.status.send_modify(|s| {
            s.connected = true;
            s.last_error = None;
        });
        match start {
            Some(Position::Streaming(_)) => {
                let position = stored.clone().unwrap_or_default();
                self.status
                    .send_modify(|s| s.position = Some(position.clone()));
                self.sync_collection_set(&db, &position).await?;
                self.status
                    .send_modify(|s| s.initial_copy.state = CopyState::Done);
            }
            Some(Position::Recopying { collections, token }) => {
                // A crash or an error cut the copy of a renamed collection short: copy it again
                // from the stream opened just after the rename.
                tracing::info!(source = %self.name, ?collections, "copying renamed collections again after an interrupted copy");
                let position = self.recopy(&db, &collections, token).await?;
                self.sync_collection_set(&db, &position).await?;
                self.status
                    .send_modify(|s| s.initial_copy.state = CopyState::Done);
            }
            None | Some(Position::Copying(_)) => {
                // Copy from a stream that is already open: what changes during the copy is in
                // the stream after `token`, and the log's compaction absorbs the overlap.
                self.copy_all(&db, token).await?;
            }
        }
        tracing::info!(source = %self.name, database = %self.mapper.database, "streaming changes");
        self.stream_changes(&db, &mut stream, split, shutdown).await
    }

    async fn open(
        &self,
        db: &Database,
        after: Option<Bson>,
        split: bool,
    ) -> Result<ChangeStream<Document>, mongodb::error::Error> {
        let full_document = match self.full_document {
            FullDocumentMode::UpdateLookup => FullDocumentType::UpdateLookup,
            FullDocumentMode::WhenAvailable => FullDocumentType::WhenAvailable,
            FullDocumentMode::Required => FullDocumentType::Required,
        };
        let mut watch = db
            .watch()
            .full_document(full_document)
            .max_await_time(AWAIT_TIME);
        if self.mapper.pre_images {
            watch = watch.full_document_before_change(FullDocumentBeforeChangeType::WhenAvailable);
        }
        let mut pipeline = Vec::new();
        if let Some(list) = &self.mapper.collections {
            // Only what the relay syncs crosses the network: events of the listed collections,
            // renames into them, and the database-wide events that end the stream.
            let names: Vec<&String> = list.iter().collect();
            pipeline.push(doc! {"$match": {"$or": [
                {"ns.coll": {"$in": &names}},
                {"to.coll": {"$in": &names}},
                {"operationType": {"$in": ["dropDatabase", "invalidate"]}},
            ]}});
        }
        if split {
            // Must be the last stage.
            pipeline.push(doc! {"$changeStreamSplitLargeEvent": {}});
        }
        if !pipeline.is_empty() {
            watch = watch.pipeline(pipeline);
        }
        if let Some(token) = after {
            // startAfter rather than resumeAfter: it also accepts the token of an invalidate.
            let token: ResumeToken = mongodb::bson::from_bson(token)?;
            watch = watch.start_after(token);
        }
        Ok(watch.await?.with_type::<Document>())
    }

    /// What a failed `aggregate` or `getMore` means: lost history resets the source, an event
    /// the stream cannot pass is said loudly, anything else is retried.
    async fn upstream_error(&self, error: mongodb::error::Error) -> MongoError {
        match classify(&error, self.full_document) {
            Upstream::HistoryLost(why) => self.history_lost(&why).await,
            Upstream::Blocked(message) => MongoError::Blocked(message),
            Upstream::Other => error.into(),
        }
    }

    /// Loudly gives up on the lost history: the source's entries and position go, every
    /// cursor expires, and the next session copies everything again.
    async fn history_lost(&self, why: &str) -> MongoError {
        tracing::error!(
            source = %self.name,
            "UPSTREAM HISTORY LOST: {why}. Changes may have been missed, so this source is reset \
             (its log entries, position and every client cursor) and all collections are copied \
             again. If the relay was down or behind longer than the oplog window, give the oplog a \
             larger window (replSetResizeOplog)."
        );
        self.status.send_modify(|s| {
            s.last_error = Some(format!("upstream history lost: {why}; copying again"));
            s.initial_copy.state = CopyState::Pending;
        });
        match self.log.reset_source(&self.name).await {
            Ok(_) => MongoError::Recopy,
            Err(e) => MongoError::Log(e),
        }
    }

    async fn stream_changes(
        &self,
        db: &Database,
        stream: &mut ChangeStream<Document>,
        split: bool,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), MongoError> {
        let mut pending = Pending::default();
        let mut reassembly = Reassembly::default();
        let mut saved = self.status.borrow().position.clone();
        let mut saved_at = Instant::now();
        // The token after the last whole event: a fragment's token is never stored, since a
        // stream resumed from it starts at the next fragment, not at the event.
        let mut whole_token = stream.resume_token();
        // Freshness (`lag_ms`): behind from an event's arrival until a batch comes back empty.
        let mut fresh = Freshness::new(&self.status);
        // The stored token is an event's (committed without waiting for an empty batch): a
        // stream resumed from it fails (280) once that event's collection leaves the config,
        // so the next empty batch's high-water mark is stored as soon as it comes.
        let mut high_water_due = false;
        'events: loop {
            let stopping = match shutdown.has_changed() {
                Err(_) => true, // the relay dropped its side without a word: stop as if told to
                Ok(_) => *shutdown.borrow(),
            };
            if stopping {
                let token = match reassembly.in_progress() {
                    true => whole_token,
                    false => stream.resume_token(),
                };
                high_water_due |= !pending.is_empty();
                self.flush(&mut pending, token, &mut saved).await?;
                if high_water_due && !reassembly.in_progress() {
                    // One more batch, empty on a quiet server: its high-water mark. An event
                    // instead is left for the next start, resumed before it.
                    let last = tokio::time::timeout(2 * AWAIT_TIME, stream.next_if_any()).await;
                    if let Ok(Ok(None)) = last {
                        self.flush(&mut pending, stream.resume_token(), &mut saved)
                            .await?;
                    }
                }
                return Ok(());
            }
            // Never inside a split event or an upstream transaction: its rest may follow.
            let mut early_flush =
                !pending.is_empty() && pending.last_txn.is_none() && !reassembly.in_progress();
            // Covers every event yielded so far (the batch's postBatchResumeToken once a
            // `getMore` is needed).
            let token = stream.resume_token();
            let next = {
                let next = stream.next_if_any();
                tokio::pin!(next);
                loop {
                    tokio::select! {
                        next = &mut next => break next,
                        _ = shutdown.changed() => continue 'events,
                        _ = tokio::time::sleep(GROUP_WAIT), if early_flush => {
                            early_flush = false;
                            high_water_due = true;
                            self.flush(&mut pending, token.clone(), &mut saved).await?;
                            saved_at = Instant::now();
                            self.logged_through(token.as_ref());
                            fresh.caught_up(&self.status);
                        }
                    }
                }
            };
            match next {
                Ok(Some(raw)) => {
                    fresh.behind(&self.status, crate::source::now_ms());
                    let started = reassembly.in_progress();
                    let whole = reassembly.push(raw).map_err(|message| MongoError::Config {
                        source_name: self.name.to_string(),
                        message: format!("split change event: {message}"),
                    })?;
                    let Some(event) = whole else {
                        if !started {
                            tracing::info!(source = %self.name, "receiving a change event split into fragments");
                        }
                        continue;
                    };
                    whole_token = stream.resume_token();
                    let mut mapped = self.mapper.map(event)?;
                    if let Some((collection, id)) = mapped.lookup.take() {
                        // No post-image (whenAvailable): the current version instead, as
                        // updateLookup would give; none means deleted since (its delete follows).
                        let found = db
                            .collection::<Document>(&collection)
                            .find_one(doc! {"_id": id})
                            .await?;
                        match found {
                            Some(document) => {
                                for change in &mut mapped.changes {
                                    change.after = Some(document_to_row(document.clone()));
                                }
                            }
                            None => mapped.changes.clear(),
                        }
                    }
                    if let Some(meta) = mapped.meta {
                        if !mapped.changes.is_empty() {
                            pending.push(mapped.txn.clone(), meta, mapped.changes);
                        }
                    }
                    if let Some(collection) = mapped.recopy {
                        // The truncate and the copy are committed under a marker of their own,
                        // so that a crash or an error during the copy copies it again.
                        let token = stream.resume_token().ok_or(MongoError::NoToken)?;
                        let token = token_bson(&token)?;
                        let marker = Position::Recopying {
                            collections: vec![collection.clone()],
                            token: token.clone(),
                        };
                        self.commit(&mut pending, marker.text(), &mut saved).await?;
                        tracing::info!(source = %self.name, collection, "renamed into a synced collection: copying it");
                        saved = Some(self.recopy(db, &[collection], token).await?);
                        saved_at = Instant::now();
                    }
                    if mapped.invalidate {
                        self.flush(&mut pending, stream.resume_token(), &mut saved)
                            .await?;
                        let token = stream.resume_token().ok_or(MongoError::NoToken)?;
                        tracing::info!(source = %self.name, "change stream invalidated (database dropped or renamed): reopening after it");
                        *stream = self.open(db, Some(token_bson(&token)?), split).await?;
                        continue;
                    }
                    if pending.changes >= GROUP_MAX_CHANGES && mapped.txn.is_none() {
                        self.flush(&mut pending, stream.resume_token(), &mut saved)
                            .await?;
                        saved_at = Instant::now();
                    }
                }
                Ok(None) if reassembly.in_progress() => {}
                Ok(None) => {
                    whole_token = stream.resume_token();
                    // Caught up: commit what gathered, or keep an idle stream's token fresh.
                    if !pending.is_empty()
                        || high_water_due
                        || saved_at.elapsed() >= IDLE_TOKEN_INTERVAL
                    {
                        self.flush(&mut pending, stream.resume_token(), &mut saved)
                            .await?;
                        saved_at = Instant::now();
                        high_water_due = false;
                    }
                    fresh.caught_up(&self.status);
                    // Nothing is pending: every event before the batch's token is logged.
                    self.logged_through(stream.resume_token().as_ref());
                    if !stream.is_alive() {
                        // The server closed the cursor without an invalidate: open it again.
                        return Err(MongoError::StreamClosed);
                    }
                }
                Err(e) => {
                    // What arrived before the error is covered by the stream's token (the one
                    // after the last whole event, when the error fell inside a split event).
                    let token = match reassembly.in_progress() {
                        true => whole_token,
                        false => stream.resume_token(),
                    };
                    self.flush(&mut pending, token, &mut saved).await?;
                    return Err(self.upstream_error(e).await);
                }
            }
        }
    }

    /// Every event before `token` is in the log: tells the writer's read-your-writes.
    fn logged_through(&self, token: Option<&ResumeToken>) {
        if let Some(time) = token
            .and_then(|t| token_bson(t).ok())
            .and_then(|t| token_time(&t))
        {
            self.logged.advance(time);
        }
    }

    /// Commits the pending changes with the stream's current `token`; with nothing pending,
    /// stores the token alone if it moved.
    async fn flush(
        &self,
        pending: &mut Pending,
        token: Option<ResumeToken>,
        saved: &mut Option<String>,
    ) -> Result<(), MongoError> {
        let Some(token) = token else {
            return Ok(());
        };
        let position = Position::Streaming(token_bson(&token)?).text();
        self.commit(pending, position, saved).await
    }

    /// Commits the pending changes with `position`; with nothing pending, stores the position
    /// alone if it moved.
    async fn commit(
        &self,
        pending: &mut Pending,
        position: String,
        saved: &mut Option<String>,
    ) -> Result<(), MongoError> {
        if pending.is_empty() && saved.as_deref() == Some(position.as_str()) {
            return Ok(());
        }
        let mut txn = self.log.begin().await?;
        for (meta, changes) in std::mem::take(&mut pending.txs) {
            for change in &changes {
                metrics::counter!(
                    telemetry::CHANGES_INGESTED,
                    "source" => self.name.to_string(),
                    "collection" => change.collection.clone()
                )
                .increment(1);
            }
            txn.append(meta, changes).await?;
        }
        pending.changes = 0;
        let started = Instant::now();
        txn.commit(&self.name, position.clone()).await?;
        metrics::histogram!(telemetry::LOG_COMMIT_SECONDS, "source" => self.name.to_string())
            .record(started.elapsed().as_secs_f64());
        self.status
            .send_modify(|s| s.position = Some(position.clone()));
        *saved = Some(position);
        Ok(())
    }
}

impl Source for MongoSource {
    type Error = MongoError;

    fn status(&self) -> &watch::Sender<SourceStatus> {
        &self.status
    }

    async fn session(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<(), MongoError> {
        self.one_session(shutdown).await
    }

    fn classify(error: &MongoError) -> ErrorKind {
        error.kind()
    }
}

/// Changes received but not yet committed, grouped by upstream transaction.
#[derive(Default)]
struct Pending {
    txs: Vec<(Arc<TxMeta>, Vec<Change>)>,
    /// The `lsid:txnNumber` of the last group, when it is a multi-document transaction.
    last_txn: Option<String>,
    changes: usize,
}

impl Pending {
    fn push(&mut self, txn: Option<String>, meta: TxMeta, changes: Vec<Change>) {
        self.changes += changes.len();
        if let (Some(t), Some(last)) = (&txn, &self.last_txn) {
            if t == last {
                if let Some((_, group)) = self.txs.last_mut() {
                    group.extend(changes);
                    return;
                }
            }
        }
        self.last_txn = txn;
        self.txs.push((Arc::new(meta), changes));
    }

    fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }
}

fn token_bson(token: &ResumeToken) -> Result<Bson, MongoError> {
    mongodb::bson::to_bson(token).map_err(|e| MongoError::Token(e.to_string()))
}

/// `$changeStreamSplitLargeEvent` exists from MongoDB 7.0 (and 6.0.9).
async fn supports_split_events(db: &Database) -> Result<bool, MongoError> {
    let info = match db.run_command(doc! {"buildInfo": 1}).await {
        Ok(info) => info,
        Err(e) if matches!(e.kind.as_ref(), DriverErrorKind::Command(_)) => {
            tracing::warn!(error = %e, "buildInfo refused: events over 16 MiB will fail the stream");
            return Ok(false);
        }
        Err(e) => return Err(e.into()),
    };
    let version: Vec<i32> = info
        .get_array("versionArray")
        .map(|v| v.iter().filter_map(Bson::as_i32).collect())
        .unwrap_or_default();
    Ok(match version.as_slice() {
        [major, ..] if *major >= 7 => true,
        [6, 0, patch, ..] => *patch >= 9,
        [6, minor, ..] => *minor > 0,
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 7.0 server's token starts with the event's clusterTime.
    #[test]
    fn token_time_reads_the_cluster_time_a_token_starts_with() {
        let token = Bson::Document(doc! {"_data": "82677A2B3C000000052B022C0100296E5A1004AB"});
        assert_eq!(token_time(&token), Some((0x677A_2B3C << 32) | 5));
        for bad in [doc! {"_data": "01"}, doc! {"_data": "82zz"}, doc! {"x": 1}] {
            assert_eq!(token_time(&Bson::Document(bad)), None);
        }
    }
}
