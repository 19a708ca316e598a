//! The cluster: the actor transport between nodes, what travels on it, the near cache for
//! shards held elsewhere, and the placement driver that moves replicas.

pub mod cache;
pub mod driver;
pub mod peers;
pub mod wire;
