//! The public API of [`LinkService`] for links: who this node is, reads (here, from the
//! near cache, or from the shard's nodes), listing, and writes (create, update, delete,
//! and the restore path's). Keys are in `keys.rs`, clicks in `click_api.rs`, the node's
//! state and lifecycle in `state.rs`.

use super::*;

impl LinkService {
    /// The destination rules this service applies.
    pub fn url_policy(&self) -> &UrlPolicy {
        &self.core.url_policy
    }

    /// Number of shards.
    pub fn shard_count(&self) -> u32 {
        self.core.cx.settings.shard_count
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.core.cx.settings.me
    }

    /// The cluster listener's address.
    pub fn cluster_addr(&self) -> SocketAddr {
        self.core.cx.peers.addr()
    }

    /// The Raft peer listener's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.core.node.addr()
    }

    /// The link at `code` if this node can answer without waiting: from its replica of the
    /// shard, or from the near cache. Lock-free, no I/O: the redirect path.
    pub fn lookup(&self, code: &str) -> Lookup {
        self.lookup_in(self.shard_of(code), code)
    }

    /// The shard that holds `code`.
    pub fn shard_of(&self, code: &str) -> u32 {
        shard_of(code, self.core.cx.settings.shard_count)
    }

    /// [`Self::lookup`] for a code whose shard the caller has computed (the redirect, which
    /// needs it again for the click).
    pub fn lookup_in(&self, shard: u32, code: &str) -> Lookup {
        if let Some(local) = self.core.cx.replicas.pin().get(&shard) {
            if local.is_current() {
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
        let shard = shard_of(code, core.cx.settings.shard_count);
        let deadline = Instant::now() + core.cx.settings.write_timeout;
        let mut pause = Duration::from_millis(10);
        loop {
            let ticket = core.cache.ticket();
            let refusal = match core.route_lookup(code, HOPS).await {
                Ok(link) => {
                    let link = link.map(Arc::new);
                    let leads = core
                        .cx
                        .replicas
                        .get(shard)
                        .is_some_and(|l| l.group.is_leader());
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

    /// The link at `code`, read linearizably: through its shard's leader, which confirms
    /// its leadership with a quorum first, so the answer reflects every write acknowledged
    /// before the call. Retries across elections until the write timeout passes.
    pub async fn get_linearizable(&self, code: &str) -> Result<Option<Arc<Link>>, ServiceError> {
        let core = &self.core;
        let shard = shard_of(code, core.cx.settings.shard_count);
        let deadline = Instant::now() + core.cx.settings.write_timeout;
        let mut pause = Duration::from_millis(10);
        loop {
            let refusal = match core.route_read_linearizable(code, HOPS, deadline).await {
                Ok(link) => return Ok(link.map(Arc::new)),
                Err(Refusal::Failed(e)) => return Err(ServiceError::Internal(e)),
                Err(r) => r,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ServiceError::Unavailable(format!(
                    "shard {shard}'s leader could not confirm a linearizable read: {refusal}"
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
        for shard in 0..core.cx.settings.shard_count {
            match core.cx.replicas.get(shard).filter(|l| l.is_current()) {
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
            .cx
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
                    .cx
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

    async fn shard_command(
        &self,
        code: &str,
        command: ShardCommand,
    ) -> Result<ShardOutcome, ServiceError> {
        let shard = shard_of(code, self.core.cx.settings.shard_count);
        let outcome = self.core.shard_command(shard, command).await;
        // Whatever happened, near caches may hold what the code was before.
        self.core.cache.invalidate(code);
        self.core.cx.peers.notify_all(&Notice::Invalidate {
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

    /// Puts back a link exactly as the mirror has it (`linkrift restore`); a retry is
    /// harmless. Refused if the code is taken by another link.
    pub async fn restore_link(&self, link: Link) -> Result<(), ServiceError> {
        let code = link.code.clone();
        let request = xxh3_128(format!("restore\0{}", code.as_str()).as_bytes());
        let shard = shard_of(code.as_str(), self.core.cx.settings.shard_count);
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
