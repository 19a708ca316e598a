//! Routing: writes to the shard's leader (here, or forwarded with their request id), and
//! reads of shards held elsewhere (the near cache's fill, pages of a listing).

use super::*;

impl Core {
    /// Nodes to ask about `shard`: every member that may hold a replica, the likeliest
    /// holders first.
    pub(super) fn candidates(&self, shard: u32) -> Vec<NodeId> {
        let members = self.cx.meta.directory.in_states(&[
            NodeState::Active,
            NodeState::Draining,
            NodeState::Leaving,
        ]);
        let mut order = placement::replicas(shard, &members, members.len());
        order.retain(|&n| n != self.cx.settings.me);
        order
    }

    /// Runs `command` on `shard`'s leader: here, or forwarded (at most `hops` times).
    pub(super) async fn route_write(
        self: &Arc<Self>,
        shard: u32,
        command: &ShardCommand,
        hops: u8,
        deadline: Instant,
    ) -> Result<ShardOutcome, Refusal> {
        let left = deadline.saturating_duration_since(Instant::now());
        // A replica that is not a caught-up voter (a learner, or one this node has just
        // moved away and not yet deleted) cannot lead: the write goes to the others.
        if let Some(local) = self.cx.replicas.get(shard).filter(|l| l.is_serving()) {
            if self.cx.meta.is_handing_over(&local.group) {
                return Err(Refusal::NotLeader { leader: None });
            }
            return match local.propose(command.clone(), left).await {
                Ok(outcome) => Ok(outcome),
                Err(GroupError::NotLeader {
                    leader: Some(leader),
                    ..
                }) if leader != self.cx.settings.me && hops > 0 => {
                    self.forward_write(leader, shard, command, hops - 1, deadline)
                        .await
                }
                Err(GroupError::NotLeader { leader, .. }) => Err(Refusal::NotLeader { leader }),
                Err(e) if e.is_retryable() => Err(Refusal::Unavailable(e.to_string())),
                Err(e) => Err(Refusal::Failed(e.to_string())),
            };
        }
        if hops == 0 {
            return Err(Refusal::NotHosted);
        }
        let mut last = Refusal::Unavailable(format!("no node holds shard {shard}"));
        for node in self.candidates(shard) {
            match self
                .forward_write(node, shard, command, hops - 1, deadline)
                .await
            {
                Ok(outcome) => return Ok(outcome),
                Err(Refusal::Failed(e)) => return Err(Refusal::Failed(e)),
                Err(r) => last = r,
            }
        }
        Err(last)
    }

    pub(super) async fn forward_write(
        &self,
        node: NodeId,
        shard: u32,
        command: &ShardCommand,
        hops: u8,
        deadline: Instant,
    ) -> Result<ShardOutcome, Refusal> {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .min(HOP_TIMEOUT);
        let request = Request::Write {
            shard,
            command: command.clone(),
            hops,
        };
        let started = Instant::now();
        let result = match self.cx.peers.call(node, &request, left).await {
            Ok(Reply::Written(outcome)) => Ok(outcome),
            Ok(Reply::Refused(r)) => Err(r),
            Ok(other) => Err(Refusal::Failed(format!("a write answered {other:?}"))),
            Err(e) => Err(Refusal::Unavailable(e.to_string())),
        };
        if let Err(r) = &result {
            tracing::debug!(node, shard, hops, took = ?started.elapsed(), refusal = %r, "forwarded write not done");
        }
        result
    }

    /// Waits up to `wait` before retrying a request to `shard`: until this node's replica
    /// sees a change (a leader elected), or, with no replica here, for `wait`.
    ///
    /// Never less than 20 ms (or `wait`): a change this node's own retries cause, or a group
    /// that has shut down (whose metrics never change again), must not make the retry loop
    /// spin. (The chaos tests saw writes spin on a replica its node had just moved away.)
    pub(super) async fn pause_for_shard(&self, shard: u32, wait: Duration) {
        let started = Instant::now();
        match self.cx.replicas.get(shard) {
            Some(local) => {
                let mut metrics = local.group.raft().metrics();
                let _ = tokio::time::timeout(wait, metrics.changed()).await;
            }
            None => tokio::time::sleep(wait).await,
        }
        let floor = wait.min(Duration::from_millis(20));
        if let Some(rest) = floor.checked_sub(started.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }

    /// Proposes `command` to `shard`, wherever its leader is, retrying (with the same
    /// request id) until it is answered or the write timeout passes.
    pub(super) async fn shard_command(
        self: &Arc<Self>,
        shard: u32,
        command: ShardCommand,
    ) -> Result<ShardOutcome, ServiceError> {
        let deadline = Instant::now() + self.cx.settings.write_timeout;
        let mut pause = Duration::from_millis(10);
        loop {
            let last = match self.route_write(shard, &command, HOPS, deadline).await {
                Ok(outcome) => return Ok(outcome),
                Err(Refusal::Failed(e)) => return Err(ServiceError::Internal(e)),
                Err(r) => r,
            };
            if let Some(reason) = self.node.fault().reason() {
                // This node is about to exit; the client retries elsewhere sooner than
                // this node could find the shard's leader for it.
                return Err(ServiceError::Unavailable(format!(
                    "this node's storage failed ({reason}); try another node"
                )));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ServiceError::Unavailable(format!("shard {shard}: {last}")));
            }
            self.pause_for_shard(shard, pause.min(left)).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// Reads `code` where its shard is held (`hops` forwards at most, toward the leader).
    /// A link found on any caught-up replica is an answer; "no such link" is only taken
    /// from the leader, since a follower may not have applied an acknowledged create yet.
    pub(super) async fn route_lookup(
        self: &Arc<Self>,
        code: &str,
        hops: u8,
    ) -> Result<Option<Link>, Refusal> {
        let shard = shard_of(code, self.cx.settings.shard_count);
        let local = self.cx.replicas.get(shard);
        let read_here = |local: &LocalShard| {
            local
                .is_current()
                .then(|| local.reader.get(code).map(|l| Link::clone(&l)))
                .flatten()
        };
        if let Some(local) = &local {
            let leader = local.group.leader();
            if leader == Some(self.cx.settings.me) && local.is_current() {
                return Ok(local.reader.get(code).map(|l| Link::clone(&l)));
            }
            if hops == 0 || leader.is_none() {
                if let Some(link) = read_here(local) {
                    return Ok(Some(link));
                }
            }
            if let Some(leader) = leader.filter(|&l| l != self.cx.settings.me && hops > 0) {
                let request = Request::Lookup {
                    code: code.to_string(),
                    hops: hops - 1,
                };
                if let Ok(Reply::Found(link)) =
                    self.cx.peers.call(leader, &request, CALL_TIMEOUT).await
                {
                    return Ok(link);
                }
            }
            // The leader is gone or unreachable: a link this replica has is still an answer.
            if let Some(link) = read_here(local) {
                return Ok(Some(link));
            }
            if hops == 0 {
                return Err(Refusal::NotLeader { leader });
            }
        }
        if hops == 0 {
            return Err(Refusal::NotHosted);
        }
        let request = Request::Lookup {
            code: code.to_string(),
            hops: hops - 1,
        };
        let mut refusals = Vec::new();
        for node in self.candidates(shard) {
            match self.cx.peers.call(node, &request, CALL_TIMEOUT).await {
                Ok(Reply::Found(link)) => return Ok(link),
                Ok(Reply::Refused(r)) => refusals.push(format!("node {node}: {r}")),
                Ok(other) => refusals.push(format!("node {node} answered {other:?}")),
                Err(e) => refusals.push(e.to_string()),
            }
        }
        Err(Refusal::Unavailable(if refusals.is_empty() {
            format!("no node holds shard {shard}")
        } else {
            refusals.join("; ")
        }))
    }

    /// Reads `code` linearizably, on its shard's leader (here, or reached in at most `hops`
    /// forwards): the leader confirms with a quorum that it still leads and applies every
    /// entry committed before the read began, then reads its replica. No follower answers,
    /// so an acknowledged write is always seen, whatever replica lags.
    pub(super) async fn route_read_linearizable(
        self: &Arc<Self>,
        code: &str,
        hops: u8,
        deadline: Instant,
    ) -> Result<Option<Link>, Refusal> {
        let shard = shard_of(code, self.cx.settings.shard_count);
        let me = self.cx.settings.me;
        if let Some(local) = self.cx.replicas.get(shard) {
            let leader = local.group.leader();
            if leader == Some(me) {
                let left = deadline
                    .saturating_duration_since(Instant::now())
                    .min(HOP_TIMEOUT);
                let confirmed = tokio::time::timeout(left, local.group.ensure_linearizable()).await;
                return match confirmed {
                    Ok(Ok(())) if local.fault.is_tripped() => {
                        Err(Refusal::Unavailable("this node's storage failed".into()))
                    }
                    Ok(Ok(())) => Ok(local.reader.get(code).map(|l| Link::clone(&l))),
                    Ok(Err(GroupError::NotLeader {
                        leader: Some(leader),
                        ..
                    })) if leader != me && hops > 0 => {
                        self.forward_read_linearizable(leader, code, hops - 1, deadline)
                            .await
                    }
                    Ok(Err(GroupError::NotLeader { leader, .. })) => {
                        Err(Refusal::NotLeader { leader })
                    }
                    Ok(Err(e)) => Err(Refusal::Unavailable(e.to_string())),
                    Err(_) => Err(Refusal::Unavailable(format!(
                        "shard {shard}'s leader did not hear from a quorum within {left:?}"
                    ))),
                };
            }
            if hops == 0 {
                return Err(Refusal::NotLeader { leader });
            }
            if let Some(leader) = leader {
                return self
                    .forward_read_linearizable(leader, code, hops - 1, deadline)
                    .await;
            }
        }
        if hops == 0 {
            return Err(Refusal::NotHosted);
        }
        let mut last = Refusal::Unavailable(format!("no node holds shard {shard}"));
        for node in self.candidates(shard) {
            match self
                .forward_read_linearizable(node, code, hops - 1, deadline)
                .await
            {
                Ok(link) => return Ok(link),
                Err(Refusal::Failed(e)) => return Err(Refusal::Failed(e)),
                Err(r) => last = r,
            }
        }
        Err(last)
    }

    async fn forward_read_linearizable(
        &self,
        node: NodeId,
        code: &str,
        hops: u8,
        deadline: Instant,
    ) -> Result<Option<Link>, Refusal> {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .min(HOP_TIMEOUT);
        let request = Request::ReadLinearizable {
            code: code.to_string(),
            hops,
        };
        match self.cx.peers.call(node, &request, left).await {
            Ok(Reply::Found(link)) => Ok(link),
            Ok(Reply::Refused(r)) => Err(r),
            Ok(other) => Err(Refusal::Failed(format!("a read answered {other:?}"))),
            Err(e) => Err(Refusal::Unavailable(e.to_string())),
        }
    }

    /// A page of `shard`'s links, from its leader if it can be reached in `hops`, else
    /// from this node's replica.
    pub(super) async fn page(
        &self,
        shard: u32,
        cursor: Option<&str>,
        tag: Option<&Tag>,
        limit: usize,
        hops: u8,
    ) -> Result<Vec<Link>, Refusal> {
        let local = self.cx.replicas.get(shard);
        let leader = local.as_ref().and_then(|l| l.group.leader());
        if let Some(leader) = leader.filter(|&l| l != self.cx.settings.me && hops > 0) {
            let request = Request::List {
                hops: hops - 1,
                shards: vec![shard],
                cursor: cursor.map(str::to_string),
                tag: tag.cloned(),
                limit: limit as u32,
            };
            if let Ok(Reply::Links(links)) =
                self.cx.peers.call(leader, &request, CALL_TIMEOUT).await
            {
                return Ok(links);
            }
        }
        match local.filter(|l| l.is_current()) {
            Some(local) => Ok(local
                .reader
                .page(cursor, tag, limit)
                .into_iter()
                .map(|l| Link::clone(&l))
                .collect()),
            None => Err(Refusal::NotHosted),
        }
    }
}
