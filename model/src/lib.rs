//! Linkrift's pure model: what can be decided without a runtime, a Raft group or a network.
//!
//! - [`domain`]: `ShortCode`, `DestinationUrl`, `Link`, API keys — checked once, when made.
//! - [`shard`]: the shard state machine, its lock-free read handle, its change feed, and
//!   `shard_of`.
//! - [`meta`]: the meta group's state machine (API keys, the nodes of the cluster).
//! - [`placement`]: where shard replicas belong (rendezvous hashing).
//! - [`status`]: the cluster status, built from the meta state and the nodes' reports.
//! - [`now_ms`]: the one wall clock.
//! - [`mutation`]: the chaos tests' deliberate bugs (only with the `failpoints` feature).
//!
//! The rule of this crate: no tokio, no openraft, no sockets, no files but the snapshot
//! bytes it is handed. What runs (actors, loops, I/O) lives in `linkrift-actors`.

mod clock;
pub mod domain;
pub mod meta;
pub mod mutation;
pub mod placement;
pub mod shard;
pub mod status;

pub use clock::now_ms;

/// A node's id in the cluster (the same as the Raft crate's).
pub type NodeId = u64;
