//! The shard replicas a node hosts: each one's Raft group, lock-free reader, actor and
//! serving flag, and the map of them. A handle of its own, so that what reads replicas (the
//! redirect path, the mirror, the control loops) needs nothing else of the node; hosting and
//! releasing them is the service's (`service/hosting.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use linkrift_raft::{Group, GroupError};
use ractor::rpc::CallResult;
use ractor::ActorRef;
use tokio::task::JoinHandle;

use crate::groups::GroupState;
use crate::shard::{ShardCommand, ShardMsg, ShardOutcome, ShardReader};

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

    /// Whether this replica may answer reads: a caught-up voter, on a node whose storage
    /// has not failed (a replica that can no longer write cannot keep current).
    pub(crate) fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Acquire) && !self.fault.is_tripped()
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
#[derive(Default)]
pub(crate) struct Replicas {
    shards: papaya::HashMap<u32, Arc<LocalShard>>,
}

impl Replicas {
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
}
