//! The shard replicas a node hosts: each one's Raft group, lock-free reader, actor and
//! serving flag, the map of them, and hosting and releasing them (one at a time). A handle
//! of its own, so that what reads or moves replicas (the redirect path, the mirror, the
//! control loops) needs nothing else of the node.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use linkrift_raft::{Group, GroupError, NodeId, RaftNode};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef};
use tokio::task::JoinHandle;

use crate::errors::{HostError, ReleaseError};
use crate::groups::{shard_group, GroupState};
use crate::shard::{ShardActor, ShardCommand, ShardMsg, ShardOutcome, ShardReader};
use crate::tasks::Tasks;

/// How often a shard's leader ticks the shard's clock.
const TICK_EVERY: Duration = Duration::from_secs(10);

/// A shard this node holds a replica of.
pub(crate) struct LocalShard {
    pub(crate) group: Group<GroupState>,
    pub(crate) reader: ShardReader,
    pub(crate) actor: ActorRef<ShardMsg>,
    pub(crate) actor_task: Mutex<Option<JoinHandle<()>>>,
    /// The replica is a voter: it has caught up and may answer reads.
    pub(crate) serving: Arc<AtomicBool>,
    /// The node's storage fault latch: once tripped, no replica here serves.
    pub(crate) fault: linkrift_raft::StorageFault,
    /// The most it may lag its leader and still answer reads (`None`: no bound).
    pub(crate) max_lag: Option<Duration>,
}

impl LocalShard {
    /// Reads this replica's links and change feed.
    pub(crate) fn reader(&self) -> ShardReader {
        self.reader.clone()
    }

    /// Stops the shard's actor and waits until it has.
    pub(crate) async fn stop_actor(&self) {
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

    /// Whether this replica is a caught-up voter, on a node whose storage has not failed
    /// (a replica that can no longer write cannot keep current): it may lead and take
    /// writes.
    pub(crate) fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Acquire) && !self.fault.is_tripped()
    }

    /// Whether this replica may answer reads: serving, and within the lag bound of its
    /// leader ([`linkrift_raft::freshness`]), so that what it answers was current at most
    /// `max_lag` ago. A replica cut off from its leader (or a leader from its quorum)
    /// stops answering once the bound passes, and the read goes to a replica that is
    /// current. Lock-free: the redirect path asks it.
    pub(crate) fn is_current(&self) -> bool {
        self.is_serving() && self.lag_exceeded().is_none()
    }

    /// If this replica lags by more than the bound: its lag (`None` inside: it never was
    /// current since it opened).
    pub(crate) fn lag_exceeded(&self) -> Option<Option<Duration>> {
        let max = self.max_lag?;
        match self.group.lag() {
            Some(lag) if lag <= max => None,
            lag => Some(lag),
        }
    }

    /// Proposes `command` through the shard's actor, waiting at most `within`.
    pub(crate) async fn propose(
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

/// The replicas this node hosts, by shard.
pub(crate) struct Replicas {
    shards: papaya::HashMap<u32, Arc<LocalShard>>,
    node: Arc<RaftNode<GroupState>>,
    me: NodeId,
    max_lag: Option<Duration>,
    /// Serialises hosting and releasing replicas.
    hosting: tokio::sync::Mutex<()>,
    tasks: Tasks,
}

impl Replicas {
    /// No replicas yet, on `node` (this node is `me`), each to answer reads while within
    /// `max_lag` of its leader; the tasks that watch each replica's serving state run
    /// under `tasks`.
    pub(crate) fn new(
        node: Arc<RaftNode<GroupState>>,
        me: NodeId,
        max_lag: Option<Duration>,
        tasks: Tasks,
    ) -> Self {
        Self {
            shards: papaya::HashMap::new(),
            node,
            me,
            max_lag,
            hosting: tokio::sync::Mutex::new(()),
            tasks,
        }
    }

    /// `shard`'s replica here, if this node hosts one.
    pub(crate) fn get(&self, shard: u32) -> Option<Arc<LocalShard>> {
        self.pin().get(&shard).cloned()
    }

    /// A pinned view of the map: lock-free, no reference count touched (the redirect path).
    pub(crate) fn pin(
        &self,
    ) -> papaya::HashMapRef<'_, u32, Arc<LocalShard>, std::hash::RandomState, papaya::LocalGuard<'_>>
    {
        self.shards.pin()
    }

    /// Every replica, by shard.
    pub(crate) fn all(&self) -> Vec<(u32, Arc<LocalShard>)> {
        let mut all: Vec<(u32, Arc<LocalShard>)> =
            self.pin().iter().map(|(s, l)| (*s, l.clone())).collect();
        all.sort_by_key(|(s, _)| *s);
        all
    }

    /// Starts hosting a replica of `shard` (an empty one, unless this node has its data).
    pub(crate) async fn host(&self, shard: u32) -> Result<(), HostError> {
        let _serial = self.hosting.lock().await;
        if self.pin().contains_key(&shard) {
            return Ok(());
        }
        let id = shard_group(shard);
        let group = match self.node.group(id) {
            Some(g) => g,
            None => self
                .node
                .create_group(id)
                .await
                .map_err(|e| HostError::Raft(Box::new(e)))?,
        };
        let reader = group.read(|a| match &a.state {
            GroupState::Shard(s) => Ok(s.reader()),
            GroupState::Meta(_) => Err(HostError::GroupKind {
                group: id,
                found: "a meta group",
            }),
        })?;
        let (actor, actor_task) = Actor::spawn(None, ShardActor, group.clone())
            .await
            .map_err(|source| HostError::ShardActor { shard, source })?;
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
        {
            // The shard's clock (its de-duplication window): while this replica leads, a
            // tick every TICK_EVERY with the time its monotonic clock measured since the
            // last one, or since it became leader (a failover's time is never counted).
            let (group, actor) = (group.clone(), actor.clone());
            self.tasks.spawn("tick a shard's clock", async move {
                let mut since: Option<std::time::Instant> = None;
                let mut every = tokio::time::interval(TICK_EVERY);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    if !group.is_leader() {
                        since = None;
                        continue;
                    }
                    let Some(last) = since else {
                        since = Some(std::time::Instant::now());
                        continue;
                    };
                    let now = std::time::Instant::now();
                    let command = ShardCommand::Tick {
                        elapsed_ms: now.duration_since(last).as_millis() as u64,
                    };
                    let reply = actor
                        .call(|port| ShardMsg::Propose(command, port), Some(TICK_EVERY))
                        .await;
                    // The next tick measures from here, whether this one was counted or
                    // not (one that timed out may still commit): time is lost at worst,
                    // never counted twice.
                    since = Some(now);
                    if matches!(reply, Ok(CallResult::SenderError) | Err(_)) {
                        return;
                    }
                }
            });
        }
        self.pin().insert(
            shard,
            Arc::new(LocalShard {
                group,
                reader,
                actor,
                actor_task: Mutex::new(Some(actor_task)),
                serving,
                fault: self.node.fault().clone(),
                max_lag: self.max_lag,
            }),
        );
        Ok(())
    }

    /// Stops hosting `shard` and deletes this node's replica.
    pub(crate) async fn release(&self, shard: u32) -> Result<(), ReleaseError> {
        let _serial = self.hosting.lock().await;
        let Some(local) = self.pin().remove(&shard).cloned() else {
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
}
