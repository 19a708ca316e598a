//! [`RaftNode`]: the Raft groups one node hosts, and everything they share.
//!
//! A node owns one sled `Db` (`<data>/raft.sled`) holding every group's log, one
//! [`Flusher`], one peer listener and one [`PeerPool`]. The set of hosted groups is itself
//! persisted (the `groups` tree), so [`RaftNode::start`] reopens each of them after a
//! restart, with its state restored from its latest snapshot file and its log replayed.
//! [`RaftNode::remove_group`] stops a group and deletes its log and snapshots.
//!
//! [`Group`] is the typed handle the application uses: it encodes commands, proposes them,
//! and decodes the responses; and it reads the applied state.
//!
//! (Over 600 lines: the node runtime and the `Group` handle, which reach into each other's
//! private state (the group table, the flusher, the fault latch); the transport, proposer,
//! storage and snapshots are in their own files.)

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, LogId, ServerState};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::codec;
use crate::config::RaftConfig;
use crate::durable::{self, DurableDb};
use crate::fault::StorageFault;
use crate::flush::{sled_to_io, Flusher};
use crate::freshness::Freshness;
use crate::log_store::{LogStore, SledGroupLog};
use crate::proposer::Proposer;
use crate::state_machine::{Applied, GroupStateMachine, StateMachine, StateReader};
use crate::transport::client::PeerPool;
use crate::transport::network::GroupNetworkFactory;
use crate::transport::server::PeerListener;
use crate::transport::GroupRouter;
use crate::types::{GroupId, NodeId};
use crate::Raft;

/// Where and how a node runs.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// This node's id; unique in the cluster, never reused.
    pub node_id: NodeId,
    /// Directory for the sled database and snapshot files.
    pub data_dir: PathBuf,
    /// Address of the peer listener. Its IP is also the source address of every outbound
    /// peer connection. Port 0 picks a free port.
    pub peer_addr: SocketAddr,
    /// Secret every node of the cluster shares; peer connections prove they hold it.
    pub cluster_secret: Vec<u8>,
    /// Mutual TLS on the peer port, if configured.
    pub tls: Option<crate::transport::tls::Tls>,
    /// Replication settings.
    pub raft: RaftConfig,
}

/// Why a node or group operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Disk or socket trouble.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The Raft settings are inconsistent.
    #[error("invalid raft settings: {0}")]
    Config(#[from] openraft::ConfigError),
    /// openraft could not start a group.
    #[error("cannot start group {group}: {reason}")]
    Start {
        /// The group.
        group: GroupId,
        /// openraft's reason.
        reason: String,
    },
    /// What is on disk is damaged (a checksum or a decode failed, or sled found its files
    /// corrupt): the node's copy cannot be trusted.
    #[error(
        "{what} is damaged ({detail}). Do not repair this data directory by hand: start the \
         node on an empty data directory with --join to rejoin the cluster as a new node, and \
         the cluster re-creates its replicas from the others (docs/OPERATIONS.md, \"Restoring \
         a node\")"
    )]
    Damaged {
        /// What was being read.
        what: String,
        /// What was wrong with it.
        detail: std::io::Error,
    },
    /// The group is already hosted here.
    #[error("group {0} is already hosted on this node")]
    AlreadyHosted(GroupId),
    /// The group is not hosted here.
    #[error("group {0} is not hosted on this node")]
    NotHosted(GroupId),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> NodeError {
    let context = context.into();
    move |source| NodeError::Io { context, source }
}

/// Like [`io_err`], but damaged data (`InvalidData`) is [`NodeError::Damaged`].
fn read_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NodeError {
    let what = what.into();
    move |source| match source.kind() {
        std::io::ErrorKind::InvalidData => NodeError::Damaged {
            what,
            detail: source,
        },
        _ => NodeError::Io {
            context: format!("reading {what}"),
            source,
        },
    }
}

/// Why a proposal or membership change on a group failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum GroupError {
    /// This replica is not the leader; retry on the leader if one is known.
    #[error("not the leader of the group (leader: {leader:?} at {addr:?})")]
    NotLeader {
        /// The current leader, if known.
        leader: Option<NodeId>,
        /// The leader's peer address, if known.
        addr: Option<String>,
    },
    /// The request cannot be carried out now (no quorum, shutting down); retry later.
    #[error("group unavailable: {0}")]
    Unavailable(String),
    /// The request was refused for good (e.g. an invalid membership change).
    #[error("refused: {0}")]
    Refused(String),
    /// The state machine's response could not be decoded (the command was undecodable).
    #[error("undecodable response: {0}")]
    BadResponse(String),
}

impl GroupError {
    /// Whether trying again (possibly elsewhere) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            GroupError::NotLeader { .. } | GroupError::Unavailable(_)
        )
    }
}

impl From<RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>> for GroupError {
    fn from(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> Self {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => GroupError::NotLeader {
                leader: f.leader_id,
                addr: f.leader_node.map(|n| n.addr),
            },
            RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
                GroupError::Refused(c.to_string())
            }
            RaftError::Fatal(f) => GroupError::Unavailable(f.to_string()),
        }
    }
}

/// A typed handle to one group hosted on this node.
pub struct Group<S> {
    id: GroupId,
    raft: Raft,
    reader: StateReader<S>,
    proposer: Proposer,
    freshness: Arc<Freshness>,
}

impl<S> Clone for Group<S> {
    fn clone(&self) -> Self {
        Self {
            id: self.id,
            raft: self.raft.clone(),
            reader: self.reader.clone(),
            proposer: self.proposer.clone(),
            freshness: self.freshness.clone(),
        }
    }
}

impl<S: StateMachine> Group<S> {
    /// The group's id.
    pub fn id(&self) -> GroupId {
        self.id
    }

    /// openraft's handle, for metrics and membership changes.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Runs `f` on the applied state (applying waits while it runs).
    pub fn read<R>(&self, f: impl FnOnce(&Applied<S>) -> R) -> R {
        f(&self.reader.read())
    }

    /// Proposes `command`; returns the state machine's response once it is committed and
    /// applied on this node, which must be the leader. Concurrent writes share entries.
    pub async fn write(&self, command: S::Command) -> Result<S::Response, GroupError> {
        let response = self
            .proposer
            .propose(crate::Payload(codec::encode(&command)))
            .await?;
        codec::decode(&response.0).map_err(|e| GroupError::BadResponse(e.to_string()))
    }

    /// Confirms with a quorum of voters that this replica still leads the group, then waits
    /// until its state has applied every entry committed before the call: a read of the
    /// state after it is linearizable. Waits as long as that takes; bound it with a timeout.
    pub async fn ensure_linearizable(&self) -> Result<(), GroupError> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(GroupError::NotLeader {
                    leader: f.leader_id,
                    addr: f.leader_node.map(|n| n.addr),
                })
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q))) => {
                Err(GroupError::Unavailable(q.to_string()))
            }
            Err(RaftError::Fatal(f)) => Err(GroupError::Unavailable(f.to_string())),
        }
    }

    /// Makes `members` the first voters of a new group. Call on one of them only.
    pub async fn initialize(&self, members: BTreeMap<NodeId, String>) -> Result<(), GroupError> {
        let members: BTreeMap<NodeId, BasicNode> = members
            .into_iter()
            .map(|(id, addr)| (id, BasicNode { addr }))
            .collect();
        self.raft.initialize(members).await.map_err(|e| match e {
            RaftError::APIError(e) => GroupError::Refused(e.to_string()),
            RaftError::Fatal(f) => GroupError::Unavailable(f.to_string()),
        })
    }

    /// Adds `node` as a learner and waits until it has caught up with the log.
    pub async fn add_learner(&self, node: NodeId, addr: String) -> Result<(), GroupError> {
        self.raft
            .add_learner(node, BasicNode { addr }, true)
            .await?;
        Ok(())
    }

    /// Makes `voters` the voter set (joint consensus; learners not listed stay learners).
    pub async fn change_voters(
        &self,
        voters: impl IntoIterator<Item = NodeId>,
    ) -> Result<(), GroupError> {
        let voters: std::collections::BTreeSet<NodeId> = voters.into_iter().collect();
        self.raft.change_membership(voters, true).await?;
        Ok(())
    }

    /// The leader this replica knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Whether this replica is the leader.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// How long ago this replica was last known to have applied everything the group had
    /// committed ([`crate::freshness`]); `None` if it never was since it was opened.
    /// Lock-free: two atomic loads and a clock read.
    pub fn lag(&self) -> Option<std::time::Duration> {
        self.freshness.lag()
    }

    /// The last log id applied to the state machine here.
    pub fn last_applied(&self) -> Option<LogId<NodeId>> {
        self.reader.read().last_applied
    }
}

/// Creates the initial state of a group's state machine, by group id.
pub type StateFactory<S> = Arc<dyn Fn(GroupId) -> S + Send + Sync>;

/// The Raft groups hosted on this node, and what they share.
pub struct RaftNode<S: StateMachine> {
    options: NodeOptions,
    addr: SocketAddr,
    openraft: Arc<openraft::Config>,
    durable: DurableDb,
    hosted: sled::Tree,
    /// The last vote of each group whose replica this node released.
    tombstones: sled::Tree,
    flusher: Flusher,
    fault: StorageFault,
    router: GroupRouter,
    pool: PeerPool,
    factory: StateFactory<S>,
    groups: Mutex<HashMap<GroupId, Group<S>>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

const HOSTED: &str = "groups";
const TOMBSTONES: &str = "released_votes";

impl<S: StateMachine> RaftNode<S> {
    /// Opens the node's data, starts the peer listener and reopens every group it hosted.
    pub async fn start(options: NodeOptions, factory: StateFactory<S>) -> Result<Self, NodeError> {
        let openraft = Arc::new(options.raft.openraft()?);
        std::fs::create_dir_all(&options.data_dir)
            .map_err(io_err(format!("creating {}", options.data_dir.display())))?;
        let db_path = options.data_dir.join("raft.sled");
        let durable = DurableDb::open(&db_path, options.raft.log_cache_bytes).map_err(read_err(
            format!("the Raft log store {}", db_path.display()),
        ))?;
        let db = durable.db().clone();
        let hosted = db
            .open_tree(HOSTED)
            .map_err(sled_to_io)
            .map_err(io_err("opening the group list"))?;
        let tombstones = db
            .open_tree(TOMBSTONES)
            .map_err(sled_to_io)
            .map_err(io_err("opening the votes of released replicas"))?;
        let fault = StorageFault::default();
        let flusher = Flusher::start(durable.clone(), fault.clone());
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let router = GroupRouter::default();
        let security = crate::transport::PeerSecurity {
            secret: options.cluster_secret.clone().into(),
            tls: options.tls.clone(),
        };

        let listener = TcpListener::bind(options.peer_addr)
            .await
            .map_err(io_err(format!(
                "binding the peer port {}",
                options.peer_addr
            )))?;
        let listener = PeerListener::start(
            options.node_id,
            listener,
            router.clone(),
            security.clone(),
            options.raft.max_frame_bytes,
            shutdown.clone(),
            tasks.clone(),
        )
        .map_err(io_err("starting the peer listener"))?;
        let pool = PeerPool::new(
            options.node_id,
            options.peer_addr.ip(),
            security,
            &options.raft,
            shutdown.clone(),
            tasks.clone(),
        );
        let node = Self {
            addr: listener.local_addr(),
            options,
            openraft,
            durable,
            hosted,
            tombstones,
            flusher,
            fault,
            router,
            pool,
            factory,
            groups: Mutex::default(),
            shutdown,
            tasks,
        };
        let hosted = node.hosted_replicas()?;
        let ids: Vec<GroupId> = hosted.iter().map(|(id, _)| *id).collect();
        node.remove_leftovers(&ids)?;
        let mut upgraded = false;
        for (id, incarnation) in hosted {
            let incarnation = match incarnation {
                Some(i) => i,
                None => {
                    // Recorded by a version without incarnations: this replica's life
                    // gets one now, before anyone can have seen it.
                    upgraded = true;
                    node.record_hosted(id)?
                }
            };
            node.open_group(id, incarnation).await?;
        }
        if upgraded {
            node.flusher
                .flush()
                .await
                .map_err(io_err("recording the incarnations of the replicas"))?;
        }
        tracing::info!(node = node.options.node_id, addr = %node.addr, groups = node.group_ids().len(), "raft node started");
        Ok(node)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.options.node_id
    }

    /// The peer address other nodes reach this one at.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The node's flush batcher (for its batching counters).
    pub fn flusher(&self) -> &Flusher {
        &self.flusher
    }

    /// The sled database, for size accounting.
    pub fn db(&self) -> &sled::Db {
        self.durable.db()
    }

    /// The sled database with its sync, for other durable state kept in it.
    pub fn durable_db(&self) -> &DurableDb {
        &self.durable
    }

    /// The node's storage fault latch: tripped by the first storage error of any group.
    pub fn fault(&self) -> &StorageFault {
        &self.fault
    }

    /// The index of the last entry in the local log of `id` (its purge point when empty).
    pub fn last_log_index(&self, id: GroupId) -> Result<Option<u64>, NodeError> {
        SledGroupLog::open(self.durable.db(), self.flusher.clone(), id)
            .and_then(|log| log.last_index())
            .map_err(read_err(format!("the log of {id}")))
    }

    /// The last vote of a released replica of `id`, if this node ever released one.
    fn tombstone(&self, id: GroupId) -> Result<Option<openraft::Vote<NodeId>>, NodeError> {
        let bytes = self
            .tombstones
            .get(id.0.to_be_bytes())
            .map_err(sled_to_io)
            .map_err(io_err("reading the votes of released replicas"))?;
        bytes
            .map(|b| codec::decode(&b))
            .transpose()
            .map_err(|e| read_err(format!("the last vote of released {id}"))(e.into()))
    }

    /// The replicas the durable group list says this node hosts, with their incarnations
    /// (`None` if recorded before incarnations existed).
    fn hosted_replicas(&self) -> Result<Vec<(GroupId, Option<u64>)>, NodeError> {
        let damaged = |detail: &str| NodeError::Damaged {
            what: "the group list".into(),
            detail: std::io::Error::new(std::io::ErrorKind::InvalidData, detail.to_string()),
        };
        let mut replicas = Vec::new();
        for entry in self.hosted.iter() {
            let (key, value) = entry
                .map_err(sled_to_io)
                .map_err(read_err("the group list"))?;
            let key: [u8; 8] = key
                .as_ref()
                .try_into()
                .map_err(|_| damaged("a group key is not 8 bytes"))?;
            let incarnation = match value.len() {
                0 => None,
                8 => Some(u64::from_be_bytes(
                    value.as_ref().try_into().expect("8 bytes"),
                )),
                _ => return Err(damaged("an incarnation is not 8 bytes")),
            };
            replicas.push((GroupId(u64::from_be_bytes(key)), incarnation));
        }
        Ok(replicas)
    }

    /// Records `id` as hosted, with a new incarnation, which it returns. Durable at the
    /// next flush.
    fn record_hosted(&self, id: GroupId) -> Result<u64, NodeError> {
        let incarnation = loop {
            let i: u64 = rand::random();
            if i != 0 {
                break i;
            }
        };
        self.hosted
            .insert(id.0.to_be_bytes(), &incarnation.to_be_bytes())
            .map_err(sled_to_io)
            .map_err(io_err("recording the new group"))?;
        Ok(incarnation)
    }

    /// The incarnation of this node's replica of `id`, if it hosts one: a random number
    /// chosen when the replica was created, kept across restarts.
    pub fn incarnation(&self, id: GroupId) -> Option<u64> {
        self.router.get(id).map(|h| h.incarnation)
    }

    /// Deletes what a crash in the middle of [`RaftNode::remove_group`] left of groups that
    /// are no longer hosted (their trees, their snapshot directory), so that hosting one of
    /// them again starts from nothing.
    fn remove_leftovers(&self, hosted: &[GroupId]) -> Result<(), NodeError> {
        let hosted_names: std::collections::HashSet<String> =
            hosted.iter().map(|id| format!("g{}", id.0)).collect();
        let mut removed = false;
        for name in self.durable.db().tree_names() {
            let Some(id) = SledGroupLog::group_of_tree(&String::from_utf8_lossy(&name)) else {
                continue;
            };
            if !hosted.contains(&id) {
                tracing::info!(group = %id, "deleting the log of a replica released before a crash");
                SledGroupLog::destroy(self.durable.db(), id)
                    .map_err(io_err(format!("deleting the old log of {id}")))?;
                removed = true;
            }
        }
        let groups = self.options.data_dir.join(GROUPS);
        let entries = match std::fs::read_dir(&groups) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(format!("reading {}", groups.display()))(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err(format!("reading {}", groups.display())))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !hosted_names.contains(&name) {
                tracing::info!(dir = %entry.path().display(), "deleting the files of a replica released before a crash");
                std::fs::remove_dir_all(entry.path())
                    .map_err(io_err(format!("deleting {}", entry.path().display())))?;
                removed = true;
            }
        }
        if removed {
            self.durable
                .sync()
                .and_then(|()| durable::sync_dir(&groups))
                .map_err(io_err("deleting the files of released replicas"))?;
        }
        Ok(())
    }

    /// Ids of the hosted groups, in order.
    pub fn group_ids(&self) -> Vec<GroupId> {
        let mut ids: Vec<_> = self
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        ids.sort();
        ids
    }

    /// The handle of a hosted group.
    pub fn group(&self, id: GroupId) -> Option<Group<S>> {
        self.groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    fn group_dir(&self, id: GroupId) -> PathBuf {
        group_dir(&self.options.data_dir, id)
    }

    /// Starts hosting a new, empty replica of `id`. It joins a group when the group's
    /// leader adds it, or forms one through [`Group::initialize`].
    pub async fn create_group(&self, id: GroupId) -> Result<Group<S>, NodeError> {
        if self.group(id).is_some() {
            return Err(NodeError::AlreadyHosted(id));
        }
        // A new replica starts from nothing: whatever an earlier replica of this group left
        // here (a crash while it was released) must not come back as its state. Only the
        // vote an earlier replica gave is kept (its tombstone), so that this node never
        // votes again in a term where it already has.
        SledGroupLog::destroy(self.durable.db(), id)
            .map_err(io_err(format!("deleting the old log of {id}")))?;
        if let Some(vote) = self.tombstone(id)? {
            SledGroupLog::open(self.durable.db(), self.flusher.clone(), id)
                .and_then(|log| log.seed_vote(&vote))
                .map_err(io_err(format!("restoring the last vote of {id}")))?;
        }
        let dir = self.group_dir(id);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_err(format!("deleting {}", dir.display()))(e))
            }
            _ => {}
        }
        let incarnation = self.record_hosted(id)?;
        self.flusher
            .flush()
            .await
            .map_err(io_err("recording the new group"))?;
        self.open_group(id, incarnation).await
    }

    async fn open_group(&self, id: GroupId, incarnation: u64) -> Result<Group<S>, NodeError> {
        let log = SledGroupLog::open(self.durable.db(), self.flusher.clone(), id)
            .map_err(io_err(format!("opening the log of {id}")))?;
        let state = (self.factory)(id);
        let dir = self.group_dir(id);
        let sm = GroupStateMachine::open(&dir, state, self.fault.clone()).map_err(read_err(
            format!("the snapshot of {id} in {}", dir.display()),
        ))?;
        let reader = sm.reader();
        let freshness = sm.freshness();
        let network = GroupNetworkFactory::new(
            self.pool.clone(),
            id,
            self.options.raft.request_timeout,
            self.options.raft.snapshot_chunk_timeout,
        );
        let raft = Raft::new(
            self.options.node_id,
            self.openraft.clone(),
            network.clone(),
            LogStore::new(log, self.fault.clone()),
            sm,
        )
        .await
        .map_err(|e| NodeError::Start {
            group: id,
            reason: e.to_string(),
        })?;
        self.tasks.spawn(network.attach(raft.metrics()));
        self.router
            .insert(id, raft.clone(), incarnation, freshness.clone());
        self.tasks.spawn(watch_group(
            id,
            raft.metrics(),
            self.fault.clone(),
            freshness.clone(),
        ));
        let proposer = Proposer::start(raft.clone(), self.shutdown.child_token(), &self.tasks);
        let group = Group {
            id,
            raft,
            reader,
            proposer,
            freshness,
        };
        self.groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, group.clone());
        Ok(group)
    }

    /// Stops hosting `id` and deletes its log and snapshots from this node.
    pub async fn remove_group(&self, id: GroupId) -> Result<(), NodeError> {
        let group = self
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
            .ok_or(NodeError::NotHosted(id))?;
        self.router.remove(id);
        if let Err(e) = group.raft.shutdown().await {
            tracing::warn!(group = %id, error = ?e, "group did not shut down cleanly");
        }
        drop(group);
        // The vote outlives the replica (see `create_group`); kept in the same sync as the
        // removal, so no crash loses it.
        let vote = SledGroupLog::open(self.durable.db(), self.flusher.clone(), id)
            .and_then(|log| log.released_vote())
            .map_err(read_err(format!("the vote of {id}")))?;
        let kept = match (self.tombstone(id)?, vote) {
            (Some(old), Some(new)) => Some(if new.leader_id.term >= old.leader_id.term {
                new
            } else {
                old
            }),
            (old, new) => new.or(old),
        };
        if let Some(vote) = kept {
            self.tombstones
                .insert(id.0.to_be_bytes(), codec::encode(&vote))
                .map_err(sled_to_io)
                .map_err(io_err("keeping the last vote of the group"))?;
        }
        self.hosted
            .remove(id.0.to_be_bytes())
            .map_err(sled_to_io)
            .map_err(io_err("forgetting the group"))?;
        SledGroupLog::destroy(self.durable.db(), id)
            .map_err(io_err(format!("deleting the log of {id}")))?;
        self.flusher
            .flush()
            .await
            .map_err(io_err("forgetting the group"))?;
        // A crash from here on leaves files that start-up and `create_group` delete.
        let dir = self.group_dir(id);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_err(format!("deleting {}", dir.display()))(e))
            }
            _ => {}
        }
        Ok(())
    }

    /// Stops every group and task, and flushes the database. Returns once nothing of the
    /// node runs any more, so the same data directory can be opened again.
    pub async fn shutdown(self) {
        self.close().await;
        // sled unlocks the data directory only when its last tree is dropped. openraft's
        // tasks drop a group's stores (each holding a flusher handle) shortly after
        // shutdown returns, and the flusher task holds the database until the last handle
        // is gone: wait for that, so the directory can be opened again at once.
        let ended = self.flusher.ended();
        drop(self);
        if tokio::time::timeout(std::time::Duration::from_secs(10), ended)
            .await
            .is_err()
        {
            tracing::warn!("raft storage still open 10 s after shutdown");
        }
    }

    /// Stops every group and task, and flushes the database, without giving up the handle:
    /// for a caller that cannot own the node any more. The data directory stays locked until
    /// the node is dropped.
    pub async fn close(&self) {
        let groups: Vec<_> = self
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        for (id, group) in groups {
            self.router.remove(id);
            if let Err(e) = group.raft.shutdown().await {
                tracing::warn!(group = %id, error = ?e, "group did not shut down cleanly");
            }
        }
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        if let Err(e) = self.flusher.flush().await {
            tracing::error!(error = %e, "final flush failed");
        }
    }
}

/// The directory of the groups' snapshot directories, in the data directory.
const GROUPS: &str = "groups";

/// Where a group's snapshot files live.
pub fn group_dir(data_dir: &Path, id: GroupId) -> PathBuf {
    data_dir.join(GROUPS).join(format!("g{}", id.0))
}

/// Watches a group's metrics (they change with every turn of its Raft core): while it
/// leads, tells `freshness` when a quorum last acknowledged it; and reports a group that
/// openraft stopped for good (a storage error, or a bug) other than by being shut down:
/// the node cannot keep that replica, so it must stop.
async fn watch_group(
    id: GroupId,
    mut metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, BasicNode>>,
    fault: StorageFault,
    freshness: Arc<Freshness>,
) {
    loop {
        {
            let m = metrics.borrow_and_update();
            if let Err(fatal) = &m.running_state {
                if !matches!(fatal, openraft::error::Fatal::Stopped) {
                    fault.report("raft_group", &format!("group {id} stopped: {fatal}"));
                }
                return;
            }
            if m.state == ServerState::Leader {
                if let Some(ms) = m.millis_since_quorum_ack {
                    freshness.confirmed(std::time::Duration::from_millis(ms));
                }
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
