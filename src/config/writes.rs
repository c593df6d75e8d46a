//! `[writes]` and `[collections."…".write]`: the keys of `POST /v1/mutations`.

use super::duration_text;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// `[writes]`: what holds for every write.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WritesConfig {
    /// How long applied mutation ids are remembered upstream (retries within it are
    /// answered `duplicate`).
    #[serde(default = "default_idempotency_retention", with = "duration_text")]
    pub idempotency_retention: Duration,
    /// With `auth.mode = "none"`, accept writes at all (refused otherwise).
    #[serde(default)]
    pub allow_unauthenticated: bool,
    /// Ordinary connections each source may open for writes.
    #[serde(default = "default_write_pool")]
    pub pool_size: usize,
}

impl Default for WritesConfig {
    fn default() -> Self {
        WritesConfig {
            idempotency_retention: default_idempotency_retention(),
            allow_unauthenticated: false,
            pool_size: default_write_pool(),
        }
    }
}

fn default_idempotency_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_write_pool() -> usize {
    8
}

/// `[collections."…".write]`: who may write a collection, what, and how conflicts resolve.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteConfig {
    /// Claim name → accepted values, as `read_claims` (ignored with `auth.mode = "none"`).
    #[serde(default)]
    pub claims: BTreeMap<String, Vec<serde_json::Value>>,
    /// Writable columns besides the key; `None`: all.
    pub columns: Option<Vec<String>>,
    #[serde(default)]
    pub conflict: ConflictPolicy,
    pub version_column: Option<String>,
    pub lww_column: Option<String>,
    /// Run the writes as this database role (`SET LOCAL ROLE`, with `request.jwt.claims`).
    pub db_role: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictPolicy {
    #[default]
    Reject,
    LastWriteWins,
    ClientWins,
}

/// What the types of `[collections."…".write]` cannot check.
pub(super) fn validate_write(write: &WriteConfig) -> Result<(), String> {
    if write.conflict == ConflictPolicy::LastWriteWins && write.lww_column.is_none() {
        return Err(
            "write.conflict = \"last_write_wins\" needs write.lww_column = \"<timestamp column>\""
                .into(),
        );
    }
    for (claim, values) in &write.claims {
        if values.is_empty() {
            return Err(format!(
                "write.claims.{claim} lists no values: no token could write"
            ));
        }
    }
    let named = [&write.version_column, &write.lww_column, &write.db_role];
    if named.iter().any(|n| n.as_deref() == Some("")) {
        return Err("write.version_column, lww_column and db_role must not be empty".into());
    }
    Ok(())
}
