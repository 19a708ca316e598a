//! What a node runs by, fixed when it opens: who it is, the cluster's shape, and its
//! timeouts. Plain values, handed to whoever needs them.

use std::time::Duration;

use linkrift_raft::NodeId;

/// A node's settings, as its service opened with them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Settings {
    /// This node's id.
    pub(crate) me: NodeId,
    /// The cluster's shards (fixed when it was created).
    pub(crate) shard_count: u32,
    /// Replicas per shard.
    pub(crate) replication_factor: usize,
    /// Replica moves in flight at once.
    pub(crate) max_moves: usize,
    /// openraft's leader lease (its longest election timeout): how long a voter refuses
    /// to vote after it last heard from its leader.
    pub(crate) leader_lease: Duration,
    /// How long a member may be out of touch before the meta leader marks it lost.
    pub(crate) dead_after: Duration,
    /// How long a write may wait for a leader.
    pub(crate) write_timeout: Duration,
}
