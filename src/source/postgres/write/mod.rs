//! Writes into a Postgres source (`POST /v1/mutations`): the [`Writer`] of a Postgres source.
//!
//! A separate pool of ordinary connections ([`pool`]); table shapes from the catalog
//! ([`table`]); each mutation planned into SQL with bound parameters ([`plan`], [`encode`]);
//! run atomically or one by one with its id recorded in `deltarelay.mutations` in the same
//! transaction ([`run`], [`ledger`]). Read-your-writes: after the transaction the writer reads
//! the server's WAL insert position, which is at or after its commit, and waits until the
//! replication session has logged everything up to it ([`logged`]).

pub mod encode;
mod ledger;
mod plan;
mod pool;
mod run;
mod table;

use super::tls::PgTls;
use super::Lsn;
use crate::config::{split_table_name, WritesConfig};
use crate::source::logged::LoggedThrough;
use crate::source::write::{Applied, Author, CommitMark, Mutation, WriteError, Writer};
use futures_util::future::BoxFuture;
use pool::Pool;
use run::Planned;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use table::Table;
use tokio::sync::OnceCell;

/// Applied ids older than the retention are purged every half retention, within these bounds.
const PURGE_EVERY_MIN: Duration = Duration::from_secs(1);
const PURGE_EVERY_MAX: Duration = Duration::from_secs(3600);

pub struct PgWriter {
    name: String,
    tables: Vec<String>,
    all_tables: bool,
    pool: Pool,
    logged: Arc<LoggedThrough>,
    retention: Duration,
    /// Table shapes by collection; dropped when a statement says the shape changed.
    shapes: Mutex<HashMap<String, Arc<Table>>>,
    ledger_ready: OnceCell<()>,
}

impl PgWriter {
    pub fn new(
        name: &str,
        pg_config: tokio_postgres::Config,
        tls: PgTls,
        tables: Vec<String>,
        all_tables: bool,
        writes: &WritesConfig,
        logged: Arc<LoggedThrough>,
    ) -> PgWriter {
        PgWriter {
            name: name.to_string(),
            tables,
            all_tables,
            pool: Pool::new(pg_config, tls, writes.pool_size),
            logged,
            retention: writes.idempotency_retention,
            shapes: Mutex::new(HashMap::new()),
            ledger_ready: OnceCell::new(),
        }
    }

    /// Purges expired ids now and then, for as long as the writer lives.
    pub fn spawn_purger(self: &Arc<Self>) {
        let writer = Arc::downgrade(self);
        let every = (self.retention / 2).clamp(PURGE_EVERY_MIN, PURGE_EVERY_MAX);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(writer) = writer.upgrade() else {
                    return;
                };
                if writer.ledger_ready.get().is_none() {
                    continue;
                }
                let purged = match writer.pool.get().await {
                    Ok(conn) => {
                        let purged = ledger::purge(conn.client(), writer.retention).await;
                        let mut conn = conn;
                        conn.reusable();
                        purged
                    }
                    Err(e) => Err(e),
                };
                match purged {
                    Ok(n) => {
                        tracing::debug!(source = %writer.name, purged = n, "expired mutation ids purged")
                    }
                    Err(e) => {
                        tracing::warn!(source = %writer.name, error = %e, "purging expired mutation ids failed")
                    }
                }
            }
        });
    }

    async fn shape(
        &self,
        client: &tokio_postgres::Client,
        index: usize,
        collection: &str,
    ) -> Result<Arc<Table>, WriteError> {
        if let Some(table) = self
            .shapes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(collection)
        {
            return Ok(table.clone());
        }
        let table = Table::load(client, collection)
            .await
            .map_err(|e| WriteError::Unavailable(format!("reading the catalog: {e}")))?
            .ok_or_else(|| WriteError::UnknownCollection {
                index,
                collection: collection.to_string(),
            })?;
        let table = Arc::new(table);
        self.shapes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(collection.to_string(), table.clone());
        Ok(table)
    }

    /// Every mutation planned, or the first problem with the batch's shape.
    async fn plan_all<'m>(
        &self,
        client: &tokio_postgres::Client,
        mutations: &'m [Mutation],
    ) -> Result<Vec<Planned<'m>>, WriteError> {
        let mut planned = Vec::with_capacity(mutations.len());
        for (index, mutation) in mutations.iter().enumerate() {
            let table = self.shape(client, index, &mutation.collection).await?;
            planned.push(Planned {
                mutation,
                plan: plan::plan(index, mutation, table)?,
            });
        }
        Ok(planned)
    }

    async fn apply_batch(
        &self,
        author: &Author,
        mutations: &[Mutation],
        atomic: bool,
    ) -> Result<Applied, WriteError> {
        let unavailable = |e: tokio_postgres::Error| {
            WriteError::Unavailable(format!(
                "source {} is not reachable for writes: {}",
                self.name,
                super::pg_error::describe(&e)
            ))
        };
        let mut conn = self.pool.get().await.map_err(unavailable)?;
        if self.ledger_ready.get().is_none() {
            ledger::ensure(conn.client()).await.map_err(unavailable)?;
            let _ = ledger::purge(conn.client(), self.retention).await;
            let _ = self.ledger_ready.set(());
        }
        let planned = match self.plan_all(conn.client(), mutations).await {
            Ok(planned) => planned,
            Err(e) => {
                // Bad input: no transaction was opened, the connection serves the next one.
                if !matches!(e, WriteError::Unavailable(_)) {
                    conn.reusable();
                }
                return Err(e);
            }
        };
        let (client, prepared) = conn.parts();
        let results = if atomic {
            run::atomic(client, prepared, author, &planned).await?
        } else {
            run::each(client, prepared, author, &planned).await?
        };
        // A schema change since the shape was read: read it again next time.
        let stale_shape = results.iter().any(|r| {
            r.error
                .as_ref()
                .and_then(|e| e.get("code"))
                .and_then(|c| c.as_str())
                .is_some_and(|c| matches!(c, "42703" | "42804" | "42P01" | "0A000"))
        });
        if stale_shape {
            self.shapes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
            conn.parts().1.clear();
        }
        let mark = if results.iter().any(|r| r.status.is_applied()) {
            // At or after the commit of every mutation applied now or found applied.
            let row = conn
                .client()
                .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
                .await
                .map_err(unavailable)?;
            let text: String = row.get(0);
            let lsn: Lsn = text.parse().map_err(|e| {
                WriteError::Unavailable(format!("the server's WAL position {text:?}: {e}"))
            })?;
            Some(CommitMark(lsn.0))
        } else {
            None
        };
        conn.reusable();
        Ok(Applied { results, mark })
    }
}

impl Writer for PgWriter {
    fn source(&self) -> &str {
        &self.name
    }

    fn holds(&self, collection: &str) -> bool {
        if self.all_tables {
            split_table_name(collection).is_some_and(|(schema, _)| schema != "deltarelay")
        } else {
            self.tables.iter().any(|t| t == collection)
        }
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
