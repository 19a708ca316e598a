//! The openraft type configuration shared by every group on every node.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Identifies a node in the cluster. Never reused: a node that is replaced gets a new id.
pub type NodeId = u64;

/// Identifies a Raft group hosted by the cluster. The application assigns them (the meta
/// group and one per shard); the transport routes every frame by it.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    bincode::Encode,
    bincode::Decode,
)]
pub struct GroupId(pub u64);

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "g{}", self.0)
    }
}

/// An encoded application command or response. Opaque to Raft, so that groups running
/// different state machines share one openraft type configuration and one transport.
/// Serialised as one length-prefixed blob (`serde_bytes`), not a sequence of integers.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({} bytes)", self.0.len())
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

openraft::declare_raft_types!(
    /// The openraft type configuration of every Linkrift group.
    pub TypeConfig:
        D = Payload,
        R = Payload,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        SnapshotData = tokio::fs::File,
);
