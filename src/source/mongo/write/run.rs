//! Running planned mutations in multi-document transactions: atomic (one transaction, all or
//! nothing) or each in its own, with the mutation id recorded in `deltarelay_mutations` in the
//! same transaction.

use super::plan::{is_stale, Op, Plan};
use super::LEDGER;
use crate::source::mongo::values::document_to_row;
use crate::source::write::{
    fault_after_commit, Author, Mutation, MutationOp, Outcome, Status, WriteError,
};
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::error::{Error, ErrorKind, WriteFailure, TRANSIENT_TRANSACTION_ERROR};
use mongodb::{ClientSession, Database};
use serde_json::json;

/// One planned mutation of a batch.
pub struct Planned<'a> {
    pub mutation: &'a Mutation,
    pub plan: Plan,
}

/// Why a transaction did not finish.
pub enum Failed {
    /// A write conflict or a concurrent claim of the same id: run the transaction again.
    Retry,
    Write(WriteError),
}

impl From<WriteError> for Failed {
    fn from(e: WriteError) -> Failed {
        Failed::Write(e)
    }
}

/// A failure of the connection, not of a mutation: the outcome is unknown to the client, who
/// may retry with the same ids.
pub fn unavailable(e: Error) -> Failed {
    if e.contains_label(TRANSIENT_TRANSACTION_ERROR) {
        return Failed::Retry;
    }
    Failed::Write(WriteError::Unavailable(format!(
        "the source database could not complete the write ({e}); retrying with the same mutation ids is safe"
    )))
}

/// The server refused a write: a per-mutation status, or a connection failure.
fn refused(m: &Mutation, e: Error) -> Result<Outcome, Failed> {
    let (code, message) = match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => (w.code, w.message.clone()),
        ErrorKind::Command(c) if !e.contains_label(TRANSIENT_TRANSACTION_ERROR) => {
            (c.code, c.message.clone())
        }
        _ => return Err(unavailable(e)),
    };
    // 13: Unauthorized (the source's user may not write there).
    let status = if code == 13 {
        Status::Forbidden
    } else {
        Status::Rejected
    };
    let mut outcome = Outcome::new(&m.id, status, m.key.clone());
    outcome.error = Some(json!({"code": code, "message": message}));
    Ok(outcome)
}

fn is_duplicate_key(e: &Error) -> bool {
    matches!(e.kind.as_ref(), ErrorKind::Write(WriteFailure::WriteError(w)) if w.code == 11000)
}

fn key_row(id: &Bson) -> crate::record::Row {
    super::super::values::key_of(id.clone())
}

/// Runs one mutation inside the session's open transaction. A status other than applied or
/// duplicate leaves the transaction to be aborted.
async fn run_one(
    db: &Database,
    session: &mut ClientSession,
    author: &Author,
    planned: &Planned<'_>,
) -> Result<Outcome, Failed> {
    let m = planned.mutation;
    let op = match &planned.plan {
        Plan::Denied(why) => {
            let mut outcome = Outcome::new(&m.id, Status::Forbidden, m.key.clone());
            outcome.error = Some(json!({"message": why}));
            return Ok(outcome);
        }
        Plan::Run(op) => op,
    };
    let ledger = db.collection::<Document>(LEDGER);
    let ledger_id = doc! {"author": &author.subject, "id": &m.id};
    let found = ledger
        .find_one(doc! {"_id": ledger_id.clone()})
        .session(&mut *session)
        .await
        .map_err(unavailable)?;
    if let Some(found) = found {
        let key = match found.get("key") {
            Some(Bson::Document(key)) => Some(document_to_row(key.clone())),
            _ => None,
        };
        return Ok(Outcome::new(&m.id, Status::Duplicate, key));
    }
    let id = match write(db, session, m, op).await? {
        Ok(id) => id,
        Err(outcome) => return Ok(outcome),
    };
    let record = doc! {
        "_id": ledger_id,
        "collection": &m.collection,
        "key": {"_id": id.clone()},
        "applied_at": DateTime::now(),
    };
    let outcome = Outcome::new(&m.id, Status::Applied, Some(key_row(&id)));
    if let Err(e) = ledger.insert_one(record).session(&mut *session).await {
        // Another request claimed the same id meanwhile: run again to find it applied.
        if is_duplicate_key(&e) {
            return Err(Failed::Retry);
        }
        return refused(m, e);
    }
    Ok(outcome)
}

/// The write itself: `Ok(_id)` when applied, `Err(outcome)` for a conflict, a stale change or
/// a refusal.
async fn write(
    db: &Database,
    session: &mut ClientSession,
    m: &Mutation,
    op: &Op,
) -> Result<Result<Bson, Outcome>, Failed> {
    let coll = db.collection::<Document>(&op.collection);
    if op.kind == MutationOp::Insert {
        return match coll
            .insert_one(op.document.clone())
            .session(&mut *session)
            .await
        {
            Ok(_) => Ok(Ok(op.document.get("_id").cloned().unwrap_or(Bson::Null))),
            Err(e) => Ok(Err(refused(m, e)?)),
        };
    }
    let id = op.filter.get("_id").cloned().unwrap_or(Bson::Null);
    // The document as this transaction sees it: gone or not the caller's is a conflict with
    // `current: null` (delete wins), an older change is stale.
    let current = coll
        .find_one(op.filter.clone())
        .session(&mut *session)
        .await
        .map_err(unavailable)?;
    let conflict = |status: Status, current: Option<Document>| {
        let mut outcome = Outcome::new(&m.id, status, m.key.clone());
        outcome.current = Some(current.map(document_to_row));
        outcome
    };
    let Some(current) = current else {
        return Ok(Err(conflict(Status::Conflict, None)));
    };
    if let Some((field, at)) = &op.lww {
        if is_stale(current.get(field), *at) {
            return Ok(Err(conflict(Status::Stale, Some(current))));
        }
    }
    let mut filter = op.filter.clone();
    filter.extend(op.expect.clone());
    let matched = match op.kind {
        MutationOp::Update => coll
            .update_one(filter, op.update.clone())
            .session(&mut *session)
            .await
            .map(|r| r.matched_count),
        _ => coll
            .delete_one(filter)
            .session(&mut *session)
            .await
            .map(|r| r.deleted_count),
    };
    match matched {
        Ok(0) => Ok(Err(conflict(Status::Conflict, Some(current)))),
        Ok(_) => Ok(Ok(id)),
        Err(e) => Ok(Err(refused(m, e)?)),
    }
}

/// All in one transaction: the first mutation that is not applied rolls everything back.
pub async fn atomic(
    db: &Database,
    session: &mut ClientSession,
    author: &Author,
    batch: &[Planned<'_>],
) -> Result<Vec<Outcome>, Failed> {
    session.start_transaction().await.map_err(unavailable)?;
    let mut results: Vec<Outcome> = Vec::with_capacity(batch.len());
    let mut failed = false;
    for planned in batch {
        if failed {
            let m = planned.mutation;
            results.push(Outcome::new(&m.id, Status::RolledBack, m.key.clone()));
            continue;
        }
        let outcome = match run_one(db, session, author, planned).await {
            Ok(outcome) => outcome,
            Err(e) => {
                let _ = session.abort_transaction().await;
                return Err(e);
            }
        };
        failed = !outcome.status.is_applied();
        results.push(outcome);
    }
    if failed {
        // Errors of an abort are the server's business (it aborts on a failed write itself).
        let _ = session.abort_transaction().await;
        for outcome in &mut results {
            if outcome.status == Status::Applied {
                outcome.status = Status::RolledBack;
            }
        }
        return Ok(results);
    }
    session.commit_transaction().await.map_err(unavailable)?;
    fault_after_commit();
    Ok(results)
}

/// One mutation in its own transaction.
pub async fn single(
    db: &Database,
    session: &mut ClientSession,
    author: &Author,
    planned: &Planned<'_>,
) -> Result<Outcome, Failed> {
    session.start_transaction().await.map_err(unavailable)?;
    let outcome = match run_one(db, session, author, planned).await {
        Ok(outcome) => outcome,
        Err(e) => {
            let _ = session.abort_transaction().await;
            return Err(e);
        }
    };
    if outcome.status == Status::Applied {
        session.commit_transaction().await.map_err(unavailable)?;
        fault_after_commit();
    } else {
        let _ = session.abort_transaction().await;
    }
    Ok(outcome)
}
