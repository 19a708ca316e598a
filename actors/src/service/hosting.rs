//! The replicas this node hosts: hosting and releasing a shard's replica, the local shards,
//! and where else a shard is.

use super::*;

impl Core {
    /// Records in the identity file whether this node drained itself for a shutdown.
    pub(super) fn mark_drained_for_shutdown(&self, drained: bool) -> Result<(), OpenError> {
        let Some(identity) = read_identity(&self.data_dir)? else {
            return Err(OpenError::IdentityMissing {
                dir: self.data_dir.clone(),
            });
        };
        write_identity(
            &self.data_dir,
            &Identity {
                drained_for_shutdown: drained,
                ..identity
            },
        )
    }

    pub(super) fn local_shard(&self, shard: u32) -> Option<Arc<LocalShard>> {
        self.replicas.pin().get(&shard).cloned()
    }

    /// Every replica this node holds, by shard.
    pub(super) fn local_shards(&self) -> Vec<(u32, Arc<LocalShard>)> {
        self.replicas.all()
    }

    /// Starts hosting a replica of `shard` (an empty one, unless this node has its data).
    pub(crate) async fn host(self: &Arc<Self>, shard: u32) -> Result<(), OpenError> {
        let _serial = self.hosting.lock().await;
        if self.replicas.pin().contains_key(&shard) {
            return Ok(());
        }
        let id = shard_group(shard);
        let group = match self.node.group(id) {
            Some(g) => g,
            None => self.node.create_group(id).await?,
        };
        let reader = group.read(|a| match &a.state {
            GroupState::Shard(s) => Ok(s.reader()),
            GroupState::Meta(_) => Err(OpenError::GroupKind {
                group: id,
                expected: "a shard",
                found: "a meta group",
            }),
        })?;
        let (actor, actor_task) = Actor::spawn(None, ShardActor, group.clone())
            .await
            .map_err(|source| OpenError::ShardActor { shard, source })?;
        let serving = Arc::new(AtomicBool::new(false));
        let mut metrics = group.raft().metrics();
        let flag = serving.clone();
        let me = self.me;
        self.tasks
            .spawn("watch a replica's serving state", async move {
                loop {
                    // A replica starts serving reads once it is a voter and has applied
                    // everything up to the change that made it one (it was caught up before
                    // that change, but a follower sees a membership entry when it arrives,
                    // before applying it); it stops when it is no longer a voter.
                    let serving = {
                        let m = metrics.borrow_and_update();
                        let config = &m.membership_config;
                        let voter = config.membership().voter_ids().any(|v| v == me);
                        let since = config.log_id().map_or(0, |l| l.index);
                        let applied = m.last_applied.map_or(0, |l| l.index) >= since;
                        voter && (applied || flag.load(Ordering::Acquire))
                    };
                    flag.store(serving, Ordering::Release);
                    if metrics.changed().await.is_err() {
                        return;
                    }
                }
            });
        self.replicas.pin().insert(
            shard,
            Arc::new(LocalShard {
                group,
                reader,
                actor,
                actor_task: Mutex::new(Some(actor_task)),
                serving,
                fault: self.node.fault().clone(),
            }),
        );
        Ok(())
    }

    /// Stops hosting `shard` and deletes this node's replica.
    pub(crate) async fn release(&self, shard: u32) -> Result<(), ReleaseError> {
        let _serial = self.hosting.lock().await;
        let Some(local) = self.replicas.pin().remove(&shard).cloned() else {
            return Ok(());
        };
        local.serving.store(false, Ordering::Release);
        // Raft first, then the actor, which waits for the writes it handed to Raft. A write
        // this node proposed as the group's leader that the group will never apply here (the
        // node was removed before the entry committed) is answered only when Raft stops:
        // stopping the actor first waited for it forever, holding `hosting` (chaos `long`).
        let removed = self.node.remove_group(shard_group(shard)).await;
        local.stop_actor().await;
        removed.map_err(|source| ReleaseError { shard, source })?;
        tracing::info!(shard, "released this node's replica");
        Ok(())
    }

    /// Nodes to ask about `shard`: every member that may hold a replica, the likeliest
    /// holders first.
    pub(super) fn candidates(&self, shard: u32) -> Vec<NodeId> {
        let members =
            self.directory
                .in_states(&[NodeState::Active, NodeState::Draining, NodeState::Leaving]);
        let mut order = placement::replicas(shard, &members, members.len());
        order.retain(|&n| n != self.me);
        order
    }
}
