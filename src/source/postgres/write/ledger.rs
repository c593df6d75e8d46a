//! `deltarelay.mutations`: the ids of applied mutations, written in the same upstream
//! transaction as the mutation itself, so that a retried id is found applied exactly when the
//! mutation is.

use super::pool::Statements;
use crate::record::Row;
use std::time::Duration;
use tokio_postgres::{Client, GenericClient};

const CLAIM: &str = "INSERT INTO deltarelay.mutations (author, id, collection) VALUES ($1, $2, $3)
             ON CONFLICT (author, id) DO NOTHING";
const RECORD_KEY: &str =
    "UPDATE deltarelay.mutations SET key = $3::text::jsonb WHERE author = $1 AND id = $2";

/// Creates the schema and table when missing (under a lock: writers may start together).
const CREATE: &str = "BEGIN;
SELECT pg_advisory_xact_lock(hashtext('deltarelay.mutations'));
CREATE SCHEMA IF NOT EXISTS deltarelay;
CREATE TABLE IF NOT EXISTS deltarelay.mutations (
    author text NOT NULL,
    id text NOT NULL,
    collection text NOT NULL,
    key jsonb,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (author, id)
);
CREATE INDEX IF NOT EXISTS mutations_applied_at ON deltarelay.mutations (applied_at);
COMMIT;";

pub async fn ensure(client: &Client) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(CREATE).await
}

/// Forgets ids applied longer than `retention` ago. Returns how many.
pub async fn purge(client: &Client, retention: Duration) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "DELETE FROM deltarelay.mutations WHERE applied_at < now() - make_interval(secs => $1)",
            &[&(retention.as_secs_f64())],
        )
        .await
}

/// Claims `id` for `author` in the open transaction. `Ok(None)`: newly claimed; `Ok(Some(key))`:
/// applied before (a concurrent claim of the same id waits here until that transaction ends).
pub async fn claim(
    tx: &impl GenericClient,
    statements: &mut Statements,
    author: &str,
    id: &str,
    collection: &str,
) -> Result<Option<Option<Row>>, tokio_postgres::Error> {
    let claim = statements.get(tx, CLAIM).await?;
    let inserted = tx.execute(&claim, &[&author, &id, &collection]).await?;
    if inserted == 1 {
        return Ok(None);
    }
    let row = tx
        .query_opt(
            "SELECT key::text FROM deltarelay.mutations WHERE author = $1 AND id = $2",
            &[&author, &id],
        )
        .await?;
    let key = row
        .and_then(|r| r.get::<_, Option<String>>(0))
        .and_then(|text| serde_json::from_str(&text).ok());
    Ok(Some(key))
}

/// Stores the applied mutation's key with its id (the result a retry gets back).
pub async fn record_key(
    tx: &impl GenericClient,
    statements: &mut Statements,
    author: &str,
    id: &str,
    key: &Row,
) -> Result<(), tokio_postgres::Error> {
    let key = serde_json::Value::Object(key.clone()).to_string();
    let record = statements.get(tx, RECORD_KEY).await?;
    tx.execute(&record, &[&author, &id, &key]).await?;
    Ok(())
}
