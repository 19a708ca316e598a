//! What can go wrong: a service call (`ServiceError`, by what the caller should do) and
//! opening a node (`OpenError`).

use super::*;
pub use crate::errors::{HostError, ReleaseError, ServiceError};

/// Errors opening a node: bad settings, a data directory that is not what it should be,
/// and the parts that could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A setting outside its range.
    #[error("invalid configuration: {setting} must be {range}, not {value}")]
    OutOfRange {
        /// The setting's name.
        setting: &'static str,
        /// What it may be.
        range: &'static str,
        /// What it was.
        value: u64,
    },
    /// The identity file does not parse.
    #[error("{} is damaged: {source}", path.display())]
    IdentityDamaged {
        /// The file.
        path: PathBuf,
        /// Why it does not parse.
        source: serde_json::Error,
    },
    /// The identity file is gone from a running node's directory.
    #[error("the identity file {IDENTITY_FILE} is missing from {}", dir.display())]
    IdentityMissing {
        /// The data directory.
        dir: PathBuf,
    },
    /// A directory with data in it but no identity file.
    #[error(
        "{} holds data ({}) but no {IDENTITY_FILE}: it is not a new node's directory, and which \
         node it belonged to is unknown. If it was a member, restore its identity file; \
         otherwise empty the directory (or use a new one) and join the cluster as a new node",
        dir.display(),
        found.join(", ")
    )]
    DataWithoutIdentity {
        /// The data directory.
        dir: PathBuf,
        /// What is in it.
        found: Vec<String>,
    },
    /// A Raft group on disk is not the kind its id says (or the meta group is missing).
    #[error("the data directory's group {group} is {found}, not {expected}")]
    GroupKind {
        /// The group.
        group: GroupId,
        /// What it should be.
        expected: &'static str,
        /// What it is.
        found: &'static str,
    },
    /// A replica could not be hosted.
    #[error(transparent)]
    Host(#[from] HostError),
    /// The embedded click store did not open.
    #[error("opening the click store: {0}")]
    ClickStore(#[source] sled::Error),
    /// The ClickHouse spool did not open.
    #[error("opening the click spool: {0}")]
    ClickSpool(#[source] std::io::Error),
    /// The ClickHouse client could not be made (its CA file).
    #[error(transparent)]
    ClickHouse(#[from] crate::clicks::clickhouse::ClientError),
    /// The GeoIP database did not open.
    #[error(transparent)]
    GeoIp(#[from] crate::clicks::event::GeoIpError),
    /// `postgres_url` does not parse.
    #[error("postgres_url: {0}")]
    PostgresUrl(#[source] sqlx::Error),
    /// The first record of a new cluster could not be written.
    #[error("recording the new cluster: {0}")]
    Bootstrap(#[source] ServiceError),
    /// Disk trouble.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The Raft layer failed to start.
    #[error(transparent)]
    Raft(Box<linkrift_raft::node::NodeError>),
    /// Joining the cluster failed.
    #[error("joining the cluster: {0}")]
    Join(String),
    /// The data directory is older than the cluster's record of this node.
    #[error("{0}")]
    RolledBack(String),
}

/// Why a node is not ready for traffic (`/readyz`).
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    /// The node's storage failed; it is about to exit.
    #[error("storage failed ({0}); this node is stopping")]
    StorageFailed(Arc<str>),
    /// The node is joining, draining, leaving, lost or removed.
    #[error("this node is {0}")]
    NotActive(&'static str),
    /// The meta group does not know the node yet.
    #[error("this node is not in the cluster's directory yet")]
    NotInDirectory,
    /// The meta group has no leader.
    #[error("the meta group has no leader")]
    NoMetaLeader,
    /// A replica here is not a voter that has applied past the change that made it one.
    #[error("shard {0}: this node's replica is not a caught-up voter")]
    ReplicaNotServing(u32),
    /// A replica here lags its leader by more than `replica_max_lag_ms`.
    #[error("shard {shard}: this node's replica lags its leader by {}", match .lag {
        Some(lag) => format!("{} ms, more than the {} ms allowed", lag.as_millis(), .max.as_millis()),
        None => format!("more than {} ms (it has not heard from a leader)", .max.as_millis()),
    })]
    ReplicaLagging {
        /// The shard.
        shard: u32,
        /// How far behind it is (`None`: it never was current since it opened).
        lag: Option<Duration>,
        /// The bound.
        max: Duration,
    },
    /// A shard held here has no leader.
    #[error("shard {0} has no leader")]
    NoShardLeader(u32),
}

impl From<linkrift_raft::node::NodeError> for OpenError {
    fn from(e: linkrift_raft::node::NodeError) -> Self {
        Self::Raft(Box::new(e))
    }
}
