//! What a node does with the log: the embedded engine's single node, or one of the shared
//! log's roles (DESIGN.md, "Scale-out on NATS JetStream").

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The embedded SQLite log: this node is the log's only writer and reader.
    Single,
    /// The shared log's writer: holds the ingest lease and runs the sources.
    Active,
    /// An ingest node waiting for the lease; serves reads meanwhile.
    Standby,
    /// A node without sources: serves reads only.
    Serve,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Single => "single",
            Role::Active => "active",
            Role::Standby => "standby",
            Role::Serve => "serve",
        }
    }

    /// Whether this node runs its sources (and the tombstone purge) now.
    pub fn writes(self) -> bool {
        matches!(self, Role::Single | Role::Active)
    }

    pub const ALL: [Role; 4] = [Role::Single, Role::Active, Role::Standby, Role::Serve];
}
