//! Requests from other nodes (the cluster port's dispatch) and the status of a group.

use super::*;

pub(super) fn group_status(name: String, g: &Group<GroupState>) -> GroupStatus {
    let m = g.raft().metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voters: Vec<NodeId> = membership.voter_ids().collect();
    GroupStatus {
        name,
        group: g.id().0,
        leader: m.current_leader,
        term: m.current_term,
        learners: membership
            .learner_ids()
            .filter(|l| !voters.contains(l))
            .collect(),
        voters,
        applied: m.last_applied.map_or(0, |l| l.index),
        last_log: m.last_log_index.unwrap_or(0),
        matched: m
            .replication
            .iter()
            .flatten()
            .map(|(n, l)| (*n, l.map_or(0, |l| l.index)))
            .collect(),
        changing_to: {
            let configs = membership.get_joint_config();
            (configs.len() > 1).then(|| configs[configs.len() - 1].iter().copied().collect())
        },
        mirrored: None,
    }
}

impl Handler for Core {
    fn handle(
        self: Arc<Self>,
        request: Request,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Reply> + Send>> {
        Box::pin(self.answer(request))
    }

    fn notice(&self, notice: Notice) {
        match notice {
            Notice::Invalidate { code } => self.cache.invalidate(&code),
        }
    }
}

impl Core {
    /// Answers one request from another node.
    async fn answer(self: Arc<Self>, request: Request) -> Reply {
        match request {
            Request::Register { token, addrs } => self.handle_register(token, addrs).await,
            Request::Admit { id, addrs } => self.handle_admit(id, addrs).await,
            Request::Meta(command) => {
                if !self.cx.meta.group.is_leader() {
                    return self
                        .cx
                        .meta
                        .to_leader(&Request::Meta(command), CALL_TIMEOUT * 2)
                        .await;
                }
                match self.cx.meta.propose_as_leader(command).await {
                    Ok(outcome) => Reply::Meta(outcome),
                    Err(e) => Reply::Refused(Refusal::Unavailable(e.to_string())),
                }
            }
            Request::Write {
                shard,
                command,
                hops,
            } => {
                // Answer before the caller's hop timeout, even if only to refuse.
                let deadline = Instant::now() + HOP_TIMEOUT.mul_f32(0.9);
                match self.route_write(shard, &command, hops, deadline).await {
                    Ok(outcome) => Reply::Written(outcome),
                    Err(r) => Reply::Refused(r),
                }
            }
            Request::Lookup { code, hops } => match self.route_lookup(&code, hops).await {
                Ok(link) => Reply::Found(link),
                Err(r) => Reply::Refused(r),
            },
            Request::List {
                hops,
                shards,
                cursor,
                tag,
                limit,
            } => {
                let mut links = Vec::new();
                for shard in shards {
                    match self
                        .page(shard, cursor.as_deref(), tag.as_ref(), limit as usize, hops)
                        .await
                    {
                        Ok(page) => links.extend(page),
                        Err(r) => return Reply::Refused(r),
                    }
                }
                Reply::Links(links)
            }
            Request::Host { shard } => match self.cx.replicas.host(shard).await {
                Ok(()) => Reply::Done,
                Err(e) => Reply::Refused(Refusal::Failed(e.to_string())),
            },
            Request::Release { shard } => match self.cx.replicas.release(shard).await {
                Ok(()) => Reply::Done,
                Err(e) => Reply::Refused(Refusal::Failed(e.to_string())),
            },
            Request::Members { shard } => self.cx.members_as_leader(shard),
            Request::ReadLinearizable { code, hops } => {
                let deadline = Instant::now() + HOP_TIMEOUT.mul_f32(0.9);
                match self.route_read_linearizable(&code, hops, deadline).await {
                    Ok(link) => Reply::Found(link),
                    Err(r) => Reply::Refused(r),
                }
            }
            Request::Reconcile { shard, plan, hops } => {
                match crate::cluster::driver::reconcile_here(&self.cx, shard, plan, hops).await {
                    Ok(progress) => Reply::Reconciled(progress),
                    Err(r) => Reply::Refused(r),
                }
            }
            Request::Groups => Reply::Groups(self.group_statuses()),
            Request::Acknowledged { node } => {
                Reply::Acknowledged(self.cx.meta.directory.acknowledged(node))
            }
            Request::Digest { shard } => match self.replica_digest(shard) {
                Some(d) => Reply::Digest(d),
                None => Reply::Refused(Refusal::NotHosted),
            },
            Request::ClickTally {
                code,
                from_ms,
                to_ms,
                bots,
            } => match self
                .rollups
                .tally_off_runtime(code, from_ms, to_ms, bots)
                .await
            {
                Ok(t) => Reply::Tally(t),
                Err(e) => Reply::Refused(Refusal::Failed(format!("click store: {e}"))),
            },
            Request::Stand { group } => self.cx.stand(GroupId(group)).await,
            Request::Replaced {
                id,
                rejoin,
                members,
            } => {
                if id != self.cx.settings.me {
                    return Reply::Refused(Refusal::Failed(format!(
                        "this is node {}, not node {id}",
                        self.cx.settings.me
                    )));
                }
                self.cx.depart(if rejoin {
                    Departure::Replaced { members }
                } else {
                    Departure::Left
                });
                Reply::Done
            }
        }
    }
}

impl Core {
    pub(super) async fn handle_register(&self, token: u128, addrs: NodeAddrs) -> Reply {
        let request = Request::Register {
            token,
            addrs: addrs.clone(),
        };
        if !self.cx.meta.group.is_leader() {
            return self.cx.meta.to_leader(&request, CALL_TIMEOUT * 2).await;
        }
        match self
            .cx
            .meta
            .propose_as_leader(MetaCommand::RegisterNode {
                token,
                addrs,
                at: now_ms(),
            })
            .await
        {
            Ok(MetaOutcome::Node(record)) => Reply::Registered {
                id: record.id,
                shard_count: self.cx.meta.directory.shard_count(),
            },
            Ok(other) => Reply::Refused(Refusal::Failed(format!("register answered {other:?}"))),
            Err(e) => Reply::Refused(Refusal::Unavailable(e.to_string())),
        }
    }

    pub(super) async fn handle_admit(&self, id: NodeId, addrs: NodeAddrs) -> Reply {
        if !self.cx.meta.group.is_leader() {
            return self
                .cx
                .meta
                .to_leader(&Request::Admit { id, addrs }, ADMIT_TIMEOUT)
                .await;
        }
        let Some(record) = self.cx.meta.directory.node(id) else {
            return Reply::Refused(Refusal::Failed(format!("node {id} never registered")));
        };
        if record.state == NodeState::Active {
            return Reply::Done;
        }
        // Registration happened before the node's Raft listener was up; record where it is.
        if record.addrs != addrs {
            let update = MetaCommand::UpdateAddrs {
                id,
                addrs: addrs.clone(),
            };
            if let Err(e) = self.cx.meta.propose_as_leader(update).await {
                return Reply::Refused(Refusal::Unavailable(e.to_string()));
            }
        }
        if let Err(e) = self.cx.meta.group.add_learner(id, addrs.peer.clone()).await {
            return Reply::Refused(Refusal::Unavailable(format!(
                "adding node {id} to the meta group: {e}"
            )));
        }
        match self
            .cx
            .meta
            .propose_as_leader(MetaCommand::ActivateNode { id })
            .await
        {
            Ok(_) => {
                tracing::info!(node = id, "node admitted");
                Reply::Done
            }
            Err(e) => Reply::Refused(Refusal::Unavailable(e.to_string())),
        }
    }

    /// This node's replica of `shard`, summed up.
    pub(super) fn replica_digest(&self, shard: u32) -> Option<ReplicaDigest> {
        let local = self.cx.replicas.get(shard)?;
        let (links, digest) = local.reader.digest();
        let voter = local.group.read(|a| {
            a.membership
                .membership()
                .voter_ids()
                .any(|v| v == self.cx.settings.me)
        });
        Some(ReplicaDigest {
            node: self.cx.settings.me,
            voter,
            applied: local.group.last_applied().map_or(0, |l| l.index),
            links,
            digest,
        })
    }

    pub(super) fn group_statuses(&self) -> Vec<GroupStatus> {
        let mut meta = group_status("meta".into(), &self.cx.meta.group);
        meta.mirrored = self
            .cx
            .meta
            .group
            .is_leader()
            .then(|| self.mirror.watermark(-1))
            .flatten();
        let mut out = vec![meta];
        out.extend(self.cx.replicas.all().into_iter().map(|(s, l)| {
            let mut status = group_status(format!("shard {s}"), &l.group);
            if l.group.is_leader() {
                status.mirrored = self.mirror.watermark(s as i32);
            }
            status
        }));
        out
    }
}
