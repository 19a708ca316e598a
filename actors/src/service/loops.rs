//! Background loops of a node: keeping in touch with the others, undraining after a
//! restart, and which lost leader to stand against.

use super::*;

/// Keeps sessions with the other nodes up, and this node's addresses in the meta group
/// current.
pub(super) async fn keep_in_touch(core: Arc<Core>, addrs: NodeAddrs) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut recorded = false;
    let mut lost = LostLeaders::default();
    let mut handover = Handover::default();
    let mut ticks: u64 = 0;
    loop {
        tick.tick().await;
        ticks += 1;
        if ticks % RECORD_ACKNOWLEDGED_TICKS == 0 {
            core.record_acknowledged().await;
        }
        core.cx
            .peers
            .maintain(core.cx.settings.me, &core.cluster_addrs())
            .await;
        core.cx.check_standing();
        core.cx.hand_over(&mut handover);
        if !core.cx.meta.is_yielding() {
            core.stand_for_lost_leaders(&mut lost).await;
        }
        if !recorded {
            match core.cx.meta.directory.node(core.cx.settings.me) {
                Some(r) if r.addrs == addrs => recorded = true,
                Some(_) => {
                    let update = MetaCommand::UpdateAddrs {
                        id: core.cx.settings.me,
                        addrs: addrs.clone(),
                    };
                    recorded = core.cx.meta.propose(update).await.is_ok();
                }
                None => {}
            }
        }
    }
}

/// Makes this node active again after it drained itself for a shutdown (unless an
/// operator made it leave meanwhile).
pub(super) async fn undrain(core: Arc<Core>) {
    loop {
        let done = match core.cx.meta.my_state() {
            Some(NodeState::Draining) => {
                let cancel = MetaCommand::SetNodeState {
                    id: core.cx.settings.me,
                    state: NodeState::Active,
                    at: now_ms(),
                };
                match core.cx.meta.propose(cancel).await {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::info!(error = %e, "could not make this node active again; will retry");
                        false
                    }
                }
            }
            _ => true,
        };
        if done {
            if let Err(e) = core.mark_drained_for_shutdown(false) {
                tracing::warn!(error = %e, "could not update the identity file");
            }
            tracing::info!("active again after draining for the last shutdown");
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Leaders whose cluster session is gone, and the elections this node started for them.
#[derive(Default)]
pub(super) struct LostLeaders {
    /// Since when each node has had no session with this one.
    pub(super) since: HashMap<NodeId, Instant>,
    /// Groups this node stood for election in, and the leader they lost.
    pub(super) standing: HashMap<GroupId, NodeId>,
}

/// The leader this node may stand for election against: the group's leader when its
/// session is gone and this node has not stood against it yet. Once stood, never again
/// for the same leader, nor while the group has none (openraft's timers carry on).
pub(super) fn lost_leader(
    leader: Option<NodeId>,
    reachable: bool,
    stood_for: Option<NodeId>,
) -> Option<NodeId> {
    match leader {
        Some(l) if !reachable && stood_for != Some(l) => Some(l),
        _ => None,
    }
}

impl Core {
    /// Stands for election in the groups whose leader's session has been gone for longer
    /// than the leader lease, and again while they have no leader. openraft alone waits
    /// the lease plus an election timeout (4.5 to 6 s by default), and twice that when the
    /// first candidate is a replica that lags (its request resets the others' timers); a
    /// killed node's session closes at once, so the survivors can stand as soon as their
    /// votes are free. The voters stand in turn (by id, 500 ms apart), so they do not
    /// split the vote; a lagging one is refused and the next one wins. A leader whose
    /// session comes back is left alone.
    ///
    /// Each voter stands once per lost leader; after that openraft's own election timers
    /// carry on. Standing again every second while the group had no leader (as this did
    /// once) let a lagging voter, which can never win, depose each new leader within
    /// milliseconds of its election: after a partition the chaos tests saw a shard stay
    /// leaderless for minutes (`Fault::MajoritiesRing`, docs/RELIABILITY.md).
    pub(super) async fn stand_for_lost_leaders(&self, lost: &mut LostLeaders) {
        let now = Instant::now();
        let mut groups = vec![self.cx.meta.group.clone()];
        groups.extend(self.cx.replicas.pin().values().map(|l| l.group.clone()));
        lost.since
            .retain(|node, _| !self.cx.peers.is_connected(*node));
        for group in groups {
            let (leader, voters) = {
                let m = group.raft().metrics().borrow().clone();
                let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
                (m.current_leader, voters)
            };
            if !voters.contains(&self.cx.settings.me) {
                continue;
            }
            let rank = |gone: NodeId| {
                voters
                    .iter()
                    .filter(|&&v| v != gone && v < self.cx.settings.me)
                    .count() as u32
            };
            let reachable =
                leader.is_some_and(|l| l == self.cx.settings.me || self.cx.peers.is_connected(l));
            if reachable {
                lost.standing.remove(&group.id());
            }
            let stood_for = lost.standing.get(&group.id()).copied();
            let Some(gone) = lost_leader(leader, reachable, stood_for) else {
                continue;
            };
            // Its leader's session is gone: stand once the lease is over.
            let since = *lost.since.entry(gone).or_insert(now);
            let wait = self.cx.settings.leader_lease + Duration::from_millis(500) * rank(gone);
            if now.duration_since(since) < wait {
                continue;
            }
            lost.standing.insert(group.id(), gone);
            tracing::info!(group = %group.id(), leader = gone, "the leader's session is gone; standing for election");
            if let Err(e) = group.raft().trigger().elect().await {
                tracing::warn!(group = %group.id(), error = %e, "could not start an election");
            }
        }
    }

    /// The other nodes' ids and cluster addresses: members, and lost nodes (so that one
    /// that comes back can be told it was replaced).
    pub(super) fn cluster_addrs(&self) -> Vec<(NodeId, SocketAddr)> {
        self.cx
            .meta
            .directory
            .nodes()
            .into_iter()
            .filter(|n| n.id != self.cx.settings.me && n.state != NodeState::Removed)
            .filter_map(|n| n.addrs.cluster.parse().ok().map(|a| (n.id, a)))
            .collect()
    }

    /// Opens sessions with the nodes this node dials, and waits (up to `within`) until
    /// they are up, so that the first requests it serves can reach every shard.
    pub(super) async fn connect_to_peers(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let nodes = self.cluster_addrs();
        let mut events = self.cx.peers.events();
        self.cx.peers.maintain(self.cx.settings.me, &nodes).await;
        while nodes
            .iter()
            .any(|(id, _)| *id < self.cx.settings.me && !self.cx.peers.is_connected(*id))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, events.recv()).await.is_err() {
                tracing::warn!("not every node could be reached at start; carrying on");
                return;
            }
        }
    }

    /// As the meta group's leader: records the meta log index each member holds durably
    /// (its match index), where it grew by more than the last record's own entry, so an idle
    /// cluster writes nothing. A node whose data is older than its record was rolled back
    /// ([`refuse_rolled_back`]).
    pub(super) async fn record_acknowledged(&self) {
        if !self.cx.meta.group.is_leader() {
            return;
        }
        let replication = self
            .cx
            .meta
            .group
            .raft()
            .metrics()
            .borrow()
            .replication
            .clone();
        let Some(replication) = replication else {
            return;
        };
        let through: Vec<(NodeId, u64)> = replication
            .iter()
            .filter_map(|(&node, matched)| {
                let index = matched.as_ref()?.index;
                let recorded = self.cx.meta.directory.acknowledged(node).unwrap_or(0);
                (index > recorded + 1).then_some((node, index))
            })
            .collect();
        if !through.is_empty() {
            if let Err(e) = self
                .cx
                .meta
                .propose_as_leader(MetaCommand::RecordAcknowledged { through })
                .await
            {
                tracing::debug!(error = %e, "could not record the members' acknowledged indexes");
            }
        }
    }
}
