//! This node's place in the shared log: its role, the ingest lease it may hold, and the
//! cluster it sees (for `/v1/status`).

use super::cluster::NatsSettings;
use super::lease::Lease;
use super::NatsBackend;
use crate::log::role::Role;
use crate::log::LogError;
use async_nats::jetstream::{self, kv};
use serde::Serialize;
use std::sync::Arc;
use tokio::sync::watch;

pub struct NatsNode {
    pub(crate) backend: Arc<NatsBackend>,
    pub(crate) js: jetstream::Context,
    pub(crate) bucket: kv::Store,
    pub(crate) settings: NatsSettings,
    pub(crate) role: watch::Sender<Role>,
    /// The name this node holds the lease under.
    pub(crate) name: String,
}

/// The cluster as this node sees it, for `/v1/status`.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterView {
    pub stream: String,
    pub replicas: usize,
    pub connected: bool,
    /// The server this node is connected to, and its cluster's name.
    pub server: String,
    pub cluster: Option<String>,
    pub version: String,
    /// The cluster's client URLs the server announced.
    pub servers: Vec<String>,
    /// The last stream sequence this node applied.
    pub applied: u64,
}

impl NatsNode {
    /// On an ingest node: waits for the lease, takes over the writing of the stream, and
    /// holds the lease until it is lost (the error). Never returns on a serve-only node.
    pub async fn lead(&self) -> LogError {
        if *self.role.borrow() == Role::Serve {
            return std::future::pending().await;
        }
        let lease = Lease::acquire(self.bucket.clone(), self.name.clone()).await;
        // Everything the previous writer published is applied before this node's sources
        // read their positions, and this node's writes follow the stream's end.
        if let Err(e) = self.backend.claim_writer().await {
            return e;
        }
        tracing::info!(node = %self.name, "active: this node now writes the shared log");
        self.role.send_replace(Role::Active);
        // Held until lost, or until the stream refuses this node's writes (another node wrote
        // it: the lease was taken while this process was paused, say): either way this node
        // must stop writing, and the relay stops so that it comes back as a standby.
        let lost = tokio::select! {
            lost = lease.hold() => lost,
            reason = self.backend.fenced() => LogError::ReadOnly(reason),
        };
        self.role.send_replace(Role::Standby);
        lost
    }

    pub fn view(&self) -> ClusterView {
        let client = self.js.client();
        let info = client.server_info();
        ClusterView {
            stream: self.settings.stream.clone(),
            replicas: self.settings.replicas,
            connected: client.connection_state() == async_nats::connection::State::Connected,
            server: info.server_name,
            cluster: info.cluster,
            version: info.version,
            servers: info.connect_urls,
            applied: *self.backend.applied.borrow(),
        }
    }
}
