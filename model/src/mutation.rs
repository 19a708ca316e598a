//! Deliberate bugs for the chaos tests (`scripts/chaos --mutation NAME`): a run must flag
//! each one, which shows its checkers can see that kind of loss. Built only with the
//! `failpoints` feature, which release builds never enable; without it [`armed`] is
//! `false`. A run arms one through the `FAILPOINTS` environment variable
//! (`mutation.skip_dedupe=return`), for the whole life of the process.

/// The shard state machine forgets nothing but looks nothing up: a request applied again
/// (a retry with the same `Idempotency-Key`) is applied twice.
pub const SKIP_DEDUPE: &str = "mutation.skip_dedupe";

/// Whether the deliberate bug `name` is armed. Read the failpoint registry: a caller on a
/// hot path keeps the answer (the bug is armed at start-up).
pub fn armed(name: &str) -> bool {
    #[cfg(feature = "failpoints")]
    return fail::eval(name, |_| ()).is_some();
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = name;
        false
    }
}
