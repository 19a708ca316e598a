//! Group commit for the whole node: one sled flush makes the writes of every group durable.
//!
//! sled writes to disk in the background every 500 ms, so a write is only durable after a
//! flush. Each group asks the [`Flusher`] to flush after it has written; the flusher task
//! takes every request that arrived while the previous flush ran and answers them all with
//! a single `flush_async`. A request is answered only by a flush that *started* after the
//! request was made, so every write made before asking is covered.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

/// Times the flusher lets other ready tasks run before it flushes.
const GATHER_ROUNDS: usize = 2;

/// What to do once the flush covering a request has finished.
pub type FlushDone = Box<dyn FnOnce(io::Result<()>) + Send>;

/// Handle to the node's flusher task. Cheap to clone.
#[derive(Clone)]
pub struct Flusher {
    tx: mpsc::UnboundedSender<FlushDone>,
    stats: Arc<FlushStats>,
}

/// Counters that show how well flushes are batched.
#[derive(Debug, Default)]
pub struct FlushStats {
    /// Flush requests made by groups.
    pub requests: AtomicU64,
    /// Flushes actually performed.
    pub flushes: AtomicU64,
}

impl Flusher {
    /// Starts the flusher task for `db`. It ends once every handle is dropped.
    pub fn start(db: sled::Db) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<FlushDone>();
        let stats = Arc::new(FlushStats::default());
        let task_stats = stats.clone();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while let Some(first) = rx.recv().await {
                batch.push(first);
                // Give the tasks that are ready to run (other groups about to append) a
                // turn before flushing, so one flush covers them too. Costs nothing when
                // the node is idle: there is nothing else to run.
                for _ in 0..GATHER_ROUNDS {
                    tokio::task::yield_now().await;
                    while let Ok(more) = rx.try_recv() {
                        batch.push(more);
                    }
                }
                crate::failpoint::crash_if_armed(crate::failpoint::BEFORE_FLUSH);
                let result = db.flush_async().await.map(|_| ()).map_err(sled_to_io);
                crate::failpoint::crash_if_armed(crate::failpoint::AFTER_FLUSH);
                task_stats.flushes.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = &result {
                    tracing::error!(error = %e, "sled flush failed");
                }
                for done in batch.drain(..) {
                    done(match &result {
                        Ok(()) => Ok(()),
                        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                    });
                }
            }
        });
        Self { tx, stats }
    }

    /// Calls `done` once everything written before this call is on disk.
    pub fn flush_then(&self, done: FlushDone) {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        if let Err(mpsc::error::SendError(done)) = self.tx.send(done) {
            done(Err(io::Error::other("the flusher has stopped")));
        }
    }

    /// Returns once everything written before this call is on disk.
    pub async fn flush(&self) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.flush_then(Box::new(move |r| {
            let _ = tx.send(r);
        }));
        rx.await
            .unwrap_or_else(|_| Err(io::Error::other("the flusher has stopped")))
    }

    /// Becomes dead once every handle is dropped and the task has ended, i.e. once this
    /// flusher no longer keeps the database open.
    pub fn liveness(&self) -> std::sync::Weak<FlushStats> {
        Arc::downgrade(&self.stats)
    }

    /// Batching counters since start.
    pub fn stats(&self) -> &FlushStats {
        &self.stats
    }
}

/// sled's errors as I/O errors, keeping the kind when sled has one.
pub fn sled_to_io(e: sled::Error) -> io::Error {
    match e {
        sled::Error::Io(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_flushes_and_each_is_answered_after_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let flusher = Flusher::start(db.clone());
        let mut waiters = tokio::task::JoinSet::new();
        for i in 0..200u32 {
            db.insert(i.to_be_bytes(), vec![1u8; 64]).unwrap();
            let flusher = flusher.clone();
            let flushes_before = flusher.stats().flushes.load(Ordering::SeqCst);
            waiters.spawn(async move {
                flusher.flush().await.unwrap();
                // Never answered before a flush has completed since the request was made.
                assert!(flusher.stats().flushes.load(Ordering::SeqCst) > flushes_before);
            });
        }
        while let Some(r) = waiters.join_next().await {
            r.unwrap();
        }
        let stats = flusher.stats();
        let (requests, flushes) = (
            stats.requests.load(Ordering::SeqCst),
            stats.flushes.load(Ordering::SeqCst),
        );
        assert_eq!(requests, 200);
        assert!(
            flushes < requests,
            "{flushes} flushes for {requests} requests: not batched"
        );
    }

    #[tokio::test]
    async fn requests_after_the_flusher_stopped_fail() {
        let (tx, rx) = mpsc::unbounded_channel::<FlushDone>();
        drop(rx);
        let flusher = Flusher {
            tx,
            stats: Arc::default(),
        };
        assert!(flusher.flush().await.is_err());
    }
}
