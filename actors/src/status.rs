//! What `linkrift cluster status` shows: the nodes, every group's leader and members, and
//! the groups with fewer voters than the replication factor asks for. Built from the
//! Raft metrics of the groups on the answering node.

use std::collections::BTreeMap;

use linkrift_raft::NodeId;
use serde::{Deserialize, Serialize};

/// The cluster as one node sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node: NodeId,
    /// Number of shards.
    pub shard_count: u32,
    /// Voters each group should have: 3, capped by the number of nodes.
    pub replication_factor: usize,
    /// Every node that is a member of some group.
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
    /// Its peer address.
    pub addr: String,
    /// `member` (the states of joining, draining and leaving nodes come with the cluster).
    pub state: String,
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

/// Wanted voters per group for `nodes` nodes.
pub fn replication_factor(nodes: usize) -> usize {
    nodes.clamp(1, 3)
}

impl ClusterStatus {
    /// Assembles the status from each group's view; `addrs` maps members to addresses.
    pub fn new(
        node: NodeId,
        shard_count: u32,
        groups: Vec<GroupStatus>,
        addrs: BTreeMap<NodeId, String>,
    ) -> Self {
        let rf = replication_factor(addrs.len());
        let nodes = addrs
            .into_iter()
            .map(|(id, addr)| NodeStatus {
                id,
                addr,
                state: "member".into(),
                leads: groups.iter().filter(|g| g.leader == Some(id)).count(),
                replicas: groups
                    .iter()
                    .filter(|g| g.voters.contains(&id) || g.learners.contains(&id))
                    .count(),
            })
            .collect();
        let under_replicated = groups
            .iter()
            .filter(|g| g.voters.len() < rf || g.leader.is_none())
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
            "{:<6} {:<22} {:<8} {:>6} {:>9}\n",
            "NODE", "ADDRESS", "STATE", "LEADS", "REPLICAS"
        );
        for n in &self.nodes {
            out += &format!(
                "{:<6} {:<22} {:<8} {:>6} {:>9}\n",
                n.id, n.addr, n.state, n.leads, n.replicas
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

    #[test]
    fn counts_leaders_replicas_and_under_replicated_groups() {
        let addrs = BTreeMap::from([(1, "a:1".to_string()), (2, "b:1".into()), (3, "c:1".into())]);
        let groups = vec![
            group("meta", Some(1), vec![1, 2, 3]),
            group("shard 0", Some(2), vec![1, 2, 3]),
            group("shard 1", Some(2), vec![2, 3]),
            group("shard 2", None, vec![1, 2, 3]),
        ];
        let status = ClusterStatus::new(1, 3, groups, addrs);
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
    }
}
