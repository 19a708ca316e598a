//! Liveness and failover, run by the meta leader each tick of the placement driver: a
//! member with no session to it for longer than `dead_after` is marked lost (the driver
//! then re-creates its replicas on the others), and a lost or removed node that comes back
//! is told it is a member no more (it wipes its data and joins again, or stops).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use linkrift_model::now_ms;
use linkrift_raft::NodeId;

use super::control::Control;
use super::wire::Request;
use crate::meta::{MetaCommand, NodeState};

/// How often a node that is no longer a member is told so.
const RETELL: Duration = Duration::from_secs(2);

/// Marks lost the members that have had no session with this node (the meta leader) for
/// longer than `dead_after`.
pub(crate) async fn watch_for_lost(cx: &Control, silent: &mut HashMap<NodeId, Instant>) {
    let now = Instant::now();
    let members: Vec<NodeId> = cx
        .meta
        .directory
        .nodes()
        .into_iter()
        .filter(|n| n.id != cx.settings.me && n.state.is_member())
        .map(|n| n.id)
        .collect();
    silent.retain(|n, _| members.contains(n));
    for node in members {
        if cx.peers.is_connected(node) {
            silent.remove(&node);
            continue;
        }
        let since = *silent.entry(node).or_insert(now);
        if now.duration_since(since) < cx.settings.dead_after {
            continue;
        }
        let lost = MetaCommand::SetNodeState {
            id: node,
            state: NodeState::Lost,
            at: now_ms(),
        };
        match cx.meta.propose_as_leader(lost).await {
            Ok(_) => {
                tracing::warn!(node, silent_for = ?now.duration_since(since), "node marked lost; its replicas will be re-created on the others");
                silent.remove(&node);
            }
            Err(e) => tracing::info!(node, error = %e, "could not mark a node lost; will retry"),
        }
    }
}

/// Tells lost and removed nodes that come back that they are members no more.
pub(crate) fn tell_former_members(cx: &Control, told: &mut HashMap<NodeId, Instant>) {
    let nodes = cx.meta.directory.nodes();
    let members: Vec<String> = nodes
        .iter()
        .filter(|n| n.state == NodeState::Active)
        .map(|n| n.addrs.cluster.clone())
        .collect();
    for node in nodes {
        let rejoin = match node.state {
            NodeState::Lost => true,
            NodeState::Removed => false,
            _ => continue,
        };
        if !cx.peers.is_connected(node.id)
            || told.get(&node.id).is_some_and(|at| at.elapsed() < RETELL)
        {
            continue;
        }
        told.insert(node.id, Instant::now());
        let request = Request::Replaced {
            id: node.id,
            rejoin,
            members: members.clone(),
        };
        let peers = cx.peers.clone();
        cx.tasks.spawn("tell a former member", async move {
            let answer = peers.call(node.id, &request, RETELL).await;
            tracing::info!(node = node.id, rejoin, answer = ?answer.ok(), "told a former member it was replaced");
        });
    }
}
