//! The public API of [`LinkService`]: links, keys, clicks, readiness, metrics, status,
//! drain and shutdown.
//!
//! (Over 600 lines: one `impl` block of many short methods, each a thin call into the
//! routing, hosting and meta-client code; it is split by subject when `Core` is taken
//! apart.)

use super::*;

impl LinkService {
    /// The destination rules this service applies.
    pub fn url_policy(&self) -> &UrlPolicy {
        &self.core.url_policy
    }

    /// Number of shards.
    pub fn shard_count(&self) -> u32 {
        self.core.shard_count
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.core.me
    }

    /// The cluster listener's address.
    pub fn cluster_addr(&self) -> SocketAddr {
        self.core.peers.addr()
    }

    /// The Raft peer listener's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.core.node.addr()
    }

    /// The link at `code` if this node can answer without waiting: from its replica of the
    /// shard, or from the near cache. Lock-free, no I/O: the redirect path.
    pub fn lookup(&self, code: &str) -> Lookup {
        let shard = shard_of(code, self.core.shard_count);
        if let Some(local) = self.core.replicas.pin().get(&shard) {
            if local.is_serving() {
                match local.reader.get(code) {
                    Some(link) => return Lookup::Local(Some(link)),
                    // Only the leader's "no such link" is final (a follower may not have
                    // applied a create yet); elsewhere the near cache or the leader says.
                    None if local.group.is_leader() => return Lookup::Local(None),
                    None => {}
                }
            }
        }
        match self.core.cache.get(code) {
            Some(entry) => Lookup::Cached(entry),
            None => Lookup::Miss,
        }
    }

    /// Asks a replica of `code`'s shard (its leader, when reachable) and caches the answer.
    /// While the shard has no leader to say a code does not exist, waits for one (up to
    /// the write timeout).
    pub async fn fetch(&self, code: &str) -> Result<Option<Arc<Link>>, ServiceError> {
        let core = &self.core;
        let shard = shard_of(code, core.shard_count);
        let deadline = Instant::now() + core.write_timeout;
        let mut pause = Duration::from_millis(10);
        loop {
            let ticket = core.cache.ticket();
            let refusal = match core.route_lookup(code, HOPS).await {
                Ok(link) => {
                    let link = link.map(Arc::new);
                    let leads = core.local_shard(shard).is_some_and(|l| l.group.is_leader());
                    if !leads {
                        core.cache.fill(ticket, code, link.clone());
                    }
                    return Ok(link);
                }
                Err(r) => r,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ServiceError::Unavailable(format!(
                    "no replica of {code:?}'s shard answered: {refusal}"
                )));
            }
            core.pause_for_shard(shard, pause.min(left)).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// The link at `code`, wherever its shard is.
    pub async fn get(&self, code: &str) -> Result<Option<Arc<Link>>, ServiceError> {
        match self.lookup(code) {
            Lookup::Local(link) | Lookup::Cached(link) => Ok(link),
            Lookup::Miss => self.fetch(code).await,
        }
    }

    /// Up to `limit` links after `cursor` in code order across all shards, with `tag`;
    /// and the cursor of the next page, if there may be one.
    pub async fn list(
        &self,
        limit: usize,
        cursor: Option<&str>,
        tag: Option<&Tag>,
    ) -> Result<(Vec<Arc<Link>>, Option<String>), ServiceError> {
        let core = &self.core;
        let mut links: Vec<Arc<Link>> = Vec::new();
        let mut remote: BTreeMap<NodeId, Vec<u32>> = BTreeMap::new();
        for shard in 0..core.shard_count {
            match core.local_shard(shard).filter(|l| l.is_serving()) {
                Some(_) => links.extend(
                    core.page(shard, cursor, tag, limit, 1)
                        .await
                        .map_err(|r| ServiceError::Unavailable(format!("shard {shard}: {r}")))?
                        .into_iter()
                        .map(Arc::new),
                ),
                None => {
                    let node = core.candidates(shard).into_iter().next().ok_or_else(|| {
                        ServiceError::Unavailable(format!("no node holds shard {shard}"))
                    })?;
                    remote.entry(node).or_default().push(shard);
                }
            }
        }
        for (node, shards) in remote {
            links.extend(self.list_remote(node, shards, limit, cursor, tag).await?);
        }
        links.sort_by(|a, b| a.code.cmp(&b.code));
        links.truncate(limit);
        let next = (links.len() == limit)
            .then(|| links.last().map(|l| l.code.to_string()))
            .flatten();
        Ok((links, next))
    }

    /// Pages of `shards` from `node`, or shard by shard from other replicas if it refuses.
    async fn list_remote(
        &self,
        node: NodeId,
        shards: Vec<u32>,
        limit: usize,
        cursor: Option<&str>,
        tag: Option<&Tag>,
    ) -> Result<Vec<Arc<Link>>, ServiceError> {
        let ask = |shards: Vec<u32>| Request::List {
            hops: 1,
            shards,
            cursor: cursor.map(str::to_string),
            tag: tag.cloned(),
            limit: limit as u32,
        };
        if let Ok(Reply::Links(links)) = self
            .core
            .peers
            .call(node, &ask(shards.clone()), CALL_TIMEOUT)
            .await
        {
            return Ok(links.into_iter().map(Arc::new).collect());
        }
        let mut out = Vec::new();
        'shards: for shard in shards {
            for other in self.core.candidates(shard) {
                if let Ok(Reply::Links(links)) = self
                    .core
                    .peers
                    .call(other, &ask(vec![shard]), CALL_TIMEOUT)
                    .await
                {
                    out.extend(links.into_iter().map(Arc::new));
                    continue 'shards;
                }
            }
            return Err(ServiceError::Unavailable(format!(
                "no replica of shard {shard} answered"
            )));
        }
        Ok(out)
    }

    /// Number of links in this node's replicas.
    pub fn link_count(&self) -> usize {
        self.core
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

    async fn shard_command(
        &self,
        code: &str,
        command: ShardCommand,
    ) -> Result<ShardOutcome, ServiceError> {
        let shard = shard_of(code, self.core.shard_count);
        let outcome = self.core.shard_command(shard, command).await;
        // Whatever happened, near caches may hold what the code was before.
        self.core.cache.invalidate(code);
        self.core.peers.notify_all(&Notice::Invalidate {
            code: code.to_string(),
        });
        outcome
    }
    /// Creates a link. With a custom code, a taken code is an error; a generated code is
    /// derived from the request id, so a retried request lands on the same shard, finds
    /// its first outcome and creates nothing twice.
    pub async fn create(&self, request: RequestId, spec: LinkSpec) -> Result<Link, ServiceError> {
        let custom = spec.code.is_some();
        for attempt in 0..CODE_ATTEMPTS {
            let code = match &spec.code {
                Some(code) => code.clone(),
                None => generated_code(request, attempt, self.core.code_length),
            };
            let link = NewLink {
                code: code.clone(),
                url: spec.url.clone(),
                title: spec.title.clone(),
                tags: spec.tags.clone(),
                expires_at: spec.expires_at,
                redirect: spec.redirect,
            };
            let command = ShardCommand::Create {
                request: sub_request(request, attempt),
                at: now_ms(),
                link,
            };
            match self.shard_command(code.as_str(), command).await? {
                ShardOutcome::Created(link) => return Ok(Link::clone(&link)),
                ShardOutcome::CodeTaken if custom => {
                    return Err(ServiceError::CodeTaken(code.to_string()))
                }
                ShardOutcome::CodeTaken => continue,
                ShardOutcome::DeletedSince(link) => {
                    return Err(ServiceError::Refused(format!(
                        "this request (its Idempotency-Key) created link {:?}, which has been deleted since; send another Idempotency-Key to create a new one",
                        link.code.as_str()
                    )))
                }
                other => return Err(ServiceError::Internal(format!("create answered {other:?}"))),
            }
        }
        Err(ServiceError::Unavailable(format!(
            "{CODE_ATTEMPTS} generated codes were all taken; raise code_length"
        )))
    }

    /// Changes a link.
    pub async fn update(
        &self,
        request: RequestId,
        code: &ShortCode,
        expected_version: Option<u64>,
        patch: LinkPatch,
    ) -> Result<Link, ServiceError> {
        let command = ShardCommand::Update {
            request,
            at: now_ms(),
            code: code.clone(),
            expected_version,
            patch,
        };
        match self.shard_command(code.as_str(), command).await? {
            ShardOutcome::Updated(link) => Ok(Link::clone(&link)),
            other => Err(refusal(code, other)),
        }
    }

    /// Deletes a link; returns its last state.
    pub async fn delete(
        &self,
        request: RequestId,
        code: &ShortCode,
        expected_version: Option<u64>,
    ) -> Result<Link, ServiceError> {
        let command = ShardCommand::Delete {
            request,
            at: now_ms(),
            code: code.clone(),
            expected_version,
        };
        match self.shard_command(code.as_str(), command).await? {
            ShardOutcome::Deleted(link) => Ok(Link::clone(&link)),
            other => Err(refusal(code, other)),
        }
    }

    async fn meta_command(&self, command: MetaCommand) -> Result<MetaOutcome, ServiceError> {
        self.core.propose_meta(command).await
    }

    /// Stores a new key with `scopes`; returns it in clear text (to show once) and its record.
    pub async fn create_key(
        &self,
        name: String,
        scopes: Vec<Scope>,
    ) -> Result<(ApiKey, ApiKeyRecord), ServiceError> {
        self.store_key(ApiKey::generate(), name, scopes).await
    }

    async fn store_key(
        &self,
        key: ApiKey,
        name: String,
        scopes: Vec<Scope>,
    ) -> Result<(ApiKey, ApiKeyRecord), ServiceError> {
        let record = ApiKeyRecord {
            id: format!("key_{}", &key.hash().as_str()[..16]),
            name,
            hash: key.hash(),
            scopes,
            created_at: now_ms(),
            revoked_at: None,
        };
        match self.meta_command(MetaCommand::CreateKey(record)).await? {
            MetaOutcome::KeyCreated(record) => Ok((key, record)),
            MetaOutcome::KeyExists => Err(ServiceError::Invalid(Invalid::new(
                "key",
                "this key already exists",
            ))),
            other => Err(ServiceError::Internal(format!(
                "create key answered {other:?}"
            ))),
        }
    }

    /// Makes sure an admin key exists. With none stored yet, stores `operator_key` (if
    /// given) or a fresh one; returns a fresh key so it can be shown once.
    pub async fn ensure_admin_key(
        &self,
        operator_key: Option<&str>,
    ) -> Result<Option<ApiKey>, ServiceError> {
        if !self.core.directory.is_empty() {
            if operator_key.is_some() {
                tracing::info!(
                    "admin_key is only used for a new data directory; this one already has keys"
                );
            }
            return Ok(None);
        }
        let (key, generated) = match operator_key {
            Some(k) => (ApiKey::from_operator(k)?, false),
            None => (ApiKey::generate(), true),
        };
        let (key, _) = self
            .store_key(key, "bootstrap admin".into(), vec![Scope::Admin])
            .await?;
        Ok(generated.then_some(key))
    }

    /// Every key's record.
    pub fn keys(&self) -> Vec<ApiKeyRecord> {
        self.core.directory.all()
    }

    /// Revokes a key.
    pub async fn revoke_key(&self, id: &str) -> Result<ApiKeyRecord, ServiceError> {
        match self
            .meta_command(MetaCommand::RevokeKey {
                id: id.to_string(),
                at: now_ms(),
            })
            .await?
        {
            MetaOutcome::KeyRevoked(record) => Ok(record),
            MetaOutcome::KeyNotFound => Err(ServiceError::NotFound(format!("key {id:?}"))),
            other => Err(ServiceError::Internal(format!("revoke answered {other:?}"))),
        }
    }

    /// The record of the key presented in clear text, if it exists (revoked or not).
    pub fn authenticate(&self, clear: &str) -> Option<ApiKeyRecord> {
        self.core.directory.by_hash(&ApiKeyHash::of(clear))
    }

    /// Whether this node is ready for traffic: it is active, the meta group has a leader,
    /// and every replica it holds serves reads and knows its leader. If not, why.
    pub fn readiness(&self) -> Result<(), NotReady> {
        let core = &self.core;
        if let Some(reason) = core.node.fault().reason() {
            return Err(NotReady::StorageFailed(reason));
        }
        match core.directory.node(core.me) {
            Some(n) if n.state == NodeState::Active => {}
            Some(n) => return Err(NotReady::NotActive(n.state.name())),
            None => return Err(NotReady::NotInDirectory),
        }
        if core.meta.leader().is_none() {
            return Err(NotReady::NoMetaLeader);
        }
        for (shard, local) in core.local_shards() {
            if !local.is_serving() {
                return Err(NotReady::ReplicaNotServing(shard));
            }
            if local.group.leader().is_none() {
                return Err(NotReady::NoShardLeader(shard));
            }
        }
        Ok(())
    }

    /// How many nodes are in each state, as this node's copy of the meta group says.
    pub fn node_states(&self) -> Vec<(&'static str, usize)> {
        let nodes = self.core.directory.nodes();
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
        let members = self.core.directory.in_states(&[
            NodeState::Active,
            NodeState::Draining,
            NodeState::Leaving,
        ]);
        let target = self.core.replication_factor.min(members.len());
        self.core
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

    /// Puts back a link exactly as the mirror has it (`linkrift restore`); a retry is
    /// harmless. Refused if the code is taken by another link.
    pub async fn restore_link(&self, link: Link) -> Result<(), ServiceError> {
        let code = link.code.clone();
        let request = xxh3_128(format!("restore\0{}", code.as_str()).as_bytes());
        let shard = shard_of(code.as_str(), self.core.shard_count);
        let command = ShardCommand::Restore {
            request,
            at: now_ms(),
            link,
        };
        match self.core.shard_command(shard, command).await? {
            ShardOutcome::Created(_) => Ok(()),
            ShardOutcome::CodeTaken => Err(ServiceError::CodeTaken(code.to_string())),
            other => Err(refusal(&code, other)),
        }
    }

    /// Puts back an API key record (hash, scopes, times) exactly (`linkrift restore`).
    pub async fn restore_key(&self, record: ApiKeyRecord) -> Result<(), ServiceError> {
        match self
            .core
            .propose_meta(MetaCommand::CreateKey(record))
            .await?
        {
            MetaOutcome::KeyCreated(_) => Ok(()),
            other => Err(ServiceError::Internal(format!(
                "restoring a key: {other:?}"
            ))),
        }
    }

    /// Hands a redirect's click to the click actor, without waiting.
    pub fn record_click(&self, mut click: crate::clicks::event::RawClick) {
        click.shard = shard_of(&click.code, self.core.shard_count);
        self.core.clicks.record(click);
    }

    /// The clicks of `code` from `from_ms` to `to_ms`: from ClickHouse, or every node's
    /// roll-ups added up. A node that does not answer, or ClickHouse down, is named in the
    /// error: stats are exact or refused.
    pub async fn click_summary(
        &self,
        code: &str,
        from_ms: i64,
        to_ms: i64,
        bots: crate::clicks::rollup::Bots,
    ) -> Result<crate::clicks::Summary, ServiceError> {
        let core = &self.core;
        if let Some(store) = &core.clickhouse {
            return store
                .summary(code, from_ms, to_ms, bots)
                .await
                .map_err(|e| ServiceError::Unavailable(e.to_string()));
        }
        let mut tally = core
            .rollups
            .tally_off_runtime(code.to_string(), from_ms, to_ms, bots)
            .await
            .map_err(|e| ServiceError::Internal(format!("click store: {e}")))?;
        let others: Vec<NodeId> = core
            .directory
            .in_states(&[NodeState::Active, NodeState::Draining, NodeState::Leaving])
            .into_iter()
            .filter(|&n| n != core.me)
            .collect();
        let request = Request::ClickTally {
            code: code.to_string(),
            from_ms,
            to_ms,
            bots,
        };
        let asks = others.iter().map(|&n| {
            let request = &request;
            async move { (n, core.peers.call(n, request, CALL_TIMEOUT).await) }
        });
        for (node, answer) in futures::future::join_all(asks).await {
            match answer {
                Ok(Reply::Tally(t)) => tally.merge(t),
                other => {
                    return Err(ServiceError::Unavailable(format!(
                        "node {node} did not give its clicks: {other:?}"
                    )))
                }
            }
        }
        Ok(tally.into())
    }

    /// The ClickHouse click store, when one is configured.
    pub fn clickhouse(&self) -> Option<&crate::clicks::clickhouse::ClickHouse> {
        self.core.clickhouse.as_ref()
    }

    /// The node's storage fault latch: tripped by the first storage error (Raft log,
    /// snapshots, click spool or roll-up log), after which the node must exit.
    pub fn storage_fault(&self) -> linkrift_raft::StorageFault {
        self.core.node.fault().clone()
    }

    /// Watches for this node learning that it is no longer a member of its cluster.
    pub fn departure(&self) -> tokio::sync::watch::Receiver<Option<Departure>> {
        self.core.departure.subscribe()
    }

    /// Drains this node before it shuts down (`--drain-on-shutdown`): it stops being ready,
    /// and hands its leaderships over, waiting up to `within` for that. It becomes active
    /// again when it next starts.
    pub async fn drain_for_shutdown(&self, within: Duration) -> Result<(), ServiceError> {
        let core = &self.core;
        let deadline = Instant::now() + within;
        if core.my_state() == Some(NodeState::Active) {
            core.mark_drained_for_shutdown(true)
                .map_err(|e| ServiceError::Internal(e.to_string()))?;
            let drain = crate::cluster::membership::Operation::Drain;
            if let Err(e) = self.operate(core.me, drain).await {
                tracing::warn!(error = %e, "could not drain before shutting down");
                let _ = core.mark_drained_for_shutdown(false);
                return Err(e);
            }
        }
        let mut metrics: Vec<_> = core
            .all_groups()
            .iter()
            .map(|g| g.raft().metrics())
            .collect();
        loop {
            let leading = core
                .all_groups()
                .iter()
                .filter(|g| core.is_handing_over(g))
                .count();
            if leading == 0 && core.is_yielding() {
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
        let mut groups = vec![self.core.meta.clone()];
        groups.extend(self.core.replicas.pin().values().map(|l| l.group.clone()));
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
            .directory
            .nodes()
            .iter()
            .map(|n| n.id)
            .filter(|&n| n != core.me)
            .collect();
        let answers = others
            .iter()
            .map(|&n| async move { (n, core.peers.call(n, &Request::Groups, CALL_TIMEOUT).await) });
        let mut reachable = BTreeSet::from([core.me]);
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
        let groups: Vec<GroupStatus> = (0..=core.shard_count as u64)
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
            .directory
            .nodes()
            .into_iter()
            .map(|n| {
                let up = reachable.contains(&n.id);
                (n, up)
            })
            .collect();
        let rf = core
            .replication_factor
            .min(core.directory.active_nodes().len().max(1));
        let mut status = ClusterStatus::new(core.me, core.shard_count, rf, groups, nodes);
        for node in &mut status.nodes {
            node.meta_acknowledged = core.directory.acknowledged(node.id);
        }
        status
    }

    /// Every replica of `shard` that a member node holds, summed up (for checking that the
    /// replicas agree). Nodes that do not answer are left out.
    pub async fn replica_digests(&self, shard: u32) -> Result<Vec<ReplicaDigest>, ServiceError> {
        let core = &self.core;
        if shard >= core.shard_count {
            return Err(ServiceError::NotFound(format!("shard {shard}")));
        }
        let mut out: Vec<ReplicaDigest> = core.replica_digest(shard).into_iter().collect();
        let asks = core.candidates(shard).into_iter().map(|n| async move {
            core.peers
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

    /// Stops the background tasks (the last started first), leaves the cluster's sessions,
    /// stops every group and flushes the data to disk. Requests still in flight are refused
    /// from then on; the data directory is unlocked when the service is dropped.
    pub async fn shutdown(&self) {
        // Clicks still batched go to their store (or the ClickHouse spool) first.
        self.core.clicks.stop().await;
        let aborted = self.core.tasks.shutdown(TASKS_STOP_WITHIN).await;
        if !aborted.is_empty() {
            tracing::warn!(?aborted, "background tasks aborted at shutdown");
        }
        self.core.peers.shutdown().await;
        let shards: Vec<u32> = self.core.replicas.pin().keys().copied().collect();
        for shard in shards {
            if let Some(local) = self.core.replicas.pin().remove(&shard).cloned() {
                // Stopping lets the proposals already in Raft finish and answer.
                local.stop_actor().await;
            }
        }
        self.core.node.close().await;
    }
}

pub(super) fn refusal(code: &ShortCode, outcome: ShardOutcome) -> ServiceError {
    match outcome {
        ShardOutcome::NotFound => ServiceError::NotFound(format!("link {:?}", code.as_str())),
        ShardOutcome::VersionMismatch { current } => ServiceError::VersionMismatch { current },
        other => ServiceError::Internal(format!("unexpected outcome {other:?}")),
    }
}

pub(super) fn sub_request(request: RequestId, attempt: u32) -> RequestId {
    if attempt == 0 {
        return request;
    }
    let mut bytes = request.to_le_bytes().to_vec();
    bytes.extend(attempt.to_le_bytes());
    xxh3_128(&bytes)
}

/// The code tried for `request` at `attempt`: random-looking, but the same on every retry.
pub(super) fn generated_code(request: RequestId, attempt: u32, len: usize) -> ShortCode {
    let seed = sub_request(request, attempt);
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(&seed.to_le_bytes());
    bytes[16..].copy_from_slice(&xxh3_128(&seed.to_be_bytes()).to_le_bytes());
    ShortCode::generate(&mut rand::rngs::StdRng::from_seed(bytes), len)
}
