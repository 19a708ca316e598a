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
    /// The meta log index each node is known to hold durably: its leader's match index for
    /// it. Only ever raised. A node starting on data older than this was rolled back.
    RecordAcknowledged {
        /// (node, index) pairs.
        through: Vec<(u64, u64)>,
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
    /// An operator (or the placement driver) moves a node to another state: drain, leave,
    /// cancel, lost, removed. Only the moves [`NodeState::may_become`] allows are made.
    SetNodeState {
        /// The node.
        id: u64,
        /// Its new state.
        state: NodeState,
        /// Proposer's clock.
        at: i64,
    },
    /// A node restarted with different addresses.
    UpdateAddrs {
        /// The node.
        id: u64,
        /// Its addresses now.
        addrs: NodeAddrs,
    },
    // New variants go last: the log and the wire number them.
    /// The cluster's incarnation, chosen at random (the first one proposed stays): what
    /// tells this cluster's logs apart from another's that used the same outside store,
    /// such as a cluster restored from the Postgres mirror into the same database.
    SetClusterId {
        /// Not 0.
        id: u128,
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
///
/// ```text
/// joining ─► active ◄──► draining
///              │ ▲  cancel   │
///              ▼ │           ▼
///            leaving ◄───────┘ ─► removed (holds nothing; out of the meta group)
/// any live state ─► lost (silent for longer than dead_after; replaced, never back)
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// Registered; its copy of the meta group is catching up. Holds no shard replicas.
    Joining,
    /// Takes shard replicas and traffic.
    Active,
    /// Keeps its replicas but leads nothing, takes no new replica, and is not ready.
    Draining,
    /// Drains, and its replicas move to other nodes; removed once it holds none.
    Leaving,
    /// Silent for longer than `dead_after`: its replicas are re-created elsewhere. If it
    /// comes back it is told so, and rejoins with fresh data under a new id.
    Lost,
    /// Left the cluster. Kept so that its id is never given again.
    Removed,
}

/// A move between node states that is not allowed (see [`NodeState::may_become`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the node is {}, it cannot become {}", from.name(), to.name())]
pub struct TransitionRefused {
    /// The state the node is in.
    pub from: NodeState,
    /// The state asked for.
    pub to: NodeState,
}

impl NodeState {
    /// The lowercase name `cluster status` shows.
    pub fn name(self) -> &'static str {
        match self {
            Self::Joining => "joining",
            Self::Active => "active",
            Self::Draining => "draining",
            Self::Leaving => "leaving",
            Self::Lost => "lost",
            Self::Removed => "removed",
        }
    }

    /// Whether a node in this state may be moved to `next`; `Err` says why not.
    pub fn may_become(self, next: NodeState) -> Result<(), TransitionRefused> {
        use NodeState::*;
        let allowed = match (self, next) {
            (a, b) if a == b => true,
            (Joining, Active) => true,
            (Active, Draining | Leaving) => true,
            (Draining, Active | Leaving) => true,
            (Leaving, Active | Draining | Removed) => true,
            (Joining | Active | Draining | Leaving, Lost) => true,
            _ => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(TransitionRefused {
                from: self,
                to: next,
            })
        }
    }

    /// Whether the node is a live member: it takes part in the meta group and may hold
    /// replicas.
    pub fn is_member(self) -> bool {
        matches!(
            self,
            Self::Joining | Self::Active | Self::Draining | Self::Leaving
        )
    }

    /// Whether the node gives up its leaderships and refuses to lead (draining or leaving).
    pub fn yields(self) -> bool {
        matches!(self, Self::Draining | Self::Leaving)
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
    /// When it entered its state, Unix milliseconds.
    pub state_since: i64,
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
    /// The node cannot make that move (see [`NodeState::may_become`]).
    Refused(String),
    /// Acknowledged indexes recorded.
    Recorded,
    /// The cluster's incarnation (the first one set).
    ClusterId(u128),
}

#[derive(Default, Serialize, Deserialize)]
struct Keys {
    by_id: BTreeMap<String, ApiKeyRecord>,
    #[serde(skip)]
    by_hash: HashMap<ApiKeyHash, String>,
    nodes: BTreeMap<u64, NodeRecord>,
    shard_count: u32,
    /// See [`MetaCommand::RecordAcknowledged`].
    acknowledged: BTreeMap<u64, u64>,
    /// See [`MetaCommand::SetClusterId`]; 0 until set.
    cluster_id: u128,
}

/// The meta state as snapshots before `cluster_id` stored it: still read.
#[derive(Deserialize)]
struct KeysWithoutClusterId {
    by_id: BTreeMap<String, ApiKeyRecord>,
    nodes: BTreeMap<u64, NodeRecord>,
    shard_count: u32,
    acknowledged: BTreeMap<u64, u64>,
}

/// The meta state as snapshots before `acknowledged` stored it (bincode has no optional
/// trailing fields): still read.
#[derive(Deserialize)]
struct KeysWithoutAcknowledged {
    by_id: BTreeMap<String, ApiKeyRecord>,
    nodes: BTreeMap<u64, NodeRecord>,
    shard_count: u32,
}

/// Reads the meta state: keys (for authentication and listing) and the nodes.
#[derive(Clone, Default)]
pub struct MetaReader {
    keys: Arc<RwLock<Keys>>,
}

impl MetaReader {
    /// The meta log index `node` is recorded to have acknowledged.
    pub fn acknowledged(&self, node: u64) -> Option<u64> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .acknowledged
            .get(&node)
            .copied()
    }

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

    /// Ids of the active nodes: the ones new shard replicas are placed on.
    pub fn active_nodes(&self) -> Vec<u64> {
        self.in_states(&[NodeState::Active])
    }

    /// Ids of the nodes in any of `states`.
    pub fn in_states(&self, states: &[NodeState]) -> Vec<u64> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .nodes
            .values()
            .filter(|n| states.contains(&n.state))
            .map(|n| n.id)
            .collect()
    }

    /// The cluster's incarnation, once set ([`MetaCommand::SetClusterId`]).
    pub fn cluster_id(&self) -> Option<u128> {
        match self
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .cluster_id
        {
            0 => None,
            id => Some(id),
        }
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
            MetaCommand::RecordAcknowledged { through } => {
                for (node, index) in through {
                    let recorded = keys.acknowledged.entry(node).or_default();
                    *recorded = (*recorded).max(index);
                }
                MetaOutcome::Recorded
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
                    state_since: at,
                };
                keys.nodes.insert(id, record.clone());
                MetaOutcome::Node(record)
            }
            MetaCommand::ActivateNode { id } => match keys.nodes.get_mut(&id) {
                None => MetaOutcome::NodeNotFound,
                Some(node) if node.state == NodeState::Joining => {
                    node.state = NodeState::Active;
                    MetaOutcome::Node(node.clone())
                }
                Some(node) => MetaOutcome::Node(node.clone()),
            },
            MetaCommand::SetNodeState { id, state, at } => match keys.nodes.get_mut(&id) {
                None => MetaOutcome::NodeNotFound,
                Some(node) => match node.state.may_become(state) {
                    Err(why) => MetaOutcome::Refused(why.to_string()),
                    Ok(()) => {
                        if node.state != state {
                            node.state = state;
                            node.state_since = at;
                        }
                        MetaOutcome::Node(node.clone())
                    }
                },
            },
            MetaCommand::SetClusterId { id } => {
                if keys.cluster_id == 0 {
                    keys.cluster_id = id;
                }
                MetaOutcome::ClusterId(keys.cluster_id)
            }
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
        out.write_all(&linkrift_codec::encode(&*keys))
    }

    /// Replaces the state with a snapshot's.
    pub fn restore(&mut self, input: &mut dyn Read) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes)?;
        let decoded = linkrift_codec::decode::<Keys>(&bytes);
        let mut restored: Keys = match decoded {
            Ok(keys) => keys,
            Err(e) => {
                if let Ok(old) = linkrift_codec::decode::<KeysWithoutClusterId>(&bytes) {
                    Keys {
                        by_id: old.by_id,
                        by_hash: HashMap::new(),
                        nodes: old.nodes,
                        shard_count: old.shard_count,
                        acknowledged: old.acknowledged,
                        cluster_id: 0,
                    }
                } else if let Ok(old) = linkrift_codec::decode::<KeysWithoutAcknowledged>(&bytes) {
                    Keys {
                        by_id: old.by_id,
                        by_hash: HashMap::new(),
                        nodes: old.nodes,
                        shard_count: old.shard_count,
                        acknowledged: BTreeMap::new(),
                        cluster_id: 0,
                    }
                } else {
                    return Err(e.into());
                }
            }
        };
        restored.by_hash = restored
            .by_id
            .values()
            .map(|r| (r.hash.clone(), r.id.clone()))
            .collect();
        *self.reader.keys.write().unwrap_or_else(|p| p.into_inner()) = restored;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> NodeAddrs {
        NodeAddrs {
            http: "127.0.0.1:1".into(),
            peer: "127.0.0.1:2".into(),
            cluster: "127.0.0.1:3".into(),
        }
    }

    fn set(meta: &mut MetaState, id: u64, state: NodeState) -> MetaOutcome {
        meta.apply(MetaCommand::SetNodeState { id, state, at: 7 })
    }

    #[test]
    fn node_states_move_only_along_the_lifecycle() {
        use NodeState::*;
        let mut meta = MetaState::default();
        let registered = meta.apply(MetaCommand::RegisterNode {
            token: 9,
            addrs: addrs(),
            at: 1,
        });
        let MetaOutcome::Node(node) = registered else {
            panic!("{registered:?}")
        };
        let id = node.id;
        assert!(matches!(
            set(&mut meta, id, Draining),
            MetaOutcome::Refused(_)
        ));
        meta.apply(MetaCommand::ActivateNode { id });
        for (to, ok) in [
            (Draining, true),
            (Active, true),
            (Leaving, true),
            (Draining, true),
            (Leaving, true),
            (Removed, true),
            (Active, false),
            (Lost, false),
        ] {
            let outcome = set(&mut meta, id, to);
            assert_eq!(
                matches!(outcome, MetaOutcome::Node(_)),
                ok,
                "to {to:?}: {outcome:?}"
            );
        }
        assert_eq!(meta.reader().node(id).unwrap().state, Removed);
        assert_eq!(meta.reader().node(id).unwrap().state_since, 7);
        // A removed node's id is never given again.
        let again = meta.apply(MetaCommand::RegisterNode {
            token: 10,
            addrs: addrs(),
            at: 2,
        });
        assert!(matches!(again, MetaOutcome::Node(n) if n.id == id + 1));
    }

    #[test]
    fn a_lost_node_stays_lost() {
        let mut meta = MetaState::default();
        meta.apply(MetaCommand::RegisterNode {
            token: 1,
            addrs: addrs(),
            at: 1,
        });
        meta.apply(MetaCommand::ActivateNode { id: 1 });
        assert!(matches!(
            set(&mut meta, 1, NodeState::Lost),
            MetaOutcome::Node(_)
        ));
        for to in [NodeState::Active, NodeState::Draining, NodeState::Leaving] {
            assert!(
                matches!(set(&mut meta, 1, to), MetaOutcome::Refused(_)),
                "{to:?}"
            );
        }
        // A late admission does not bring it back either.
        meta.apply(MetaCommand::ActivateNode { id: 1 });
        assert_eq!(meta.reader().node(1).unwrap().state, NodeState::Lost);
        assert!(!NodeState::Lost.is_member());
    }

    #[test]
    fn acknowledged_indexes_only_rise_and_old_snapshots_still_restore() {
        let mut meta = MetaState::default();
        meta.apply(MetaCommand::RecordAcknowledged {
            through: vec![(1, 10), (2, 7)],
        });
        meta.apply(MetaCommand::RecordAcknowledged {
            through: vec![(1, 4), (2, 9)],
        });
        assert_eq!(meta.reader().acknowledged(1), Some(10));
        assert_eq!(meta.reader().acknowledged(2), Some(9));
        assert_eq!(meta.reader().acknowledged(3), None);

        // A snapshot written before the field existed.
        #[derive(Serialize)]
        struct Before {
            by_id: BTreeMap<String, ApiKeyRecord>,
            nodes: BTreeMap<u64, NodeRecord>,
            shard_count: u32,
        }
        let old = linkrift_codec::encode(&Before {
            by_id: BTreeMap::new(),
            nodes: BTreeMap::new(),
            shard_count: 16,
        });
        let mut restored = MetaState::default();
        restored.restore(&mut &old[..]).unwrap();
        assert_eq!(restored.reader().acknowledged(1), None);
        let mut again = Vec::new();
        meta.write_snapshot(&mut again).unwrap();
        restored.restore(&mut &again[..]).unwrap();
        assert_eq!(restored.reader().acknowledged(1), Some(10));
    }

    #[test]
    fn the_first_cluster_id_stays_and_older_snapshots_have_none() {
        let mut meta = MetaState::default();
        assert_eq!(meta.reader().cluster_id(), None);
        assert_eq!(
            meta.apply(MetaCommand::SetClusterId { id: 7 }),
            MetaOutcome::ClusterId(7)
        );
        assert_eq!(
            meta.apply(MetaCommand::SetClusterId { id: 9 }),
            MetaOutcome::ClusterId(7),
            "a second proposal (another node's, raced) changes nothing"
        );
        let mut snapshot = Vec::new();
        meta.write_snapshot(&mut snapshot).unwrap();
        let mut restored = MetaState::default();
        restored.restore(&mut &snapshot[..]).unwrap();
        assert_eq!(restored.reader().cluster_id(), Some(7));

        // A snapshot written before the field existed.
        #[derive(Serialize)]
        struct Before {
            by_id: BTreeMap<String, ApiKeyRecord>,
            nodes: BTreeMap<u64, NodeRecord>,
            shard_count: u32,
            acknowledged: BTreeMap<u64, u64>,
        }
        let old = linkrift_codec::encode(&Before {
            by_id: BTreeMap::new(),
            nodes: BTreeMap::new(),
            shard_count: 16,
            acknowledged: [(1, 4)].into(),
        });
        let mut restored = MetaState::default();
        restored.restore(&mut &old[..]).unwrap();
        assert_eq!(restored.reader().cluster_id(), None);
        assert_eq!(restored.reader().acknowledged(1), Some(4));
        assert_eq!(restored.reader().shard_count(), 16);
    }
}
