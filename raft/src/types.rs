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
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload(#[serde(with = "serde_bytes_compat")] pub Vec<u8>);

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

/// Serialises a byte vector as one length-prefixed blob instead of a sequence of
/// individually tagged integers, which is what plain `Vec<u8>` does through serde.
mod serde_bytes_compat {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(a.size_hint().unwrap_or(0));
                while let Some(b) = a.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(Visitor)
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
