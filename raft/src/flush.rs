//! Group commit for the whole node: one sync makes the writes of every group durable.
//!
//! sled writes to disk in the background every 500 ms, so a write is only durable after a
//! sync ([`DurableDb::sync`]: sled's flush, then an `fdatasync` of its file). Each group
//! asks the [`Flusher`] after it has written; the flusher task takes every request that
//! arrived while the previous sync ran and answers them all with a single sync. A request
//! is answered only by a sync that *started* after the request was made, so every write
//! made before asking is covered. A failed sync trips the node's [`StorageFault`]: sled
//! keeps failing after its first I/O error, so the node must stop.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::durable::DurableDb;
use crate::fault::StorageFault;

/// Times the flusher lets other ready tasks run before it flushes.
const GATHER_ROUNDS: usize = 2;

/// What to do once the flush covering a request has finished.
pub type FlushDone = Box<dyn FnOnce(io::Result<()>) + Send>;

/// Handle to the node's flusher task. Cheap to clone.
#[derive(Clone)]
pub struct Flusher {
    tx: mpsc::UnboundedSender<FlushDone>,
    stats: Arc<FlushStats>,
    /// Becomes true once the task has ended and let go of the database.
    ended: tokio::sync::watch::Receiver<bool>,
}

/// Counters that show how well flushes are batched.
#[derive(Debug, Default)]
pub struct FlushStats {
    /// Flush requests made by groups.
    pub requests: AtomicU64,
    /// Syncs actually performed.
    pub flushes: AtomicU64,
}

impl Flusher {
    /// Starts the flusher task for `db`, reporting a failed sync to `fault`. It ends once
    /// every handle is dropped.
    pub fn start(db: DurableDb, fault: StorageFault) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<FlushDone>();
        let stats = Arc::new(FlushStats::default());
        let task_stats = stats.clone();
        let (ended_tx, ended) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut batch = Vec::new();
            let mut last_sync = std::time::Instant::now();
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
                if crate::failpoint::mutated(crate::failpoint::ACK_BEFORE_SYNC) {
                    // The deliberate bug: durable before the sync.
                    for done in batch.drain(..) {
                        done(Ok(()));
                    }
                    if last_sync.elapsed() < std::time::Duration::from_secs(1) {
                        continue;
                    }
                }
                crate::failpoint::crash_if_armed(crate::failpoint::BEFORE_FLUSH);
                let started = std::time::Instant::now();
                last_sync = started;
                let result = sync(&db).await;
                metrics::histogram!("raft_sync_duration_seconds")
                    .record(started.elapsed().as_secs_f64());
                crate::failpoint::crash_if_armed(crate::failpoint::AFTER_FLUSH);
                task_stats.flushes.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = &result {
                    fault.report("raft_log_sync", e);
                }
                for done in batch.drain(..) {
                    done(match &result {
                        Ok(()) => Ok(()),
                        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                    });
                }
            }
            drop(db);
            let _ = ended_tx.send(true);
        });
        Self { tx, stats, ended }
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

    /// Resolves once every handle is dropped and the task has ended, i.e. once this
    /// flusher no longer keeps the database open. (It keeps no handle itself: call it,
    /// then drop the handles.)
    pub fn ended(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut ended = self.ended.clone();
        async move {
            // An error means the task is gone without saying so (a panic): ended as well.
            let _ = ended.wait_for(|e| *e).await;
        }
    }

    /// Batching counters since start.
    pub fn stats(&self) -> &FlushStats {
        &self.stats
    }
}

/// Syncs `db` on a blocking thread, or fails as the flush failpoint says.
async fn sync(db: &DurableDb) -> io::Result<()> {
    crate::failpoint::error_if_armed(crate::failpoint::FLUSH_ERROR)?;
    let db = db.clone();
    tokio::task::spawn_blocking(move || db.sync())
        .await
        .unwrap_or_else(|e| Err(io::Error::other(format!("the sync task failed: {e}"))))
}

/// sled's errors as I/O errors, keeping the kind when sled has one.
pub fn sled_to_io(e: sled::Error) -> io::Error {
    match e {
        sled::Error::Io(e) => e,
        corrupt @ sled::Error::Corruption { .. } => {
            io::Error::new(io::ErrorKind::InvalidData, corrupt.to_string())
        }
        other => io::Error::other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_flushes_and_each_is_answered_after_one() {
        let dir = tempfile::tempdir().unwrap();
        let durable = DurableDb::open(dir.path(), 1 << 20).unwrap();
        let db = durable.db().clone();
        let flusher = Flusher::start(durable, StorageFault::default());
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
            ended: tokio::sync::watch::channel(true).1,
        };
        assert!(flusher.flush().await.is_err());
    }

    #[tokio::test]
    async fn the_flusher_ends_once_its_last_handle_is_dropped_and_lets_the_database_go() {
        let dir = tempfile::tempdir().unwrap();
        let durable = DurableDb::open(dir.path(), 1 << 20).unwrap();
        let flusher = Flusher::start(durable, StorageFault::default());
        let other = flusher.clone();
        let ended = flusher.ended();
        tokio::pin!(ended);
        drop(flusher);
        // One handle is left: the task runs on.
        other.flush().await.unwrap();
        tokio::select! {
            biased;
            _ = ended.as_mut() => panic!("ended while a handle is left"),
            _ = std::future::ready(()) => {}
        }
        drop(other);
        tokio::time::timeout(std::time::Duration::from_secs(10), ended)
            .await
            .expect("the task ends with its last handle");
        // The task held the only database handle: it can be opened again.
        DurableDb::open(dir.path(), 1 << 20).unwrap();
    }
}
