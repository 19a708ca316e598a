//! What `linkrift cluster status` shows: the nodes and their states, every group's leader
//! and members, the replica moves in flight with their progress, and the groups with fewer
//! live voters than the replication factor asks for. Built from the meta group's node
//! records and each group's Raft view as its leader (or any replica) reports it.

use crate::NodeId;
use serde::{Deserialize, Serialize};

use crate::meta::NodeRecord;

/// The cluster as one node sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node: NodeId,
    /// Number of shards.
    pub shard_count: u32,
    /// Voters each shard should have: the configured factor, capped by the active nodes.
    pub replication_factor: usize,
    /// Every node of the cluster.
    pub nodes: Vec<NodeStatus>,
    /// The meta group, then every shard.
    pub groups: Vec<GroupStatus>,
    /// Names of the groups with fewer live voters than `replication_factor`, or no leader.
    pub under_replicated: Vec<String>,
    /// Replica moves under way: a learner catching up, or a voter change in progress.
    pub moves: Vec<MoveStatus>,
    /// The Postgres mirror's lag: log entries not yet in Postgres, summed over the groups
    /// whose leader mirrors them (`None`: no leader reports a mirror).
    pub mirror_lag: Option<u64>,
}

/// A replica move under way in one group.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MoveStatus {
    /// `shard N` (or `meta`).
    pub group: String,
    /// Nodes being added, with the log index each has (as far as the leader knows).
    pub catching_up: Vec<(NodeId, u64)>,
    /// The leader's last log index: what a learner must reach.
    pub last_log: u64,
    /// The voters it is changing to, when a joint-consensus change is under way.
    pub changing_to: Option<Vec<NodeId>>,
}

/// One node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Its id.
    pub id: NodeId,
    /// Its peer (Raft) address.
    pub addr: String,
    /// Its HTTP address.
    pub http: String,
    /// Its cluster (actor) address.
    pub cluster: String,
    /// `joining`, `active`, `draining`, `leaving`, `lost` or `removed`.
    pub state: String,
    /// When it entered that state, Unix milliseconds.
    pub state_since: i64,
    /// Whether it answered the node that built this status.
    pub reachable: bool,
    /// Groups it leads.
    pub leads: usize,
    /// Groups it holds a replica of.
    pub replicas: usize,
    /// The meta log index it is recorded to have acknowledged (see
    /// [`crate::meta::MetaCommand::RecordAcknowledged`]).
    pub meta_acknowledged: Option<u64>,
}

/// One replica of a shard, as its node reports it (see [`crate::shard::ShardReader::digest`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaDigest {
    /// The node holding it.
    pub node: NodeId,
    /// Whether it is a voter.
    pub voter: bool,
    /// The last log index it applied.
    pub applied: u64,
    /// Links in it.
    pub links: usize,
    /// Digest of every link's every field.
    pub digest: u64,
}

/// One Raft group.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupStatus {
    /// `meta` or `shard N`.
    pub name: String,
    /// Its Raft group id.
    pub group: u64,
    /// Its leader, if it has one.
    pub leader: Option<NodeId>,
    /// Its current term.
    pub term: u64,
    /// Its voters.
    pub voters: Vec<NodeId>,
    /// Its learners (replicas catching up).
    pub learners: Vec<NodeId>,
    /// Last log index applied on the answering node.
    pub applied: u64,
    /// The answering node's last log index.
    pub last_log: u64,
    /// As the leader reports it: the log index each other member has.
    pub matched: Vec<(NodeId, u64)>,
    /// During a joint-consensus change, the voters it changes to.
    pub changing_to: Option<Vec<NodeId>>,
    /// As the leader reports it, when it mirrors to Postgres: the last log index in the
    /// mirror.
    pub mirrored: Option<u64>,
}

impl ClusterStatus {
    /// Assembles the status from each group's view and the node records (with whether
    /// each node answered).
    pub fn new(
        node: NodeId,
        shard_count: u32,
        replication_factor: usize,
        groups: Vec<GroupStatus>,
        nodes: Vec<(NodeRecord, bool)>,
    ) -> Self {
        let rf = replication_factor;
        let live: Vec<NodeId> = nodes
            .iter()
            .filter(|(record, reachable)| *reachable && record.state.is_member())
            .map(|(record, _)| record.id)
            .collect();
        let nodes = nodes
            .into_iter()
            .map(|(record, reachable)| {
                let id = record.id;
                NodeStatus {
                    id,
                    addr: record.addrs.peer,
                    http: record.addrs.http,
                    cluster: record.addrs.cluster,
                    state: record.state.name().into(),
                    state_since: record.state_since,
                    reachable,
                    leads: groups.iter().filter(|g| g.leader == Some(id)).count(),
                    replicas: groups
                        .iter()
                        .filter(|g| g.voters.contains(&id) || g.learners.contains(&id))
                        .count(),
                    meta_acknowledged: None,
                }
            })
            .collect();
        let under_replicated = groups
            .iter()
            .filter(|g| {
                let live_voters = g.voters.iter().filter(|v| live.contains(v)).count();
                g.group != 0 && (live_voters < rf || g.leader.is_none())
            })
            .map(|g| g.name.clone())
            .collect();
        // The meta group's learners are permanent (nodes beyond its voters); a shard's are
        // replicas on their way to becoming voters.
        let moving = |g: &GroupStatus| g.group != 0 && !g.learners.is_empty();
        let moves = groups
            .iter()
            .filter(|g| moving(g) || g.changing_to.is_some())
            .map(|g| MoveStatus {
                group: g.name.clone(),
                catching_up: if !moving(g) { &[][..] } else { &g.learners[..] }
                    .iter()
                    .map(|l| {
                        let at = g.matched.iter().find(|(n, _)| n == l).map_or(0, |m| m.1);
                        (*l, at)
                    })
                    .collect(),
                last_log: g.last_log,
                changing_to: g.changing_to.clone(),
            })
            .collect();
        let mirror_lag = groups
            .iter()
            .filter_map(|g| g.mirrored.map(|m| g.applied.saturating_sub(m)))
            .reduce(|a, b| a + b);
        Self {
            mirror_lag,
            node,
            shard_count,
            replication_factor: rf,
            nodes,
            groups,
            under_replicated,
            moves,
        }
    }

    /// Replicas of shards (not the meta group) on `node`, learners included.
    pub fn replicas_on(&self, node: NodeId) -> usize {
        self.groups
            .iter()
            .filter(|g| g.group != 0 && (g.voters.contains(&node) || g.learners.contains(&node)))
            .count()
    }

    /// The node's status, if the cluster has such a node.
    pub fn node_status(&self, node: NodeId) -> Option<&NodeStatus> {
        self.nodes.iter().find(|n| n.id == node)
    }

    /// The human-readable form: a node table, then the groups that need attention.
    pub fn render(&self) -> String {
        let mut out = format!(
            "node {} answering: {} shards + meta group, replication factor {}\n\n",
            self.node, self.shard_count, self.replication_factor
        );
        out += &format!(
            "{:<6} {:<22} {:<22} {:<9} {:<5} {:>6} {:>9}\n",
            "NODE", "HTTP", "PEER", "STATE", "UP", "LEADS", "REPLICAS"
        );
        for n in self.nodes.iter().filter(|n| n.state != "removed") {
            out += &format!(
                "{:<6} {:<22} {:<22} {:<9} {:<5} {:>6} {:>9}\n",
                n.id,
                n.http,
                n.addr,
                n.state,
                if n.reachable { "yes" } else { "no" },
                n.leads,
                n.replicas
            );
        }
        out += "\n";
        if self.moves.is_empty() {
            out += "moves in flight: none\n";
        } else {
            out += &format!("moves in flight ({}):\n", self.moves.len());
            for m in &self.moves {
                out += &format!("  {}:", m.group);
                for (node, at) in &m.catching_up {
                    let pct = (*at * 100)
                        .checked_div(m.last_log)
                        .map_or(100, |p| p.min(100));
                    out += &format!(" node {node} catching up {at}/{} ({pct}%)", m.last_log);
                }
                if let Some(to) = &m.changing_to {
                    out += &format!(" changing voters to {to:?}");
                }
                out += "\n";
            }
        }
        match self.mirror_lag {
            Some(lag) => out += &format!("postgres mirror: {lag} log entries behind\n"),
            None => out += "postgres mirror: none reported\n",
        }
        if self.under_replicated.is_empty() {
            out += "under-replicated groups: none\n";
        } else {
            out += &format!(
                "under-replicated groups ({}): {}\n",
                self.under_replicated.len(),
                self.under_replicated.join(", ")
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{NodeAddrs, NodeState};

    fn group(name: &str, leader: Option<NodeId>, voters: Vec<NodeId>) -> GroupStatus {
        GroupStatus {
            name: name.into(),
            group: 0,
            leader,
            term: 1,
            voters,
            learners: vec![],
            applied: 0,
            last_log: 0,
            matched: vec![],
            changing_to: None,
            mirrored: None,
        }
    }

    fn node(id: NodeId) -> (NodeRecord, bool) {
        let record = NodeRecord {
            id,
            addrs: NodeAddrs {
                http: format!("127.0.0.{id}:8080"),
                peer: format!("127.0.0.{id}:7000"),
                cluster: format!("127.0.0.{id}:7100"),
            },
            state: NodeState::Active,
            joined_at: 0,
            token: 0,
            state_since: 0,
        };
        (record, id != 3)
    }

    #[test]
    fn counts_leaders_replicas_and_under_replicated_groups() {
        let mut groups = vec![
            group("meta", Some(1), vec![1, 2, 3]),
            group("shard 0", Some(2), vec![1, 2, 3]),
            group("shard 1", Some(2), vec![2, 3]),
            group("shard 2", None, vec![1, 2, 3]),
        ];
        for (i, g) in groups.iter_mut().enumerate() {
            g.group = i as u64;
        }
        // A meta learner is a node beyond the meta group's voters, not a move.
        groups[0].learners = vec![4];
        let status = ClusterStatus::new(1, 3, 3, groups, vec![node(1), node(2), node(3)]);
        assert_eq!(status.replication_factor, 3);
        let per_node: Vec<(usize, usize)> =
            status.nodes.iter().map(|n| (n.leads, n.replicas)).collect();
        assert_eq!(per_node, vec![(1, 3), (2, 4), (0, 4)]);
        // Shard 0's third voter, node 3, does not answer: it counts as missing.
        assert_eq!(
            status.under_replicated,
            vec!["shard 0", "shard 1", "shard 2"]
        );
        let text = status.render();
        assert!(
            text.contains("under-replicated groups (3): shard 0, shard 1, shard 2"),
            "{text}"
        );
        assert!(text.contains("127.0.0.3:8080"), "{text}");
        assert!(!status.nodes[2].reachable);
        assert!(status.moves.is_empty());
        assert!(text.contains("moves in flight: none"), "{text}");
        assert!(text.contains("postgres mirror: none reported"), "{text}");
    }

    #[test]
    fn shows_learners_catching_up_and_voter_changes() {
        let mut moving = group("shard 4", Some(1), vec![1, 2]);
        moving.group = 5;
        moving.learners = vec![4];
        moving.last_log = 200;
        moving.matched = vec![(2, 200), (4, 50)];
        moving.changing_to = Some(vec![1, 2, 4]);
        let status = ClusterStatus::new(1, 8, 3, vec![moving], vec![node(1), node(2)]);
        assert_eq!(status.moves.len(), 1);
        assert_eq!(status.moves[0].catching_up, vec![(4, 50)]);
        assert_eq!(status.replicas_on(4), 1);
        let text = status.render();
        assert!(text.contains("node 4 catching up 50/200 (25%)"), "{text}");
        assert!(text.contains("changing voters to [1, 2, 4]"), "{text}");
    }
}
