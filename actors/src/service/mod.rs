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
//! node's side of joining), `routing` (writes to the leader, reads from other nodes),
//! `loops` (background loops), `rpc` (requests from other nodes, and the other side of
//! joining), `operate` (drain, leave, cancel), `api` (the public methods). Here: `Core`,
//! the composition root, and opening a node. What `Core` shares with the control loops
//! is the handles in `cx` (`cluster::control::Control`: settings, the meta client, the
//! replicas, the peers, the task owner); the loops take those, never `Core`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use linkrift_raft::node::NodeOptions;
pub use linkrift_raft::RaftConfig;
use linkrift_raft::{Group, GroupError, GroupId, NodeId, RaftNode};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_128;

use crate::cluster::cache::{CacheConfig, NearCache};
use crate::cluster::control::Control;
use crate::cluster::membership::{Departure, Handover};
use crate::cluster::peers::{Handler, Peers, CALL_TIMEOUT};
use crate::cluster::wire::{Notice, Refusal, Reply, Request};
use crate::domain::{
    ApiKey, ApiKeyHash, ApiKeyRecord, DestinationUrl, Invalid, Link, LinkPatch, NewLink,
    RedirectStatus, Scope, ShortCode, Tag, Title, UrlPolicy,
};
use crate::groups::{shard_group, GroupState, META};
use crate::meta::{MetaCommand, MetaOutcome, NodeAddrs, NodeRecord, NodeState};
use crate::meta_client::MetaClient;
use crate::placement;
pub(crate) use crate::replicas::{LocalShard, Replicas};
use crate::settings::Settings;
use crate::shard::{shard_of, RequestId, ShardCommand, ShardOutcome};
use crate::status::{ClusterStatus, GroupStatus, ReplicaDigest};

mod api;
mod click_api;
mod config;
mod errors;
mod identity;
mod join;
mod keys;
mod loops;
mod state;

mod operate;
mod routing;
mod rpc;

pub use config::ServiceConfig;
pub use errors::{NotReady, OpenError, ReleaseError, ServiceError};
pub use identity::IDENTITY_FILE;
use identity::*;
use join::*;
use loops::*;

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
/// How long one forwarded write may take before the caller tries again (with the same
/// request id, so nothing happens twice): a hop to a node stuck behind a dead leader, or a
/// session that died without closing, must not use up the whole write timeout.
const HOP_TIMEOUT: Duration = Duration::from_secs(3);
const ADMIT_TIMEOUT: Duration = Duration::from_secs(120);
/// How often (in `keep_in_touch` ticks of 250 ms) the meta leader records what each member
/// has acknowledged: every 5 s.
const RECORD_ACKNOWLEDGED_TICKS: u64 = 20;

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
    pub(crate) node: Arc<RaftNode<GroupState>>,
    /// The handles the node's parts share: settings, the meta client, the replicas this
    /// node hosts, the peers, the task owner (also what the control loops take).
    pub(crate) cx: Arc<Control>,
    cache: NearCache,
    /// The watermarks of the shards this node mirrors to Postgres.
    pub(crate) mirror: Arc<crate::mirror::MirrorState>,
    /// The click actor's handle, and the store it writes: ClickHouse when configured,
    /// else the embedded roll-ups.
    clicks: crate::clicks::Clicks,
    rollups: crate::clicks::rollup::Rollups,
    clickhouse: Option<crate::clicks::clickhouse::ClickHouse>,
    data_dir: PathBuf,
    code_length: usize,
    url_policy: UrlPolicy,
}

/// One node's link service.
pub struct LinkService {
    pub(crate) core: Arc<Core>,
}

pub use linkrift_model::now_ms;

impl LinkService {
    /// Opens the node's data: an existing directory as it was; an empty one as a new
    /// single-node cluster, or, with `join`, as a new member of the cluster at `join`.
    pub async fn open(config: ServiceConfig) -> Result<Self, OpenError> {
        let out_of_range = |setting, range, value: usize| OpenError::OutOfRange {
            setting,
            range,
            value: value as u64,
        };
        if !(1..=4096).contains(&config.shard_count) {
            return Err(out_of_range(
                "shard_count",
                "1 to 4096",
                config.shard_count as usize,
            ));
        }
        if !(4..=ShortCode::MAX_LEN).contains(&config.code_length) {
            return Err(out_of_range("code_length", "4 to 64", config.code_length));
        }
        if !(1..=7).contains(&config.replication_factor) {
            return Err(out_of_range(
                "replication_factor",
                "1 to 7",
                config.replication_factor,
            ));
        }
        let io = |context: String| move |source| OpenError::Io { context, source };
        std::fs::create_dir_all(&config.data_dir)
            .map_err(io(format!("creating {}", config.data_dir.display())))?;
        let tasks = crate::tasks::Tasks::new();
        let peers: Peers = Peers::start(
            config.cluster_addr,
            &config.cluster_secret,
            config.tls.clone(),
            tasks.clone(),
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
        let meta = node.group(META).ok_or(OpenError::GroupKind {
            group: META,
            expected: "the meta group",
            found: "missing",
        })?;
        let directory = meta.read(|a| match &a.state {
            GroupState::Meta(m) => Ok(m.reader()),
            GroupState::Shard(_) => Err(OpenError::GroupKind {
                group: META,
                expected: "the meta group",
                found: "a shard",
            }),
        })?;
        peers.announce(me);
        let rollups = crate::clicks::rollup::Rollups::open(
            node.durable_db(),
            &config.data_dir.join("click-wal"),
            config.click_spool_max_bytes,
        )
        .map_err(OpenError::ClickStore)?;
        let clickhouse = config
            .clickhouse
            .clone()
            .map(crate::clicks::clickhouse::ClickHouse::new)
            .transpose()?;
        let sink = match &clickhouse {
            Some(store) => crate::clicks::ClickSink::ClickHouse {
                store: Box::new(store.clone()),
                spool_dir: config.data_dir.join("click-spool"),
                spool_max_bytes: config.click_spool_max_bytes,
            },
            None => crate::clicks::ClickSink::Embedded(rollups.clone()),
        };
        let countries = match &config.geoip_database {
            Some(path) => Some(crate::clicks::event::Countries::open(path)?),
            None => None,
        };
        let clicks = crate::clicks::Clicks::start(
            sink,
            config.click_ip,
            countries,
            node.fault().clone(),
            &tasks,
        )
        .map_err(OpenError::ClickSpool)?;
        let node = Arc::new(node);
        let settings = Settings {
            me,
            shard_count: identity.shard_count,
            replication_factor: config.replication_factor,
            max_moves: config.max_moves.max(1),
            leader_lease: config.raft.election_max,
            dead_after: config.dead_after,
            write_timeout: config.write_timeout,
        };
        let peers = Arc::new(peers);
        let cx = Arc::new(Control {
            settings,
            node: node.clone(),
            meta: MetaClient::new(me, meta, directory, peers.clone(), config.write_timeout),
            replicas: Arc::new(Replicas::new(
                node.clone(),
                me,
                config.replica_max_lag,
                tasks.clone(),
            )),
            peers,
            tasks,
            departure: tokio::sync::watch::channel(None).0,
        });
        let core = Arc::new(Core {
            clicks,
            rollups,
            clickhouse,
            node,
            cx,
            cache: NearCache::new(config.cache),
            mirror: Default::default(),
            data_dir: config.data_dir.clone(),
            code_length: config.code_length,
            url_policy: config.url_policy,
        });
        let handler: Arc<dyn crate::cluster::peers::Handler> = core.clone();
        core.cx.peers.serve(Arc::downgrade(&handler));
        for id in core.node.group_ids() {
            if id != META {
                core.cx.replicas.host((id.0 - 1) as u32).await?;
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
            core.cx
                .meta
                .propose_as_leader(MetaCommand::Bootstrap {
                    shard_count: identity.shard_count,
                    node: first,
                })
                .await
                .map_err(OpenError::Bootstrap)?;
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
        let mirror = match &config.postgres_url {
            Some(url) => Some(crate::mirror::pool(url).map_err(OpenError::PostgresUrl)?),
            None => None,
        };
        let tasks = &core.cx.tasks;
        tasks.spawn(
            "placement driver",
            crate::cluster::driver::run(core.cx.clone()),
        );
        tasks.spawn("keep in touch", keep_in_touch(core.clone(), addrs));
        tasks.spawn(
            "drop removed replicas",
            crate::cluster::membership::drop_removed_replicas(core.cx.clone()),
        );
        if identity.drained_for_shutdown {
            tasks.spawn("undrain", undrain(core.clone()));
        }
        if let Some(pool) = mirror {
            let mirrored = crate::mirror::Mirrored {
                replicas: core.cx.replicas.clone(),
                meta: core.cx.meta.group.clone(),
                directory: core.cx.meta.directory.clone(),
                state: core.mirror.clone(),
            };
            tasks.spawn("postgres mirror", crate::mirror::run(mirrored, pool));
        }
        Ok(Self { core })
    }
}

/// How long the node's background tasks have to stop at shutdown.
const TASKS_STOP_WITHIN: Duration = Duration::from_secs(10);

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
            id: core.cx.settings.me,
            state: NodeState::Draining,
            at: now_ms(),
        };
        core.cx.meta.propose_as_leader(drain).await.unwrap();
        let local = core
            .cx
            .replicas
            .get(0)
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
            .find(|c| crate::shard::shard_of(c, core.cx.settings.shard_count) == 0)
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

        tokio::time::timeout(Duration::from_secs(10), core.cx.replicas.release(0))
            .await
            .expect("released within 10 s")
            .unwrap();
        assert!(core.cx.replicas.get(0).is_none());
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
        tokio::time::timeout(Duration::from_secs(10), core.cx.replicas.host(0))
            .await
            .expect("hosted within 10 s")
            .unwrap();
        drop(core);
        service.shutdown().await;
    }
}
