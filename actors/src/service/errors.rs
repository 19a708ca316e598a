//! What can go wrong: a service call (`ServiceError`, by what the caller should do) and
//! opening a node (`OpenError`).

use super::*;

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

/// Errors opening a node's data.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Bad settings.
    #[error("invalid configuration: {0}")]
    Config(String),
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

impl From<linkrift_raft::node::NodeError> for OpenError {
    fn from(e: linkrift_raft::node::NodeError) -> Self {
        Self::Raft(Box::new(e))
    }
}
