//! How far a replica is behind its leader: the latest moment up to which it is known to
//! have applied everything the group had committed, so that "lag" is the time since then.
//!
//! A follower learns the leader's commit index from every `AppendEntries` it accepts (a
//! heartbeat every 300 ms carries one); once its state machine has applied up to that
//! index, it is current as of the moment the request arrived. A leader is current as of the
//! last moment a quorum acknowledged it (openraft's `millis_since_quorum_ack`): until then
//! no other leader can have committed anything, and it applies what it commits itself. A
//! replica cut off from its leader, or a leader cut off from its quorum, falls behind by
//! the time that has passed, whatever it has applied.
//!
//! Reading the lag is two atomic loads and a clock read: the redirect path asks it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Commit indexes heard and not yet applied, at most: a follower that falls this far
/// behind keeps the newest (a later one applied makes it current as of a later moment).
const PENDING: usize = 256;

/// One replica's freshness.
pub struct Freshness {
    base: Instant,
    /// Nanoseconds after `base`, plus one, up to which the replica is current (0: never).
    current: AtomicU64,
    /// The last applied log index, plus one (0: nothing applied).
    applied: AtomicU64,
    /// Commit indexes heard from the leader and not yet applied here, with when.
    pending: Mutex<VecDeque<(u64, u64)>>,
}

impl Default for Freshness {
    fn default() -> Self {
        Self::new()
    }
}

impl Freshness {
    /// A replica that has never been current.
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            current: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            pending: Mutex::new(VecDeque::new()),
        }
    }

    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64 + 1
    }

    fn advance(&self, to: u64) {
        self.current.fetch_max(to, Ordering::AcqRel);
    }

    /// A follower accepted an `AppendEntries` from its leader, which had committed up to
    /// `commit` (`None`: nothing yet).
    pub fn heard(&self, commit: Option<u64>) {
        let at = self.now();
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        match commit {
            Some(c) if c + 1 > self.applied.load(Ordering::Acquire) => {
                if pending.len() == PENDING {
                    pending.pop_front();
                }
                pending.push_back((at, c));
            }
            _ => self.advance(at),
        }
    }

    /// The state machine has applied up to log index `index`.
    pub fn applied(&self, index: u64) {
        self.applied.fetch_max(index + 1, Ordering::AcqRel);
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let mut newest = None;
        while let Some(&(at, c)) = pending.front() {
            if c > index {
                break;
            }
            newest = Some(at);
            pending.pop_front();
        }
        if let Some(at) = newest {
            self.advance(at);
        }
    }

    /// The leader heard from a quorum `ago`.
    pub fn confirmed(&self, ago: Duration) {
        // (Not before this replica was opened: it knows nothing of that time.)
        if let Some(at) = self.now().checked_sub(ago.as_nanos() as u64) {
            self.advance(at.max(1));
        }
    }

    /// How long ago the replica was last known current; `None` if it never was.
    pub fn lag(&self) -> Option<Duration> {
        match self.current.load(Ordering::Acquire) {
            0 => None,
            at => Some(Duration::from_nanos(self.now().saturating_sub(at))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_is_current_once_it_has_applied_what_its_leader_had_committed() {
        let f = Freshness::new();
        assert_eq!(f.lag(), None, "never heard from a leader");
        f.applied(4);
        f.heard(Some(9));
        assert_eq!(f.lag(), None, "behind the commit index it heard");
        f.applied(8);
        assert_eq!(f.lag(), None, "still one short");
        f.applied(9);
        let lag = f.lag().expect("current as of the request");
        assert!(lag < Duration::from_secs(5), "{lag:?}");
        // Heard again with everything applied: current as of now.
        std::thread::sleep(Duration::from_millis(200));
        let before = f.lag().unwrap();
        f.heard(Some(9));
        assert!(f.lag().unwrap() < before);
        // And it ages while nothing is heard.
        std::thread::sleep(Duration::from_millis(20));
        assert!(f.lag().unwrap() >= Duration::from_millis(20));
    }

    #[test]
    fn nothing_committed_yet_is_current_and_a_leader_is_current_as_of_its_quorum() {
        let f = Freshness::new();
        f.heard(None);
        assert!(f.lag().is_some());
        let l = Freshness::new();
        l.confirmed(Duration::from_secs(3600));
        assert_eq!(
            l.lag(),
            None,
            "a quorum heard before the replica was opened"
        );
        std::thread::sleep(Duration::from_millis(1000));
        l.confirmed(Duration::from_millis(800));
        assert!(l.lag().unwrap() >= Duration::from_millis(800));
        l.confirmed(Duration::ZERO);
        // An older confirmation never moves it back.
        l.confirmed(Duration::from_millis(900));
        assert!(l.lag().unwrap() < Duration::from_millis(800));
    }

    #[test]
    fn a_follower_far_behind_keeps_only_the_newest_commit_indexes() {
        let f = Freshness::new();
        for c in 0..(PENDING as u64 * 2) {
            f.heard(Some(c + 100));
        }
        assert_eq!(f.pending.lock().unwrap().len(), PENDING);
        f.applied(10_000);
        assert!(f.pending.lock().unwrap().is_empty());
        assert!(f.lag().is_some());
    }
}
