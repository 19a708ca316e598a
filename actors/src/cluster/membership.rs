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

use super::control::Control;
use super::wire::{Refusal, Reply, Request};
use crate::groups::GroupState;
use crate::meta::NodeState;

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

impl Control {
    /// One round of handing over: called every tick. Turns this node's elections off (or
    /// back on after a cancel), stops heartbeats in the groups it leads, and once the
    /// followers' leases are over asks one of them to stand.
    pub(crate) fn hand_over(self: &Arc<Self>, handover: &mut Handover) {
        let groups = self.all_groups();
        if !self.meta.is_yielding() {
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
            let others = other_voters(&group, self.settings.me);
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
            let leases_over =
                now.duration_since(y.since) >= self.settings.leader_lease + ASK_AGAIN / 4;
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
            let reachable: Vec<NodeId> = others
                .into_iter()
                .filter(|&n| self.peers.is_connected(n))
                .collect();
            let Some(pick) = follower_to_ask(reachable, &matched, y.asked) else {
                continue;
            };
            y.asked += 1;
            y.last_ask = Some(now);
            let peers = self.peers.clone();
            self.tasks.spawn("ask a follower to stand", async move {
                let ask = Request::Stand { group: id.0 };
                if let Err(e) = peers.call(pick, &ask, ASK_AGAIN).await {
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
        if self.meta.is_yielding() {
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
                node = self.settings.me,
                "this node is no longer a member of the cluster"
            );
            *d = Some(departure);
            true
        });
    }

    /// `shard`'s members, if this node leads its group (the answer to [`Request::Members`]).
    pub(crate) fn members_as_leader(&self, shard: u32) -> Reply {
        let Some(local) = self.replicas.get(shard) else {
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
            .meta
            .directory
            .nodes()
            .into_iter()
            .filter(|n| {
                n.id != self.settings.me && n.state.is_member() && self.peers.is_connected(n.id)
            })
            .map(|n| {
                let request = &request;
                async move { self.peers.call(n.id, request, MEMBERSHIP_CHECK).await }
            });
        let answers: Vec<Reply> = futures::future::join_all(asks)
            .await
            .into_iter()
            .filter_map(Result::ok)
            .collect();
        removed_by(&answers, since, self.settings.me)
    }

    /// Checks this node's own record: lost or removed means it departed.
    pub(crate) fn check_standing(&self) {
        let members = || {
            self.meta
                .directory
                .nodes()
                .into_iter()
                .filter(|n| n.state == NodeState::Active && n.id != self.settings.me)
                .map(|n| n.addrs.cluster)
                .collect()
        };
        match self.meta.my_state() {
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

/// Why the other active nodes cannot take a leaving node's replicas, if they cannot:
/// `others_active` active nodes besides it, `holders` nodes that hold replicas (active or
/// draining, it included), replicas per shard `replication_factor`; `force` accepts fewer
/// replicas (never none).
pub(crate) fn too_few_takers(
    others_active: usize,
    holders: usize,
    replication_factor: usize,
    force: bool,
) -> Option<String> {
    if others_active == 0 {
        return Some("it is the last active node".into());
    }
    let rf = replication_factor.min(holders);
    (others_active < rf && !force).then(|| {
        format!(
            "the shards keep {rf} replicas and only {others_active} other active node(s) could \
             take them; join a node first, or leave with --force to run with fewer replicas"
        )
    })
}

/// The first group of `groups` (name, voters) that would lose its quorum if `leaving`
/// left, with only the `reachable` voters besides it up; why, if one would.
pub(crate) fn quorum_lost(
    leaving: NodeId,
    groups: &[(&str, &[NodeId])],
    reachable: &HashSet<NodeId>,
) -> Option<String> {
    groups
        .iter()
        .filter(|(_, voters)| voters.contains(&leaving))
        .find_map(|(name, voters)| {
            let quorum = voters.len() / 2 + 1;
            let up: Vec<NodeId> = voters
                .iter()
                .copied()
                .filter(|v| *v != leaving && reachable.contains(v))
                .collect();
            (up.len() < quorum).then(|| {
                format!(
                    "{name} would lose its quorum: of its voters {voters:?}, only {up:?} are reachable besides it"
                )
            })
        })
}

/// Whether the `answers` to "who leads this group, with which members" show that node `me`
/// was removed from the group: some leader's committed membership is newer than the one
/// `me` has (recorded at index `since`), and leaves it out.
fn removed_by(answers: &[Reply], since: u64, me: NodeId) -> bool {
    answers.iter().any(|answer| match answer {
        Reply::Members { at, members } => *at > since && !members.contains(&me),
        _ => false,
    })
}

/// Which follower a yielding leader asks to stand, on its `asked`th try: of the `reachable`
/// followers, the most caught up first (by the index `matched` says each has; ties by id),
/// the next on each retry.
fn follower_to_ask(
    mut reachable: Vec<NodeId>,
    matched: &HashMap<NodeId, u64>,
    asked: usize,
) -> Option<NodeId> {
    if reachable.is_empty() {
        return None;
    }
    reachable.sort_by_key(|n| (std::cmp::Reverse(matched.get(n).copied()), *n));
    Some(reachable[asked % reachable.len()])
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
pub(crate) async fn drop_removed_replicas(cx: Arc<Control>) {
    metrics::counter!("raft_stale_replicas_dropped_total").increment(0);
    let mut tick = tokio::time::interval(MEMBERSHIP_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let leaderless: Vec<(u32, u64)> = cx
            .replicas
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
            if !cx.removed_from(shard, since).await {
                continue;
            }
            tracing::warn!(
                shard,
                "this node was removed from the shard's group while it was away; deleting its replica"
            );
            metrics::counter!("raft_stale_replicas_dropped_total").increment(1);
            if let Err(e) = cx.replicas.release(shard).await {
                tracing::warn!(shard, error = %e, "could not delete this node's old replica");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leave_needs_nodes_to_take_the_replicas() {
        // (other active nodes, holders, replication factor, force) -> refused?
        let cases = [
            ((0, 1, 3, false), Some("it is the last active node")),
            ((0, 3, 3, true), Some("it is the last active node")),
            // 3 holders, rf 3: the 2 others cannot hold 3 replicas.
            (
                (2, 3, 3, false),
                Some("the shards keep 3 replicas and only 2"),
            ),
            ((2, 3, 3, true), None),
            ((3, 4, 3, false), None),
            // rf above the holders counts only the holders: 2 holders keep 2 replicas.
            (
                (1, 2, 3, false),
                Some("the shards keep 2 replicas and only 1"),
            ),
            ((2, 2, 3, false), None),
            ((1, 1, 1, false), None),
        ];
        for ((others, holders, rf, force), want) in cases {
            let got = too_few_takers(others, holders, rf, force);
            match want {
                None => assert_eq!(got, None, "{others} {holders} {rf} {force}"),
                Some(start) => assert!(
                    got.as_deref().is_some_and(|g| g.starts_with(start)),
                    "{others} {holders} {rf} {force}: {got:?}"
                ),
            }
        }
    }

    #[test]
    fn a_leave_must_not_cost_a_group_its_quorum() {
        let set = |ids: &[NodeId]| ids.iter().copied().collect::<HashSet<_>>();
        const THREE: &[NodeId] = &[1, 2, 3];
        const FIVE: &[NodeId] = &[1, 2, 3, 4, 5];
        // (groups with their voters, reachable nodes) -> the group that loses its quorum
        type Groups = &'static [(&'static str, &'static [NodeId])];
        let cases: [(Groups, HashSet<NodeId>, Option<&str>); 6] = [
            // Both others up: 2 of 3 remain, a quorum.
            (&[("shard 0", THREE)], set(&[2, 3]), None),
            // One other down: 1 of 3 is no quorum.
            (&[("shard 0", THREE)], set(&[2]), Some("shard 0")),
            // Not a voter of the group: no concern of this leave.
            (&[("shard 0", &[2, 3, 4])], set(&[]), None),
            // Of 5, 3 must be up besides the leaving one.
            (&[("meta", FIVE)], set(&[2, 3, 4]), None),
            (&[("meta", FIVE)], set(&[2, 3]), Some("meta")),
            // The first group that would lose it is named.
            (
                &[("shard 0", THREE), ("shard 1", THREE)],
                set(&[3]),
                Some("shard 0"),
            ),
        ];
        for (groups, reachable, want) in cases {
            let got = quorum_lost(1, groups, &reachable);
            assert_eq!(
                got.as_deref().map(|g| g.split(" would").next().unwrap()),
                want,
                "{groups:?} {reachable:?}: {got:?}"
            );
        }
    }

    #[test]
    fn a_replica_is_orphaned_only_by_a_newer_membership_without_it() {
        let members = |at: u64, ids: &[NodeId]| Reply::Members {
            at,
            members: ids.to_vec(),
        };
        let cases = [
            // A newer membership without node 3: removed.
            (vec![members(10, &[1, 2, 4])], 5, true),
            // A newer membership with it: kept.
            (vec![members(10, &[1, 2, 3])], 5, false),
            // An older or equal membership says nothing about it.
            (vec![members(5, &[1, 2])], 5, false),
            (vec![members(4, &[1, 2])], 5, false),
            // Any one leader that knows is enough; other answers do not count.
            (
                vec![
                    Reply::Refused(Refusal::NotHosted),
                    members(3, &[1, 2]),
                    members(9, &[1, 2]),
                ],
                5,
                true,
            ),
            (vec![], 5, false),
        ];
        for (answers, since, want) in cases {
            assert_eq!(
                removed_by(&answers, since, 3),
                want,
                "{answers:?} since {since}"
            );
        }
    }

    #[test]
    fn the_most_caught_up_follower_is_asked_first_then_the_next() {
        let matched: HashMap<NodeId, u64> = [(2, 40), (3, 90), (4, 90)].into_iter().collect();
        // 3 and 4 tie on 90: the lower id first; 5 has no figure, so it comes last.
        let order: Vec<NodeId> = (0..5)
            .map(|asked| follower_to_ask(vec![5, 4, 2, 3], &matched, asked).unwrap())
            .collect();
        assert_eq!(order, [3, 4, 2, 5, 3]);
        assert_eq!(follower_to_ask(vec![], &matched, 0), None);
        assert_eq!(follower_to_ask(vec![7], &matched, 3), Some(7));
    }
}
