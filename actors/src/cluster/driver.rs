//! The placement driver: on the meta leader, it moves every shard's Raft membership (the
//! truth) toward the placement the nodes' states imply (the target), keeps the meta
//! group's voters at 3 (5 from 5 nodes on), marks nodes silent for longer than `dead_after`
//! as lost, and removes leaving nodes once they hold nothing.
//!
//! A move is asked of the shard's leader ([`reconcile_here`]), one step per request: host
//! an empty replica on each new node, add it as a learner and wait until it has caught up,
//! then change the voters to the target in one joint-consensus change (the old voters keep
//! a quorum throughout), then tell the nodes that left to delete their replica. At most
//! one request per shard is in flight, and at most `max_moves` across the cluster. Active
//! nodes take replicas; draining ones keep theirs; leaving and lost ones lose theirs.
//!
//! (Over 600 lines with its table tests, about 90 of them; the loop itself is about 530.
//! Liveness is in `liveness.rs`.)

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use linkrift_raft::openraft::{BasicNode, ChangeMembers};
use linkrift_raft::{Group, NodeId};
use tokio::task::JoinSet;

use super::control::Control;
use super::liveness;
use super::wire::{Plan, Progress, Refusal, Reply, Request};
use crate::groups::GroupState;
use crate::meta::{MetaCommand, NodeState};
use crate::placement;
use linkrift_model::now_ms;

/// How often the driver looks for work.
const TICK: Duration = Duration::from_millis(250);
/// How often a shard that was on target is checked again anyway.
const RECHECK: Duration = Duration::from_secs(30);
/// How long one step may take (catching a learner up included).
const STEP_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a learner's node may be out of touch before its catch-up is given up.
const LEARNER_SILENCE: Duration = Duration::from_secs(5);

type Done = (u32, Plan, Result<Progress, Refusal>);

/// What the driver remembers between ticks; forgotten when this node stops leading.
#[derive(Default)]
struct Memory {
    /// Shards found on target, for which plan, and when.
    on_target: HashMap<u32, (Plan, Instant)>,
    /// Since when each member has had no session with this node.
    silent: HashMap<NodeId, Instant>,
    /// When each former member was last told it is one no more.
    told: HashMap<NodeId, Instant>,
}

/// Runs the driver until the node stops.
pub(crate) async fn run(cx: Arc<Control>) {
    let mut memory = Memory::default();
    let mut moving: HashSet<u32> = HashSet::new();
    let mut in_flight: JoinSet<Done> = JoinSet::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                if let Ok((shard, plan, result)) = done {
                    moving.remove(&shard);
                    match result {
                        Ok(Progress::Converged) => {
                            memory.on_target.insert(shard, (plan, Instant::now()));
                        }
                        Ok(Progress::Moved) => tracing::info!(shard, "moved a replica"),
                        Err(e) => tracing::info!(shard, error = %e, "replica move did not complete; will retry"),
                    }
                }
                continue;
            }
        }
        if !cx.meta.group.is_leader() || cx.meta.is_yielding() {
            memory = Memory::default();
            continue;
        }
        liveness::watch_for_lost(&cx, &mut memory.silent).await;
        liveness::tell_former_members(&cx, &mut memory.told);
        balance_meta_voters(&cx).await;
        let plan = plan(&cx);
        if plan.takers.is_empty() {
            continue;
        }
        for shard in 0..cx.settings.shard_count {
            if in_flight.len() >= cx.settings.max_moves {
                break;
            }
            if moving.contains(&shard) {
                continue;
            }
            let fresh = memory
                .on_target
                .get(&shard)
                .is_some_and(|(p, at)| *p == plan && at.elapsed() < RECHECK);
            if fresh {
                continue;
            }
            // Only a step that finds the shard on target puts it back.
            memory.on_target.remove(&shard);
            moving.insert(shard);
            let cx = cx.clone();
            let plan = plan.clone();
            in_flight.spawn(async move {
                let started = Instant::now();
                let result = reconcile(&cx, shard, &plan).await;
                tracing::debug!(shard, took = ?started.elapsed(), ?result, "reconcile step");
                (shard, plan, result)
            });
        }
        finish_leaves(&cx, &plan, &memory.on_target).await;
    }
}

/// Where replicas may go now: active nodes take them, draining ones keep theirs.
fn plan(cx: &Control) -> Plan {
    let nodes = cx.meta.directory.nodes();
    let with = |state: NodeState| -> Vec<(NodeId, String)> {
        nodes
            .iter()
            .filter(|n| n.state == state)
            .map(|n| (n.id, n.addrs.peer.clone()))
            .collect()
    };
    Plan {
        takers: with(NodeState::Active),
        keepers: with(NodeState::Draining),
        leavers: with(NodeState::Leaving),
        rf: cx.settings.replication_factor as u8,
    }
}

/// Members of a group whose recorded peer address is not the one the meta group has now
/// (the node restarted on another address), with the address to record.
fn moved_addresses(
    group: &Group<GroupState>,
    now: impl Fn(NodeId) -> Option<String>,
) -> BTreeMap<NodeId, BasicNode> {
    group.read(|a| {
        a.membership
            .membership()
            .nodes()
            .filter_map(|(id, node)| {
                let addr = now(*id)?;
                (addr != node.addr).then(|| (*id, BasicNode::new(addr)))
            })
            .collect()
    })
}

/// Records new peer addresses in a group's membership, so that Raft reaches the nodes.
async fn update_addresses(
    group: &Group<GroupState>,
    moved: BTreeMap<NodeId, BasicNode>,
) -> Result<(), Refusal> {
    tracing::info!(group = %group.id(), nodes = ?moved, "recording new peer addresses");
    group
        .raft()
        .change_membership(ChangeMembers::SetNodes(moved), false)
        .await
        .map(|_| ())
        .map_err(|e| Refusal::Unavailable(format!("recording new peer addresses: {e}")))
}

/// Keeps `meta_voter_count` voters in the meta group, from the active and draining nodes
/// (current voters stay; a drain, as for a restart, changes nothing), and removes lost and
/// removed nodes from it. Every other node stays a learner.
async fn balance_meta_voters(cx: &Control) {
    let nodes = cx.meta.directory.nodes();
    let pick = |states: &[NodeState]| -> Vec<NodeId> {
        nodes
            .iter()
            .filter(|n| states.contains(&n.state))
            .map(|n| n.id)
            .collect()
    };
    let active = pick(&[NodeState::Active]);
    let eligible: Vec<NodeId> = active
        .iter()
        .copied()
        .chain(pick(&[NodeState::Draining]))
        .collect();
    let gone = pick(&[NodeState::Lost, NodeState::Removed]);
    let moved = moved_addresses(&cx.meta.group, |id| {
        nodes
            .iter()
            .find(|n| n.id == id && n.state.is_member() && !n.addrs.peer.is_empty())
            .map(|n| n.addrs.peer.clone())
    });
    if !moved.is_empty() {
        if let Err(e) = update_addresses(&cx.meta.group, moved).await {
            tracing::info!(error = %e, "will retry");
        }
        return;
    }
    let want = placement::meta_voter_count(eligible.len());
    let (voters, members): (BTreeSet<NodeId>, BTreeSet<NodeId>) = {
        let m = cx.meta.group.raft().metrics().borrow().clone();
        let membership = m.membership_config.membership();
        if membership.get_joint_config().len() > 1 {
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
        .filter(|v| eligible.contains(v))
        .take(want)
        .collect();
    for &n in &eligible {
        if next.len() >= want {
            break;
        }
        if members.contains(&n) {
            next.insert(n);
        }
    }
    if next != voters && !next.is_empty() {
        match cx
            .meta
            .group
            .raft()
            .change_membership(next.clone(), true)
            .await
        {
            Ok(_) => tracing::info!(voters = ?next, "meta group voters changed"),
            Err(e) => {
                tracing::info!(error = %e, "changing the meta group's voters failed; will retry")
            }
        }
        return;
    }
    let drop: BTreeSet<NodeId> = members
        .iter()
        .copied()
        .filter(|n| gone.contains(n) && !voters.contains(n))
        .collect();
    if !drop.is_empty() {
        let change = ChangeMembers::RemoveNodes(drop.clone());
        match cx.meta.group.raft().change_membership(change, false).await {
            Ok(_) => tracing::info!(nodes = ?drop, "former members left the meta group"),
            Err(e) => {
                tracing::info!(error = %e, "removing former members from the meta group failed; will retry")
            }
        }
    }
}

/// Removes the leaving nodes that hold nothing any more: every shard is on target for the
/// current plan (which leaves them out), and they are no longer meta voters.
async fn finish_leaves(cx: &Control, plan: &Plan, on_target: &HashMap<u32, (Plan, Instant)>) {
    let leaving = cx.meta.directory.in_states(&[NodeState::Leaving]);
    if leaving.is_empty() {
        return;
    }
    let all_on_target =
        (0..cx.settings.shard_count).all(|s| on_target.get(&s).is_some_and(|(p, _)| p == plan));
    if !all_on_target {
        return;
    }
    let meta_voters: Vec<NodeId> = cx
        .meta
        .group
        .read(|a| a.membership.membership().voter_ids().collect());
    for node in leaving {
        if meta_voters.contains(&node) {
            continue;
        }
        let removed = MetaCommand::SetNodeState {
            id: node,
            state: NodeState::Removed,
            at: now_ms(),
        };
        match cx.meta.propose_as_leader(removed).await {
            Ok(_) => tracing::info!(
                node,
                "node holds no replica any more and has left the cluster"
            ),
            Err(e) => {
                tracing::info!(node, error = %e, "could not record a finished leave; will retry")
            }
        }
    }
}

/// One step of a shard's group toward its target, as [`next_step`] decides it.
#[derive(Debug, Default, PartialEq, Eq)]
struct Step {
    /// Target nodes already in the group as learners: caught up (again) first.
    catch_up: Vec<NodeId>,
    /// Target nodes not in the group: each hosts an empty replica, added as a learner and
    /// caught up.
    add: Vec<NodeId>,
    /// The voter set to change to, when it is not the target yet.
    voters: Option<BTreeSet<NodeId>>,
    /// Members outside the target: removed from the group, then told to delete their
    /// replicas.
    release: Vec<NodeId>,
}

/// What the leader of a group with `voters` and `members` (voters and learners) does next
/// to reach the voter set `want`; `None` once both are `want`.
fn next_step(
    voters: &BTreeSet<NodeId>,
    members: &BTreeSet<NodeId>,
    want: &BTreeSet<NodeId>,
) -> Option<Step> {
    if voters == want && members == want {
        return None;
    }
    let (catch_up, add) = want
        .difference(voters)
        .partition(|node| members.contains(node));
    Some(Step {
        catch_up,
        add,
        voters: (voters != want).then(|| want.clone()),
        release: members.difference(want).copied().collect(),
    })
}

/// Asks the leader of `shard` for one step toward the target, trying the nodes likely to
/// hold the shard first.
async fn reconcile(cx: &Arc<Control>, shard: u32, plan: &Plan) -> Result<Progress, Refusal> {
    let members =
        cx.meta
            .directory
            .in_states(&[NodeState::Active, NodeState::Draining, NodeState::Leaving]);
    let ask = placement::replicas(shard, &members, members.len());
    let mut last = Refusal::Unavailable("no node holds the shard".into());
    for node in ask {
        let answer = if node == cx.settings.me {
            tokio::time::timeout(STEP_TIMEOUT, reconcile_here(cx, shard, plan.clone(), 1))
                .await
                .unwrap_or_else(|_| Err(Refusal::Unavailable("the step timed out".into())))
        } else {
            let request = Request::Reconcile {
                shard,
                plan: plan.clone(),
                hops: 1,
            };
            match cx.peers.call(node, &request, STEP_TIMEOUT).await {
                Ok(Reply::Reconciled(p)) => Ok(p),
                Ok(Reply::Refused(r)) => Err(r),
                Ok(other) => Err(Refusal::Failed(format!("reconcile answered {other:?}"))),
                Err(e) => Err(Refusal::Unavailable(e.to_string())),
            }
        };
        match answer {
            Ok(progress) => return Ok(progress),
            // Not there, or not the leader and could not forward: ask the next node.
            Err(r @ (Refusal::NotHosted | Refusal::NotLeader { .. })) => last = r,
            // The leader tried and could not: the next tick tries again, with the
            // placement as it is then (asking another node now would repeat a stale step).
            Err(r) => return Err(r),
        }
    }
    Err(last)
}

/// One step of `shard`'s membership toward the target `plan` implies, taken by its leader
/// (this node, or the leader it forwards to).
pub(crate) async fn reconcile_here(
    cx: &Arc<Control>,
    shard: u32,
    plan: Plan,
    hops: u8,
) -> Result<Progress, Refusal> {
    let Some(local) = cx.replicas.get(shard) else {
        return Err(Refusal::NotHosted);
    };
    let group = &local.group;
    if !group.is_leader() {
        return match group.leader() {
            Some(leader) if leader != cx.settings.me && hops > 0 => {
                let request = Request::Reconcile {
                    shard,
                    plan,
                    hops: hops - 1,
                };
                match cx.peers.call(leader, &request, STEP_TIMEOUT).await {
                    Ok(Reply::Reconciled(p)) => Ok(p),
                    Ok(Reply::Refused(r)) => Err(r),
                    Ok(other) => Err(Refusal::Failed(format!("reconcile answered {other:?}"))),
                    Err(e) => Err(Refusal::Unavailable(e.to_string())),
                }
            }
            leader => Err(Refusal::NotLeader { leader }),
        };
    }
    if cx.meta.is_yielding() {
        return Err(Refusal::Unavailable(
            "this node is handing over its leaderships".into(),
        ));
    }
    let (voters, members) = {
        let m = group.raft().metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members: BTreeSet<NodeId> = membership.nodes().map(|(id, _)| *id).collect();
        (voters, members)
    };
    let moved = moved_addresses(group, |id| plan.addr(id).map(str::to_string));
    if !moved.is_empty() {
        update_addresses(group, moved).await?;
        return Ok(Progress::Moved);
    }
    let current: Vec<NodeId> = members.iter().copied().collect();
    let want: BTreeSet<NodeId> = plan.target(shard, &current).into_iter().collect();
    if want.is_empty() {
        return Err(Refusal::Failed("no node may hold the shard".into()));
    }
    let Some(step) = next_step(&voters, &members, &want) else {
        return Ok(Progress::Converged);
    };
    // 1. An empty replica on every new node, caught up as a learner (also a learner added
    // by an earlier step: it may have fallen behind, or died, since).
    for &node in &step.catch_up {
        catch_up(cx, group, node).await?;
    }
    for &node in &step.add {
        let Some(addr) = plan.addr(node) else {
            return Err(Refusal::Failed(format!("no address for node {node}")));
        };
        match cx
            .peers
            .call(node, &Request::Host { shard }, Duration::from_secs(10))
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
            .raft()
            .add_learner(node, linkrift_raft::openraft::BasicNode::new(addr), false)
            .await
            .map_err(|e| Refusal::Unavailable(format!("adding node {node} as learner: {e}")))?;
        tracing::info!(shard, node, "catching up a new replica");
        catch_up(cx, group, node).await?;
        tracing::info!(shard, node, "new replica caught up");
    }
    // 2. The target becomes the voter set; members outside it leave the group.
    if let Some(new_voters) = step.voters {
        tracing::info!(shard, from = ?voters, to = ?new_voters, "changing voters");
        group
            .raft()
            .change_membership(new_voters, false)
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
        tracing::info!(shard, nodes = ?leftovers, "removing members");
        group
            .raft()
            .change_membership(ChangeMembers::RemoveNodes(leftovers), false)
            .await
            .map_err(|e| Refusal::Unavailable(format!("removing learners: {e}")))?;
    }
    // 3. The nodes that left delete their replicas.
    for node in &step.release {
        if *node == cx.settings.me {
            let replicas = cx.replicas.clone();
            cx.tasks.spawn("release a replica moved away", async move {
                if let Err(e) = replicas.release(shard).await {
                    tracing::warn!(shard, error = %e, "could not delete this node's old replica");
                }
            });
        } else if let Err(e) = cx
            .peers
            .call(*node, &Request::Release { shard }, Duration::from_secs(10))
            .await
        {
            tracing::warn!(shard, node, error = %e, "could not tell a node to delete its old replica; it will find out when it asks who leads the shard");
        }
    }
    Ok(Progress::Moved)
}

/// Waits until learner `node` has every entry the leader had when it was added. Gives up
/// when this node stops leading, the learner's node is out of touch for longer than
/// [`LEARNER_SILENCE`], or the step takes longer than [`STEP_TIMEOUT`].
async fn catch_up(cx: &Control, group: &Group<GroupState>, node: NodeId) -> Result<(), Refusal> {
    let mut metrics = group.raft().metrics();
    let goal = metrics.borrow().last_log_index.unwrap_or(0);
    let deadline = Instant::now() + STEP_TIMEOUT;
    let mut silent_since: Option<Instant> = None;
    loop {
        let matched = {
            let m = metrics.borrow_and_update();
            if m.current_leader != Some(cx.settings.me) {
                return Err(Refusal::NotLeader {
                    leader: m.current_leader,
                });
            }
            m.replication
                .as_ref()
                .and_then(|r| r.get(&node).copied().flatten())
                .map_or(0, |l| l.index)
        };
        if matched >= goal {
            return Ok(());
        }
        let now = Instant::now();
        if cx.peers.is_connected(node) {
            silent_since = None;
        } else if now.duration_since(*silent_since.get_or_insert(now)) > LEARNER_SILENCE {
            return Err(Refusal::Unavailable(format!(
                "node {node} went out of touch while catching up"
            )));
        }
        if now >= deadline {
            return Err(Refusal::Unavailable(format!(
                "node {node} did not catch up within {STEP_TIMEOUT:?} ({matched}/{goal})"
            )));
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), metrics.changed()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn each_step_adds_learners_then_changes_voters_then_releases() {
        // (voters, members, want) -> step
        type Case = (
            &'static [NodeId],
            &'static [NodeId],
            &'static [NodeId],
            Option<Step>,
        );
        let cases: [Case; 6] = [
            // On target: nothing to do.
            (&[1, 2, 3], &[1, 2, 3], &[1, 2, 3], None),
            // Node 4 replaces node 3: host and add 4, change voters, release 3.
            (
                &[1, 2, 3],
                &[1, 2, 3],
                &[1, 2, 4],
                Some(Step {
                    add: vec![4],
                    voters: Some(set(&[1, 2, 4])),
                    release: vec![3],
                    ..Step::default()
                }),
            ),
            // Node 4 is a learner already (an earlier step added it): caught up again, not
            // added twice.
            (
                &[1, 2, 3],
                &[1, 2, 3, 4],
                &[1, 2, 4],
                Some(Step {
                    catch_up: vec![4],
                    voters: Some(set(&[1, 2, 4])),
                    release: vec![3],
                    ..Step::default()
                }),
            ),
            // Voters on target, a learner left over (a step that stopped after the voter
            // change): only its removal and release.
            (
                &[1, 2, 4],
                &[1, 2, 3, 4],
                &[1, 2, 4],
                Some(Step {
                    release: vec![3],
                    ..Step::default()
                }),
            ),
            // Growing from one replica to three.
            (
                &[1],
                &[1],
                &[1, 2, 3],
                Some(Step {
                    add: vec![2, 3],
                    voters: Some(set(&[1, 2, 3])),
                    ..Step::default()
                }),
            ),
            // Shrinking: the voter change alone, then the release.
            (
                &[1, 2, 3],
                &[1, 2, 3],
                &[1, 2],
                Some(Step {
                    voters: Some(set(&[1, 2])),
                    release: vec![3],
                    ..Step::default()
                }),
            ),
        ];
        for (voters, members, want, expected) in cases {
            assert_eq!(
                next_step(&set(voters), &set(members), &set(want)),
                expected,
                "voters {voters:?}, members {members:?}, want {want:?}"
            );
        }
    }
}
