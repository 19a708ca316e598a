//! The servers Linkrift's tests talk to, one copy for every suite: the node's integration
//! tests (`node/tests/`, through `node/tests/support`) and the chaos tests
//! (`chaos-tests/`). Each is the real server, started on loopback in a temporary
//! directory and removed when dropped; `scripts/test` installs them.

pub mod clickhouse;
pub mod postgres;
