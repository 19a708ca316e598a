//! The cluster: the actor transport between nodes, what travels on it, the near cache for
//! shards held elsewhere, the placement driver that moves replicas, and a node's part in
//! draining, leaving and being replaced.

pub mod cache;
pub(crate) mod control;
pub mod driver;
pub(crate) mod liveness;
pub mod membership;
pub mod peers;
pub mod wire;
