//! The writer seam: how `POST /v1/mutations` reaches a source's database, whatever its kind.
//!
//! The HTTP layer parses and authorizes a batch, then hands it to the [`Writer`] of the source
//! that holds its collections. The writer applies it upstream (recording mutation ids in the
//! same upstream transaction, so a retried id is never applied twice) and returns a
//! [`CommitMark`]; [`Writer::wait_visible`] resolves once the source has logged everything
//! up to that mark (read-your-writes).

use crate::config::WriteConfig;
use crate::record::Row;
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde_json::Value;
use std::time::Duration;

/// The caller of a batch.
#[derive(Debug, Clone)]
pub struct Author {
    /// Mutation ids are unique per author: the token's subject, or the client address.
    pub subject: String,
    /// The verified claims (an empty object without auth), for `request.jwt.claims`.
    pub claims: serde_json::Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MutationOp {
    Insert,
    Update,
    Delete,
}

/// What the caller may do to a mutation's collection, as the HTTP layer decided it.
#[derive(Debug, Clone)]
pub enum Permit {
    /// Allowed; updates and deletes reach only rows whose `column` holds `value`, and inserts
    /// get it.
    Allowed {
        rules: WriteConfig,
        scope: Option<Scope>,
    },
    /// Not allowed (the reason is for the client).
    Denied(String),
}

#[derive(Debug, Clone)]
pub struct Scope {
    pub column: String,
    /// The scope value as text (a claim's string or number).
    pub value: String,
}

/// One mutation of a batch, checked for shape.
#[derive(Debug, Clone)]
pub struct Mutation {
    pub id: String,
    pub collection: String,
    pub op: MutationOp,
    /// Update/delete: the row's identity.
    pub key: Option<Row>,
    /// Insert: the row; update: the changed columns.
    pub value: Option<Row>,
    /// Expected current values (optimistic locking).
    pub expect: Option<Row>,
    /// The client's time of the change, RFC 3339 (for `last_write_wins`).
    pub at: Option<String>,
    pub permit: Permit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Applied,
    Duplicate,
    Conflict,
    Stale,
    Rejected,
    Forbidden,
    RolledBack,
}

impl Status {
    /// Applied now or before: neither rolls an atomic batch back.
    pub fn is_applied(self) -> bool {
        matches!(self, Status::Applied | Status::Duplicate)
    }
}

/// One mutation's result, in the response's shape.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub id: String,
    pub status: Status,
    pub key: Option<Row>,
    /// The row as it is now, for conflicts (`Some(None)`: missing or not readable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<Option<Row>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
}

impl Outcome {
    pub fn new(id: &str, status: Status, key: Option<Row>) -> Outcome {
        Outcome {
            id: id.to_string(),
            status,
            key,
            current: None,
            error: None,
        }
    }
}

/// A source-native position (Postgres: an LSN) at or after the commit of every mutation a
/// batch applied or found applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CommitMark(pub u64);

/// What a batch did.
#[derive(Debug, Clone)]
pub struct Applied {
    pub results: Vec<Outcome>,
    /// `None`: nothing was or had been applied, nothing to wait for.
    pub mark: Option<CommitMark>,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// 400: the body is wrong; `index` is the mutation's 0-based position.
    #[error("mutations[{index}].{field}: {message}")]
    Invalid {
        index: usize,
        field: String,
        message: String,
    },
    /// 404: no such collection (upstream).
    #[error("mutations[{index}].collection: unknown collection {collection:?}")]
    UnknownCollection { index: usize, collection: String },
    /// 404: no such column.
    #[error("mutations[{index}].{field}: {collection:?} has no column {column:?}")]
    UnknownColumn {
        index: usize,
        field: &'static str,
        collection: String,
        column: String,
    },
    /// 503: the source database cannot be reached; nothing is known to have been applied
    /// (retrying with the same ids is safe).
    #[error("{0}")]
    Unavailable(String),
}

/// A source kind's writes. Implemented per kind; the HTTP layer knows only this.
pub trait Writer: Send + Sync {
    /// The source's name.
    fn source(&self) -> &str;
    /// Whether `collection` belongs to this source.
    fn holds(&self, collection: &str) -> bool;
    /// Applies `mutations` for `author`: in one upstream transaction when `atomic` (all or
    /// nothing), each on its own otherwise. Mutation-level failures are [`Outcome`]s.
    fn apply<'a>(
        &'a self,
        author: &'a Author,
        mutations: &'a [Mutation],
        atomic: bool,
    ) -> BoxFuture<'a, Result<Applied, WriteError>>;
    /// Resolves `true` once the source has logged everything up to `mark`, `false` when
    /// `timeout` passes first.
    fn wait_visible(&self, mark: CommitMark, timeout: Duration) -> BoxFuture<'_, bool>;
}

/// The test-only fault `DELTARELAY_TEST_KILL_AFTER_UPSTREAM_COMMIT=1`: the process dies right
/// after an upstream commit, before anyone hears of it (the lost-response case). Every writer
/// calls it after each commit.
pub fn fault_after_commit() {
    static KILL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *KILL
        .get_or_init(|| std::env::var_os("DELTARELAY_TEST_KILL_AFTER_UPSTREAM_COMMIT").is_some())
    {
        eprintln!("test fault: DELTARELAY_TEST_KILL_AFTER_UPSTREAM_COMMIT");
        std::process::abort();
    }
}

/// Whether `name` of `value` may be written by a caller with `rules` and `scope`: key and
/// relay-managed fields always (the scope's value is checked apart), others when
/// `write.columns` lists them or is not set.
pub fn writable(name: &str, managed: bool, rules: &WriteConfig, scope: Option<&Scope>) -> bool {
    managed
        || scope.is_some_and(|s| s.column == name)
        || rules
            .columns
            .as_ref()
            .map_or(true, |cs| cs.iter().any(|c| c == name))
}

/// The refusal of an insert or update whose `value` gives the scope field another value than
/// the caller's own.
pub fn scope_refusal(m: &Mutation, scope: &Scope) -> Option<String> {
    let given = m.value.as_ref().and_then(|v| v.get(&scope.column))?;
    (given.is_null() || crate::log::scope::scope_text(given) != scope.value).then(|| {
        format!(
            "{:?} may only hold your own rows: {} must be {:?}",
            m.collection, scope.column, scope.value
        )
    })
}
