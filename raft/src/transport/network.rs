//! openraft's network traits over the [`PeerPool`]: each group gets a factory that tags
//! its requests with the group id; all groups share the pool's connections.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;

use super::client::{Lane, Peer, PeerPool};
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
        }
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
        let reply = self
            .peer
            .call(
                self.group.0,
                self.target,
                kind,
                codec::encode(req),
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
