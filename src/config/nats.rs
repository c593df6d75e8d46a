//! `[log] backend` and `[log.nats]`: where the shared log lives when it is not the embedded
//! SQLite file (DESIGN.md, "Scale-out on NATS JetStream").

use super::{duration_text, Problem};
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogBackendKind {
    #[default]
    Sqlite,
    Nats,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URLs (`nats://host:4222`); several for a cluster.
    #[serde(default)]
    pub urls: Vec<String>,
    /// Or: an environment variable holding them, comma-separated.
    pub urls_env: Option<String>,
    #[serde(default = "default_stream")]
    pub stream: String,
    /// JetStream replicas of the log stream (1..=5; at most the cluster's size).
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// The active ingest node snapshots the log (and compacts the stream) this often...
    #[serde(default = "default_snapshot_every", with = "duration_text")]
    pub snapshot_every: Duration,
    /// ...or after this many stream messages, whichever comes first.
    #[serde(default = "default_snapshot_after")]
    pub snapshot_after: u64,
}

fn default_snapshot_every() -> Duration {
    Duration::from_secs(600)
}

fn default_snapshot_after() -> u64 {
    100_000
}

fn default_stream() -> String {
    "DELTARELAY".into()
}

fn default_replicas() -> usize {
    3
}

fn problem(message: String) -> Problem {
    Problem::Log(format!("[log.nats]: {message}"))
}

impl NatsConfig {
    /// The server URLs, from `urls` or from the environment variable `urls_env` names.
    pub fn resolve_urls(&self) -> Result<Vec<String>, Problem> {
        let urls =
            match (self.urls.is_empty(), &self.urls_env) {
                (false, None) => self.urls.clone(),
                (true, Some(var)) => std::env::var(var)
                    .map_err(|_| {
                        problem(format!(
                            "urls_env names {var}, but that environment variable is not set"
                        ))
                    })?
                    .split(',')
                    .map(|url| url.trim().to_string())
                    .filter(|url| !url.is_empty())
                    .collect(),
                (false, Some(_)) => {
                    return Err(problem("set either urls or urls_env, not both".into()))
                }
                (true, None) => return Err(problem(
                    "no server: set urls = [\"nats://127.0.0.1:4222\"] or urls_env = \"NATS_URLS\""
                        .into(),
                )),
            };
        if urls.is_empty() {
            return Err(problem("urls is empty: name at least one server".into()));
        }
        for url in &urls {
            let scheme_ok = ["nats://", "tls://"].iter().any(|s| url.starts_with(s));
            if !scheme_ok || url.len() <= "nats://".len() {
                return Err(problem(format!(
                    "{url:?} is not a NATS server URL: write it as \"nats://host:4222\""
                )));
            }
        }
        Ok(urls)
    }

    pub fn validate(&self) -> Result<(), Problem> {
        self.resolve_urls()?;
        let stream_ok = !self.stream.is_empty()
            && self.stream.len() <= 32
            && self
                .stream
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !stream_ok {
            return Err(problem(format!(
                "stream = {:?}: use 1-32 characters of A-Z, a-z, 0-9, _ and -",
                self.stream
            )));
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(problem(format!(
                "replicas = {}: JetStream keeps 1 to 5 replicas (3 for a 3-node cluster)",
                self.replicas
            )));
        }
        if self.snapshot_after == 0 || self.snapshot_every.is_zero() {
            return Err(problem(
                "snapshot_every and snapshot_after must be above zero (defaults: \"10m\", 100000)"
                    .into(),
            ));
        }
        Ok(())
    }
}
