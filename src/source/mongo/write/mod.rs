//! Writes into a MongoDB source (`POST /v1/mutations`): the [`Writer`] of a MongoDB source.
//!
//! On the source's own client (its pool, not the change stream's cursor): each mutation
//! planned into BSON operations ([`plan`]), run in a multi-document transaction with its id
//! recorded in `deltarelay_mutations` ({_id: {author, id}}, a TTL index on `applied_at` forgets
//! it after the retention) in the same transaction ([`run`]). Read-your-writes: the commit's
//! `operationTime` is waited for until the change stream has logged past it (the session
//! publishes the clusterTime of the resume token of every batch that came back empty, when
//! everything before it is in the log).

mod plan;
mod run;

use crate::config::WritesConfig;
use crate::source::logged::LoggedThrough;
use crate::source::write::{Applied, Author, CommitMark, Mutation, WriteError, Writer};
use futures_util::future::BoxFuture;
use mongodb::bson::{doc, Document, Timestamp};
use mongodb::options::IndexOptions;
use mongodb::{Client, IndexModel};
use run::{Failed, Planned};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

/// The collection of applied mutation ids, in the source's database. Never synced.
pub const LEDGER: &str = "deltarelay_mutations";

/// How often a transaction is run again after a write conflict or a concurrent claim.
const RETRIES: usize = 3;

/// A clusterTime as a [`CommitMark`]: seconds, then the increment.
pub fn mark_of(t: Timestamp) -> u64 {
    (u64::from(t.time) << 32) | u64::from(t.increment)
}

pub struct MongoWriter {
    name: String,
    database: String,
    /// The configured collections; `None`: every collection but `system.*` and the ledger.
    collections: Option<HashSet<String>>,
    client: Arc<OnceCell<Client>>,
    url: String,
    logged: Arc<LoggedThrough>,
    retention: Duration,
    ledger_ready: OnceCell<()>,
}

impl MongoWriter {
    pub fn new(
        name: &str,
        database: &str,
        collections: Option<HashSet<String>>,
        url: &str,
        client: Arc<OnceCell<Client>>,
        writes: &WritesConfig,
        logged: Arc<LoggedThrough>,
    ) -> MongoWriter {
        MongoWriter {
            name: name.to_string(),
            database: database.to_string(),
            collections,
            client,
            url: url.to_string(),
            logged,
            retention: writes.idempotency_retention,
            ledger_ready: OnceCell::new(),
        }
    }

    /// The collection's name in the database, for `<database>.<collection>` as the log names
    /// it, when this source holds it.
    fn local_name<'c>(&self, collection: &'c str) -> Option<&'c str> {
        let name = collection
            .strip_prefix(self.database.as_str())?
            .strip_prefix('.')?;
        let held = match &self.collections {
            Some(list) => list.contains(name),
            None => !name.is_empty() && !name.starts_with("system."),
        };
        (held && name != LEDGER).then_some(name)
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> WriteError {
        WriteError::Unavailable(format!(
            "source {} is not reachable for writes: {e}",
            self.name
        ))
    }

    /// The ledger's TTL index, once per process.
    async fn ensure_ledger(&self, client: &Client) -> Result<(), WriteError> {
        self.ledger_ready
            .get_or_try_init(|| async {
                let index = IndexModel::builder()
                    .keys(doc! {"applied_at": 1})
                    .options(
                        IndexOptions::builder()
                            .name("applied_at_ttl".to_string())
                            .expire_after(self.retention)
                            .build(),
                    )
                    .build();
                let ledger = client.database(&self.database).collection::<Document>(LEDGER);
                match ledger.create_index(index).await {
                    Ok(_) => Ok(()),
                    // 85/86: the index exists with another retention; it keeps that one.
                    Err(e) if matches!(e.kind.as_ref(), mongodb::error::ErrorKind::Command(c) if c.code == 85 || c.code == 86) => {
                        tracing::warn!(source = %self.name, error = %e, "the TTL index of deltarelay_mutations has another retention than writes.idempotency_retention: drop the index applied_at_ttl to change it");
                        Ok(())
                    }
                    Err(e) => Err(self.unavailable(e)),
                }
            })
            .await
            .map(|_| ())
    }

    async fn apply_batch(
        &self,
        author: &Author,
        mutations: &[Mutation],
        atomic: bool,
    ) -> Result<Applied, WriteError> {
        // Bad input first: no transaction for a batch with a shape problem.
        let mut planned = Vec::with_capacity(mutations.len());
        for (index, mutation) in mutations.iter().enumerate() {
            let Some(name) = self.local_name(&mutation.collection) else {
                return Err(WriteError::UnknownCollection {
                    index,
                    collection: mutation.collection.clone(),
                });
            };
            planned.push(Planned {
                mutation,
                plan: plan::plan(index, name, mutation)?,
            });
        }
        let client = self
            .client
            .get_or_try_init(|| super::session::connect(&self.url))
            .await
            .map_err(|e| self.unavailable(e))?;
        self.ensure_ledger(client).await?;
        let db = client.database(&self.database);
        let mut session = client
            .start_session()
            .await
            .map_err(|e| self.unavailable(e))?;
        let mut results = Vec::with_capacity(planned.len());
        if atomic {
            let mut left = RETRIES;
            results = loop {
                match run::atomic(&db, &mut session, author, &planned).await {
                    Ok(done) => break done,
                    Err(failed) => retry_or(failed, &mut left)?,
                }
            };
        } else {
            for one in &planned {
                let mut left = RETRIES;
                let outcome = loop {
                    match run::single(&db, &mut session, author, one).await {
                        Ok(done) => break done,
                        Err(failed) => retry_or(failed, &mut left)?,
                    }
                };
                results.push(outcome);
            }
        }
        // The session's operationTime is at or after every commit it made or read.
        let mark = results
            .iter()
            .any(|r| r.status.is_applied())
            .then(|| session.operation_time().map(|t| CommitMark(mark_of(t))))
            .flatten();
        Ok(Applied { results, mark })
    }
}

/// After a failed transaction: `Ok` to run it again (a write conflict or a concurrent claim of
/// the same id, at most [`RETRIES`] times), the error otherwise.
fn retry_or(failed: Failed, left: &mut usize) -> Result<(), WriteError> {
    match failed {
        Failed::Write(e) => Err(e),
        Failed::Retry if *left == 0 => Err(WriteError::Unavailable(
            "the write kept conflicting with concurrent writes; retrying with the same mutation ids is safe".into(),
        )),
        Failed::Retry => {
            *left -= 1;
            Ok(())
        }
    }
}

impl Writer for MongoWriter {
    fn source(&self) -> &str {
        &self.name
    }

    fn holds(&self, collection: &str) -> bool {
        self.local_name(collection).is_some()
    }

    fn apply<'a>(
        &'a self,
        author: &'a Author,
        mutations: &'a [Mutation],
        atomic: bool,
    ) -> BoxFuture<'a, Result<Applied, WriteError>> {
        Box::pin(self.apply_batch(author, mutations, atomic))
    }

    fn wait_visible(&self, mark: CommitMark, timeout: Duration) -> BoxFuture<'_, bool> {
        Box::pin(self.logged.wait(mark.0, timeout))
    }
}
