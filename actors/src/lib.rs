//! Linkrift's link domain and the state machines and service built on the replication
//! core.
//!
//! - [`domain`]: `ShortCode`, `DestinationUrl`, `Link`, API keys — checked once, when made.
//! - [`shard`]: the pure shard state machine, its lock-free read handle, and `shard_of`.
//! - [`meta`]: the meta group's state machine (API keys).
//! - [`placement`]: where shard replicas belong (rendezvous hashing), for the cluster.
//! - [`groups`]: the one state machine type the node's Raft groups run (meta or shard).
//! - [`service`]: [`service::LinkService`], the handle the HTTP layer talks to.
//! - [`mirror`]: the Postgres mirror of every committed change.
//! - [`clicks`]: click events (so far: describing a click; the click actor and sinks
//!   follow).
//! - [`tasks`]: the owner of every background task of a node (named, stopped in reverse
//!   start order at shutdown).

pub mod clicks;
pub mod cluster;
mod errors;
pub mod groups;
mod meta_client;
pub mod mirror;
mod replicas;
pub mod service;
mod settings;
pub mod shard;
pub mod tasks;

pub use linkrift_model::{domain, meta, placement, status};

// The surface the HTTP layer and the binary use, so that they name no module path inside.
pub use clicks::clickhouse::{ClickHouseConfig, ExportFormat};
pub use clicks::event::{IpPolicy, RawClick, Seen};
pub use clicks::rollup::{Bots, DIMENSIONS};
pub use clicks::Summary;
pub use cluster::cache::CacheConfig;
pub use cluster::membership::{Departure, Operation};
