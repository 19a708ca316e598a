//! What `linkrift cluster status` shows: the nodes, every group's leader and members, and
//! the groups with fewer voters than the replication factor asks for. Built from the meta
//! group's node records and each group's Raft view as its leader (or any replica) reports it.

use linkrift_raft::NodeId;
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
    /// Names of the groups with fewer voters than `replication_factor`, or no leader.
    pub under_replicated: Vec<String>,
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
    /// `joining` or `active`.
    pub state: String,
    /// Whether it answered the node that built this status.
    pub reachable: bool,
    /// Groups it leads.
    pub leads: usize,
    /// Groups it holds a replica of.
    pub replicas: usize,
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
                    reachable,
                    leads: groups.iter().filter(|g| g.leader == Some(id)).count(),
                    replicas: groups
                        .iter()
                        .filter(|g| g.voters.contains(&id) || g.learners.contains(&id))
                        .count(),
                }
            })
            .collect();
        let under_replicated = groups
            .iter()
            .filter(|g| g.group != 0 && (g.voters.len() < rf || g.leader.is_none()))
            .map(|g| g.name.clone())
            .collect();
        Self {
            node,
            shard_count,
            replication_factor: rf,
            nodes,
            groups,
            under_replicated,
        }
    }

    /// The human-readable form: a node table, then the groups that need attention.
    pub fn render(&self) -> String {
        let mut out = format!(
            "node {} answering: {} shards + meta group, replication factor {}\n\n",
            self.node, self.shard_count, self.replication_factor
        );
        out += &format!(
            "{:<6} {:<22} {:<22} {:<8} {:<5} {:>6} {:>9}\n",
            "NODE", "HTTP", "PEER", "STATE", "UP", "LEADS", "REPLICAS"
        );
        for n in &self.nodes {
            out += &format!(
                "{:<6} {:<22} {:<22} {:<8} {:<5} {:>6} {:>9}\n",
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
        let status = ClusterStatus::new(1, 3, 3, groups, vec![node(1), node(2), node(3)]);
        assert_eq!(status.replication_factor, 3);
        let per_node: Vec<(usize, usize)> =
            status.nodes.iter().map(|n| (n.leads, n.replicas)).collect();
        assert_eq!(per_node, vec![(1, 3), (2, 4), (0, 4)]);
        assert_eq!(status.under_replicated, vec!["shard 1", "shard 2"]);
        let text = status.render();
        assert!(
            text.contains("under-replicated groups (2): shard 1, shard 2"),
            "{text}"
        );
        assert!(text.contains("127.0.0.3:8080"), "{text}");
        assert!(!status.nodes[2].reachable);
    }
}
