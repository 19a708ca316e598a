//! The peer port: Raft traffic between nodes.
//!
//! One TCP connection per pair of peers carries the traffic of every group, as
//! length-prefixed bincode frames `{group, target, incarnation, kind, request_id, payload}`
//! ([`frame`]). A connection opens with a mutual challenge–response on the cluster secret
//! ([`auth`]), so the secret itself never crosses the wire and a node without it gets
//! nothing served. A request names the node it is for and the incarnation of the replica
//! it expects; the listener refuses (and counts) one for another node or another
//! incarnation.
//!
//! [`server::PeerListener`] accepts connections and hands each request to the group it
//! names through the node's [`GroupRouter`]; requests run concurrently, so a slow snapshot
//! install never holds up a heartbeat. [`client::PeerPool`] keeps the outbound connection to
//! each peer, reconnects with backoff, times requests out, and binds its sockets to this
//! node's own address. [`network`] adapts the pool to openraft's network traits.

pub mod auth;
pub mod client;
pub mod frame;
pub mod network;
pub mod server;
pub mod tls;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::freshness::Freshness;
use crate::types::GroupId;
use crate::Raft;

/// How a node proves itself to its peers, and checks them.
#[derive(Clone)]
pub struct PeerSecurity {
    /// The cluster secret: every connection opens with a challenge and response on it.
    pub secret: Arc<[u8]>,
    /// Mutual TLS under that, if configured: every byte after the TCP handshake is
    /// encrypted and authenticated, and both ends present certificates of the cluster CA.
    pub tls: Option<tls::Tls>,
}

impl PeerSecurity {
    /// The secret alone, without TLS (tests, and clusters set up for development).
    pub fn plaintext(secret: &[u8]) -> Self {
        Self {
            secret: secret.into(),
            tls: None,
        }
    }
}

/// A connection to or from a peer: a TCP stream, or a TLS stream over one.
pub trait PeerStream:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static
{
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> PeerStream for S {}

/// A replica this node serves on its peer port.
#[derive(Clone)]
pub struct Hosted {
    /// Its Raft handle.
    pub raft: Raft,
    /// Its incarnation: chosen at random when the replica was created, kept across
    /// restarts, never 0.
    pub incarnation: u64,
    /// How far behind its leader it is: told of every `AppendEntries` it accepts.
    pub freshness: Arc<Freshness>,
}

/// The groups this node serves on its peer port, by id.
#[derive(Clone, Default)]
pub struct GroupRouter {
    groups: Arc<RwLock<HashMap<GroupId, Hosted>>>,
}

impl GroupRouter {
    /// Routes requests for `group` to `raft`, the replica's incarnation `incarnation`,
    /// whose `freshness` hears of each `AppendEntries` accepted.
    pub fn insert(&self, group: GroupId, raft: Raft, incarnation: u64, freshness: Arc<Freshness>) {
        self.groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                group,
                Hosted {
                    raft,
                    incarnation,
                    freshness,
                },
            );
    }

    /// Stops routing requests for `group`.
    pub fn remove(&self, group: GroupId) -> Option<Hosted> {
        self.groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&group)
    }

    /// The replica of `group`, if this node hosts it.
    pub fn get(&self, group: GroupId) -> Option<Hosted> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&group)
            .cloned()
    }
}

/// Why a request to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// No connection could be made (or we are waiting before trying again).
    #[error("peer {addr} unreachable: {reason}")]
    Unreachable {
        /// The peer's address.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The peer did not answer in time.
    #[error("peer {addr} did not answer within {millis} ms")]
    Timeout {
        /// The peer's address.
        addr: String,
        /// The timeout that passed.
        millis: u128,
    },
    /// The connection broke while the request was in flight.
    #[error("connection to peer {0} lost")]
    ConnectionLost(String),
    /// The peer could not serve the request (unknown group, undecodable request).
    #[error("peer {addr} refused the request: {reason}")]
    Refused {
        /// The peer's address.
        addr: String,
        /// The peer's explanation.
        reason: String,
    },
    /// The peer's answer could not be decoded.
    #[error("peer {addr} answered with undecodable bytes: {reason}")]
    BadReply {
        /// The peer's address.
        addr: String,
        /// The decoding error.
        reason: String,
    },
}
