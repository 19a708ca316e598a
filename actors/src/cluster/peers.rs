//! The cluster (actor) transport: ractor_cluster sessions between nodes, and calls over them.
//!
//! Each node runs a ractor_cluster `NodeServer` whose sessions authenticate with a cookie
//! derived from the cluster secret (a challenge and response: the secret never crosses the
//! wire). We accept connections on our own listener and dial from sockets bound to the
//! node's own address, then hand the streams to the `NodeServer`. On every node one
//! [`PeerActor`] joins the process groups `linkrift.nodes` and `linkrift.node.<id>`; the
//! groups are shared with every connected node, which is how a node finds another's actor.
//!
//! ractor_cluster does not reconnect; [`Peers::maintain`] does: every node dials the
//! nodes with smaller ids that it has no session with (one dialer per pair, so two nodes
//! never race to replace each other's session).
//!
//! (About 600 lines: one transport, its actor, its session bookkeeping and its calls, which
//! share the session state; splitting them would widen that state's visibility.)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use linkrift_raft::transport::tls::Tls;
use linkrift_raft::{codec, NodeId};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::node::{NodeConnectionMode, NodeServerSessionInformation};
use ractor_cluster::{
    IncomingEncryptionMode, NetworkStream, NodeEventSubscription, NodeServer, NodeServerMessage,
    RactorClusterMessage,
};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::wire::{Notice, Reply, Request};
use crate::tasks::Tasks;

/// The process group every node's peer actor joins.
const ALL: &str = "linkrift.nodes";

fn node_group(id: NodeId) -> String {
    format!("linkrift.node.{id}")
}

/// Why a call to another node failed. The far side may or may not have acted.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// No session with that node.
    #[error("no session with node {0}")]
    NotConnected(NodeId),
    /// No session with any node.
    #[error("no session with any node of the cluster")]
    Alone,
    /// No answer in time.
    #[error("{0} did not answer within {1:?}")]
    Timeout(String, Duration),
    /// The session failed during the call.
    #[error("the session with {0} failed: {1}")]
    Session(String, String),
    /// The answer could not be decoded.
    #[error("undecodable answer from {0}: {1}")]
    Garbled(String, String),
}

/// What the peer actor receives from other nodes.
#[derive(RactorClusterMessage)]
pub enum PeerMsg {
    /// A [`Notice`], bincode-encoded.
    Notice(Vec<u8>),
    /// A [`Request`], bincode-encoded; answered with a [`Reply`], bincode-encoded.
    #[rpc]
    Call(Vec<u8>, RpcReplyPort<Vec<u8>>),
}

/// Serves requests from other nodes.
pub(crate) trait Handler: Send + Sync + 'static {
    /// Answers one request. (Boxed, so that the transport holds any handler as a trait
    /// object and names no type above it; one allocation per call from a peer.)
    fn handle(
        self: Arc<Self>,
        request: Request,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Reply> + Send>>;
    /// Takes one notice.
    fn notice(&self, notice: Notice);
}

struct PeerActor(Arc<OnceLock<Weak<dyn Handler>>>, Tasks);

impl Actor for PeerActor {
    type Msg = PeerMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<PeerMsg>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<PeerMsg>,
        msg: PeerMsg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let handler = self.0.get().and_then(Weak::upgrade);
        match msg {
            PeerMsg::Notice(bytes) => match (codec::decode::<Notice>(&bytes), handler) {
                (Ok(notice), Some(h)) => h.notice(notice),
                (Err(e), _) => tracing::warn!(error = %e, "undecodable notice from a peer"),
                (Ok(_), None) => {}
            },
            PeerMsg::Call(bytes, reply) => {
                // Each call in its own task: a slow one (a replica catching up) must not
                // hold up the others. (Once the node is shutting down, none starts: the
                // caller sees the call fail and asks elsewhere.)
                self.1.spawn("answer a peer's call", async move {
                    let answer = match (codec::decode::<Request>(&bytes), handler) {
                        (Ok(request), Some(h)) => h.handle(request).await,
                        (Ok(_), None) => Reply::Refused(super::wire::Refusal::Unavailable(
                            "this node is starting".into(),
                        )),
                        (Err(e), _) => {
                            tracing::warn!(error = %e, "undecodable request from a peer");
                            Reply::Refused(super::wire::Refusal::Failed(format!(
                                "undecodable request: {e}"
                            )))
                        }
                    };
                    let _ = reply.send(codec::encode(&answer));
                });
            }
        }
        Ok(())
    }
}

/// A session event, as the node server reports it.
#[derive(Clone, Debug)]
pub enum SessionEvent {
    /// Authenticated, and the peer's actors are known here.
    Ready(String),
    /// Closed, having authenticated (`true`) or not (`false`: refused, e.g. a wrong secret).
    Closed(String, bool),
}

struct Events {
    tx: broadcast::Sender<SessionEvent>,
    authenticated: Mutex<HashMap<u64, bool>>,
    /// Incoming connections not authenticated yet, by peer address: each holds one of
    /// [`MAX_PENDING`] places until it authenticates or closes.
    pending: Mutex<HashMap<String, Pending>>,
    tasks: Tasks,
}

/// How long a call to another node may take, except writes (which take what is left of
/// the write timeout) and admission (which waits for the meta group to catch up).
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Incoming connections on the cluster port that have not authenticated yet, at most; more
/// are closed at once.
pub const MAX_PENDING: usize = 64;
/// The same, from one address.
pub const MAX_PENDING_PER_ADDRESS: usize = 8;
/// How long an incoming connection has to authenticate (its TLS handshake included).
pub const AUTH_DEADLINE: Duration = Duration::from_secs(5);

/// An incoming connection on its way to authenticating.
struct Pending {
    ip: std::net::IpAddr,
    _place: tokio::sync::OwnedSemaphorePermit,
}

impl Events {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The node server's subscriber, feeding [`Events`].
struct Subscriber(Arc<Events>);

impl std::ops::Deref for Subscriber {
    type Target = Events;
    fn deref(&self) -> &Events {
        &self.0
    }
}

impl NodeEventSubscription for Subscriber {
    fn node_session_opened(&self, s: NodeServerSessionInformation) {
        self.authenticated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(s.node_id, false);
        // An incoming session that has not authenticated by the deadline is closed: a
        // connection that sends nothing must not hold a place (and an actor) for ever.
        if s.is_server {
            let events = self.0.clone();
            {
                self.tasks.spawn("cluster authentication deadline", async move {
                    tokio::time::sleep(AUTH_DEADLINE).await;
                    let still = events
                        .authenticated
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&s.node_id)
                        == Some(&false);
                    if still {
                        metrics::counter!("cluster_handshakes_failed_total", "reason" => "timeout")
                            .increment(1);
                        tracing::debug!(peer = %s.peer_addr, "closing a cluster connection that did not authenticate in time");
                        s.actor.stop(Some("no authentication in time".into()));
                    }
                });
            }
        }
    }

    fn node_session_authenticated(&self, s: NodeServerSessionInformation) {
        self.authenticated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(s.node_id, true);
        self.pending().remove(&s.peer_addr);
    }

    fn node_session_ready(&self, s: NodeServerSessionInformation) {
        let _ = self.tx.send(SessionEvent::Ready(s.peer_addr));
    }

    fn node_session_disconnected(&self, s: NodeServerSessionInformation) {
        let authenticated = self
            .authenticated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&s.node_id)
            .unwrap_or(false);
        self.pending().remove(&s.peer_addr);
        if !authenticated {
            tracing::warn!(peer = %s.peer_addr, "cluster session refused: the peer does not hold this cluster's secret (or is not a linkrift node)");
        } else {
            tracing::info!(peer = %s.peer_addr, "cluster session closed");
        }
        let _ = self
            .tx
            .send(SessionEvent::Closed(s.peer_addr, authenticated));
    }
}

/// This node's end of the cluster transport.
pub(crate) struct Peers {
    addr: SocketAddr,
    server: ActorRef<NodeServerMessage>,
    server_task: Mutex<Option<JoinHandle<()>>>,
    actor: ActorRef<PeerMsg>,
    actor_task: Mutex<Option<JoinHandle<()>>>,
    handler: Arc<OnceLock<Weak<dyn Handler>>>,
    events: Arc<Events>,
    dialing: Mutex<HashMap<NodeId, Instant>>,
    tls: Option<Tls>,
}

/// The session cookie for a cluster secret.
fn cookie(secret: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"linkrift cluster session cookie\0");
    h.update(secret);
    hex::encode(h.finalize())
}

impl Peers {
    /// Listens on `addr` (port 0 picks one) and starts the node server. With `tls`, every
    /// session runs over mutual TLS (the cookie's challenge inside it).
    /// Its tasks (the listener, handshakes, calls from peers) run under `tasks`.
    pub async fn start(
        addr: SocketAddr,
        secret: &[u8],
        tls: Option<Tls>,
        tasks: Tasks,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        // The server's own listener is not used (ours accepts); give it a port nobody asks for.
        let server = NodeServer::new(
            0,
            cookie(secret),
            format!("linkrift-{addr}"),
            addr.ip().to_string(),
            Some(IncomingEncryptionMode::Raw),
            Some(NodeConnectionMode::Isolated),
        )
        .with_listen_addr(addr.ip());
        let (server, server_task) = Actor::spawn(None, server, ())
            .await
            .map_err(|e| std::io::Error::other(format!("starting the node server: {e}")))?;
        let (tx, _) = broadcast::channel(256);
        let events = Arc::new(Events {
            tx,
            authenticated: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            tasks: tasks.clone(),
        });
        server
            .cast(NodeServerMessage::SubscribeToEvents {
                id: "linkrift".into(),
                subscription: Box::new(Subscriber(events.clone())),
            })
            .map_err(|e| std::io::Error::other(format!("subscribing to sessions: {e}")))?;
        let handler = Arc::new(OnceLock::new());
        let (actor, actor_task) = Actor::spawn(None, PeerActor(handler.clone(), tasks.clone()), ())
            .await
            .map_err(|e| std::io::Error::other(format!("starting the peer actor: {e}")))?;
        let accepting = server.clone();
        let accept_tls = tls.clone();
        let places = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING));
        let accept_events = events.clone();
        let handshakes = tasks.clone();
        tasks.spawn("cluster listener", async move {
            loop {
                match listener.accept().await {
                    Ok((stream, remote)) => {
                        // Dropping `stream` closes it: over the caps, at once.
                        let refused = |reason: &'static str| {
                            metrics::counter!("cluster_connections_refused_total", "reason" => reason).increment(1);
                        };
                        {
                            let mut pending = accept_events.pending();
                            let from_here =
                                pending.values().filter(|p| p.ip == remote.ip()).count();
                            if from_here >= MAX_PENDING_PER_ADDRESS {
                                refused("per_address");
                                continue;
                            }
                            let Ok(place) = places.clone().try_acquire_owned() else {
                                refused("pending");
                                continue;
                            };
                            pending.insert(
                                remote.to_string(),
                                Pending {
                                    ip: remote.ip(),
                                    _place: place,
                                },
                            );
                        }
                        let (server, tls) = (accepting.clone(), accept_tls.clone());
                        let events = accept_events.clone();
                        handshakes.spawn("cluster handshake", async move {
                            let handed = tokio::time::timeout(
                                AUTH_DEADLINE,
                                hand_over(&server, stream, true, tls.as_ref(), None),
                            )
                            .await
                            .unwrap_or_else(|_| {
                                Err(std::io::Error::new(
                                    std::io::ErrorKind::TimedOut,
                                    "TLS handshake timed out",
                                ))
                            });
                            if let Err(e) = handed {
                                events.pending().remove(&remote.to_string());
                                metrics::counter!("cluster_connections_refused_total", "reason" => "handshake").increment(1);
                                tracing::warn!(%remote, error = %e, "cannot hand a cluster connection over");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a cluster connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        tracing::info!(%addr, "cluster listener up");
        Ok(Self {
            addr,
            server,
            server_task: Mutex::new(Some(server_task)),
            actor,
            actor_task: Mutex::new(Some(actor_task)),
            handler,
            events,
            dialing: Mutex::new(HashMap::new()),
            tls,
        })
    }

    /// The address the cluster listener is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on requests from other nodes go to `handler`.
    pub fn serve(&self, handler: Weak<dyn Handler>) {
        let _ = self.handler.set(handler);
    }

    /// Announces this node as `id`, so other nodes can address it.
    pub fn announce(&self, id: NodeId) {
        let cell = self.actor.get_cell();
        ractor::pg::join(ALL.to_string(), vec![cell.clone()]);
        ractor::pg::join(node_group(id), vec![cell]);
    }

    /// Session events (ready, closed).
    pub fn events(&self) -> broadcast::Receiver<SessionEvent> {
        self.events.tx.subscribe()
    }

    /// Opens a session to the node listening on `to`, from this node's own address. Returns
    /// once the connection is handed over, before the session is authenticated.
    pub async fn dial(&self, to: SocketAddr) -> std::io::Result<()> {
        let socket = match to {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(self.addr.ip(), 0))?;
        let stream = tokio::time::timeout(Duration::from_secs(2), socket.connect(to))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        hand_over(&self.server, stream, false, self.tls.as_ref(), Some(to)).await
    }

    /// Dials `to` and waits until the session is ready, or refused.
    pub async fn connect(&self, to: SocketAddr, within: Duration) -> std::io::Result<()> {
        let mut events = self.events();
        self.dial(to).await?;
        let wait = async {
            loop {
                match events.recv().await {
                    Ok(SessionEvent::Ready(_)) if self.remote(ALL).is_some() => return Ok(()),
                    Ok(SessionEvent::Closed(_, false)) => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::PermissionDenied,
                            format!("{to} refused the session: is the cluster secret the same?"),
                        ))
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(std::io::Error::other("the node server stopped"))
                    }
                }
            }
        };
        tokio::time::timeout(within, wait).await.map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no cluster session with {to} within {within:?}"),
            )
        })?
    }

    fn remote(&self, group: &str) -> Option<ActorCell> {
        ractor::pg::get_members(&group.to_string())
            .into_iter()
            .find(|c| !c.get_id().is_local())
    }

    /// Whether a session with node `id` is up.
    pub fn is_connected(&self, id: NodeId) -> bool {
        self.remote(&node_group(id)).is_some()
    }

    /// Dials every node in `nodes` with a smaller id than `me` that has no session, at
    /// most once per second each.
    pub async fn maintain(&self, me: NodeId, nodes: &[(NodeId, SocketAddr)]) {
        for &(id, addr) in nodes {
            if id >= me || self.is_connected(id) {
                continue;
            }
            {
                let mut dialing = self.dialing.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                if dialing
                    .get(&id)
                    .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(1))
                {
                    continue;
                }
                dialing.insert(id, now);
            }
            if let Err(e) = self.dial(addr).await {
                tracing::debug!(node = id, %addr, error = %e, "cannot reach a node's cluster port");
            }
        }
    }

    async fn call_cell(
        cell: ActorCell,
        peer: String,
        request: &Request,
        timeout: Duration,
    ) -> Result<Reply, PeerError> {
        let actor: ActorRef<PeerMsg> = cell.into();
        let bytes = codec::encode(request);
        match actor
            .call(|port| PeerMsg::Call(bytes, port), Some(timeout))
            .await
        {
            Ok(CallResult::Success(answer)) => {
                codec::decode(&answer).map_err(|e| PeerError::Garbled(peer, e.to_string()))
            }
            Ok(CallResult::Timeout) => Err(PeerError::Timeout(peer, timeout)),
            Ok(CallResult::SenderError) => Err(PeerError::Session(peer, "no answer".into())),
            Err(e) => Err(PeerError::Session(peer, e.to_string())),
        }
    }

    /// Asks node `node`.
    pub async fn call(
        &self,
        node: NodeId,
        request: &Request,
        timeout: Duration,
    ) -> Result<Reply, PeerError> {
        let cell = self
            .remote(&node_group(node))
            .ok_or(PeerError::NotConnected(node))?;
        Self::call_cell(cell, format!("node {node}"), request, timeout).await
    }

    /// Asks whichever node is at the other end of a session (used to join, when only
    /// the seed's session exists).
    pub async fn call_any(&self, request: &Request, timeout: Duration) -> Result<Reply, PeerError> {
        let cell = self.remote(ALL).ok_or(PeerError::Alone)?;
        Self::call_cell(cell, "the node joined through".into(), request, timeout).await
    }

    /// Sends `notice` to every other connected node, without waiting.
    pub fn notify_all(&self, notice: &Notice) {
        let bytes = codec::encode(notice);
        for cell in ractor::pg::get_members(&ALL.to_string()) {
            if cell.get_id().is_local() {
                continue;
            }
            let actor: ActorRef<PeerMsg> = cell.into();
            let _ = actor.cast(PeerMsg::Notice(bytes.clone()));
        }
    }

    /// Closes every session. (The listener is one of the node's tasks, stopped with them.)
    pub async fn shutdown(&self) {
        self.actor.stop(None);
        if let Some(task) = self.take(&self.actor_task) {
            let _ = task.await;
        }
        self.server.stop(None);
        if let Some(task) = self.take(&self.server_task) {
            let _ = task.await;
        }
    }

    fn take(&self, slot: &Mutex<Option<JoinHandle<()>>>) -> Option<JoinHandle<()>> {
        slot.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// How long a TLS handshake on the cluster port may take.
const TLS_HANDSHAKE: Duration = Duration::from_secs(5);

/// Hands a connection to the node server: as it is, or after a TLS handshake (as the
/// server, or as the client of `to`).
async fn hand_over(
    server: &ActorRef<NodeServerMessage>,
    stream: TcpStream,
    is_server: bool,
    tls: Option<&Tls>,
    to: Option<SocketAddr>,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let peer_addr = stream.peer_addr()?;
    let local_addr = stream.local_addr()?;
    let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out");
    let stream = match tls {
        None => NetworkStream::Raw {
            peer_addr,
            local_addr,
            stream,
        },
        Some(tls) if is_server => {
            let stream = tokio::time::timeout(TLS_HANDSHAKE, tls.acceptor().accept(stream))
                .await
                .map_err(|_| timed_out())??;
            NetworkStream::TlsServer {
                peer_addr,
                local_addr,
                stream,
            }
        }
        Some(tls) => {
            let name =
                linkrift_raft::transport::tls::server_name(&to.unwrap_or(peer_addr).to_string())?;
            let stream = tokio::time::timeout(TLS_HANDSHAKE, tls.connector().connect(name, stream))
                .await
                .map_err(|_| timed_out())??;
            NetworkStream::TlsClient {
                peer_addr,
                local_addr,
                stream,
            }
        }
    };
    server
        .cast(NodeServerMessage::ConnectionOpened {
            stream: Box::new(stream),
            is_server,
        })
        .map_err(|e| std::io::Error::other(format!("the node server stopped: {e}")))
}
