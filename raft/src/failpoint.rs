//! Crash points for the chaos tests (`chaos-tests/`). Built only with the `failpoints`
//! feature, which release builds never enable; without it [`crash_if_armed`] is empty.
//!
//! A test arms a point through the `FAILPOINTS` environment variable (the `fail` crate's
//! syntax, e.g. `raft.after_flush=200*off->return`): when it fires, the node says so on
//! its log and aborts, as a power cut would stop it at that line.

/// Just before the node's sled flush: the batch's entries are written but not durable.
pub const BEFORE_FLUSH: &str = "raft.before_flush";
/// Just after the flush, before any waiter learns that its entries are durable.
pub const AFTER_FLUSH: &str = "raft.after_flush";
/// At the start of applying committed entries to a group's state machine.
pub const APPLY: &str = "raft.apply";

/// Aborts the process when the failpoint `name` is armed and fires.
#[inline]
pub fn crash_if_armed(name: &str) {
    #[cfg(feature = "failpoints")]
    if fail::eval(name, |_| ()).is_some() {
        eprintln!("failpoint {name} fired: aborting");
        std::process::abort();
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}
