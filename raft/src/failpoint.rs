//! Crash points for the chaos tests (`chaos-tests/`). Built only with the `failpoints`
//! feature, which release builds never enable; without it [`crash_if_armed`] is empty.
//!
//! A test arms a point through the `FAILPOINTS` environment variable (the `fail` crate's
//! syntax, e.g. `raft.after_flush=200*off->return`). A crash point, when it fires, says so
//! on the log and aborts, as a power cut would stop the node at that line; an error point
//! ([`error_if_armed`]) makes the I/O it stands in front of fail, as a full or failing disk
//! would.

/// Just before the node's sled flush: the batch's entries are written but not durable.
pub const BEFORE_FLUSH: &str = "raft.before_flush";
/// Just after the flush, before any waiter learns that its entries are durable.
pub const AFTER_FLUSH: &str = "raft.after_flush";
/// Instead of the node's sync: the sync fails with an I/O error (a full or failing disk).
pub const FLUSH_ERROR: &str = "raft.flush_error";
/// Instead of writing a snapshot file: the write fails with an I/O error.
pub const SNAPSHOT_ERROR: &str = "raft.snapshot_error";
/// Instead of writing a click batch to the spool or the roll-up log: the write fails.
pub const CLICK_WRITE_ERROR: &str = "clicks.write_error";
/// At the start of applying committed entries to a group's state machine.
pub const APPLY: &str = "raft.apply";

/// On every Raft request this node sends and every reply it gives: wait first, as a slow
/// link would. Its value is `LATENCY_MS:BYTES_PER_SECOND`
/// (`raft.link_delay=return(100:262144)`): the latency, and the time the message's bytes
/// take at that rate.
pub const LINK_DELAY: &str = "raft.link_delay";

/// Waits as [`LINK_DELAY`] says for a message of `bytes`, when it is armed (never without
/// the `failpoints` feature), counting the messages it held back.
#[inline]
pub async fn delay_link(bytes: usize) {
    if let Some(delay) = link_delay(bytes) {
        metrics::counter!("raft_link_delayed_total").increment(1);
        tokio::time::sleep(delay).await;
    }
}

/// How long a message of `bytes` waits when [`LINK_DELAY`] is armed.
#[inline]
fn link_delay(bytes: usize) -> Option<std::time::Duration> {
    #[cfg(feature = "failpoints")]
    {
        let value = fail::eval(LINK_DELAY, |value| value)??;
        let (latency, rate) = value.split_once(':')?;
        let (latency, rate): (u64, u64) = (latency.parse().ok()?, rate.parse().ok()?);
        let transfer = bytes as u64 * 1_000_000 / rate.max(1);
        Some(std::time::Duration::from_micros(latency * 1000 + transfer))
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = bytes;
        None
    }
}

/// A deliberate bug (`scripts/chaos --mutation`): the flusher answers each batch at once
/// and syncs at most once a second, so a power cut loses up to a second of acknowledged
/// writes.
pub const ACK_BEFORE_SYNC: &str = "mutation.ack_before_sync";
/// A deliberate bug: the click thread silently drops one click in 500.
pub const DROP_CLICK: &str = "mutation.drop_click";

/// Whether the deliberate bug `name` is armed (always `false` without the `failpoints`
/// feature). Not for a hot path: it reads the failpoint registry. The model's bugs have
/// their own switch, `linkrift_model::mutation::armed` (the model does not depend on this
/// crate).
pub fn mutated(name: &str) -> bool {
    #[cfg(feature = "failpoints")]
    return fail::eval(name, |_| ()).is_some();
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = name;
        false
    }
}

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

/// Fails with an I/O error when the failpoint `name` is armed and fires; the error's text
/// is the failpoint's value (`raft.flush_error=return(No space left on device)`), if any.
#[inline]
pub fn error_if_armed(name: &str) -> std::io::Result<()> {
    #[cfg(feature = "failpoints")]
    if let Some(text) = fail::eval(name, |value| value) {
        let text = text.unwrap_or_else(|| format!("failpoint {name}"));
        return Err(std::io::Error::other(text));
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
    Ok(())
}
