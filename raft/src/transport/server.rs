//! The peer listener: accepts connections, authenticates them, and serves each request by
//! handing it to the group it names.
//!
//! Every request runs in its own task (bounded per connection), and replies go back in
//! completion order, so a snapshot chunk being installed never delays a heartbeat for
//! another group. A connection that misbehaves (bad secret, oversized or malformed frame,
//! a frame cut off half way) is closed with a logged reason; other connections carry on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, VoteRequest,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::auth;
use super::frame::{encode_frame, read_frame, Frame, FrameKind};
use super::{GroupRouter, Hosted, PeerSecurity, PeerStream};
use crate::codec;
use crate::types::{GroupId, NodeId, TypeConfig};

/// Requests one connection may have in flight; reading pauses beyond it.
const MAX_IN_FLIGHT: usize = 256;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections that may be in their handshake at once; more are closed at once. Real
/// peers are a few, each opening one connection at a time.
const MAX_HANDSHAKES: usize = 64;
/// Connections from one address that may be in their handshake at once, so that one
/// stranger cannot take every slot from the real peers.
const MAX_HANDSHAKES_PER_IP: usize = 8;

/// The connections in their handshake, by remote address.
#[derive(Default)]
struct InHandshake(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

/// One connection's place in [`InHandshake`], given back when dropped.
struct HandshakeSlot {
    of: Arc<InHandshake>,
    ip: std::net::IpAddr,
    _global: tokio::sync::OwnedSemaphorePermit,
}

impl InHandshake {
    fn enter(
        self: &Arc<Self>,
        ip: std::net::IpAddr,
        global: &Arc<Semaphore>,
    ) -> Option<HandshakeSlot> {
        let mut by_ip = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = by_ip.entry(ip).or_default();
        if *n >= MAX_HANDSHAKES_PER_IP {
            return None;
        }
        let permit = global.clone().try_acquire_owned().ok()?;
        *n += 1;
        Some(HandshakeSlot {
            of: self.clone(),
            ip,
            _global: permit,
        })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut by_ip = self.of.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}
/// At most one warning about failed handshakes per this long (the rest are counted).
const HANDSHAKE_WARN_EVERY: Duration = Duration::from_secs(10);

/// Warns of failed handshakes at most once per [`HANDSHAKE_WARN_EVERY`], saying how many
/// it did not warn of (those are logged at debug level): a stranger (or a scanner)
/// dialing the port must not flood the log.
#[derive(Default)]
struct HandshakeWarnings {
    last: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl HandshakeWarnings {
    fn failed(&self, remote: SocketAddr, reason: &str, kind: &'static str) {
        metrics::counter!("raft_handshakes_failed_total", "reason" => kind).increment(1);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if last
            .0
            .is_some_and(|at| now.duration_since(at) < HANDSHAKE_WARN_EVERY)
        {
            last.1 += 1;
            tracing::debug!(%remote, %reason, "closing peer connection: handshake failed");
            return;
        }
        let unlogged = std::mem::take(&mut last.1);
        last.0 = Some(now);
        drop(last);
        tracing::warn!(%remote, %reason, not_warned_of = unlogged, "closing peer connection: handshake failed (for 10 s, further failures are logged at debug level only; raft_handshakes_failed_total counts them all)");
    }
}

/// Serves the peer port.
pub struct PeerListener {
    local: SocketAddr,
}

impl PeerListener {
    /// Starts serving on `listener` for node `me` until `shutdown` fires. Tasks are tracked
    /// by `tasks`.
    pub fn start(
        me: NodeId,
        listener: TcpListener,
        router: GroupRouter,
        security: PeerSecurity,
        max_frame: u32,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let conn_tasks = tasks.clone();
        let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        let in_handshake = Arc::new(InHandshake::default());
        let warnings = Arc::new(HandshakeWarnings::default());
        tasks.spawn(async move {
            loop {
                let (stream, remote) = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "peer accept failed");
                            continue;
                        }
                    },
                };
                let Some(handshake) = in_handshake.enter(remote.ip(), &handshakes) else {
                    metrics::counter!("raft_connections_refused_total", "reason" => "handshakes")
                        .increment(1);
                    warnings.failed(remote, "too many connections in their handshake", "busy");
                    drop(stream);
                    continue;
                };
                let conn = Connection {
                    me,
                    router: router.clone(),
                    security: security.clone(),
                    max_frame,
                    remote,
                    handshake,
                    warnings: warnings.clone(),
                };
                let shutdown = shutdown.clone();
                conn_tasks.spawn(async move {
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = conn.serve(stream) => {}
                    }
                });
            }
        });
        Ok(Self { local })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

struct Connection {
    me: NodeId,
    router: GroupRouter,
    security: PeerSecurity,
    max_frame: u32,
    remote: SocketAddr,
    /// Held until the handshake is over.
    handshake: HandshakeSlot,
    warnings: Arc<HandshakeWarnings>,
}

impl Connection {
    async fn serve(self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        // TLS first (when configured), then the secret's challenge, within one timeout.
        let handshake = async {
            let mut stream: Box<dyn PeerStream> = match &self.security.tls {
                Some(tls) => Box::new(
                    tls.acceptor()
                        .accept(stream)
                        .await
                        .map_err(|e| ("tls", format!("TLS: {e}")))?,
                ),
                None => Box::new(stream),
            };
            let peer = auth::accept(&mut stream, &self.security.secret)
                .await
                .map_err(|e| match e {
                    auth::HandshakeError::WrongSecret => ("wrong_secret", e.to_string()),
                    _ => ("protocol", e.to_string()),
                })?;
            Ok::<_, (&'static str, String)>((stream, peer))
        };
        let (stream, peer) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(done)) => done,
            Ok(Err((kind, reason))) => {
                self.warnings.failed(self.remote, &reason, kind);
                return;
            }
            Err(_) => {
                self.warnings.failed(self.remote, "timed out", "timeout");
                return;
            }
        };
        drop(self.handshake);
        tracing::debug!(remote = %self.remote, peer, "peer connected");
        let (mut reader, mut writer) = tokio::io::split(stream);
        let (tx, mut rx) = mpsc::channel::<Frame>(MAX_IN_FLIGHT);
        // Owns the writer and every request task: dropping the connection (on shutdown)
        // aborts them all.
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            while let Some(frame) = rx.recv().await {
                if writer.write_all(&encode_frame(&frame)).await.is_err() {
                    return;
                }
            }
        });
        let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let reason = loop {
            let frame = match read_frame(&mut reader, self.max_frame).await {
                Ok(Some(f)) => f,
                Ok(None) => break None,
                Err(e) => break Some(e.to_string()),
            };
            if !matches!(
                frame.kind,
                FrameKind::AppendEntries | FrameKind::Vote | FrameKind::InstallSnapshot
            ) {
                break Some(format!("unexpected {:?} frame", frame.kind));
            }
            while tasks.try_join_next().is_some() {}
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                break None;
            };
            let router = self.router.clone();
            let tx = tx.clone();
            let me = self.me;
            tasks.spawn(async move {
                let reply = handle(&router, me, peer, frame).await;
                crate::failpoint::delay_link(reply.payload.len()).await;
                let _ = tx.send(reply).await;
                drop(permit);
            });
        };
        match reason {
            Some(reason) => {
                tracing::warn!(remote = %self.remote, peer, %reason, "closing peer connection")
            }
            None => tracing::debug!(remote = %self.remote, peer, "peer disconnected"),
        }
        drop(tx);
        tasks.abort_all();
    }
}

/// Serves one request frame and builds its reply.
async fn handle(router: &GroupRouter, me: NodeId, peer: NodeId, frame: Frame) -> Frame {
    let group = GroupId(frame.group);
    let hosted = router.get(group);
    let incarnation = hosted.as_ref().map_or(0, |h| h.incarnation);
    let result = match hosted {
        _ if frame.target != me => {
            metrics::counter!("raft_frames_refused_total", "reason" => "wrong_node").increment(1);
            Err(format!(
                "this is node {me}, not node {}: its address now belongs to another node",
                frame.target
            ))
        }
        None => Err(format!("group {group} is not hosted on this node")),
        Some(h) if frame.incarnation != 0 && frame.incarnation != h.incarnation => {
            metrics::counter!("raft_frames_refused_total", "reason" => "stale_incarnation")
                .increment(1);
            Err(format!(
                "this node's replica of {group} was deleted and created again since the \
                 sender last talked to it (incarnation {:016x}, not {:016x})",
                h.incarnation, frame.incarnation
            ))
        }
        Some(h) if frame.kind == FrameKind::Vote && !has_membership(&h.raft) => {
            metrics::counter!("raft_frames_refused_total", "reason" => "no_membership")
                .increment(1);
            Err(format!(
                "this node's replica of {group} has no membership yet and does not vote"
            ))
        }
        Some(Hosted {
            raft, freshness, ..
        }) => match frame.kind {
            FrameKind::AppendEntries => {
                match codec::decode::<AppendEntriesRequest<TypeConfig>>(&frame.payload) {
                    Ok(req) => {
                        let commit = req.leader_commit.map(|l| l.index);
                        let response = raft.append_entries(req).await;
                        if matches!(response, Ok(AppendEntriesResponse::Success)) {
                            freshness.heard(commit);
                        }
                        Ok(codec::encode(&response))
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            FrameKind::Vote => match codec::decode::<VoteRequest<NodeId>>(&frame.payload) {
                Ok(req) => Ok(codec::encode(&raft.vote(req).await)),
                Err(e) => Err(e.to_string()),
            },
            FrameKind::InstallSnapshot => {
                match codec::decode::<InstallSnapshotRequest<TypeConfig>>(&frame.payload) {
                    Ok(req) => {
                        let r: Result<_, RaftError<NodeId, InstallSnapshotError>> =
                            raft.install_snapshot(req).await;
                        Ok(codec::encode(&r))
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            other => Err(format!("{other:?} is not a request")),
        },
    };
    match result {
        Ok(payload) => Frame {
            group: frame.group,
            target: 0,
            incarnation,
            kind: FrameKind::Reply,
            request_id: frame.request_id,
            payload,
        },
        Err(reason) => {
            tracing::debug!(peer, %group, %reason, "refusing peer request");
            Frame {
                group: frame.group,
                target: 0,
                incarnation,
                kind: FrameKind::Failure,
                request_id: frame.request_id,
                payload: reason.into_bytes(),
            }
        }
    }
}

/// Whether this replica knows a voter set. A new, empty replica has none until its group's
/// leader replicates the membership to it; openraft 0.9 checks no membership before
/// granting a vote, and an empty replica (whose log any candidate's is at least as long
/// as) could help elect a stale one, which could truncate committed entries.
fn has_membership(raft: &crate::Raft) -> bool {
    raft.metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .next()
        .is_some()
}
