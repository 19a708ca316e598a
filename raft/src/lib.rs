//! Multi-Raft plumbing for Linkrift.
//!
//! A node hosts many Raft groups (one per shard, plus the meta group). This crate runs them:
//!
//! - [`log_store`]: the Raft log of every group in one sled `Db`, behind our own
//!   [`log_store::GroupLog`] trait; appends and votes are synced to the device
//!   ([`durable::DurableDb`]) before openraft hears they are durable, and the syncs of all
//!   groups are batched by one [`flush::Flusher`].
//! - [`fault`]: the node's [`StorageFault`] latch; a storage error anywhere trips it, and the
//!   node stops serving and exits (fail-stop).
//! - [`state_machine`]: the application's [`StateMachine`] (apply, snapshot, restore) wrapped
//!   for openraft, with snapshots kept as files in the node's data directory.
//! - [`transport`]: the peer port. One authenticated TCP connection per peer, shared by all
//!   groups, carrying length-prefixed bincode frames that name their group.
//! - [`node`]: [`RaftNode`], the registry of the groups this node hosts (create, reopen on
//!   restart, remove with their data) and the owner of every task above.
//!
//! The crate knows nothing about links: commands and responses cross openraft as opaque
//! bytes ([`Payload`]) and are decoded by the typed [`Group`] handle and the state machine
//! wrapper, so groups with different state machines share one transport.

// openraft's API fixes the error types our storage and config code returns; they are large,
// and boxing them would only add a conversion at every openraft boundary.
#![allow(clippy::result_large_err)]

pub use linkrift_codec as codec;
pub mod config;
pub mod durable;
pub mod failpoint;
pub mod fault;
pub mod flush;
pub mod freshness;
pub mod log_store;
pub mod node;
pub mod proposer;
pub mod snapshot_file;
pub mod state_machine;
pub mod transport;
mod types;

pub use config::RaftConfig;
pub use durable::DurableDb;
pub use fault::StorageFault;
pub use node::{Group, GroupError, RaftNode};
pub use openraft;
pub use state_machine::StateMachine;
pub use types::{GroupId, NodeId, Payload, TypeConfig};

/// The openraft handle of one group.
pub type Raft = openraft::Raft<TypeConfig>;
