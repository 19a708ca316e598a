//! A node's part in elastic membership: draining (handing its leaderships to other
//! voters), leaving, cancelling either, learning that it was replaced, and finding out that
//! it was removed from a shard's group while it was away.
//!
//! openraft 0.9 has no leadership transfer, and a follower refuses to vote while its
//! leader's lease (its longest election timeout) lasts. So a yielding leader stops sending
//! heartbeats and refuses new writes to the group (they are retried, with their request
//! ids, until the new leader takes them); once the followers' leases are over it asks the
//! most caught-up reachable follower to stand for election. Its own elections are turned
//! off, so it does not take a leadership back. A group with no other voter keeps its
//! leader: nobody could take over.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use linkrift_raft::{Group, GroupId, NodeId};

use super::wire::{Refusal, Reply, Request};
use crate::groups::GroupState;
use crate::meta::{MetaCommand, MetaOutcome, NodeRecord, NodeState};
use crate::service::{now_ms, Core, LinkService, ServiceError};

/// How long after the followers' leases are over a yielding leader waits before asking
/// another follower to stand.
const ASK_AGAIN: Duration = Duration::from_secs(1);
/// How often a replica that hears from no leader asks whether it is still a member.
const MEMBERSHIP_CHECK: Duration = Duration::from_secs(2);

/// Why this node is no longer a member of its cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Departure {
    /// It was silent for longer than `dead_after` and its replicas were re-created
    /// elsewhere: it should wipe its data and join again, through one of `members`
    /// (cluster addresses).
    Replaced {
        /// Cluster addresses of active members.
        members: Vec<String>,
    },
    /// It left the cluster (`linkrift cluster leave`): it holds nothing and may stop.
    Left,
}

/// The leaderships this node is handing over, and the groups whose elections it turned off.
#[derive(Default)]
pub(crate) struct Handover {
    quiet: HashSet<GroupId>,
    leading: HashMap<GroupId, Yielding>,
}

struct Yielding {
    since: Instant,
    asked: usize,
    last_ask: Option<Instant>,
}

/// The voters of `group` other than `me`.
fn other_voters(group: &Group<GroupState>, me: NodeId) -> Vec<NodeId> {
    group.read(|a| {
        a.membership
            .membership()
            .voter_ids()
            .filter(|&v| v != me)
            .collect()
    })
}

impl Core {
    /// This node's state, as its copy of the meta group records it.
    pub(crate) fn my_state(&self) -> Option<NodeState> {
        self.directory.node(self.me).map(|n| n.state)
    }

    /// Whether this node is draining or leaving: it gives up its leaderships.
    pub(crate) fn is_yielding(&self) -> bool {
        self.my_state().is_some_and(NodeState::yields)
    }

    /// Whether this node leads `group` only to hand it over: it takes no new writes.
    pub(crate) fn is_handing_over(&self, group: &Group<GroupState>) -> bool {
        self.is_yielding() && group.is_leader() && !other_voters(group, self.me).is_empty()
    }

    /// The meta group and every shard group this node holds.
    pub(crate) fn all_groups(&self) -> Vec<Group<GroupState>> {
        let mut groups = vec![self.meta.clone()];
        groups.extend(self.local.pin().values().map(|l| l.group.clone()));
        groups
    }

    /// One round of handing over: called every tick. Turns this node's elections off (or
    /// back on after a cancel), stops heartbeats in the groups it leads, and once the
    /// followers' leases are over asks one of them to stand.
    pub(crate) fn hand_over(self: &Arc<Self>, handover: &mut Handover) {
        let groups = self.all_groups();
        if !self.is_yielding() {
            for group in &groups {
                if handover.quiet.remove(&group.id()) {
                    group.raft().runtime_config().elect(true);
                }
                if handover.leading.remove(&group.id()).is_some() {
                    group.raft().runtime_config().heartbeat(true);
                }
            }
            return;
        }
        let now = Instant::now();
        for group in groups {
            let id = group.id();
            if handover.quiet.insert(id) {
                group.raft().runtime_config().elect(false);
            }
            let others = other_voters(&group, self.me);
            if !group.is_leader() || others.is_empty() {
                if handover.leading.remove(&id).is_some() {
                    group.raft().runtime_config().heartbeat(true);
                    tracing::info!(group = %id, leader = ?group.leader(), "leadership handed over");
                }
                continue;
            }
            let y = handover.leading.entry(id).or_insert_with(|| {
                group.raft().runtime_config().heartbeat(false);
                tracing::info!(group = %id, "handing over leadership");
                Yielding {
                    since: now,
                    asked: 0,
                    last_ask: None,
                }
            });
            let leases_over = now.duration_since(y.since) >= self.leader_lease + ASK_AGAIN / 4;
            if !leases_over
                || y.last_ask
                    .is_some_and(|at| now.duration_since(at) < ASK_AGAIN)
            {
                continue;
            }
            // The most caught-up reachable follower first; the next one on each retry.
            let matched: HashMap<NodeId, u64> = group
                .raft()
                .metrics()
                .borrow()
                .replication
                .iter()
                .flatten()
                .map(|(n, l)| (*n, l.map_or(0, |l| l.index)))
                .collect();
            let mut ranked: Vec<NodeId> = others
                .into_iter()
                .filter(|&n| self.peers.is_connected(n))
                .collect();
            ranked.sort_by_key(|n| (std::cmp::Reverse(matched.get(n).copied()), *n));
            if ranked.is_empty() {
                continue;
            }
            let pick = ranked[y.asked % ranked.len()];
            y.asked += 1;
            y.last_ask = Some(now);
            let core = self.clone();
            self.tasks.spawn("ask a follower to stand", async move {
                let ask = Request::Stand { group: id.0 };
                if let Err(e) = core.peers.call(pick, &ask, ASK_AGAIN).await {
                    tracing::info!(group = %id, node = pick, error = %e, "could not ask a follower to stand");
                }
            });
        }
    }

    /// Stands for election in `group` (a yielding leader asked).
    pub(crate) async fn stand(&self, group: GroupId) -> Reply {
        let Some(group) = self.node.group(group) else {
            return Reply::Refused(super::wire::Refusal::NotHosted);
        };
        if self.is_yielding() {
            return Reply::Refused(super::wire::Refusal::Unavailable(
                "this node is yielding too".into(),
            ));
        }
        match group.raft().trigger().elect().await {
            Ok(()) => Reply::Done,
            Err(e) => Reply::Refused(super::wire::Refusal::Failed(e.to_string())),
        }
    }

    /// Notes that this node is no longer a member (told by the meta leader, or seen in its
    /// own copy of the meta group). The first departure recorded stays.
    pub(crate) fn depart(&self, departure: Departure) {
        self.departure.send_if_modified(|d| {
            if d.is_some() {
                return false;
            }
            tracing::warn!(
                ?departure,
                node = self.me,
                "this node is no longer a member of the cluster"
            );
            *d = Some(departure);
            true
        });
    }

    /// `shard`'s members, if this node leads its group (the answer to [`Request::Members`]).
    pub(crate) fn members_as_leader(&self, shard: u32) -> Reply {
        let Some(local) = self.local.pin().get(&shard).cloned() else {
            return Reply::Refused(Refusal::NotHosted);
        };
        let group = &local.group;
        if !group.is_leader() {
            return Reply::Refused(Refusal::NotLeader {
                leader: group.leader(),
            });
        }
        let (at, mut members) = group.read(|a| {
            let at = a.membership.log_id().map_or(0, |l| l.index);
            let members: BTreeSet<NodeId> = a
                .membership
                .membership()
                .nodes()
                .map(|(id, _)| *id)
                .collect();
            (at, members)
        });
        // A newer membership not committed yet (a node being added) counts too.
        let effective = group.raft().metrics().borrow().membership_config.clone();
        members.extend(effective.membership().nodes().map(|(id, _)| *id));
        Reply::Members {
            at,
            members: members.into_iter().collect(),
        }
    }

    /// Whether the leader of `shard` says this node is not a member of its group, by a
    /// committed membership newer than the one this node has (recorded at index `since`).
    async fn removed_from(&self, shard: u32, since: u64) -> bool {
        let request = Request::Members { shard };
        let asks = self
            .directory
            .nodes()
            .into_iter()
            .filter(|n| n.id != self.me && n.state.is_member() && self.peers.is_connected(n.id))
            .map(|n| {
                let request = &request;
                async move { self.peers.call(n.id, request, MEMBERSHIP_CHECK).await }
            });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .any(|answer| match answer {
                Ok(Reply::Members { at, members }) => at > since && !members.contains(&self.me),
                _ => false,
            })
    }

    /// Checks this node's own record: lost or removed means it departed.
    pub(crate) fn check_standing(&self) {
        let members = || {
            self.directory
                .nodes()
                .into_iter()
                .filter(|n| n.state == NodeState::Active && n.id != self.me)
                .map(|n| n.addrs.cluster)
                .collect()
        };
        match self.my_state() {
            Some(NodeState::Lost) => self.depart(Departure::Replaced { members: members() }),
            Some(NodeState::Removed) => self.depart(Departure::Left),
            _ => {}
        }
    }
}

/// What an operator asks of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Give up leaderships, take no new replicas, answer not-ready.
    Drain,
    /// Drain, move every replica away, then leave the cluster.
    Leave {
        /// Allow the shards to drop below the replication factor when no other node can
        /// take the replicas (never below a quorum).
        force: bool,
    },
    /// Stop a drain or leave: the node is active again.
    Cancel,
}

impl LinkService {
    /// Drains, removes or reinstates node `id`, once it is safe: a leave that would drop a
    /// group below its quorum, or below the replication factor with no node to take the
    /// replicas (unless `force`), is refused with the reason.
    pub async fn operate(
        &self,
        id: NodeId,
        operation: Operation,
    ) -> Result<NodeRecord, ServiceError> {
        let core = &self.core;
        let Some(record) = core.directory.node(id) else {
            return Err(ServiceError::NotFound(format!("node {id}")));
        };
        let refuse = |why: String| Err(ServiceError::Refused(format!("node {id}: {why}")));
        let others_active: Vec<NodeId> = core
            .directory
            .active_nodes()
            .into_iter()
            .filter(|&n| n != id)
            .collect();
        let state = match operation {
            Operation::Cancel => {
                if !record.state.yields() {
                    return refuse(format!(
                        "it is {}, not draining or leaving",
                        record.state.name()
                    ));
                }
                NodeState::Active
            }
            Operation::Drain => {
                if record.state == NodeState::Active && others_active.is_empty() {
                    return refuse(
                        "it is the only active node; nothing would serve traffic".into(),
                    );
                }
                NodeState::Draining
            }
            Operation::Leave { force } => {
                if record.state != NodeState::Leaving {
                    self.check_leave(id, &others_active, force).await?;
                }
                NodeState::Leaving
            }
        };
        if let Err(why) = record.state.may_become(state) {
            return refuse(why);
        }
        let command = MetaCommand::SetNodeState {
            id,
            state,
            at: now_ms(),
        };
        match core.propose_meta(command).await? {
            MetaOutcome::Node(record) => {
                tracing::info!(
                    node = id,
                    state = record.state.name(),
                    "node state changed by an operator"
                );
                Ok(record)
            }
            MetaOutcome::Refused(why) => refuse(why),
            MetaOutcome::NodeNotFound => Err(ServiceError::NotFound(format!("node {id}"))),
            other => Err(ServiceError::Internal(format!(
                "meta group answered {other:?}"
            ))),
        }
    }

    /// Refuses a leave of `id` that would lose a quorum, or replicas nobody can take.
    async fn check_leave(
        &self,
        id: NodeId,
        others_active: &[NodeId],
        force: bool,
    ) -> Result<(), ServiceError> {
        let core = &self.core;
        let refuse = |why: String| {
            Err(ServiceError::Refused(format!(
                "node {id} cannot leave: {why}"
            )))
        };
        if others_active.is_empty() {
            return refuse("it is the last active node".into());
        }
        let holders = core
            .directory
            .in_states(&[NodeState::Active, NodeState::Draining])
            .len();
        let rf = core.replication_factor.min(holders);
        if others_active.len() < rf && !force {
            return refuse(format!(
                "the shards keep {rf} replicas and only {} other active node(s) could take them; \
                 join a node first, or leave with --force to run with fewer replicas",
                others_active.len()
            ));
        }
        let status = self.status().await;
        let reachable: HashSet<NodeId> = status
            .nodes
            .iter()
            .filter(|n| n.reachable)
            .map(|n| n.id)
            .collect();
        for group in status.groups.iter().filter(|g| g.voters.contains(&id)) {
            let quorum = group.voters.len() / 2 + 1;
            let up: Vec<NodeId> = group
                .voters
                .iter()
                .copied()
                .filter(|v| *v != id && reachable.contains(v))
                .collect();
            if up.len() < quorum {
                return refuse(format!(
                    "{} would lose its quorum: of its voters {:?}, only {:?} are reachable besides it",
                    group.name, group.voters, up
                ));
            }
        }
        Ok(())
    }
}

/// Deletes the replicas of shard groups this node was removed from while it was away.
///
/// The leader that removes a member tells it to release its replica (see
/// `cluster::driver`), but a member that is down or cut off then never hears it. It would
/// keep a replica that no leader replicates to, serve its ever older links, and stand for
/// election forever, refused by the members' newer logs (found by the chaos tests' `long`
/// profile, seed 7: docs/RELIABILITY.md). So every two seconds each replica here that
/// knows no leader asks the other nodes who leads its group, and is deleted when that
/// leader's committed membership, newer than its own, leaves this node out. An empty
/// replica waiting to be added as a learner (no membership yet) is left alone.
pub(crate) async fn drop_removed_replicas(core: Arc<Core>) {
    metrics::counter!("raft_stale_replicas_dropped_total").increment(0);
    let mut tick = tokio::time::interval(MEMBERSHIP_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let leaderless: Vec<(u32, u64)> = core
            .local
            .pin()
            .iter()
            .filter_map(|(shard, local)| {
                let m = local.group.raft().metrics();
                let m = m.borrow();
                let since = m.membership_config.log_id().as_ref()?.index;
                m.current_leader.is_none().then_some((*shard, since))
            })
            .collect();
        for (shard, since) in leaderless {
            if !core.removed_from(shard, since).await {
                continue;
            }
            tracing::warn!(
                shard,
                "this node was removed from the shard's group while it was away; deleting its replica"
            );
            metrics::counter!("raft_stale_replicas_dropped_total").increment(1);
            if let Err(e) = core.release(shard).await {
                tracing::warn!(shard, error = %e, "could not delete this node's old replica");
            }
        }
    }
}
