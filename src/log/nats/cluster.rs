//! The relay's footprint in a NATS JetStream cluster: the log stream and the meta bucket that
//! holds the log's epoch (so that every node's cursors carry the same one).

use crate::log::LogError;
use async_nats::jetstream::{self, kv, stream};
use std::time::Duration;

/// The settings a node needs to reach the shared log.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    pub urls: Vec<String>,
    pub stream: String,
    pub replicas: usize,
    /// When the active ingest node snapshots the log and compacts the stream.
    pub snapshots: super::snapshot::SnapshotPolicy,
}

impl NatsSettings {
    /// The settings of `[log.nats]`.
    pub fn from_config(
        config: &crate::config::NatsConfig,
    ) -> Result<NatsSettings, crate::config::Problem> {
        Ok(NatsSettings {
            urls: config.resolve_urls()?,
            stream: config.stream.clone(),
            replicas: config.replicas,
            snapshots: super::snapshot::SnapshotPolicy {
                every: config.snapshot_every,
                after: config.snapshot_after,
            },
        })
    }

    /// The one subject the stream holds: every log command, in order.
    pub fn subject(&self) -> String {
        format!("deltarelay.{}.log", self.stream)
    }

    /// The doorbell: the active node announces here (core NATS, not stored) the last stream
    /// sequence it had acknowledged, so that materializers read on without polling.
    pub fn bell_subject(&self) -> String {
        format!("deltarelay.{}.bell", self.stream)
    }

    /// The KV bucket of the log's epoch (and, for ingest roles, the lease).
    pub fn meta_bucket(&self) -> String {
        format!("{}_meta", self.stream)
    }

    /// The object store bucket of the log's snapshots (see `snapshot.rs`).
    pub fn snapshot_bucket(&self) -> String {
        format!("{}_snapshots", self.stream)
    }
}

pub(super) fn nats_error(what: &str, error: impl std::fmt::Display) -> LogError {
    LogError::Nats(format!("{what}: {error}"))
}

/// Connects to the cluster (any of `urls`), retrying while none answers yet.
pub async fn connect(settings: &NatsSettings) -> Result<jetstream::Context, LogError> {
    let client = async_nats::ConnectOptions::new()
        .name("deltarelay")
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(10)))
        .connect(settings.urls.as_slice())
        .await
        .map_err(|e| nats_error("connecting to NATS", e))?;
    Ok(jetstream::new(client))
}

/// How long a node waits at start for the cluster to place the stream and bucket (a cluster
/// that starts with the relays has no JetStream leader or too few peers for a while).
const PLACEMENT_PATIENCE: Duration = Duration::from_secs(60);

/// Retries `attempt` while the cluster is not ready yet, up to [`PLACEMENT_PATIENCE`].
pub(super) async fn patiently<T, F, Fut>(what: &str, mut attempt: F) -> Result<T, LogError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, LogError>>,
{
    let deadline = tokio::time::Instant::now() + PLACEMENT_PATIENCE;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "{what}: the NATS cluster is not ready yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The log stream, created on first use: one subject, file storage, no limits (entries are
/// compacted per key in every node's materialization, not in the stream).
pub async fn log_stream(
    js: &jetstream::Context,
    settings: &NatsSettings,
) -> Result<stream::Stream, LogError> {
    patiently("opening the log stream", || create_log_stream(js, settings)).await
}

async fn create_log_stream(
    js: &jetstream::Context,
    settings: &NatsSettings,
) -> Result<stream::Stream, LogError> {
    js.get_or_create_stream(stream::Config {
        name: settings.stream.clone(),
        subjects: vec![settings.subject()],
        storage: stream::StorageType::File,
        num_replicas: settings.replicas,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .map_err(|e| nats_error(&format!("opening the stream {}", settings.stream), e))
}

/// The meta bucket, created on first use.
pub async fn meta_bucket(
    js: &jetstream::Context,
    settings: &NatsSettings,
) -> Result<kv::Store, LogError> {
    patiently("opening the meta bucket", || {
        create_meta_bucket(js, settings)
    })
    .await
}

async fn create_meta_bucket(
    js: &jetstream::Context,
    settings: &NatsSettings,
) -> Result<kv::Store, LogError> {
    let bucket = settings.meta_bucket();
    if let Ok(store) = js.get_key_value(&bucket).await {
        return Ok(store);
    }
    // The bucket's stream, as a KV bucket has it, created directly: the client's own
    // `create_key_value` first asks for account limits in a form nats-server 2.9 does not send.
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        storage: stream::StorageType::File,
        num_replicas: settings.replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .map_err(|e| nats_error(&format!("creating the bucket {bucket}"), e))?;
    js.get_key_value(&bucket)
        .await
        .map_err(|e| nats_error(&format!("opening the bucket {bucket}"), e))
}

/// The log's epoch: the first node to start draws it, every later one reads it.
pub async fn epoch(bucket: &kv::Store) -> Result<u32, LogError> {
    let drawn = rand::random::<u32>() % 2_000_000_000 + 1;
    match bucket.create("epoch", drawn.to_string().into()).await {
        Ok(_) => return Ok(drawn),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
        Err(e) => return Err(nats_error("storing the log epoch", e)),
    }
    let stored = bucket
        .get("epoch")
        .await
        .map_err(|e| nats_error("reading the log epoch", e))?
        .ok_or_else(|| LogError::Nats("the log epoch vanished from its bucket".into()))?;
    std::str::from_utf8(&stored)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| {
            LogError::Corrupt(format!("the stored log epoch {stored:?} is not a number"))
        })
}

/// The stream's last sequence now (0 when empty).
pub async fn last_sequence(stream: &stream::Stream) -> Result<u64, LogError> {
    let info = stream
        .get_info()
        .await
        .map_err(|e| nats_error("reading the stream's state", e))?;
    Ok(info.state.last_sequence)
}
