//! Copying collections into the log: on first start, after lost history, for collections
//! added to the config, and for the target of a rename.

use super::position::Position;
use super::session::{MongoError, MongoSource};
use super::values::{document_to_row, key_of};
use crate::record::{Change, Op, TxMeta};
use crate::source::CopyState;
use crate::time::unix_millis_to_rfc3339;
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::Database;
use std::sync::Arc;
use std::time::Instant;

/// Documents per local commit while copying, and per `find` batch.
const COPY_BATCH: usize = 2_000;

impl MongoSource {
    async fn collections_to_copy(&self, db: &Database) -> Result<Vec<String>, MongoError> {
        let mut names: Vec<String> = match &self.mapper.collections {
            Some(list) => list
                .iter()
                .filter(|c| self.mapper.synced(c))
                .cloned()
                .collect(),
            None => db
                .list_collection_names()
                .filter(doc! {"type": "collection"})
                .await?
                .into_iter()
                .filter(|c| self.mapper.synced(c))
                .collect(),
        };
        names.sort();
        Ok(names)
    }

    /// Copies every synced collection, then stores `token` as the streaming position.
    pub(super) async fn copy_all(&self, db: &Database, token: Bson) -> Result<(), MongoError> {
        let names = self.collections_to_copy(db).await?;
        let copying = Position::Copying(token.clone()).text();
        let started = Instant::now();
        self.status.send_modify(|s| {
            s.initial_copy = Default::default();
            s.initial_copy.state = CopyState::Copying;
            s.initial_copy.tables_total = names.len();
        });
        tracing::info!(source = %self.name, collections = ?names, "copying existing documents");
        let mut estimated = 0;
        for name in &names {
            estimated += db
                .collection::<Document>(name)
                .estimated_document_count()
                .await
                .unwrap_or(0);
        }
        self.status
            .send_modify(|s| s.initial_copy.rows_estimated = Some(estimated));
        for name in &names {
            self.copy_collection(db, name, &copying, started).await?;
            self.status.send_modify(|s| s.initial_copy.tables_done += 1);
        }
        let position = Position::Streaming(token).text();
        self.log
            .begin()
            .await?
            .commit(&self.name, position.clone())
            .await?;
        self.store_collection_set().await?;
        self.status.send_modify(|s| {
            s.initial_copy.state = CopyState::Done;
            s.initial_copy.current = None;
            s.initial_copy.eta_seconds = Some(0);
            s.position = Some(position);
        });
        tracing::info!(source = %self.name, seconds = started.elapsed().as_secs_f64(), "copy done");
        Ok(())
    }

    /// Copies `collections` again (the targets of a rename) under the position
    /// [`Position::Recopying`], then stores `token`, the stream's position just after the
    /// rename, and returns that position's text. A copy cut short is done again from the start.
    pub(super) async fn recopy(
        &self,
        db: &Database,
        collections: &[String],
        token: Bson,
    ) -> Result<String, MongoError> {
        let marker = Position::Recopying {
            collections: collections.to_vec(),
            token: token.clone(),
        }
        .text();
        let started = Instant::now();
        for name in collections {
            self.copy_collection(db, name, &marker, started).await?;
        }
        let position = Position::Streaming(token).text();
        self.log
            .begin()
            .await?
            .commit(&self.name, position.clone())
            .await?;
        self.status
            .send_modify(|s| s.position = Some(position.clone()));
        Ok(position)
    }

    /// The position key under which the configured collections of the last copy are kept.
    fn collection_set_key(&self) -> String {
        format!("{}#collections", self.name)
    }

    /// The configured collections, as stored: sorted names or `["*"]`.
    fn collection_set(&self) -> Vec<String> {
        let mut set: Vec<String> = match &self.mapper.collections {
            Some(list) => list.iter().cloned().collect(),
            None => vec!["*".into()],
        };
        set.sort();
        set
    }

    async fn store_collection_set(&self) -> Result<(), MongoError> {
        let text = serde_json::Value::from(self.collection_set()).to_string();
        self.log
            .begin()
            .await?
            .commit(&self.collection_set_key(), text)
            .await?;
        Ok(())
    }

    /// After a config change: copies collections synced now but not before and removes the
    /// entries of collections no longer synced. `position` is the stored streaming position.
    pub(super) async fn sync_collection_set(
        &self,
        db: &Database,
        position: &str,
    ) -> Result<(), MongoError> {
        let stored: Option<Vec<String>> = self
            .log
            .position(&self.collection_set_key())
            .await?
            .and_then(|text| serde_json::from_str(&text).ok());
        let Some(stored) = stored else {
            return self.store_collection_set().await;
        };
        if stored == self.collection_set() {
            return Ok(());
        }
        let stored_all = stored.iter().any(|c| c == "*");
        let (to_copy, to_remove): (Vec<String>, Vec<String>) = if stored_all {
            let existing = db.list_collection_names().await?;
            (
                vec![],
                existing
                    .into_iter()
                    .filter(|c| !self.mapper.synced(c))
                    .collect(),
            )
        } else {
            let now = self.collections_to_copy(db).await?;
            (
                now.into_iter().filter(|c| !stored.contains(c)).collect(),
                stored
                    .into_iter()
                    .filter(|c| !self.mapper.synced(c))
                    .collect(),
            )
        };
        tracing::info!(source = %self.name, copy = ?to_copy, remove = ?to_remove, "the configured collections changed");
        // Removed collections leave the log first, so that a client never sees the added ones
        // copied while the removed ones linger (a crash in between repeats the removal).
        if !to_remove.is_empty() {
            let mut txn = self.log.begin().await?;
            for name in &to_remove {
                txn.remove_collection(&self.mapper.qualified(name)).await?;
            }
            txn.commit(&self.name, position.to_string()).await?;
        }
        let started = Instant::now();
        self.status.send_modify(|s| {
            s.initial_copy = Default::default();
            s.initial_copy.state = CopyState::Copying;
            s.initial_copy.tables_total = to_copy.len();
        });
        for name in &to_copy {
            self.copy_collection(db, name, position, started).await?;
            self.status.send_modify(|s| s.initial_copy.tables_done += 1);
        }
        self.store_collection_set().await
    }

    /// Copies one collection in `_id` order, committing every [`COPY_BATCH`] documents with
    /// `position`. Returns the number of documents copied.
    pub(super) async fn copy_collection(
        &self,
        db: &Database,
        name: &str,
        position: &str,
        started: Instant,
    ) -> Result<u64, MongoError> {
        let collection = self.mapper.qualified(name);
        self.status
            .send_modify(|s| s.initial_copy.current = Some(collection.clone()));
        let meta = Arc::new(TxMeta {
            source: self.name.clone(),
            commit_time: unix_millis_to_rfc3339(mongodb::bson::DateTime::now().timestamp_millis()),
            id: "copy".into(),
            position: position.to_string(),
        });
        let mut cursor = db
            .collection::<Document>(name)
            .find(doc! {})
            .sort(doc! {"_id": 1})
            .batch_size(COPY_BATCH as u32)
            .await?;
        let mut batch = Vec::with_capacity(COPY_BATCH);
        let mut copied = 0u64;
        loop {
            let next = cursor.try_next().await?;
            let done = next.is_none();
            if let Some(document) = next {
                let id = document.get("_id").cloned().unwrap_or(Bson::Null);
                batch.push(Change {
                    collection: collection.clone(),
                    op: Op::Insert,
                    key: Some(key_of(id)),
                    after: Some(document_to_row(document)),
                    ..Change::default()
                });
            }
            if batch.len() >= COPY_BATCH || (done && !batch.is_empty()) {
                let n = batch.len() as u64;
                let mut txn = self.log.begin().await?;
                txn.append(meta.clone(), std::mem::take(&mut batch)).await?;
                txn.commit(&self.name, position.to_string()).await?;
                copied += n;
                self.status.send_modify(|s| {
                    let p = &mut s.initial_copy;
                    p.rows_copied += n;
                    let rate = p.rows_copied as f64 / started.elapsed().as_secs_f64().max(0.001);
                    p.rows_per_second = Some(rate);
                    p.eta_seconds = p
                        .rows_estimated
                        .map(|total| (total.saturating_sub(p.rows_copied) as f64 / rate) as u64);
                });
            }
            if done {
                return Ok(copied);
            }
        }
    }
}
