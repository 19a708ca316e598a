//! The public API of [`LinkService`] for the node's state: readiness, the figures for
//! `/metrics`, the cluster status, replica digests, the storage fault, the departure, and
//! the drain and shutdown.

use super::*;

impl LinkService {
    /// Number of links in this node's replicas.
    pub fn link_count(&self) -> usize {
        self.core
            .cx
            .replicas
            .pin()
            .values()
            .filter(|l| l.is_serving())
            .map(|l| l.reader.len())
            .sum()
    }

    /// Entries in the near cache.
    pub fn near_cache_len(&self) -> u64 {
        self.core.cache.len()
    }

    /// Whether this node is ready for traffic: it is active, the meta group has a leader,
    /// and every replica it holds is a caught-up voter within the lag bound of its leader
    /// (`replica_max_lag_ms`), and knows its leader. If not, why.
    pub fn readiness(&self) -> Result<(), NotReady> {
        let core = &self.core;
        if let Some(reason) = core.node.fault().reason() {
            return Err(NotReady::StorageFailed(reason));
        }
        match core.cx.meta.directory.node(core.cx.settings.me) {
            Some(n) if n.state == NodeState::Active => {}
            Some(n) => return Err(NotReady::NotActive(n.state.name())),
            None => return Err(NotReady::NotInDirectory),
        }
        for (shard, local) in core.cx.replicas.all() {
            if !local.is_serving() {
                return Err(NotReady::ReplicaNotServing(shard));
            }
            if let (Some(lag), Some(max)) = (local.lag_exceeded(), local.max_lag) {
                return Err(NotReady::ReplicaLagging { shard, lag, max });
            }
            if local.group.leader().is_none() {
                return Err(NotReady::NoShardLeader(shard));
            }
        }
        if core.cx.meta.group.leader().is_none() {
            return Err(NotReady::NoMetaLeader);
        }
        Ok(())
    }

    /// How many nodes are in each state, as this node's copy of the meta group says.
    pub fn node_states(&self) -> Vec<(&'static str, usize)> {
        let nodes = self.core.cx.meta.directory.nodes();
        [
            NodeState::Joining,
            NodeState::Active,
            NodeState::Draining,
            NodeState::Leaving,
            NodeState::Lost,
            NodeState::Removed,
        ]
        .into_iter()
        .map(|state| {
            (
                state.name(),
                nodes.iter().filter(|n| n.state == state).count(),
            )
        })
        .collect()
    }

    /// Shards this node leads with fewer voters on member nodes than the replication
    /// factor (capped by the member count): a lost or leaving node's replicas not yet
    /// re-created. Summed over the nodes, the cluster's under-replicated shards.
    pub fn under_replicated_led(&self) -> usize {
        let members = self.core.cx.meta.directory.in_states(&[
            NodeState::Active,
            NodeState::Draining,
            NodeState::Leaving,
        ]);
        let target = self.core.cx.settings.replication_factor.min(members.len());
        self.core
            .cx
            .all_groups()
            .iter()
            .filter(|g| g.is_leader() && g.id() != crate::groups::META)
            .filter(|g| {
                g.read(|a| {
                    let live = a
                        .membership
                        .membership()
                        .voter_ids()
                        .filter(|v| members.contains(v))
                        .count();
                    live < target
                })
            })
            .count()
    }

    /// Groups this node leads that have a replica move under way (a learner catching up, or
    /// a voter change); summed over the nodes, the moves in flight in the cluster.
    pub fn moves_led(&self) -> usize {
        self.core
            .cx
            .all_groups()
            .iter()
            .filter(|g| g.is_leader())
            .filter(|g| {
                // The meta group's learners are permanent, not moves.
                let shard = g.id() != crate::groups::META;
                g.read(|a| {
                    let m = a.membership.membership();
                    m.get_joint_config().len() > 1 || (shard && m.learner_ids().next().is_some())
                })
            })
            .count()
    }

    /// The node's storage fault latch: tripped by the first storage error (Raft log,
    /// snapshots, click spool or roll-up log), after which the node must exit.
    pub fn storage_fault(&self) -> linkrift_raft::StorageFault {
        self.core.node.fault().clone()
    }

    /// Runs `task` under `name` among the node's background tasks: it is stopped (at its
    /// next `.await`) when the node shuts down, with the others.
    pub fn spawn_task(
        &self,
        name: &'static str,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        self.core.cx.tasks.spawn(name, task);
    }

    /// Watches for this node learning that it is no longer a member of its cluster.
    pub fn departure(&self) -> tokio::sync::watch::Receiver<Option<Departure>> {
        self.core.cx.departure.subscribe()
    }

    /// Drains this node before it shuts down (`--drain-on-shutdown`): it stops being ready,
    /// and hands its leaderships over, waiting up to `within` for that. It becomes active
    /// again when it next starts.
    pub async fn drain_for_shutdown(&self, within: Duration) -> Result<(), ServiceError> {
        let core = &self.core;
        let deadline = Instant::now() + within;
        if core.cx.meta.my_state() == Some(NodeState::Active) {
            core.mark_drained_for_shutdown(true)
                .map_err(|e| ServiceError::Internal(e.to_string()))?;
            let drain = crate::cluster::membership::Operation::Drain;
            if let Err(e) = self.operate(core.cx.settings.me, drain).await {
                tracing::warn!(error = %e, "could not drain before shutting down");
                let _ = core.mark_drained_for_shutdown(false);
                return Err(e);
            }
        }
        let mut metrics: Vec<_> = core
            .cx
            .all_groups()
            .iter()
            .map(|g| g.raft().metrics())
            .collect();
        loop {
            let leading = core
                .cx
                .all_groups()
                .iter()
                .filter(|g| core.cx.meta.is_handing_over(g))
                .count();
            if leading == 0 && core.cx.meta.is_yielding() {
                tracing::info!("drained: this node leads no group another node could lead");
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ServiceError::Unavailable(format!(
                    "still leading {leading} group(s) after {within:?}"
                )));
            }
            let changed =
                futures::future::select_all(metrics.iter_mut().map(|m| Box::pin(m.changed())));
            let _ = tokio::time::timeout(Duration::from_millis(250), changed).await;
        }
    }

    /// Log flushes requested by this node's groups, and flushes performed to serve them.
    pub fn flush_counts(&self) -> (u64, u64) {
        let stats = self.core.node.flusher().stats();
        (
            stats.requests.load(Ordering::Relaxed),
            stats.flushes.load(Ordering::Relaxed),
        )
    }

    /// openraft's metrics of every group on this node.
    pub fn raft_metrics(&self) -> Vec<(GroupId, openraft_metrics::Metrics)> {
        let mut groups = vec![self.core.cx.meta.group.clone()];
        groups.extend(
            self.core
                .cx
                .replicas
                .pin()
                .values()
                .map(|l| l.group.clone()),
        );
        groups
            .iter()
            .map(|g| (g.id(), g.raft().metrics().borrow().clone()))
            .collect()
    }

    /// The cluster as the nodes that answer see it: every node's record, and each group as
    /// its leader reports it (or, leaderless, as any replica does).
    pub async fn status(&self) -> ClusterStatus {
        let core = &self.core;
        let mut reports = vec![core.group_statuses()];
        let others: Vec<NodeId> = core
            .cx
            .meta
            .directory
            .nodes()
            .iter()
            .map(|n| n.id)
            .filter(|&n| n != core.cx.settings.me)
            .collect();
        let answers = others.iter().map(|&n| async move {
            (
                n,
                core.cx.peers.call(n, &Request::Groups, CALL_TIMEOUT).await,
            )
        });
        let mut reachable = BTreeSet::from([core.cx.settings.me]);
        for (node, answer) in futures::future::join_all(answers).await {
            if let Ok(Reply::Groups(groups)) = answer {
                reachable.insert(node);
                reports.push(groups);
            }
        }
        let mut best: BTreeMap<u64, GroupStatus> = BTreeMap::new();
        for report in reports {
            for g in report {
                // The leader's own report carries the mirror's watermark: prefer it.
                let better = best.get(&g.group).is_none_or(|b| {
                    (g.leader.is_some(), g.term, g.mirrored.is_some(), g.applied)
                        > (b.leader.is_some(), b.term, b.mirrored.is_some(), b.applied)
                });
                if better {
                    best.insert(g.group, g);
                }
            }
        }
        let groups: Vec<GroupStatus> = (0..=core.cx.settings.shard_count as u64)
            .map(|id| {
                best.remove(&id).unwrap_or_else(|| GroupStatus {
                    name: if id == 0 {
                        "meta".into()
                    } else {
                        format!("shard {}", id - 1)
                    },
                    group: id,
                    leader: None,
                    term: 0,
                    voters: vec![],
                    learners: vec![],
                    applied: 0,
                    last_log: 0,
                    matched: vec![],
                    changing_to: None,
                    mirrored: None,
                })
            })
            .collect();
        let nodes: Vec<(NodeRecord, bool)> = core
            .cx
            .meta
            .directory
            .nodes()
            .into_iter()
            .map(|n| {
                let up = reachable.contains(&n.id);
                (n, up)
            })
            .collect();
        let rf = core
            .cx
            .settings
            .replication_factor
            .min(core.cx.meta.directory.active_nodes().len().max(1));
        let mut status = ClusterStatus::new(
            core.cx.settings.me,
            core.cx.settings.shard_count,
            rf,
            groups,
            nodes,
        );
        for node in &mut status.nodes {
            node.meta_acknowledged = core.cx.meta.directory.acknowledged(node.id);
        }
        status
    }

    /// Every replica of `shard` that a member node holds, summed up (for checking that the
    /// replicas agree). Nodes that do not answer are left out.
    pub async fn replica_digests(&self, shard: u32) -> Result<Vec<ReplicaDigest>, ServiceError> {
        let core = &self.core;
        if shard >= core.cx.settings.shard_count {
            return Err(ServiceError::NotFound(format!("shard {shard}")));
        }
        let mut out: Vec<ReplicaDigest> = core.replica_digest(shard).into_iter().collect();
        let asks = core.candidates(shard).into_iter().map(|n| async move {
            core.cx
                .peers
                .call(n, &Request::Digest { shard }, CALL_TIMEOUT)
                .await
        });
        for answer in futures::future::join_all(asks).await {
            if let Ok(Reply::Digest(d)) = answer {
                out.push(d);
            }
        }
        out.sort_by_key(|d| d.node);
        Ok(out)
    }

    /// Sends every click spooled for ClickHouse before the node goes for good (after a
    /// leave: no later start would send them), waiting up to `within`; the clicks still
    /// spooled then, as an error.
    pub async fn ship_clicks(&self, within: Duration) -> Result<(), u64> {
        self.core.clicks.ship_all(within).await
    }

    /// Stops the background tasks (the last started first), leaves the cluster's sessions,
    /// stops every group and flushes the data to disk. Requests still in flight are refused
    /// from then on; the data directory is unlocked when the service is dropped.
    pub async fn shutdown(&self) {
        // Clicks still batched go to their store (or the ClickHouse spool) first.
        self.core.clicks.stop().await;
        let aborted = self.core.cx.tasks.shutdown(TASKS_STOP_WITHIN).await;
        if !aborted.is_empty() {
            tracing::warn!(?aborted, "background tasks aborted at shutdown");
        }
        self.core.cx.peers.shutdown().await;
        let shards: Vec<u32> = self.core.cx.replicas.pin().keys().copied().collect();
        for shard in shards {
            if let Some(local) = self.core.cx.replicas.pin().remove(&shard).cloned() {
                // Stopping lets the proposals already in Raft finish and answer.
                local.stop_actor().await;
            }
        }
        self.core.node.close().await;
    }
}
