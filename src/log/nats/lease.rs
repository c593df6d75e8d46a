//! The ingest lease: which of several ingest nodes of one shared log is active.
//!
//! One key in the meta bucket, changed only by revision-checked updates (JetStream's
//! `Nats-Expected-Last-Subject-Sequence`), so that two nodes can never both take it. The holder
//! renews it every [`RENEW_EVERY`]; a standby takes it once its revision has not moved for
//! [`EXPIRES_AFTER`] by the standby's own clock (no clock comparison between machines).
//! Fencing does not rely on the lease alone: the stream refuses a deposed writer's messages
//! (`Nats-Expected-Last-Sequence`, see `mod.rs`).

use super::cluster::nats_error;
use crate::log::LogError;
use async_nats::jetstream::kv;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use std::time::Duration;
use tokio::time::Instant;

const KEY: &str = "ingest_lease";
pub const RENEW_EVERY: Duration = Duration::from_secs(2);
pub const EXPIRES_AFTER: Duration = Duration::from_secs(10);
/// How often a standby looks at the lease.
const WATCH_EVERY: Duration = Duration::from_millis(500);

pub struct Lease {
    bucket: kv::Store,
    node: String,
    revision: u64,
    /// When the last renewal was acknowledged.
    renewed: Instant,
}

impl Lease {
    /// Waits until this node holds the lease (forever while another node renews it).
    pub async fn acquire(bucket: kv::Store, node: String) -> Lease {
        // The lease's revision as first seen, and since when.
        let mut seen: Option<(u64, Instant)> = None;
        loop {
            match try_take(&bucket, &node, &mut seen).await {
                Ok(Some(revision)) => {
                    return Lease {
                        bucket,
                        node,
                        revision,
                        renewed: Instant::now(),
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "reading the ingest lease"),
            }
            tokio::time::sleep(WATCH_EVERY).await;
        }
    }

    /// Renews the lease every [`RENEW_EVERY`] until it is lost: another node took it, or no
    /// renewal got through for [`EXPIRES_AFTER`] (a standby may hold it by then). Returns why.
    pub async fn hold(mut self) -> LogError {
        loop {
            tokio::time::sleep(RENEW_EVERY).await;
            match self
                .bucket
                .update(KEY, self.node.clone().into(), self.revision)
                .await
            {
                Ok(revision) => {
                    self.revision = revision;
                    self.renewed = Instant::now();
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    match self.still_ours().await {
                        Some(revision) => {
                            self.revision = revision;
                            self.renewed = Instant::now();
                        }
                        None => {
                            return LogError::ReadOnly("another ingest node took the lease".into())
                        }
                    }
                }
                Err(e) if self.renewed.elapsed() >= EXPIRES_AFTER => {
                    return nats_error("the ingest lease could not be renewed in time", e);
                }
                Err(e) => tracing::warn!(error = %e, "renewing the ingest lease; retrying"),
            }
        }
    }
}

impl Lease {
    /// After a renewal was refused for its revision: the lease's revision when it still names
    /// this node. An earlier renewal whose answer was lost (a NATS node restarting answered
    /// "no stream found") had landed and moved the revision; taking that for another node's
    /// takeover stopped a healthy active node (found by `tests/it/chaos_nats.rs`). The name
    /// carries a random part drawn at start, so no other process holds the lease under it.
    async fn still_ours(&self) -> Option<u64> {
        match current(&self.bucket).await {
            Ok(Some(lease)) if lease.holder.as_ref() == self.node.as_bytes() => {
                tracing::info!(
                    revision = lease.revision,
                    "a renewal of the ingest lease had landed after all; holding it on"
                );
                Some(lease.revision)
            }
            _ => None,
        }
    }
}

/// Takes the lease if nobody holds it, or if its holder stopped renewing it.
async fn try_take(
    bucket: &kv::Store,
    node: &str,
    seen: &mut Option<(u64, Instant)>,
) -> Result<Option<u64>, LogError> {
    let Some(entry) = current(bucket).await? else {
        return match bucket.create(KEY, node.to_string().into()).await {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(nats_error("creating the ingest lease", e)),
        };
    };
    let expired = match *seen {
        Some((revision, since)) if revision == entry.revision => since.elapsed() >= EXPIRES_AFTER,
        _ => {
            *seen = Some((entry.revision, Instant::now()));
            false
        }
    };
    // A node that restarts finds its own name only if it died before another took over: it
    // still waits for the lease to expire, as its old self may still be running.
    if !expired {
        return Ok(None);
    }
    match bucket
        .update(KEY, node.to_string().into(), entry.revision)
        .await
    {
        Ok(revision) => {
            let holder = String::from_utf8_lossy(&entry.holder).into_owned();
            tracing::info!(previous = %holder, "took over the ingest lease");
            Ok(Some(revision))
        }
        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
        Err(e) => Err(nats_error("taking the ingest lease", e)),
    }
}

/// The lease as it stands.
struct Current {
    revision: u64,
    holder: bytes::Bytes,
}

/// Reads the lease from the bucket stream's leader. Not `kv::Store::entry`: the bucket allows
/// direct gets, which any replica answers, and a replica that is catching up (its NATS node
/// was restarted) answers with an old revision for a while. A standby whose reads alternated
/// between replicas never saw the revision hold still for [`EXPIRES_AFTER`], so a failover
/// took minutes instead of seconds (`tests/it/chaos_nats.rs`).
async fn current(bucket: &kv::Store) -> Result<Option<Current>, LogError> {
    let subject = format!("{}{KEY}", bucket.prefix);
    match bucket
        .stream
        .get_last_raw_message_by_subject(&subject)
        .await
    {
        Ok(message) => Ok(Some(Current {
            revision: message.sequence,
            holder: message.payload,
        })),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(nats_error("reading the ingest lease", e)),
    }
}
