//! Errors the node's parts share: a service call's (`ServiceError`, by what the caller
//! should do), and hosting or releasing a replica's.

use crate::domain::Invalid;
use linkrift_raft::GroupId;

/// Why a service call failed, by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The input breaks a rule.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// No such link or key.
    #[error("{0} not found")]
    NotFound(String),
    /// The custom code is taken.
    #[error("code {0:?} is already taken")]
    CodeTaken(String),
    /// The link changed since the caller read it.
    #[error("the link is at version {current}, not the version given in If-Match")]
    VersionMismatch {
        /// The current version.
        current: u64,
    },
    /// The cluster refuses the operation as it stands (a leave that would lose a quorum).
    #[error("refused: {0}")]
    Refused(String),
    /// Retryable: no leader, shutting down, overloaded.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    /// A bug or broken data: not the caller's fault, not retryable.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Why a replica could not be hosted.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The group in the data directory is not a shard's.
    #[error("the data directory's group {group} is {found}, not a shard")]
    GroupKind {
        /// The group.
        group: GroupId,
        /// What it is.
        found: &'static str,
    },
    /// The shard's actor did not start.
    #[error("cannot start the actor of shard {shard}: {source}")]
    ShardActor {
        /// The shard.
        shard: u32,
        /// Why.
        source: ractor::SpawnErr,
    },
    /// Raft could not create the group.
    #[error(transparent)]
    Raft(Box<linkrift_raft::node::NodeError>),
}

/// Why a replica could not be released.
#[derive(Debug, thiserror::Error)]
#[error("releasing the replica of shard {shard}: {source}")]
pub struct ReleaseError {
    /// The shard.
    pub shard: u32,
    /// What Raft said.
    #[source]
    pub source: linkrift_raft::node::NodeError,
}
