//! The meta group's state machine: the cluster's API keys, its nodes and its shard count.
//!
//! Every node holds a replica (up to five as voters, the rest as learners), so any node
//! can authenticate a key and compute the placement of every shard from its own copy.
//!
//! Keys are identified by an id chosen by the proposer, so a retried create is answered
//! with the key it already made instead of making a second one.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::domain::{ApiKeyHash, ApiKeyRecord};

/// A change to the meta group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Store a new key.
    CreateKey(ApiKeyRecord),
    /// Revoke a key.
    RevokeKey {
        /// The key's id.
        id: String,
        /// Proposer's clock, Unix milliseconds.
        at: i64,
    },
    /// Record the cluster's shard count and its first node (once, when it is created).
    Bootstrap {
        /// Shards of the cluster, fixed from now on.
        shard_count: u32,
        /// The first node (id 1), active at once.
        node: NodeRecord,
    },
    /// A node asks to join: give it the next id and record it as joining. A retry with the
    /// same `token` gets the same id.
    RegisterNode {
        /// Chosen by the joining node, so a retried registration is recognised.
        token: u128,
        /// Its addresses.
        addrs: NodeAddrs,
        /// Proposer's clock.
        at: i64,
    },
    /// A node's replicas of the meta group have caught up: it may receive shard replicas.
    ActivateNode {
        /// The node.
        id: u64,
    },
    /// A node restarted with different addresses.
    UpdateAddrs {
        /// The node.
        id: u64,
        /// Its addresses now.
        addrs: NodeAddrs,
    },
}

/// Where a node listens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddrs {
    /// HTTP (redirects, API, admin).
    pub http: String,
    /// Raft peer traffic.
    pub peer: String,
    /// Actor traffic (ractor_cluster).
    pub cluster: String,
}

/// Where a node is in its life in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// Registered; its copy of the meta group is catching up. Holds no shard replicas.
    Joining,
    /// Takes shard replicas and traffic.
    Active,
}

impl NodeState {
    /// The lowercase name `cluster status` shows.
    pub fn name(self) -> &'static str {
        match self {
            Self::Joining => "joining",
            Self::Active => "active",
        }
    }
}

/// A member of the cluster, as the meta group records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Its id, given at registration.
    pub id: u64,
    /// Its addresses.
    pub addrs: NodeAddrs,
    /// Its state.
    pub state: NodeState,
    /// When it registered, Unix milliseconds.
    pub joined_at: i64,
    /// The registration token (see [`MetaCommand::RegisterNode`]).
    pub token: u128,
}

/// What a meta command did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaOutcome {
    /// The key is stored (now, or by an earlier try of the same request).
    KeyCreated(ApiKeyRecord),
    /// The key is revoked (now, or earlier).
    KeyRevoked(ApiKeyRecord),
    /// No key has that id.
    KeyNotFound,
    /// Another key already has that hash.
    KeyExists,
    /// The cluster is set up (now, or already was: then `shard_count` is the first one).
    Bootstrapped {
        /// The cluster's shard count.
        shard_count: u32,
    },
    /// The node's record after registration, activation or an address change.
    Node(NodeRecord),
    /// No node has that id.
    NodeNotFound,
}

#[derive(Default, Serialize, Deserialize)]
struct Keys {
    by_id: BTreeMap<String, ApiKeyRecord>,
    #[serde(skip)]
    by_hash: HashMap<ApiKeyHash, String>,
    nodes: BTreeMap<u64, NodeRecord>,
    shard_count: u32,
}

/// Reads the meta state: keys (for authentication and listing) and the nodes.
#[derive(Clone, Default)]
pub struct MetaReader {
    keys: Arc<RwLock<Keys>>,
}

impl MetaReader {
    /// Every node, by id.
    pub fn nodes(&self) -> Vec<NodeRecord> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .nodes
            .values()
            .cloned()
            .collect()
    }

    /// One node.
    pub fn node(&self, id: u64) -> Option<NodeRecord> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .nodes
            .get(&id)
            .cloned()
    }

    /// Ids of the active nodes: the ones shard replicas are placed on.
    pub fn active_nodes(&self) -> Vec<u64> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .nodes
            .values()
            .filter(|n| n.state == NodeState::Active)
            .map(|n| n.id)
            .collect()
    }

    /// The cluster's shard count (0 before bootstrap).
    pub fn shard_count(&self) -> u32 {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .shard_count
    }

    /// The key whose hash is `hash`, revoked or not.
    pub fn by_hash(&self, hash: &ApiKeyHash) -> Option<ApiKeyRecord> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        keys.by_hash
            .get(hash)
            .and_then(|id| keys.by_id.get(id))
            .cloned()
    }

    /// Every key, by id.
    pub fn all(&self) -> Vec<ApiKeyRecord> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_id
            .values()
            .cloned()
            .collect()
    }

    /// Whether any key exists.
    pub fn is_empty(&self) -> bool {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_id
            .is_empty()
    }
}

/// The meta state machine.
#[derive(Default)]
pub struct MetaState {
    reader: MetaReader,
}

impl MetaState {
    /// A reader sharing this state.
    pub fn reader(&self) -> MetaReader {
        self.reader.clone()
    }

    /// Applies one command.
    pub fn apply(&mut self, command: MetaCommand) -> MetaOutcome {
        let mut keys = self.reader.keys.write().unwrap_or_else(|p| p.into_inner());
        match command {
            MetaCommand::CreateKey(record) => {
                if let Some(existing) = keys.by_id.get(&record.id) {
                    return if existing.hash == record.hash {
                        MetaOutcome::KeyCreated(existing.clone())
                    } else {
                        MetaOutcome::KeyExists
                    };
                }
                if keys.by_hash.contains_key(&record.hash) {
                    return MetaOutcome::KeyExists;
                }
                keys.by_hash.insert(record.hash.clone(), record.id.clone());
                keys.by_id.insert(record.id.clone(), record.clone());
                MetaOutcome::KeyCreated(record)
            }
            MetaCommand::RevokeKey { id, at } => match keys.by_id.get_mut(&id) {
                None => MetaOutcome::KeyNotFound,
                Some(record) => {
                    record.revoked_at.get_or_insert(at);
                    MetaOutcome::KeyRevoked(record.clone())
                }
            },
            MetaCommand::Bootstrap { shard_count, node } => {
                if keys.shard_count == 0 {
                    keys.shard_count = shard_count;
                    keys.nodes.insert(node.id, node);
                }
                MetaOutcome::Bootstrapped {
                    shard_count: keys.shard_count,
                }
            }
            MetaCommand::RegisterNode { token, addrs, at } => {
                if let Some(existing) = keys.nodes.values().find(|n| n.token == token) {
                    return MetaOutcome::Node(existing.clone());
                }
                let id = keys.nodes.keys().next_back().map_or(1, |last| last + 1);
                let record = NodeRecord {
                    id,
                    addrs,
                    state: NodeState::Joining,
                    joined_at: at,
                    token,
                };
                keys.nodes.insert(id, record.clone());
                MetaOutcome::Node(record)
            }
            MetaCommand::ActivateNode { id } => match keys.nodes.get_mut(&id) {
                None => MetaOutcome::NodeNotFound,
                Some(node) => {
                    node.state = NodeState::Active;
                    MetaOutcome::Node(node.clone())
                }
            },
            MetaCommand::UpdateAddrs { id, addrs } => match keys.nodes.get_mut(&id) {
                None => MetaOutcome::NodeNotFound,
                Some(node) => {
                    node.addrs = addrs;
                    MetaOutcome::Node(node.clone())
                }
            },
        }
    }

    /// Writes every key and node.
    pub fn write_snapshot(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let keys = self.reader.keys.read().unwrap_or_else(|p| p.into_inner());
        out.write_all(&linkrift_raft::codec::encode(&*keys))
    }

    /// Replaces the state with a snapshot's.
    pub fn restore(&mut self, input: &mut dyn Read) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes)?;
        let mut restored: Keys = linkrift_raft::codec::decode(&bytes)?;
        restored.by_hash = restored
            .by_id
            .values()
            .map(|r| (r.hash.clone(), r.id.clone()))
            .collect();
        *self.reader.keys.write().unwrap_or_else(|p| p.into_inner()) = restored;
        Ok(())
    }
}
