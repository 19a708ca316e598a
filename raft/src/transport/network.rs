//! openraft's network traits over the [`PeerPool`]: each group gets a factory that tags
//! its requests with the group id; all groups share the pool's connections.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, LogId, RaftMetrics};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::client::{Lane, Peer, PeerPool, Replica};
use super::frame::FrameKind;
use super::TransportError;
use crate::codec;
use crate::types::{GroupId, NodeId, TypeConfig};

/// Creates the per-target network clients of one group.
#[derive(Clone)]
pub struct GroupNetworkFactory {
    pool: PeerPool,
    group: GroupId,
    request_timeout: Duration,
    snapshot_timeout: Duration,
    incarnations: Arc<Incarnations>,
}

/// The incarnation of each target's replica that this group's replica has been talking to.
///
/// What a leader knows of a follower (what it has acknowledged, so where to send from and
/// what counts toward a quorum) belongs to one life of the follower's replica. A replica
/// deleted and created again is another life, with another incarnation; the leader must
/// not carry on with it as if it were the old one (openraft panics when a follower it
/// knows to hold entries says it has none). So every request names the incarnation that
/// first answered, and the target refuses a request for another.
///
/// What is remembered holds for one term and one membership: a new term or any change of
/// the membership forgets every incarnation, and the next answers are remembered anew.
/// Linkrift deletes a replica only after its node left the group, and adds it back as a
/// new learner: both are membership changes, so a replica hosted again is always talked
/// to afresh. (Forgetting only the targets that left was not enough: the group's metrics
/// can skip the membership without the target when its removal and its return follow
/// each other quickly, and the node's new replica was refused for good.)
#[derive(Default)]
struct Incarnations {
    metrics: OnceLock<watch::Receiver<RaftMetrics<NodeId, BasicNode>>>,
    known: Mutex<Known>,
}

#[derive(Default)]
struct Known {
    term: u64,
    membership: Option<LogId<NodeId>>,
    by_node: HashMap<NodeId, u64>,
}

impl Known {
    /// Forgets everything if `metrics` (the group's latest) show another term or another
    /// membership than what is remembered holds for.
    fn follow(&mut self, metrics: &RaftMetrics<NodeId, BasicNode>) {
        let membership = *metrics.membership_config.log_id();
        if metrics.current_term != self.term || membership != self.membership {
            self.term = metrics.current_term;
            self.membership = membership;
            self.by_node.clear();
        }
    }
}

impl Incarnations {
    /// Brings the remembered incarnations up to date with the group's metrics; false
    /// before the group has any.
    fn follow(&self, known: &mut Known) -> bool {
        match self.metrics.get() {
            Some(metrics) => {
                known.follow(&metrics.borrow());
                true
            }
            None => false,
        }
    }

    /// The incarnation to name in a request to `target` (0: none known yet).
    fn expected(&self, target: NodeId) -> u64 {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if !self.follow(&mut known) {
            return 0;
        }
        known.by_node.get(&target).copied().unwrap_or(0)
    }

    /// Remembers that `target` answered as `incarnation` (if none is remembered yet).
    fn answered(&self, target: NodeId, incarnation: u64) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if incarnation != 0 && self.follow(&mut known) {
            known.by_node.entry(target).or_insert(incarnation);
        }
    }

    /// Follows the group's metrics until the group stops, so that what is remembered is
    /// forgotten as soon as the term or the membership changes, not at the next request.
    async fn watch(self: Arc<Self>) {
        let Some(mut metrics) = self.metrics.get().cloned() else {
            return;
        };
        loop {
            self.known
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .follow(&metrics.borrow_and_update());
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }
}

impl GroupNetworkFactory {
    /// A factory for `group`'s traffic through `pool`.
    pub fn new(
        pool: PeerPool,
        group: GroupId,
        request_timeout: Duration,
        snapshot_timeout: Duration,
    ) -> Self {
        Self {
            pool,
            group,
            request_timeout,
            snapshot_timeout,
            incarnations: Arc::default(),
        }
    }

    /// Lets the factory follow the group's term and membership (see [`Incarnations`]):
    /// until then no incarnation is remembered. The returned future follows them until
    /// the group stops; spawn it.
    pub fn attach(
        &self,
        metrics: watch::Receiver<RaftMetrics<NodeId, BasicNode>>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let _ = self.incarnations.metrics.set(metrics);
        self.incarnations.clone().watch()
    }
}

impl RaftNetworkFactory<TypeConfig> for GroupNetworkFactory {
    type Network = GroupNetwork;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        GroupNetwork {
            peer: self.pool.peer(&node.addr),
            group: self.group,
            target,
            node: node.clone(),
            incarnations: self.incarnations.clone(),
            request_timeout: self.request_timeout,
            snapshot_timeout: self.snapshot_timeout,
        }
    }
}

/// One group's client for one target node.
pub struct GroupNetwork {
    peer: Arc<Peer>,
    group: GroupId,
    target: NodeId,
    node: BasicNode,
    incarnations: Arc<Incarnations>,
    request_timeout: Duration,
    snapshot_timeout: Duration,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, E>>;

impl GroupNetwork {
    async fn send<Req, Resp, E>(
        &self,
        kind: FrameKind,
        req: &Req,
        lane: Lane,
        timeout: Duration,
    ) -> RpcResult<Resp, E>
    where
        Req: serde::Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload = codec::encode(req);
        crate::failpoint::delay_link(payload.len()).await;
        let reply = self
            .peer
            .call(
                Replica {
                    group: self.group.0,
                    node: self.target,
                    incarnation: self.incarnations.expected(self.target),
                },
                kind,
                payload,
                lane,
                timeout,
            )
            .await
            .map_err(|e| match e {
                TransportError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&e)),
                other => RPCError::Network(NetworkError::new(&other)),
            })?;
        if reply.kind != FrameKind::Reply {
            let reason = String::from_utf8_lossy(&reply.payload).into_owned();
            let e = TransportError::Refused {
                addr: self.node.addr.clone(),
                reason,
            };
            return Err(RPCError::Network(NetworkError::new(&e)));
        }
        self.incarnations.answered(self.target, reply.incarnation);
        let result: Result<Resp, E> = codec::decode(&reply.payload).map_err(|e| {
            let e = TransportError::BadReply {
                addr: self.node.addr.clone(),
                reason: e.to_string(),
            };
            RPCError::Network(NetworkError::new(&e))
        })?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for GroupNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        self.send(
            FrameKind::AppendEntries,
            &rpc,
            Lane::Control,
            self.request_timeout,
        )
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        self.send(
            FrameKind::InstallSnapshot,
            &rpc,
            Lane::Bulk,
            self.snapshot_timeout,
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, RaftError<NodeId>> {
        self.send(FrameKind::Vote, &rpc, Lane::Control, self.request_timeout)
            .await
    }
}
