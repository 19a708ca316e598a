//! What nodes say to one another over the cluster (actor) transport.
//!
//! Every request is idempotent, because a session can drop after the far side acted and
//! before its answer arrived: writes carry their request id (the shard remembers it),
//! registration carries a token, hosting a group that is hosted is a no-op, and so on.

use linkrift_raft::NodeId;
use serde::{Deserialize, Serialize};

use crate::domain::{Link, Tag};
use crate::meta::{MetaCommand, MetaOutcome, NodeAddrs};
use crate::shard::{ShardCommand, ShardOutcome};
use crate::status::{GroupStatus, ReplicaDigest};

/// A request to another node; answered with a [`Reply`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    /// A new node asks for an id (forwarded to the meta leader).
    Register {
        /// Chosen by the joining node; a retry with it gets the same id.
        token: u128,
        /// Where the new node listens.
        addrs: NodeAddrs,
    },
    /// A registered node is ready to receive the meta group (forwarded to the meta leader).
    Admit {
        /// The node.
        id: NodeId,
        /// Where it listens (its Raft listener was not up when it registered).
        addrs: NodeAddrs,
    },
    /// Propose a meta command (forwarded to the meta leader).
    Meta(MetaCommand),
    /// Propose a shard command; forwarded to the shard's leader at most `hops` times.
    Write {
        /// The shard.
        shard: u32,
        /// The command (its request id makes a retry harmless).
        command: ShardCommand,
        /// Forwards left.
        hops: u8,
    },
    /// Read one link, from the leader's replica when it can be reached in `hops`.
    Lookup {
        /// The code.
        code: String,
        /// Forwards left.
        hops: u8,
    },
    /// A page of links of each of `shards`, read on each shard's leader when it can be
    /// reached in `hops`, else on the asked node's replica.
    List {
        /// Forwards left.
        hops: u8,
        /// The shards.
        shards: Vec<u32>,
        /// Start after this code.
        cursor: Option<String>,
        /// Only links with this tag.
        tag: Option<Tag>,
        /// At most this many per shard.
        limit: u32,
    },
    /// Start hosting an empty replica of shard `shard` (the leader will add it as learner).
    Host {
        /// The shard.
        shard: u32,
    },
    /// Stop hosting shard `shard` and delete its data (it was removed from the group).
    Release {
        /// The shard.
        shard: u32,
    },
    /// Move shard `shard`'s membership one step toward the placement `plan` implies
    /// (asked of its leader, which knows the shard's members).
    Reconcile {
        /// The shard.
        shard: u32,
        /// The nodes replicas may be on.
        plan: Plan,
        /// Forwards left.
        hops: u8,
    },
    /// The Raft view of every group this node hosts.
    Groups,
    /// The meta log index `node` is recorded to have acknowledged (a node starting asks,
    /// to find out whether its data directory was rolled back).
    Acknowledged {
        /// The node.
        node: NodeId,
    },
    /// This node's replica of shard `shard`: applied index, link count and digest.
    Digest {
        /// The shard.
        shard: u32,
    },
    /// This node's clicks of `code` over a time range (the embedded click store).
    ClickTally {
        /// The code.
        code: String,
        /// From, Unix milliseconds.
        from_ms: i64,
        /// To, Unix milliseconds.
        to_ms: i64,
        /// Which clicks count.
        bots: crate::clicks::rollup::Bots,
    },
    /// Stand for election in group `group` now (its leader is handing over).
    Stand {
        /// The Raft group id.
        group: u64,
    },
    /// The meta leader tells node `id` that it is no longer a member: lost and replaced
    /// (`rejoin`: it should join again with fresh data) or removed after leaving.
    Replaced {
        /// The node told.
        id: NodeId,
        /// Whether it should join again, with fresh data, under a new id.
        rejoin: bool,
        /// Cluster addresses of active members, to join through.
        members: Vec<String>,
    },
    // New variants go last: the wire format numbers them, and nodes of two versions
    // talk during a rolling upgrade.
    /// Shard `shard`'s members, as its leader knows them: asked by a node that holds a
    /// replica but hears from no leader, to find out whether it was removed from the group
    /// while it was away (and so was never told to release its replica).
    Members {
        /// The shard.
        shard: u32,
    },
    /// Read one link linearizably: on the shard's leader (reached in at most `hops`
    /// forwards), once it has confirmed its leadership with a quorum and applied every
    /// entry committed before. Answered with `Found`.
    ReadLinearizable {
        /// The code.
        code: String,
        /// Forwards left.
        hops: u8,
    },
}

/// Where replicas may be placed, as the meta group's node states say: what the placement
/// driver sends a shard's leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Active nodes, with their peer addresses: they may take new replicas.
    pub takers: Vec<(NodeId, String)>,
    /// Draining nodes, with their peer addresses: they keep the replicas they have.
    pub keepers: Vec<(NodeId, String)>,
    /// Leaving nodes, with their peer addresses: their replicas move away.
    pub leavers: Vec<(NodeId, String)>,
    /// The replication factor.
    pub rf: u8,
}

impl Plan {
    /// The replicas `shard` should have, given its current members.
    pub fn target(&self, shard: u32, current: &[NodeId]) -> Vec<NodeId> {
        let ids = |nodes: &[(NodeId, String)]| nodes.iter().map(|(n, _)| *n).collect::<Vec<_>>();
        let (takers, keepers) = (ids(&self.takers), ids(&self.keepers));
        crate::placement::target(shard, &takers, &keepers, current, self.rf as usize)
    }

    /// A member's peer address, as the meta group records it.
    pub fn addr(&self, node: NodeId) -> Option<&str> {
        self.takers
            .iter()
            .chain(&self.keepers)
            .chain(&self.leavers)
            .find(|(n, _)| *n == node)
            .map(|(_, a)| a.as_str())
    }
}

/// A fire-and-forget message to every node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Notice {
    /// `code` changed: drop it from near caches.
    Invalidate {
        /// The code.
        code: String,
    },
}

/// Why a node did not carry out a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// It holds no (caught-up) replica of the shard.
    #[error("no replica of the shard here")]
    NotHosted,
    /// It is not the leader, and could not forward.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader it knows of.
        leader: Option<NodeId>,
    },
    /// Try again later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Refused for good.
    #[error("{0}")]
    Failed(String),
}

/// How far a shard's membership is from its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Progress {
    /// Voters are the target; nothing to do.
    Converged,
    /// One step was taken; ask again.
    Moved,
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Reply {
    /// `Register`: the node's id and the cluster's shard count.
    Registered {
        /// Its id.
        id: NodeId,
        /// The cluster's shard count.
        shard_count: u32,
    },
    /// `Admit`, `Host`, `Release`: done.
    Done,
    /// `Meta`.
    Meta(MetaOutcome),
    /// `Write`.
    Written(ShardOutcome),
    /// `Lookup`.
    Found(Option<Link>),
    /// `List`.
    Links(Vec<Link>),
    /// `Reconcile`.
    Reconciled(Progress),
    /// `Groups`.
    Groups(Vec<GroupStatus>),
    /// A replica's digest.
    Digest(ReplicaDigest),
    /// A node's clicks of a link.
    Tally(crate::clicks::rollup::Tally),
    /// `Acknowledged`: the recorded index, if any.
    Acknowledged(Option<u64>),
    /// Not done, and why.
    Refused(Refusal),
    /// `Members`, answered by the shard's leader: its last applied (so committed)
    /// membership was recorded at log index `at`; `members` are that membership's nodes
    /// and those of any newer one it is committing (voters and learners).
    Members {
        /// Log index of the committed membership.
        at: u64,
        /// Every node the group has or is adding.
        members: Vec<NodeId>,
    },
}
