//! The placement driver: on the meta leader, it moves every shard's Raft membership (the
//! truth) toward the placement the active nodes imply (the target), and keeps the meta
//! group's voters at 3 (5 from 5 nodes on).
//!
//! A move is asked of the shard's leader ([`reconcile_here`]), one step per request: host
//! an empty replica on each new node, add it as a learner and wait until it has caught up,
//! then change the voters to the target in one joint-consensus change (the old voters keep
//! a quorum throughout), then tell the nodes that left to delete their replica. At most
//! one request per shard is in flight, and at most `max_moves` across the cluster.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use linkrift_raft::openraft::ChangeMembers;
use linkrift_raft::NodeId;
use tokio::task::JoinSet;

use super::wire::{Progress, Refusal, Reply, Request};
use crate::placement;
use crate::service::Core;

/// How often the driver looks for work.
const TICK: Duration = Duration::from_millis(250);
/// How often a shard that was on target is checked again anyway.
const RECHECK: Duration = Duration::from_secs(30);
/// How long one step may take (catching a learner up included).
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs the driver until the node stops.
pub(crate) async fn run(core: Weak<Core>) {
    let mut on_target: HashMap<u32, (Vec<NodeId>, Instant)> = HashMap::new();
    let mut moving: HashSet<u32> = HashSet::new();
    let mut in_flight: JoinSet<(u32, Vec<NodeId>, Result<Progress, String>)> = JoinSet::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                if let Ok((shard, target, result)) = done {
                    moving.remove(&shard);
                    match result {
                        Ok(Progress::Converged) => {
                            on_target.insert(shard, (target, Instant::now()));
                        }
                        Ok(Progress::Moved) => {
                            tracing::info!(shard, ?target, "moved a replica");
                        }
                        Err(e) => tracing::info!(shard, error = %e, "replica move did not complete; will retry"),
                    }
                }
                continue;
            }
        }
        let Some(core) = core.upgrade() else { return };
        if core.cancel.is_cancelled() {
            return;
        }
        if !core.meta.is_leader() {
            on_target.clear();
            continue;
        }
        balance_meta_voters(&core).await;
        let active = core.directory.active_nodes();
        if active.is_empty() {
            continue;
        }
        let rf = core.replication_factor.min(active.len());
        for shard in 0..core.shard_count {
            if in_flight.len() >= core.max_moves {
                break;
            }
            if moving.contains(&shard) {
                continue;
            }
            let target = placement::replicas(shard, &active, rf);
            if on_target
                .get(&shard)
                .is_some_and(|(t, at)| *t == target && at.elapsed() < RECHECK)
            {
                continue;
            }
            moving.insert(shard);
            let core = core.clone();
            in_flight.spawn(async move {
                let result = reconcile(&core, shard, &target).await;
                (shard, target, result)
            });
        }
    }
}

/// Makes the meta group's voters the first `meta_voter_count` active nodes (keeping the
/// current ones that are still active). Every other node stays a learner.
async fn balance_meta_voters(core: &Core) {
    let active = core.directory.active_nodes();
    let want = placement::meta_voter_count(active.len());
    let (voters, members): (BTreeSet<NodeId>, BTreeSet<NodeId>) = {
        let m = core.meta.raft().metrics().borrow().clone();
        let membership = m.membership_config.membership();
        if m.membership_config.membership().get_joint_config().len() > 1 {
            return; // a change is under way
        }
        (
            membership.voter_ids().collect(),
            membership.nodes().map(|(id, _)| *id).collect(),
        )
    };
    let mut next: BTreeSet<NodeId> = voters
        .iter()
        .copied()
        .filter(|v| active.contains(v))
        .take(want)
        .collect();
    for &n in &active {
        if next.len() >= want {
            break;
        }
        if members.contains(&n) {
            next.insert(n);
        }
    }
    if next == voters || next.is_empty() {
        return;
    }
    match core.meta.raft().change_membership(next.clone(), true).await {
        Ok(_) => tracing::info!(voters = ?next, "meta group voters changed"),
        Err(e) => tracing::info!(error = %e, "changing the meta group's voters failed; will retry"),
    }
}

/// Asks the leader of `shard` for one step toward `target`, trying the nodes likely to
/// hold the shard first.
async fn reconcile(core: &Arc<Core>, shard: u32, target: &[NodeId]) -> Result<Progress, String> {
    let addressed: Vec<(NodeId, String)> = target
        .iter()
        .filter_map(|&n| core.directory.node(n).map(|r| (n, r.addrs.peer)))
        .collect();
    let mut ask: Vec<NodeId> = target.to_vec();
    for n in core.directory.active_nodes() {
        if !ask.contains(&n) {
            ask.push(n);
        }
    }
    let mut last = String::from("no node holds the shard");
    for node in ask {
        let answer = if node == core.me {
            reconcile_here(core, shard, addressed.clone(), 1).await
        } else {
            let request = Request::Reconcile {
                shard,
                target: addressed.clone(),
                hops: 1,
            };
            match core.peers.call(node, &request, STEP_TIMEOUT).await {
                Ok(Reply::Reconciled(p)) => Ok(p),
                Ok(Reply::Refused(r)) => Err(r),
                Ok(other) => Err(Refusal::Failed(format!("reconcile answered {other:?}"))),
                Err(e) => Err(Refusal::Unavailable(e.to_string())),
            }
        };
        match answer {
            Ok(progress) => return Ok(progress),
            Err(Refusal::NotHosted) => continue,
            Err(r) => last = r.to_string(),
        }
    }
    Err(last)
}

/// One step of `shard`'s membership toward `target`, taken by its leader (this node, or
/// the leader it forwards to).
pub(crate) async fn reconcile_here(
    core: &Arc<Core>,
    shard: u32,
    target: Vec<(NodeId, String)>,
    hops: u8,
) -> Result<Progress, Refusal> {
    let Some(local) = core.local.pin().get(&shard).cloned() else {
        return Err(Refusal::NotHosted);
    };
    let group = &local.group;
    if !group.is_leader() {
        return match group.leader() {
            Some(leader) if leader != core.me && hops > 0 => {
                let request = Request::Reconcile {
                    shard,
                    target,
                    hops: hops - 1,
                };
                match core.peers.call(leader, &request, STEP_TIMEOUT).await {
                    Ok(Reply::Reconciled(p)) => Ok(p),
                    Ok(Reply::Refused(r)) => Err(r),
                    Ok(other) => Err(Refusal::Failed(format!("reconcile answered {other:?}"))),
                    Err(e) => Err(Refusal::Unavailable(e.to_string())),
                }
            }
            leader => Err(Refusal::NotLeader { leader }),
        };
    }
    let want: BTreeSet<NodeId> = target.iter().map(|(n, _)| *n).collect();
    let (voters, members) = {
        let m = group.raft().metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members: BTreeSet<NodeId> = membership.nodes().map(|(id, _)| *id).collect();
        (voters, members)
    };
    if voters == want && members == want {
        return Ok(Progress::Converged);
    }
    // 1. An empty replica on every new node, caught up as a learner.
    for (node, addr) in &target {
        if members.contains(node) {
            continue;
        }
        match core
            .peers
            .call(*node, &Request::Host { shard }, Duration::from_secs(10))
            .await
        {
            Ok(Reply::Done) => {}
            Ok(other) => {
                return Err(Refusal::Unavailable(format!(
                    "node {node} would not host shard {shard}: {other:?}"
                )))
            }
            Err(e) => return Err(Refusal::Unavailable(e.to_string())),
        }
        group
            .add_learner(*node, addr.clone())
            .await
            .map_err(|e| Refusal::Unavailable(format!("adding node {node} as learner: {e}")))?;
    }
    // 2. The target becomes the voter set; members outside it leave the group.
    if voters != want {
        group
            .raft()
            .change_membership(want.clone(), false)
            .await
            .map_err(|e| Refusal::Unavailable(format!("changing voters: {e}")))?;
    }
    let leftovers: BTreeSet<NodeId> = {
        let m = group.raft().metrics().borrow().clone();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .filter(|id| !want.contains(id))
            .collect()
    };
    if !leftovers.is_empty() {
        group
            .raft()
            .change_membership(ChangeMembers::RemoveNodes(leftovers), false)
            .await
            .map_err(|e| Refusal::Unavailable(format!("removing learners: {e}")))?;
    }
    // 3. The nodes that left delete their replicas.
    for node in members.difference(&want) {
        if *node == core.me {
            let core = core.clone();
            tokio::spawn(async move {
                if let Err(e) = core.release(shard).await {
                    tracing::warn!(shard, error = %e, "could not delete this node's old replica");
                }
            });
        } else if let Err(e) = core
            .peers
            .call(*node, &Request::Release { shard }, Duration::from_secs(10))
            .await
        {
            tracing::warn!(shard, node, error = %e, "could not tell a node to delete its old replica");
        }
    }
    Ok(Progress::Moved)
}
