//! [`LinkService`]: one node's link service, the handle the HTTP layer talks to.
//!
//! It owns the node's Raft groups (the meta group and one per shard), knows which shard a
//! code lives in, serves reads from the shards' lock-free tables, and turns API calls into
//! commands proposed to the right group. Every write carries a request id, so retrying a
//! call (here, or by the client with the same idempotency key) never acts twice.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use linkrift_raft::node::NodeOptions;
use linkrift_raft::{Group, GroupError, GroupId, NodeId, RaftConfig, RaftNode};

use crate::status::{ClusterStatus, GroupStatus};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_128;

use crate::domain::{
    ApiKey, ApiKeyHash, ApiKeyRecord, DestinationUrl, Invalid, Link, LinkPatch, NewLink,
    RedirectStatus, Scope, ShortCode, Tag, Title, UrlPolicy,
};
use crate::groups::{shard_group, Command, GroupState, Outcome, META};
use crate::meta::{MetaCommand, MetaOutcome, MetaReader};
use crate::shard::{
    shard_of, RequestId, ShardActor, ShardCommand, ShardMsg, ShardOutcome, ShardReader,
};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef};
use tokio::task::JoinHandle;

/// How a node's link service is set up.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// Where the node keeps its data.
    pub data_dir: PathBuf,
    /// Peer (Raft) listener address.
    pub peer_addr: SocketAddr,
    /// Secret shared by the cluster's nodes.
    pub cluster_secret: Vec<u8>,
    /// Shards of a new cluster (1–4096). Fixed once the data directory exists.
    pub shard_count: u32,
    /// Length of generated codes.
    pub code_length: usize,
    /// Which destinations are accepted.
    pub url_policy: UrlPolicy,
    /// How long a write may wait for its group to have a leader.
    pub write_timeout: Duration,
    /// Replication settings.
    pub raft: RaftConfig,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            peer_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            cluster_secret: Vec::new(),
            shard_count: 64,
            code_length: 7,
            url_policy: UrlPolicy::default(),
            write_timeout: Duration::from_secs(5),
            raft: RaftConfig::default(),
        }
    }
}

/// Why a service call failed, by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The input breaks a rule.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// No such link or key.
    #[error("{0} not found")]
    NotFound(String),
    /// The custom code is taken.
    #[error("code {0:?} is already taken")]
    CodeTaken(String),
    /// The link changed since the caller read it.
    #[error("the link is at version {current}, not the version given in If-Match")]
    VersionMismatch {
        /// The current version.
        current: u64,
    },
    /// Retryable: no leader, shutting down, overloaded.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    /// A bug or broken data: not the caller's fault, not retryable.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Errors opening a node's data.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Bad settings.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Disk trouble.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The Raft layer failed to start.
    #[error(transparent)]
    Raft(Box<linkrift_raft::node::NodeError>),
}

impl From<linkrift_raft::node::NodeError> for OpenError {
    fn from(e: linkrift_raft::node::NodeError) -> Self {
        Self::Raft(Box::new(e))
    }
}

/// A link to create, as the API receives it (already checked).
#[derive(Clone, Debug)]
pub struct LinkSpec {
    /// Custom alias; `None` to generate one.
    pub code: Option<ShortCode>,
    /// Destination.
    pub url: DestinationUrl,
    /// Title.
    pub title: Option<Title>,
    /// Tags.
    pub tags: Vec<Tag>,
    /// Expiry, Unix milliseconds.
    pub expires_at: Option<i64>,
    /// Redirect status.
    pub redirect: RedirectStatus,
}

/// What the node remembers about itself, in `<data>/linkrift.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Identity {
    node_id: u64,
    shard_count: u32,
}

const IDENTITY: &str = "linkrift.json";
/// Generated-code attempts before giving up on a crowded code space.
const CODE_ATTEMPTS: u32 = 8;

struct Shard {
    group: Group<GroupState>,
    reader: ShardReader,
    actor: ActorRef<ShardMsg>,
    actor_task: JoinHandle<()>,
}

/// One node's link service.
pub struct LinkService {
    node: RaftNode<GroupState>,
    shards: Vec<Shard>,
    meta: Group<GroupState>,
    keys: MetaReader,
    code_length: usize,
    url_policy: UrlPolicy,
    write_timeout: Duration,
}

/// Now, as Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn read_identity(dir: &Path) -> Result<Option<Identity>, OpenError> {
    let path = dir.join(IDENTITY);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| OpenError::Config(format!("{} is damaged: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(OpenError::Io {
            context: format!("reading {}", path.display()),
            source,
        }),
    }
}

impl LinkService {
    /// Opens (or, in an empty directory, creates) a single-node cluster.
    pub async fn open(config: ServiceConfig) -> Result<Self, OpenError> {
        if !(1..=4096).contains(&config.shard_count) {
            return Err(OpenError::Config(format!(
                "shard_count must be 1 to 4096, not {}",
                config.shard_count
            )));
        }
        if !(4..=ShortCode::MAX_LEN).contains(&config.code_length) {
            return Err(OpenError::Config(format!(
                "code_length must be 4 to 64, not {}",
                config.code_length
            )));
        }
        let io = |context: String| move |source| OpenError::Io { context, source };
        std::fs::create_dir_all(&config.data_dir)
            .map_err(io(format!("creating {}", config.data_dir.display())))?;
        let existing = read_identity(&config.data_dir)?;
        let fresh = existing.is_none();
        let identity = existing.unwrap_or(Identity {
            node_id: 1,
            shard_count: config.shard_count,
        });
        if identity.shard_count != config.shard_count {
            tracing::warn!(
                configured = config.shard_count,
                actual = identity.shard_count,
                "shard_count is fixed when the data directory is created; using the existing value"
            );
        }
        let options = NodeOptions {
            node_id: identity.node_id,
            data_dir: config.data_dir.clone(),
            peer_addr: config.peer_addr,
            cluster_secret: config.cluster_secret.clone(),
            raft: config.raft.clone(),
        };
        let node = RaftNode::start(options, Arc::new(GroupState::for_group)).await?;
        if fresh {
            let members = BTreeMap::from([(identity.node_id, node.addr().to_string())]);
            let ids = std::iter::once(META).chain((0..identity.shard_count).map(shard_group));
            for id in ids {
                let group = match node.group(id) {
                    Some(g) => g,
                    None => node.create_group(id).await?,
                };
                if let Err(e) = group.initialize(members.clone()).await {
                    // A crash between creating groups and writing the identity file leaves
                    // groups that are already initialised; that is fine.
                    tracing::debug!(group = %id, error = %e, "group already initialised");
                }
            }
            let path = config.data_dir.join(IDENTITY);
            let tmp = config.data_dir.join(format!("{IDENTITY}.tmp"));
            std::fs::write(
                &tmp,
                serde_json::to_vec_pretty(&identity).expect("identity encodes"),
            )
            .map_err(io(format!("writing {}", tmp.display())))?;
            std::fs::rename(&tmp, &path).map_err(io(format!("writing {}", path.display())))?;
            tracing::info!(shards = identity.shard_count, dir = %config.data_dir.display(), "created a new single-node cluster");
        } else {
            // A group whose only voter is this node need not wait out an election timeout
            // after a restart: nobody else could win, so stand at once.
            for id in node.group_ids() {
                let Some(group) = node.group(id) else {
                    continue;
                };
                let alone =
                    group.read(|a| a.membership.membership().voter_ids().eq([identity.node_id]));
                if alone {
                    if let Err(e) = group.raft().trigger().elect().await {
                        tracing::warn!(group = %id, error = %e, "could not start an election");
                    }
                }
            }
        }
        let group = |id: GroupId| {
            node.group(id).ok_or_else(|| {
                OpenError::Config(format!(
                    "group {id} is missing from {}",
                    config.data_dir.display()
                ))
            })
        };
        let meta = group(META)?;
        let keys = meta.read(|a| match &a.state {
            GroupState::Meta(m) => Ok(m.reader()),
            GroupState::Shard(_) => Err(OpenError::Config("group 0 is not the meta group".into())),
        })?;
        let mut shards = Vec::with_capacity(identity.shard_count as usize);
        for shard in 0..identity.shard_count {
            let g = group(shard_group(shard))?;
            let reader = g.read(|a| match &a.state {
                GroupState::Shard(s) => Ok(s.reader()),
                GroupState::Meta(_) => Err(OpenError::Config(format!(
                    "group {} is not a shard",
                    shard_group(shard)
                ))),
            })?;
            let (actor, actor_task) =
                Actor::spawn(None, ShardActor, g.clone())
                    .await
                    .map_err(|e| {
                        OpenError::Config(format!("cannot start the actor of shard {shard}: {e}"))
                    })?;
            shards.push(Shard {
                group: g,
                reader,
                actor,
                actor_task,
            });
        }
        Ok(Self {
            node,
            shards,
            meta,
            keys,
            code_length: config.code_length,
            url_policy: config.url_policy,
            write_timeout: config.write_timeout,
        })
    }

    /// The destination rules this service applies.
    pub fn url_policy(&self) -> &UrlPolicy {
        &self.url_policy
    }

    /// Number of shards.
    pub fn shard_count(&self) -> u32 {
        self.shards.len() as u32
    }

    fn shard(&self, code: &str) -> &Shard {
        &self.shards[shard_of(code, self.shard_count()) as usize]
    }

    /// The link at `code`, from this node's replica. Lock-free, no I/O: the redirect path.
    pub fn lookup(&self, code: &str) -> Option<Arc<Link>> {
        self.shard(code).reader.get(code)
    }

    /// Up to `limit` links after `cursor` in code order across all shards, with `tag`;
    /// and the cursor of the next page, if there may be one.
    pub fn list(
        &self,
        limit: usize,
        cursor: Option<&str>,
        tag: Option<&Tag>,
    ) -> (Vec<Arc<Link>>, Option<String>) {
        let mut links: Vec<Arc<Link>> = self
            .shards
            .iter()
            .flat_map(|s| s.reader.page(cursor, tag, limit))
            .collect();
        links.sort_by(|a, b| a.code.cmp(&b.code));
        links.truncate(limit);
        let next = (links.len() == limit)
            .then(|| links.last().map(|l| l.code.to_string()))
            .flatten();
        (links, next)
    }

    /// Number of links on this node.
    pub fn link_count(&self) -> usize {
        self.shards.iter().map(|s| s.reader.len()).sum()
    }

    /// Runs `attempt` until it succeeds or fails for good; while `group` has no leader it
    /// waits for the group's state to change and tries again, up to the write timeout.
    /// `attempt` gets the time left.
    async fn until_led<T, F, Fut>(
        &self,
        group: &Group<GroupState>,
        mut attempt: F,
    ) -> Result<T, ServiceError>
    where
        F: FnMut(Duration) -> Fut,
        Fut: std::future::Future<Output = Result<T, GroupError>>,
    {
        let deadline = Instant::now() + self.write_timeout;
        let mut metrics = group.raft().metrics();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match attempt(left).await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero()
                        || tokio::time::timeout(left, metrics.changed()).await.is_err()
                    {
                        return Err(ServiceError::Unavailable(format!(
                            "group {} has no leader: {e}",
                            group.id()
                        )));
                    }
                }
                Err(e) => return Err(ServiceError::Internal(e.to_string())),
            }
        }
    }

    /// Proposes `command` through the actor of `code`'s shard.
    async fn shard_command(
        &self,
        code: &str,
        command: ShardCommand,
    ) -> Result<ShardOutcome, ServiceError> {
        let shard = self.shard(code);
        self.until_led(&shard.group, |left| {
            let command = command.clone();
            async move {
                let reply = shard
                    .actor
                    .call(|port| ShardMsg::Propose(command, port), Some(left))
                    .await;
                match reply {
                    Ok(CallResult::Success(outcome)) => outcome,
                    Ok(CallResult::Timeout) => Err(GroupError::Unavailable(format!(
                        "no answer within {left:?}"
                    ))),
                    Ok(CallResult::SenderError) | Err(_) => Err(GroupError::Unavailable(
                        "the shard actor has stopped".into(),
                    )),
                }
            }
        })
        .await
    }

    /// Creates a link. With a custom code, a taken code is an error; a generated code is
    /// derived from the request id, so a retried request lands on the same shard, finds
    /// its first outcome and creates nothing twice.
    pub async fn create(&self, request: RequestId, spec: LinkSpec) -> Result<Link, ServiceError> {
        let custom = spec.code.is_some();
        for attempt in 0..CODE_ATTEMPTS {
            let code = match &spec.code {
                Some(code) => code.clone(),
                None => generated_code(request, attempt, self.code_length),
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
        let outcome = self
            .until_led(&self.meta, |_| {
                self.meta.write(Command::Meta(command.clone()))
            })
            .await?;
        match outcome {
            Outcome::Meta(o) => Ok(o),
            other => Err(ServiceError::Internal(format!(
                "meta group answered {other:?}"
            ))),
        }
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
        if !self.keys.is_empty() {
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
        self.keys.all()
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
        self.keys.by_hash(&ApiKeyHash::of(clear))
    }

    /// Whether every group on this node has a leader, so reads are current and writes
    /// can be served.
    pub fn is_ready(&self) -> bool {
        std::iter::once(&self.meta)
            .chain(self.shards.iter().map(|s| &s.group))
            .all(|g| g.leader().is_some())
    }

    /// Log flushes requested by this node's groups, and flushes performed to serve them.
    pub fn flush_counts(&self) -> (u64, u64) {
        let stats = self.node.flusher().stats();
        (
            stats.requests.load(std::sync::atomic::Ordering::Relaxed),
            stats.flushes.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// openraft's metrics of every group on this node.
    pub fn raft_metrics(&self) -> Vec<(GroupId, openraft_metrics::Metrics)> {
        std::iter::once(&self.meta)
            .chain(self.shards.iter().map(|s| &s.group))
            .map(|g| (g.id(), g.raft().metrics().borrow().clone()))
            .collect()
    }

    /// The cluster as this node sees it.
    pub fn status(&self) -> ClusterStatus {
        let mut addrs = BTreeMap::new();
        let groups = std::iter::once(("meta".to_string(), &self.meta))
            .chain(
                self.shards
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (format!("shard {i}"), &s.group)),
            )
            .map(|(name, g)| {
                let m = g.raft().metrics().borrow().clone();
                let membership = m.membership_config.membership();
                for (id, node) in membership.nodes() {
                    addrs.insert(*id, node.addr.clone());
                }
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
                }
            })
            .collect();
        ClusterStatus::new(self.node.id(), self.shard_count(), groups, addrs)
    }

    /// Stops every group and flushes the data to disk.
    pub async fn shutdown(self) {
        for shard in self.shards {
            // Stopping lets the proposals already in Raft finish and answer.
            shard.actor.stop(None);
            let _ = shard.actor_task.await;
        }
        drop(self.meta);
        self.node.shutdown().await;
    }
}

/// The openraft metrics type, re-exported for the HTTP layer.
pub mod openraft_metrics {
    /// One group's Raft metrics.
    pub type Metrics = linkrift_raft::openraft::RaftMetrics<
        linkrift_raft::NodeId,
        linkrift_raft::openraft::BasicNode,
    >;
}

fn refusal(code: &ShortCode, outcome: ShardOutcome) -> ServiceError {
    match outcome {
        ShardOutcome::NotFound => ServiceError::NotFound(format!("link {:?}", code.as_str())),
        ShardOutcome::VersionMismatch { current } => ServiceError::VersionMismatch { current },
        other => ServiceError::Internal(format!("unexpected outcome {other:?}")),
    }
}

fn sub_request(request: RequestId, attempt: u32) -> RequestId {
    if attempt == 0 {
        return request;
    }
    let mut bytes = request.to_le_bytes().to_vec();
    bytes.extend(attempt.to_le_bytes());
    xxh3_128(&bytes)
}

/// The code tried for `request` at `attempt`: random-looking, but the same on every retry.
fn generated_code(request: RequestId, attempt: u32, len: usize) -> ShortCode {
    let seed = sub_request(request, attempt);
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(&seed.to_le_bytes());
    bytes[16..].copy_from_slice(&xxh3_128(&seed.to_be_bytes()).to_le_bytes());
    ShortCode::generate(&mut rand::rngs::StdRng::from_seed(bytes), len)
}
