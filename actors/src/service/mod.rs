//! [`LinkService`]: one node's link service, the handle the HTTP layer talks to.
//!
//! It owns the node's Raft groups (the meta group and the shards it holds replicas of),
//! knows which shard a code lives in, serves reads from the local shards' lock-free tables
//! or the near cache, and turns API calls into commands proposed to the right group, here
//! or, forwarded over the cluster, on the shard's leader. Every write carries a request id,
//! so retrying a call (here, after a failover, or by the client with the same idempotency
//! key) never acts twice.
//!
//! Its parts: `config` (settings), `errors`, `identity` (the identity file), `join` (this
//! node's side of joining), `loops` (background loops), `rpc` (requests from other
//! nodes), `api` (the public methods). What stays here (`Core`: hosting replicas, routing
//! writes and reads, the meta client, over 1,000 lines) is the next to be taken apart into
//! handles of its own.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use linkrift_raft::node::NodeOptions;
pub use linkrift_raft::RaftConfig;
use linkrift_raft::{Group, GroupError, GroupId, NodeId, RaftNode};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use xxhash_rust::xxh3::xxh3_128;

use crate::cluster::cache::{CacheConfig, NearCache};
use crate::cluster::membership::{Departure, Handover};
use crate::cluster::peers::{Handler, Peers};
use crate::cluster::wire::{Notice, Refusal, Reply, Request};
use crate::domain::{
    ApiKey, ApiKeyHash, ApiKeyRecord, DestinationUrl, Invalid, Link, LinkPatch, NewLink,
    RedirectStatus, Scope, ShortCode, Tag, Title, UrlPolicy,
};
use crate::groups::{shard_group, Command, GroupState, Outcome, META};
use crate::meta::{MetaCommand, MetaOutcome, MetaReader, NodeAddrs, NodeRecord, NodeState};
use crate::placement;
use crate::shard::{
    shard_of, RequestId, ShardActor, ShardCommand, ShardMsg, ShardOutcome, ShardReader,
};
use crate::status::{ClusterStatus, GroupStatus, ReplicaDigest};

mod api;
mod config;
mod errors;
mod identity;
mod join;
mod loops;
mod rpc;

pub use config::ServiceConfig;
pub use errors::{OpenError, ServiceError};
pub use identity::IDENTITY_FILE;
use identity::*;
use join::*;
use loops::*;
use rpc::*;

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

/// Generated-code attempts before giving up on a crowded code space.
const CODE_ATTEMPTS: u32 = 8;
/// How many times a write or read is passed on between nodes before it must be served.
const HOPS: u8 = 2;
/// How long a call to another node may take, except writes (which take what is left of
/// the write timeout) and admission (which waits for the meta group to catch up).
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one forwarded write may take before the caller tries again (with the same
/// request id, so nothing happens twice): a hop to a node stuck behind a dead leader, or a
/// session that died without closing, must not use up the whole write timeout.
const HOP_TIMEOUT: Duration = Duration::from_secs(3);
const ADMIT_TIMEOUT: Duration = Duration::from_secs(120);
/// How often (in `keep_in_touch` ticks of 250 ms) the meta leader records what each member
/// has acknowledged: every 5 s.
const RECORD_ACKNOWLEDGED_TICKS: u64 = 20;

/// A shard this node holds a replica of.
pub(crate) struct LocalShard {
    pub(crate) group: Group<GroupState>,
    reader: ShardReader,
    actor: ActorRef<ShardMsg>,
    actor_task: Mutex<Option<JoinHandle<()>>>,
    /// The replica is a voter: it has caught up and may answer reads.
    serving: Arc<AtomicBool>,
    /// The node's storage fault latch: once tripped, no replica here serves.
    fault: linkrift_raft::StorageFault,
}

impl LocalShard {
    /// Reads this replica's links and change feed.
    pub(crate) fn reader(&self) -> ShardReader {
        self.reader.clone()
    }

    /// Stops the shard's actor and waits until it has.
    async fn stop_actor(&self) {
        self.actor.stop(None);
        let task = self
            .actor_task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Whether this replica may answer reads: a caught-up voter, on a node whose storage
    /// has not failed (a replica that can no longer write cannot keep current).
    fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Acquire) && !self.fault.is_tripped()
    }

    async fn propose(
        &self,
        command: ShardCommand,
        within: Duration,
    ) -> Result<ShardOutcome, GroupError> {
        let reply = self
            .actor
            .call(|port| ShardMsg::Propose(command, port), Some(within))
            .await;
        match reply {
            Ok(CallResult::Success(outcome)) => outcome,
            Ok(CallResult::Timeout) => Err(GroupError::Unavailable(format!(
                "no answer within {within:?}"
            ))),
            Ok(CallResult::SenderError) | Err(_) => Err(GroupError::Unavailable(
                "the shard actor has stopped".into(),
            )),
        }
    }
}

/// How a code was answered without waiting.
#[derive(Debug)]
pub enum Lookup {
    /// From this node's replica of the shard (`None`: no such link).
    Local(Option<Arc<Link>>),
    /// From the near cache (`None`: a replica said recently there is no such link).
    Cached(Option<Arc<Link>>),
    /// Neither: ask a replica with [`LinkService::fetch`].
    Miss,
}

/// The node's shared state: what the HTTP layer, the peer actor and the background tasks
/// all use.
pub(crate) struct Core {
    pub(crate) node: RaftNode<GroupState>,
    pub(crate) me: NodeId,
    pub(crate) meta: Group<GroupState>,
    pub(crate) directory: MetaReader,
    pub(crate) shard_count: u32,
    pub(crate) local: papaya::HashMap<u32, Arc<LocalShard>>,
    /// Serialises hosting and releasing replicas.
    hosting: tokio::sync::Mutex<()>,
    cache: NearCache,
    pub(crate) peers: Peers<Core>,
    pub(crate) replication_factor: usize,
    pub(crate) max_moves: usize,
    /// openraft's leader lease (its longest election timeout): how long a voter refuses
    /// to vote after it last heard from its leader.
    pub(crate) leader_lease: Duration,
    /// How long a member may be out of touch before the meta leader marks it lost.
    pub(crate) dead_after: Duration,
    /// Set once this node learns it is no longer a member.
    pub(crate) departure: tokio::sync::watch::Sender<Option<Departure>>,
    /// The watermarks of the shards this node mirrors to Postgres.
    pub(crate) mirror: crate::mirror::MirrorState,
    /// The click actor's handle, and the store it writes: ClickHouse when configured,
    /// else the embedded roll-ups.
    clicks: crate::clicks::Clicks,
    rollups: crate::clicks::rollup::Rollups,
    clickhouse: Option<crate::clicks::clickhouse::ClickHouse>,
    data_dir: PathBuf,
    code_length: usize,
    url_policy: UrlPolicy,
    write_timeout: Duration,
    pub(crate) cancel: CancellationToken,
}

/// One node's link service.
pub struct LinkService {
    pub(crate) core: Arc<Core>,
    tasks: Vec<JoinHandle<()>>,
}

pub use linkrift_model::now_ms;

impl LinkService {
    /// Opens the node's data: an existing directory as it was; an empty one as a new
    /// single-node cluster, or, with `join`, as a new member of the cluster at `join`.
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
        if !(1..=7).contains(&config.replication_factor) {
            return Err(OpenError::Config(format!(
                "replication_factor must be 1 to 7, not {}",
                config.replication_factor
            )));
        }
        let io = |context: String| move |source| OpenError::Io { context, source };
        std::fs::create_dir_all(&config.data_dir)
            .map_err(io(format!("creating {}", config.data_dir.display())))?;
        let peers: Peers<Core> = Peers::start(
            config.cluster_addr,
            &config.cluster_secret,
            config.tls.clone(),
        )
        .await
        .map_err(io(format!(
            "listening for cluster traffic on {}",
            config.cluster_addr
        )))?;

        let existing = read_identity(&config.data_dir)?;
        if existing.is_none() {
            refuse_data_without_identity(&config.data_dir)?;
        }
        let fresh = existing.is_none();
        let joining = fresh && config.join.is_some();
        let identity = match existing {
            Some(identity) => identity,
            None => match config.join {
                Some(seed) => register(&peers, seed, &config).await?,
                None => Identity {
                    node_id: 1,
                    shard_count: config.shard_count,
                    admitted: true,
                    token: 0,
                    drained_for_shutdown: false,
                    bootstrapping: true,
                },
            },
        };
        let bootstrapping = identity.bootstrapping;
        if identity.shard_count != config.shard_count && !joining {
            tracing::warn!(
                configured = config.shard_count,
                actual = identity.shard_count,
                "shard_count is fixed when the cluster is created; using the cluster's"
            );
        }
        if fresh {
            // Before anything else is written: a directory with data always says whose.
            write_identity(&config.data_dir, &identity)?;
        }
        let me = identity.node_id;
        let options = NodeOptions {
            node_id: me,
            data_dir: config.data_dir.clone(),
            peer_addr: config.peer_addr,
            cluster_secret: config.cluster_secret.clone(),
            tls: config.tls.clone(),
            raft: config.raft.clone(),
        };
        let node = RaftNode::start(options, Arc::new(GroupState::for_group)).await?;
        let addrs = NodeAddrs {
            http: config.http_addr.clone(),
            peer: node.addr().to_string(),
            cluster: peers.addr().to_string(),
        };
        if bootstrapping {
            let members = BTreeMap::from([(me, node.addr().to_string())]);
            let ids = std::iter::once(META).chain((0..identity.shard_count).map(shard_group));
            for id in ids {
                let group = match node.group(id) {
                    Some(g) => g,
                    None => node.create_group(id).await?,
                };
                if let Err(e) = group.initialize(members.clone()).await {
                    // A crash while creating the cluster leaves groups that are already
                    // initialised; that is fine.
                    tracing::debug!(group = %id, error = %e, "group already initialised");
                }
            }
        } else if node.group(META).is_none() {
            node.create_group(META).await?;
        }
        if !fresh {
            // A group whose only voter is this node need not wait out an election timeout
            // after a restart: nobody else could win, so stand at once.
            for id in node.group_ids() {
                let Some(group) = node.group(id) else {
                    continue;
                };
                let alone = group.read(|a| a.membership.membership().voter_ids().eq([me]));
                if alone {
                    if let Err(e) = group.raft().trigger().elect().await {
                        tracing::warn!(group = %id, error = %e, "could not start an election");
                    }
                }
            }
        }
        let meta = node
            .group(META)
            .ok_or_else(|| OpenError::Config("the meta group is missing".into()))?;
        let directory = meta.read(|a| match &a.state {
            GroupState::Meta(m) => Ok(m.reader()),
            GroupState::Shard(_) => Err(OpenError::Config("group 0 is not the meta group".into())),
        })?;
        peers.announce(me);
        let rollups = crate::clicks::rollup::Rollups::open(
            node.durable_db(),
            &config.data_dir.join("click-wal"),
            config.click_spool_max_bytes,
        )
        .map_err(|e| OpenError::Config(format!("opening the click store: {e}")))?;
        let clickhouse = config
            .clickhouse
            .clone()
            .map(crate::clicks::clickhouse::ClickHouse::new)
            .transpose()
            .map_err(OpenError::Config)?;
        let sink = match &clickhouse {
            Some(store) => crate::clicks::ClickSink::ClickHouse {
                store: Box::new(store.clone()),
                spool_dir: config.data_dir.join("click-spool"),
                spool_max_bytes: config.click_spool_max_bytes,
            },
            None => crate::clicks::ClickSink::Embedded(rollups.clone()),
        };
        let countries = match &config.geoip_database {
            Some(path) => {
                Some(crate::clicks::event::Countries::open(path).map_err(OpenError::Config)?)
            }
            None => None,
        };
        let clicks =
            crate::clicks::Clicks::start(sink, config.click_ip, countries, node.fault().clone())
                .map_err(|e| OpenError::Config(format!("opening the click spool: {e}")))?;
        let core = Arc::new(Core {
            clicks,
            rollups,
            clickhouse,
            node,
            me,
            meta,
            directory,
            shard_count: identity.shard_count,
            local: papaya::HashMap::new(),
            hosting: tokio::sync::Mutex::new(()),
            cache: NearCache::new(config.cache),
            peers,
            replication_factor: config.replication_factor,
            max_moves: config.max_moves.max(1),
            leader_lease: config.raft.election_max,
            dead_after: config.dead_after,
            departure: tokio::sync::watch::channel(None).0,
            mirror: Default::default(),
            data_dir: config.data_dir.clone(),
            code_length: config.code_length,
            url_policy: config.url_policy,
            write_timeout: config.write_timeout,
            cancel: CancellationToken::new(),
        });
        core.peers.serve(Arc::downgrade(&core));
        for id in core.node.group_ids() {
            if id != META {
                core.host((id.0 - 1) as u32).await?;
            }
        }
        if bootstrapping {
            let now = now_ms();
            let first = NodeRecord {
                id: me,
                addrs: addrs.clone(),
                state: NodeState::Active,
                joined_at: now,
                token: 0,
                state_since: now,
            };
            core.meta_command(MetaCommand::Bootstrap {
                shard_count: identity.shard_count,
                node: first,
            })
            .await
            .map_err(|e| OpenError::Config(format!("recording the new cluster: {e}")))?;
            write_identity(
                &config.data_dir,
                &Identity {
                    bootstrapping: false,
                    ..identity.clone()
                },
            )?;
            tracing::info!(shards = identity.shard_count, dir = %config.data_dir.display(), "created a new single-node cluster");
        }
        if !identity.admitted {
            admit(&core, config.join, addrs.clone()).await?;
            write_identity(
                &config.data_dir,
                &Identity {
                    admitted: true,
                    ..identity
                },
            )?;
            tracing::info!(node = me, "joined the cluster");
        }
        core.connect_to_peers(Duration::from_secs(5)).await;
        if !fresh {
            refuse_rolled_back(&core).await?;
        }
        let mut tasks = vec![
            tokio::spawn(crate::cluster::driver::run(Arc::downgrade(&core))),
            tokio::spawn(keep_in_touch(Arc::downgrade(&core), addrs)),
            tokio::spawn(crate::cluster::membership::drop_removed_replicas(
                Arc::downgrade(&core),
            )),
        ];
        if identity.drained_for_shutdown {
            tasks.push(tokio::spawn(undrain(Arc::downgrade(&core))));
        }
        if let Some(url) = &config.postgres_url {
            let pool = crate::mirror::pool(url)
                .map_err(|e| OpenError::Config(format!("postgres_url: {e}")))?;
            tasks.push(tokio::spawn(crate::mirror::run(
                Arc::downgrade(&core),
                pool,
            )));
        }
        Ok(Self { core, tasks })
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
    async fn stand_for_lost_leaders(&self, lost: &mut LostLeaders) {
        let now = Instant::now();
        let mut groups = vec![self.meta.clone()];
        groups.extend(self.local.pin().values().map(|l| l.group.clone()));
        lost.since.retain(|node, _| !self.peers.is_connected(*node));
        for group in groups {
            let (leader, voters) = {
                let m = group.raft().metrics().borrow().clone();
                let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
                (m.current_leader, voters)
            };
            if !voters.contains(&self.me) {
                continue;
            }
            let rank =
                |gone: NodeId| voters.iter().filter(|&&v| v != gone && v < self.me).count() as u32;
            let reachable = leader.is_some_and(|l| l == self.me || self.peers.is_connected(l));
            if reachable {
                lost.standing.remove(&group.id());
            }
            let stood_for = lost.standing.get(&group.id()).copied();
            let Some(gone) = lost_leader(leader, reachable, stood_for) else {
                continue;
            };
            // Its leader's session is gone: stand once the lease is over.
            let since = *lost.since.entry(gone).or_insert(now);
            let wait = self.leader_lease + Duration::from_millis(500) * rank(gone);
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
    fn cluster_addrs(&self) -> Vec<(NodeId, SocketAddr)> {
        self.directory
            .nodes()
            .into_iter()
            .filter(|n| n.id != self.me && n.state != NodeState::Removed)
            .filter_map(|n| n.addrs.cluster.parse().ok().map(|a| (n.id, a)))
            .collect()
    }

    /// Opens sessions with the nodes this node dials, and waits (up to `within`) until
    /// they are up, so that the first requests it serves can reach every shard.
    async fn connect_to_peers(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let nodes = self.cluster_addrs();
        let mut events = self.peers.events();
        self.peers.maintain(self.me, &nodes).await;
        while nodes
            .iter()
            .any(|(id, _)| *id < self.me && !self.peers.is_connected(*id))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, events.recv()).await.is_err() {
                tracing::warn!("not every node could be reached at start; carrying on");
                return;
            }
        }
    }

    /// Records in the identity file whether this node drained itself for a shutdown.
    fn mark_drained_for_shutdown(&self, drained: bool) -> Result<(), OpenError> {
        let Some(identity) = read_identity(&self.data_dir)? else {
            return Err(OpenError::Config("the identity file is missing".into()));
        };
        write_identity(
            &self.data_dir,
            &Identity {
                drained_for_shutdown: drained,
                ..identity
            },
        )
    }

    fn local_shard(&self, shard: u32) -> Option<Arc<LocalShard>> {
        self.local.pin().get(&shard).cloned()
    }

    /// Every replica this node holds, by shard.
    fn local_shards(&self) -> Vec<(u32, Arc<LocalShard>)> {
        let mut shards: Vec<(u32, Arc<LocalShard>)> = self
            .local
            .pin()
            .iter()
            .map(|(s, l)| (*s, l.clone()))
            .collect();
        shards.sort_by_key(|(s, _)| *s);
        shards
    }

    /// Starts hosting a replica of `shard` (an empty one, unless this node has its data).
    pub(crate) async fn host(self: &Arc<Self>, shard: u32) -> Result<(), OpenError> {
        let _serial = self.hosting.lock().await;
        if self.local.pin().contains_key(&shard) {
            return Ok(());
        }
        let id = shard_group(shard);
        let group = match self.node.group(id) {
            Some(g) => g,
            None => self.node.create_group(id).await?,
        };
        let reader = group.read(|a| match &a.state {
            GroupState::Shard(s) => Ok(s.reader()),
            GroupState::Meta(_) => Err(OpenError::Config(format!("group {id} is not a shard"))),
        })?;
        let (actor, actor_task) = Actor::spawn(None, ShardActor, group.clone())
            .await
            .map_err(|e| {
                OpenError::Config(format!("cannot start the actor of shard {shard}: {e}"))
            })?;
        let serving = Arc::new(AtomicBool::new(false));
        let mut metrics = group.raft().metrics();
        let flag = serving.clone();
        let me = self.me;
        tokio::spawn(async move {
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
        self.local.pin().insert(
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
    pub(crate) async fn release(&self, shard: u32) -> Result<(), String> {
        let _serial = self.hosting.lock().await;
        let Some(local) = self.local.pin().remove(&shard).cloned() else {
            return Ok(());
        };
        local.serving.store(false, Ordering::Release);
        // Raft first, then the actor, which waits for the writes it handed to Raft. A write
        // this node proposed as the group's leader that the group will never apply here (the
        // node was removed before the entry committed) is answered only when Raft stops:
        // stopping the actor first waited for it forever, holding `hosting` (chaos `long`).
        let removed = self.node.remove_group(shard_group(shard)).await;
        local.stop_actor().await;
        removed.map_err(|e| e.to_string())?;
        tracing::info!(shard, "released this node's replica");
        Ok(())
    }

    /// Nodes to ask about `shard`: every member that may hold a replica, the likeliest
    /// holders first.
    fn candidates(&self, shard: u32) -> Vec<NodeId> {
        let members =
            self.directory
                .in_states(&[NodeState::Active, NodeState::Draining, NodeState::Leaving]);
        let mut order = placement::replicas(shard, &members, members.len());
        order.retain(|&n| n != self.me);
        order
    }

    /// Runs `command` on `shard`'s leader: here, or forwarded (at most `hops` times).
    async fn route_write(
        self: &Arc<Self>,
        shard: u32,
        command: &ShardCommand,
        hops: u8,
        deadline: Instant,
    ) -> Result<ShardOutcome, Refusal> {
        let left = deadline.saturating_duration_since(Instant::now());
        // A replica that is not a caught-up voter (a learner, or one this node has just
        // moved away and not yet deleted) cannot lead: the write goes to the others.
        if let Some(local) = self.local_shard(shard).filter(|l| l.is_serving()) {
            if self.is_handing_over(&local.group) {
                return Err(Refusal::NotLeader { leader: None });
            }
            return match local.propose(command.clone(), left).await {
                Ok(outcome) => Ok(outcome),
                Err(GroupError::NotLeader {
                    leader: Some(leader),
                    ..
                }) if leader != self.me && hops > 0 => {
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

    async fn forward_write(
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
        let result = match self.peers.call(node, &request, left).await {
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
    async fn pause_for_shard(&self, shard: u32, wait: Duration) {
        let started = Instant::now();
        match self.local_shard(shard) {
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
    async fn shard_command(
        self: &Arc<Self>,
        shard: u32,
        command: ShardCommand,
    ) -> Result<ShardOutcome, ServiceError> {
        let deadline = Instant::now() + self.write_timeout;
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
    async fn route_lookup(self: &Arc<Self>, code: &str, hops: u8) -> Result<Option<Link>, Refusal> {
        let shard = shard_of(code, self.shard_count);
        let local = self.local_shard(shard);
        let read_here = |local: &LocalShard| {
            local
                .is_serving()
                .then(|| local.reader.get(code).map(|l| Link::clone(&l)))
                .flatten()
        };
        if let Some(local) = &local {
            let leader = local.group.leader();
            if leader == Some(self.me) && local.is_serving() {
                return Ok(local.reader.get(code).map(|l| Link::clone(&l)));
            }
            if hops == 0 || leader.is_none() {
                if let Some(link) = read_here(local) {
                    return Ok(Some(link));
                }
            }
            if let Some(leader) = leader.filter(|&l| l != self.me && hops > 0) {
                let request = Request::Lookup {
                    code: code.to_string(),
                    hops: hops - 1,
                };
                if let Ok(Reply::Found(link)) =
                    self.peers.call(leader, &request, CALL_TIMEOUT).await
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
            match self.peers.call(node, &request, CALL_TIMEOUT).await {
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

    /// A page of `shard`'s links, from its leader if it can be reached in `hops`, else
    /// from this node's replica.
    async fn page(
        &self,
        shard: u32,
        cursor: Option<&str>,
        tag: Option<&Tag>,
        limit: usize,
        hops: u8,
    ) -> Result<Vec<Link>, Refusal> {
        let local = self.local_shard(shard);
        let leader = local.as_ref().and_then(|l| l.group.leader());
        if let Some(leader) = leader.filter(|&l| l != self.me && hops > 0) {
            let request = Request::List {
                hops: hops - 1,
                shards: vec![shard],
                cursor: cursor.map(str::to_string),
                tag: tag.cloned(),
                limit: limit as u32,
            };
            if let Ok(Reply::Links(links)) = self.peers.call(leader, &request, CALL_TIMEOUT).await {
                return Ok(links);
            }
        }
        match local.filter(|l| l.is_serving()) {
            Some(local) => Ok(local
                .reader
                .page(cursor, tag, limit)
                .into_iter()
                .map(|l| Link::clone(&l))
                .collect()),
            None => Err(Refusal::NotHosted),
        }
    }

    async fn until_meta_led<T, F, Fut>(&self, mut attempt: F) -> Result<T, ServiceError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, GroupError>>,
    {
        let deadline = Instant::now() + self.write_timeout;
        let mut metrics = self.meta.raft().metrics();
        loop {
            match attempt().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero()
                        || tokio::time::timeout(left, metrics.changed()).await.is_err()
                    {
                        return Err(ServiceError::Unavailable(format!(
                            "the meta group has no leader here: {e}"
                        )));
                    }
                }
                Err(e) => return Err(ServiceError::Internal(e.to_string())),
            }
        }
    }

    /// As the meta group's leader: records the meta log index each member holds durably
    /// (its match index), where it grew by more than the last record's own entry, so an idle
    /// cluster writes nothing. A node whose data is older than its record was rolled back
    /// ([`refuse_rolled_back`]).
    async fn record_acknowledged(&self) {
        if !self.meta.is_leader() {
            return;
        }
        let replication = self.meta.raft().metrics().borrow().replication.clone();
        let Some(replication) = replication else {
            return;
        };
        let through: Vec<(NodeId, u64)> = replication
            .iter()
            .filter_map(|(&node, matched)| {
                let index = matched.as_ref()?.index;
                let recorded = self.directory.acknowledged(node).unwrap_or(0);
                (index > recorded + 1).then_some((node, index))
            })
            .collect();
        if !through.is_empty() {
            if let Err(e) = self
                .meta_command(MetaCommand::RecordAcknowledged { through })
                .await
            {
                tracing::debug!(error = %e, "could not record the members' acknowledged indexes");
            }
        }
    }

    /// Proposes `command` to the meta group; this node must lead it.
    pub(crate) async fn meta_command(
        &self,
        command: MetaCommand,
    ) -> Result<MetaOutcome, ServiceError> {
        if self.is_handing_over(&self.meta) {
            return Err(ServiceError::Unavailable(
                "this node is handing over the meta group's leadership".into(),
            ));
        }
        let outcome = self
            .until_meta_led(|| self.meta.write(Command::Meta(command.clone())))
            .await?;
        match outcome {
            Outcome::Meta(o) => Ok(o),
            other => Err(ServiceError::Internal(format!(
                "meta group answered {other:?}"
            ))),
        }
    }

    /// Proposes `command` to the meta group, through its leader wherever it is.
    pub(crate) async fn propose_meta(
        &self,
        command: MetaCommand,
    ) -> Result<MetaOutcome, ServiceError> {
        let core = self;
        let deadline = Instant::now() + core.write_timeout;
        loop {
            match core.meta.leader() {
                // No leader known here (after a restart on a new peer address, the leader
                // cannot reach this node until the change is recorded): any other member
                // forwards to the leader it knows.
                None => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let ask = Request::Meta(command.clone());
                    match core.peers.call_any(&ask, left.min(CALL_TIMEOUT * 2)).await {
                        Ok(Reply::Meta(outcome)) => return Ok(outcome),
                        Ok(Reply::Refused(Refusal::Failed(e))) => {
                            return Err(ServiceError::Internal(e))
                        }
                        other => {
                            tracing::debug!(answer = ?other, "a meta proposal through any member failed")
                        }
                    }
                }
                Some(leader) if leader == core.me && !core.is_handing_over(&core.meta) => {
                    return core.meta_command(command).await
                }
                Some(leader) if leader == core.me => {}
                Some(leader) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match core
                        .peers
                        .call(leader, &Request::Meta(command.clone()), left)
                        .await
                    {
                        Ok(Reply::Meta(outcome)) => return Ok(outcome),
                        Ok(Reply::Refused(Refusal::Failed(e))) => {
                            return Err(ServiceError::Internal(e))
                        }
                        other => {
                            tracing::debug!(leader, answer = ?other, "a meta proposal through the leader failed")
                        }
                    }
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ServiceError::Unavailable(
                    "the meta group's leader cannot be reached".into(),
                ));
            }
            let mut metrics = core.meta.raft().metrics();
            let _ =
                tokio::time::timeout(left.min(Duration::from_millis(100)), metrics.changed()).await;
        }
    }

    /// Sends `request` to the meta leader when it is another node.
    async fn to_meta_leader(&self, request: &Request, timeout: Duration) -> Reply {
        match self.meta.leader() {
            Some(leader) if leader != self.me => self
                .peers
                .call(leader, request, timeout)
                .await
                .unwrap_or_else(|e| Reply::Refused(Refusal::Unavailable(e.to_string()))),
            _ => Reply::Refused(Refusal::Unavailable("the meta group has no leader".into())),
        }
    }

    async fn handle_register(&self, token: u128, addrs: NodeAddrs) -> Reply {
        let request = Request::Register {
            token,
            addrs: addrs.clone(),
        };
        if !self.meta.is_leader() {
            return self.to_meta_leader(&request, CALL_TIMEOUT * 2).await;
        }
        match self
            .meta_command(MetaCommand::RegisterNode {
                token,
                addrs,
                at: now_ms(),
            })
            .await
        {
            Ok(MetaOutcome::Node(record)) => Reply::Registered {
                id: record.id,
                shard_count: self.directory.shard_count(),
            },
            Ok(other) => Reply::Refused(Refusal::Failed(format!("register answered {other:?}"))),
            Err(e) => Reply::Refused(Refusal::Unavailable(e.to_string())),
        }
    }

    async fn handle_admit(&self, id: NodeId, addrs: NodeAddrs) -> Reply {
        if !self.meta.is_leader() {
            return self
                .to_meta_leader(&Request::Admit { id, addrs }, ADMIT_TIMEOUT)
                .await;
        }
        let Some(record) = self.directory.node(id) else {
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
            if let Err(e) = self.meta_command(update).await {
                return Reply::Refused(Refusal::Unavailable(e.to_string()));
            }
        }
        if let Err(e) = self.meta.add_learner(id, addrs.peer.clone()).await {
            return Reply::Refused(Refusal::Unavailable(format!(
                "adding node {id} to the meta group: {e}"
            )));
        }
        match self.meta_command(MetaCommand::ActivateNode { id }).await {
            Ok(_) => {
                tracing::info!(node = id, "node admitted");
                Reply::Done
            }
            Err(e) => Reply::Refused(Refusal::Unavailable(e.to_string())),
        }
    }

    /// This node's replica of `shard`, summed up.
    fn replica_digest(&self, shard: u32) -> Option<ReplicaDigest> {
        let local = self.local_shard(shard)?;
        let (links, digest) = local.reader.digest();
        let voter = local
            .group
            .read(|a| a.membership.membership().voter_ids().any(|v| v == self.me));
        Some(ReplicaDigest {
            node: self.me,
            voter,
            applied: local.group.last_applied().map_or(0, |l| l.index),
            links,
            digest,
        })
    }

    fn group_statuses(&self) -> Vec<GroupStatus> {
        let mut meta = group_status("meta".into(), &self.meta);
        meta.mirrored = self
            .meta
            .is_leader()
            .then(|| self.mirror.watermark(-1))
            .flatten();
        let mut out = vec![meta];
        out.extend(self.local_shards().into_iter().map(|(s, l)| {
            let mut status = group_status(format!("shard {s}"), &l.group);
            if l.group.is_leader() {
                status.mirrored = self.mirror.watermark(s as i32);
            }
            status
        }));
        out
    }
}

/// Waits until the background tasks have dropped their handles to `core`.
async fn wait_for_sole_owner(mut core: Arc<Core>) -> Core {
    loop {
        match Arc::try_unwrap(core) {
            Ok(core) => return core,
            Err(shared) => {
                core = shared;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use linkrift_raft::openraft::BasicNode;

    #[test]
    fn a_voter_stands_once_per_lost_leader() {
        // Leader 1's session is gone: stand against it.
        assert_eq!(lost_leader(Some(1), false, None), Some(1));
        // Stood once: never again for leader 1, nor while there is no leader. (Standing again
        // every second let a lagging voter depose every new leader after a partition.)
        assert_eq!(lost_leader(Some(1), false, Some(1)), None);
        assert_eq!(lost_leader(None, false, Some(1)), None);
        assert_eq!(lost_leader(None, false, None), None);
        // A later leader that is lost too is stood against.
        assert_eq!(lost_leader(Some(3), false, Some(1)), Some(3));
        // A leader this node reaches (or is) is left alone.
        assert_eq!(lost_leader(Some(1), true, None), None);
    }

    /// A replica whose leader holds a write the group can no longer commit is released all
    /// the same, and the write is answered (with an error). Found by the chaos tests: a
    /// leader that moved its own replica away, with a write appended after the change,
    /// never finished releasing and blocked every later host and release on the node.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replica_with_a_write_that_cannot_commit_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let service = LinkService::open(ServiceConfig {
            data_dir: dir.path().to_path_buf(),
            peer_addr: "127.0.0.1:0".parse().unwrap(),
            cluster_addr: "127.0.0.1:0".parse().unwrap(),
            ..Default::default()
        })
        .await
        .unwrap();
        let core = service.core.clone();
        // Draining, so that the placement driver leaves the shard's membership alone.
        let drain = MetaCommand::SetNodeState {
            id: core.me,
            state: NodeState::Draining,
            at: now_ms(),
        };
        core.meta_command(drain).await.unwrap();
        let local = core
            .local_shard(0)
            .expect("a single node holds every shard");
        let raft = local.group.raft().clone();
        // Two voters that do not exist: from the joint configuration on, nothing commits.
        for id in [2, 3] {
            raft.add_learner(id, BasicNode::new("127.0.0.1:9"), false)
                .await
                .unwrap();
        }
        let stuck = raft.clone();
        let change = tokio::spawn(async move { stuck.change_membership([1, 2, 3], false).await });
        let mut metrics = raft.metrics();
        tokio::time::timeout(
            Duration::from_secs(10),
            metrics.wait_for(|m| m.membership_config.membership().get_joint_config().len() > 1),
        )
        .await
        .expect("the joint configuration is appended")
        .unwrap();
        let code = (0..)
            .map(|i| format!("stuck{i}"))
            .find(|c| crate::shard::shard_of(c, core.shard_count) == 0)
            .unwrap();
        let command = ShardCommand::Delete {
            request: 1,
            at: now_ms(),
            code: ShortCode::parse(&code).unwrap(),
            expected_version: None,
        };
        let before = raft.metrics().borrow().last_log_index;
        let writer = local.clone();
        let write =
            tokio::spawn(async move { writer.propose(command, Duration::from_secs(600)).await });
        tokio::time::timeout(
            Duration::from_secs(10),
            metrics.wait_for(|m| m.last_log_index > before),
        )
        .await
        .expect("the write is appended")
        .unwrap();
        drop(local);

        tokio::time::timeout(Duration::from_secs(10), core.release(0))
            .await
            .expect("released within 10 s")
            .unwrap();
        assert!(core.local_shard(0).is_none());
        let answer = tokio::time::timeout(Duration::from_secs(10), write)
            .await
            .expect("the write is answered")
            .unwrap();
        assert!(answer.is_err(), "{answer:?}");
        let change = tokio::time::timeout(Duration::from_secs(10), change)
            .await
            .expect("the membership change is answered")
            .unwrap();
        assert!(change.is_err(), "{change:?}");
        // Hosting is not blocked: the node takes the shard again (an empty replica).
        tokio::time::timeout(Duration::from_secs(10), core.host(0))
            .await
            .expect("hosted within 10 s")
            .unwrap();
        drop(core);
        service.shutdown().await;
    }
}
