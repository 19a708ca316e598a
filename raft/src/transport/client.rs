//! Outbound peer connections: one per peer, shared by every group on this node.
//!
//! A request registers a waiter under a fresh request id, queues its frame and waits for
//! the reply with a timeout. Frames go out through two queues, control first: heartbeats,
//! votes and appends never wait behind more than the one snapshot chunk being written.
//! A broken connection fails its waiters at once; the next request reconnects, and after
//! a failed attempt requests fail fast until a backoff (doubling, capped) has passed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::frame::{encode_frame, read_frame, Frame, FrameKind};
use super::TransportError;
use super::{auth, tls, PeerSecurity, PeerStream};
use crate::config::RaftConfig;
use crate::types::NodeId;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
const QUEUE: usize = 1024;

/// Which outbound queue a request uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Votes, appends and heartbeats: written first.
    Control,
    /// Snapshot chunks: written when no control frame is waiting.
    Bulk,
}

/// The replica a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replica {
    /// Its group.
    pub group: u64,
    /// The node hosting it.
    pub node: NodeId,
    /// Its incarnation, as far as the sender knows (0: not known yet, any will do).
    pub incarnation: u64,
}

/// Everything needed to dial peers as this node.
struct Dialer {
    node_id: NodeId,
    bind_ip: IpAddr,
    security: PeerSecurity,
    max_frame: u32,
    reconnect_min: Duration,
    reconnect_max: Duration,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// The outbound connections of this node, one per peer address.
#[derive(Clone)]
pub struct PeerPool {
    dialer: Arc<Dialer>,
    peers: Arc<Mutex<HashMap<String, Arc<Peer>>>>,
}

impl PeerPool {
    /// A pool dialing as `node_id` from `bind_ip` (outbound sockets bind to it, so that a
    /// packet filter on that address cuts this node off completely).
    pub fn new(
        node_id: NodeId,
        bind_ip: IpAddr,
        security: PeerSecurity,
        config: &RaftConfig,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Self {
        Self {
            dialer: Arc::new(Dialer {
                node_id,
                bind_ip,
                security,
                max_frame: config.max_frame_bytes,
                reconnect_min: config.reconnect_min,
                reconnect_max: config.reconnect_max,
                shutdown,
                tasks,
            }),
            peers: Arc::default(),
        }
    }

    /// The connection to the peer at `addr`, created on first use.
    pub fn peer(&self, addr: &str) -> Arc<Peer> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers
            .entry(addr.to_string())
            .or_insert_with(|| {
                Arc::new(Peer {
                    addr: addr.to_string(),
                    dialer: self.dialer.clone(),
                    state: tokio::sync::Mutex::new(PeerState {
                        live: None,
                        backoff: self.dialer.reconnect_min,
                        retry_at: None,
                    }),
                })
            })
            .clone()
    }
}

/// The connection to one peer, re-established on demand.
pub struct Peer {
    addr: String,
    dialer: Arc<Dialer>,
    state: tokio::sync::Mutex<PeerState>,
}

struct PeerState {
    live: Option<Arc<Live>>,
    backoff: Duration,
    retry_at: Option<Instant>,
}

/// An authenticated connection and its two tasks.
struct Live {
    control: mpsc::Sender<Vec<u8>>,
    bulk: mpsc::Sender<Vec<u8>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Frame>>>,
    next_id: AtomicU64,
    closed: CancellationToken,
}

impl Live {
    fn close(&self) {
        self.closed.cancel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

impl Peer {
    /// Sends a request to the replica `to` and waits up to `timeout` for its reply frame.
    pub async fn call(
        &self,
        to: Replica,
        kind: FrameKind,
        payload: Vec<u8>,
        lane: Lane,
        timeout: Duration,
    ) -> Result<Frame, TransportError> {
        let live = self.connection().await?;
        let request_id = live.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        live.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(request_id, tx);
        let bytes = encode_frame(&Frame {
            group: to.group,
            target: to.node,
            incarnation: to.incarnation,
            kind,
            request_id,
            payload,
        });
        let queue = match lane {
            Lane::Control => &live.control,
            Lane::Bulk => &live.bulk,
        };
        let outcome = tokio::time::timeout(timeout, async {
            queue
                .send(bytes)
                .await
                .map_err(|_| TransportError::ConnectionLost(self.addr.clone()))?;
            rx.await
                .map_err(|_| TransportError::ConnectionLost(self.addr.clone()))
        })
        .await;
        match outcome {
            Ok(result) => result,
            Err(_) => {
                live.pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&request_id);
                Err(TransportError::Timeout {
                    addr: self.addr.clone(),
                    millis: timeout.as_millis(),
                })
            }
        }
    }

    /// The live connection, dialing if there is none and the backoff allows it.
    async fn connection(&self) -> Result<Arc<Live>, TransportError> {
        let mut state = self.state.lock().await;
        if let Some(live) = &state.live {
            if !live.closed.is_cancelled() {
                return Ok(live.clone());
            }
            state.live = None;
        }
        if let Some(at) = state.retry_at {
            if Instant::now() < at {
                return Err(self.unreachable("waiting before reconnecting"));
            }
        }
        match self.dial().await {
            Ok(stream) => {
                let live = self.start(stream);
                state.live = Some(live.clone());
                state.backoff = self.dialer.reconnect_min;
                state.retry_at = None;
                tracing::debug!(peer = %self.addr, "connected to peer");
                Ok(live)
            }
            Err(reason) => {
                state.retry_at = Some(Instant::now() + state.backoff);
                state.backoff = (state.backoff * 2).min(self.dialer.reconnect_max);
                tracing::debug!(peer = %self.addr, %reason, "cannot connect to peer");
                Err(self.unreachable(&reason))
            }
        }
    }

    fn unreachable(&self, reason: &str) -> TransportError {
        TransportError::Unreachable {
            addr: self.addr.clone(),
            reason: reason.to_string(),
        }
    }

    async fn dial(&self) -> Result<Box<dyn PeerStream>, String> {
        let target: SocketAddr = tokio::net::lookup_host(&self.addr)
            .await
            .map_err(|e| format!("cannot resolve: {e}"))?
            .next()
            .ok_or("address resolves to nothing")?;
        let socket = match target {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(|e| e.to_string())?;
        if self.dialer.bind_ip.is_ipv4() == target.is_ipv4() {
            socket
                .bind(SocketAddr::new(self.dialer.bind_ip, 0))
                .map_err(|e| format!("cannot bind to {}: {e}", self.dialer.bind_ip))?;
        }
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(target))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let security = &self.dialer.security;
        let handshake = async {
            let mut stream: Box<dyn PeerStream> = match &security.tls {
                Some(tls) => {
                    let name = tls::server_name(&self.addr).map_err(|e| e.to_string())?;
                    Box::new(
                        tls.connector()
                            .connect(name, stream)
                            .await
                            .map_err(|e| format!("TLS handshake failed: {e}"))?,
                    )
                }
                None => Box::new(stream),
            };
            auth::dial(&mut stream, &security.secret, self.dialer.node_id)
                .await
                .map_err(|e| format!("handshake failed: {e}"))?;
            Ok::<_, String>(stream)
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| "handshake timed out".to_string())?
    }

    /// Starts the writer and reader of a fresh connection.
    fn start(&self, stream: Box<dyn PeerStream>) -> Arc<Live> {
        let (control_tx, mut control_rx) = mpsc::channel::<Vec<u8>>(QUEUE);
        let (bulk_tx, mut bulk_rx) = mpsc::channel::<Vec<u8>>(QUEUE);
        let live = Arc::new(Live {
            control: control_tx,
            bulk: bulk_tx,
            pending: Mutex::default(),
            next_id: AtomicU64::new(1),
            closed: self.dialer.shutdown.child_token(),
        });
        let (mut reader, mut writer) = tokio::io::split(stream);

        let w = live.clone();
        self.dialer.tasks.spawn(async move {
            loop {
                let bytes = tokio::select! {
                    biased;
                    _ = w.closed.cancelled() => break,
                    Some(b) = control_rx.recv() => b,
                    Some(b) = bulk_rx.recv() => b,
                    else => break,
                };
                if writer.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            w.close();
        });

        let r = live.clone();
        let addr = self.addr.clone();
        let max_frame = self.dialer.max_frame;
        self.dialer.tasks.spawn(async move {
            loop {
                let frame = tokio::select! {
                    _ = r.closed.cancelled() => break,
                    f = read_frame(&mut reader, max_frame) => f,
                };
                match frame {
                    Ok(Some(frame)) => {
                        let waiter = r
                            .pending
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&frame.request_id);
                        if let Some(waiter) = waiter {
                            let _ = waiter.send(frame);
                        }
                    }
                    Ok(None) => {
                        tracing::debug!(peer = %addr, "peer closed the connection");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(peer = %addr, error = %e, "dropping peer connection");
                        break;
                    }
                }
            }
            r.close();
        });
        live
    }
}
