//! [`StorageFault`]: the node's latch for the first storage error, after which it fail-stops.
//!
//! sled latches its first I/O error for the whole database, and openraft stops a group for
//! good on a storage error. A node past that point can no longer keep its replicas current,
//! so it must not answer as if it could: whoever meets a failed write (the flusher, a log
//! store, a snapshot, the click spool or the roll-up log) reports it here. The first report
//! trips the latch: it is logged once and counted in `storage_faults_total{source}`; replicas
//! stop serving reads ([`StorageFault::is_tripped`], one atomic load, cheap on the redirect
//! path); readiness answers with [`StorageFault::reason`]; and the process exits
//! ([`StorageFault::tripped`]) so that its supervisor restarts it on a healthy disk.

use std::fmt::Display;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

/// The node's storage fault latch. Cheap to clone; every clone is the same latch.
#[derive(Clone)]
pub struct StorageFault(Arc<Latch>);

struct Latch {
    tripped: AtomicBool,
    reason: watch::Sender<Option<Arc<str>>>,
}

impl Default for StorageFault {
    fn default() -> Self {
        Self(Arc::new(Latch {
            tripped: AtomicBool::new(false),
            reason: watch::channel(None).0,
        }))
    }
}

impl std::fmt::Debug for StorageFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StorageFault").field(&self.reason()).finish()
    }
}

impl StorageFault {
    /// Reports that `source` (a short fixed name: `raft_log`, `flush`, `snapshot`, ...)
    /// failed to write or read what it must trust. The first report trips the latch and is
    /// logged; every report is counted.
    pub fn report(&self, source: &'static str, error: &dyn Display) {
        metrics::counter!("storage_faults_total", "source" => source).increment(1);
        let reason: Arc<str> = format!("{source}: {error}").into();
        let first = self.0.reason.send_if_modified(|r| {
            if r.is_some() {
                return false;
            }
            *r = Some(reason.clone());
            true
        });
        if first {
            self.0.tripped.store(true, Ordering::Release);
            tracing::error!(%source, error = %error,
                "storage failed: this node stops serving and exits, to be restarted on a healthy disk");
        }
    }

    /// Whether a storage error has been reported.
    #[inline]
    pub fn is_tripped(&self) -> bool {
        self.0.tripped.load(Ordering::Acquire)
    }

    /// The first storage error reported, if any.
    pub fn reason(&self) -> Option<Arc<str>> {
        self.0.reason.borrow().clone()
    }

    /// Resolves with the first storage error, once one is reported.
    pub async fn tripped(&self) -> Arc<str> {
        let mut rx = self.0.reason.subscribe();
        let seen = rx
            .wait_for(Option::is_some)
            .await
            .expect("the latch holds its own sender");
        seen.clone().expect("waited for a reason")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_report_trips_and_later_ones_keep_its_reason() {
        let fault = StorageFault::default();
        assert!(!fault.is_tripped());
        assert_eq!(fault.reason(), None);
        let waiter = tokio::spawn({
            let fault = fault.clone();
            async move { fault.tripped().await }
        });
        fault.report("flush", &"No space left on device");
        fault.report("snapshot", &"Input/output error");
        assert!(fault.is_tripped());
        assert_eq!(
            fault.reason().as_deref(),
            Some("flush: No space left on device")
        );
        assert_eq!(&*waiter.await.unwrap(), "flush: No space left on device");
        // Already tripped: resolves at once.
        assert_eq!(&*fault.tripped().await, "flush: No space left on device");
    }
}
