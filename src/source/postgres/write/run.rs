//! Running planned mutations upstream: atomic (one transaction, all or nothing) or each in its
//! own transaction, with the mutation ids recorded in the same transaction.

use super::ledger;
use super::plan::{key_of, Plan, Statements};
use super::pool::Statements as Prepared;
use crate::source::write::{fault_after_commit, Author, Mutation, Outcome, Status, WriteError};
use serde_json::{json, Value};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient};

/// One planned mutation of a batch.
pub struct Planned<'a> {
    pub mutation: &'a Mutation,
    pub plan: Plan,
}

/// A failure of the connection, not of a mutation: the outcome is unknown to the client, who
/// may retry with the same ids.
fn unavailable(e: tokio_postgres::Error) -> WriteError {
    WriteError::Unavailable(format!(
        "the source database could not complete the write ({}); retrying with the same mutation ids is safe",
        super::super::pg_error::describe(&e)
    ))
}

/// The database refused a statement: a per-mutation status, or a connection failure.
fn refused(m: &Mutation, e: tokio_postgres::Error) -> Result<Outcome, WriteError> {
    let Some(db) = e.as_db_error() else {
        return Err(unavailable(e));
    };
    let code = db.code().code();
    // 42501: a privilege or a row-level security policy said no.
    let status = if code == "42501" {
        Status::Forbidden
    } else {
        Status::Rejected
    };
    let mut outcome = Outcome::new(&m.id, status, m.key.clone());
    outcome.error = Some(json!({
        "code": code,
        "constraint": db.constraint(),
        "message": db.message(),
    }));
    Ok(outcome)
}

fn params(values: &[Option<String>]) -> Vec<&(dyn ToSql + Sync)> {
    values.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

/// Runs one mutation inside the open transaction `tx`. A status other than applied or
/// duplicate leaves the transaction to be rolled back (it may be aborted).
async fn run_one(
    tx: &impl GenericClient,
    prepared: &mut Prepared,
    author: &Author,
    claims: &str,
    planned: &Planned<'_>,
) -> Result<Outcome, WriteError> {
    let m = planned.mutation;
    let statements = match &planned.plan {
        Plan::Denied(why) => {
            let mut outcome = Outcome::new(&m.id, Status::Forbidden, m.key.clone());
            outcome.error = Some(json!({"message": why}));
            return Ok(outcome);
        }
        Plan::Run(statements) => statements,
    };
    match ledger::claim(tx, prepared, &author.subject, &m.id, &m.collection).await {
        Ok(None) => {}
        Ok(Some(key)) => return Ok(Outcome::new(&m.id, Status::Duplicate, key)),
        Err(e) => return refused(m, e),
    }
    if let Some(role) = &statements.role {
        let set = async {
            tx.batch_execute(&format!("SET LOCAL ROLE {role}")).await?;
            tx.execute(
                "SELECT set_config('request.jwt.claims', $1, true)",
                &[&claims],
            )
            .await
        };
        if let Err(e) = set.await {
            return refused(m, e);
        }
    }
    let write = match prepared.get(tx, &statements.write.text).await {
        Ok(write) => write,
        Err(e) => return refused(m, e),
    };
    let written = match tx.query(&write, &params(&statements.write.params)).await {
        Ok(rows) => rows,
        Err(e) => return refused(m, e),
    };
    let outcome = match written.first() {
        Some(row) => Outcome::new(&m.id, Status::Applied, Some(key_of(&statements.table, row))),
        None => match probe(tx, prepared, m, statements).await {
            Ok(outcome) => outcome,
            Err(e) => return refused(m, e),
        },
    };
    if statements.role.is_some() {
        if let Err(e) = tx.batch_execute("SET LOCAL ROLE NONE").await {
            return refused(m, e);
        }
    }
    if let (Status::Applied, Some(key)) = (outcome.status, &outcome.key) {
        if let Err(e) = ledger::record_key(tx, prepared, &author.subject, &m.id, key).await {
            return refused(m, e);
        }
    }
    Ok(outcome)
}

/// Why the write found no row: gone (or not the caller's: conflict, `current: null`), older
/// than what is stored (stale), or an `if` that does not hold (conflict with the row).
async fn probe(
    tx: &impl GenericClient,
    prepared: &mut Prepared,
    m: &Mutation,
    statements: &Statements,
) -> Result<Outcome, tokio_postgres::Error> {
    let table = &statements.table;
    let probe = prepared.get(tx, &statements.probe.text).await?;
    let row = tx
        .query_opt(&probe, &params(&statements.probe.params))
        .await?;
    let current = row
        .as_ref()
        .map(|r| table.row_from_text(&table.all_columns(), r));
    let stale = statements.probes_staleness
        && row
            .as_ref()
            .and_then(|r| r.get::<_, Option<bool>>(table.columns.len()))
            .unwrap_or(false);
    let status = if stale {
        Status::Stale
    } else {
        Status::Conflict
    };
    let mut outcome = Outcome::new(&m.id, status, m.key.clone());
    outcome.current = Some(current);
    Ok(outcome)
}

/// All in one transaction: the first mutation that is not applied rolls everything back.
pub async fn atomic(
    client: &mut Client,
    prepared: &mut Prepared,
    author: &Author,
    batch: &[Planned<'_>],
) -> Result<Vec<Outcome>, WriteError> {
    let claims = Value::Object(author.claims.clone()).to_string();
    let tx = client.transaction().await.map_err(unavailable)?;
    let mut results: Vec<Outcome> = Vec::with_capacity(batch.len());
    let mut failed = false;
    for planned in batch {
        if failed {
            let m = planned.mutation;
            results.push(Outcome::new(&m.id, Status::RolledBack, m.key.clone()));
            continue;
        }
        let outcome = run_one(&tx, prepared, author, &claims, planned).await?;
        failed = !outcome.status.is_applied();
        results.push(outcome);
    }
    if failed {
        tx.rollback().await.map_err(unavailable)?;
        for outcome in &mut results {
            if outcome.status == Status::Applied {
                outcome.status = Status::RolledBack;
            }
        }
        return Ok(results);
    }
    if let Err(e) = tx.commit().await {
        // A deferred constraint, or a lost connection (then nobody knows: retry).
        let Some(db) = e.as_db_error() else {
            return Err(unavailable(e));
        };
        let error = json!({"code": db.code().code(), "constraint": db.constraint(), "message": db.message()});
        for outcome in &mut results {
            if outcome.status == Status::Applied {
                outcome.status = Status::Rejected;
                outcome.error = Some(error.clone());
            }
        }
        return Ok(results);
    }
    fault_after_commit();
    Ok(results)
}

/// Each mutation in its own transaction.
pub async fn each(
    client: &mut Client,
    prepared: &mut Prepared,
    author: &Author,
    batch: &[Planned<'_>],
) -> Result<Vec<Outcome>, WriteError> {
    let claims = Value::Object(author.claims.clone()).to_string();
    let mut results = Vec::with_capacity(batch.len());
    for planned in batch {
        let tx = client.transaction().await.map_err(unavailable)?;
        let mut outcome = run_one(&tx, prepared, author, &claims, planned).await?;
        if outcome.status == Status::Applied {
            if let Err(e) = tx.commit().await {
                outcome = refused(planned.mutation, e)?;
            } else {
                fault_after_commit();
            }
        } else {
            tx.rollback().await.map_err(unavailable)?;
        }
        results.push(outcome);
    }
    Ok(results)
}
