//! The owner of a node's background tasks: every task the node runs besides its actors and
//! Raft's own is spawned here, under a name, and stopped here.
//!
//! At shutdown the tasks stop in the reverse of the order they started (what started last
//! may depend on what started first, never the other way round): each in turn is
//! cancelled and waited for, and whatever has not ended by the deadline is aborted and
//! named in the log. A task ends when it is cancelled, at its next `.await`, unless it
//! asked to see the cancellation itself ([`Tasks::spawn_graceful`]) to finish its work.
//!
//! Short tasks (a call to another node, a release of a replica) are owned too: finished
//! ones are forgotten as new ones start.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A handle to the owner; clones share it.
#[derive(Clone, Default)]
pub struct Tasks {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Cancelled once shutdown begins: no task starts after that. (Each task has a token
    /// of its own, cancelled in turn.)
    closing: CancellationToken,
    running: Mutex<Vec<Running>>,
}

struct Running {
    name: &'static str,
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

impl Tasks {
    /// A new owner, with nothing running.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `task` under `name` until it ends or the owner stops it (at its next `.await`).
    pub fn spawn(&self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.spawn_graceful(name, move |stop| async move {
            tokio::select! {
                biased;
                _ = stop.cancelled() => {}
                _ = task => {}
            }
        });
    }

    /// Runs the task `make` returns under `name`; it is given the token that says it should
    /// stop, and is aborted only if it has not ended by the shutdown's deadline.
    pub fn spawn_graceful<F, Fut>(&self, name: &'static str, make: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        // Under the lock shutdown takes the list with: a task either starts before and is
        // stopped, or does not start.
        let mut running = self.running();
        if self.inner.closing.is_cancelled() {
            tracing::debug!(task = name, "not started: the node is shutting down");
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(task = name, "not started: no runtime on this thread");
            return;
        };
        let stop = CancellationToken::new();
        let handle = runtime.spawn(make(stop.clone()));
        running.retain(|r| !r.handle.is_finished());
        running.push(Running { name, stop, handle });
    }

    /// Whether shutdown has begun.
    pub fn is_closing(&self) -> bool {
        self.inner.closing.is_cancelled()
    }

    /// How many tasks have not ended.
    pub fn len(&self) -> usize {
        let mut running = self.running();
        running.retain(|r| !r.handle.is_finished());
        running.len()
    }

    /// Whether every task has ended.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops every task, the last started first, each waited for before the next is
    /// cancelled, all within `within`; the names of those aborted at the deadline. Tasks
    /// asked to start from now on do not.
    pub async fn shutdown(&self, within: Duration) -> Vec<&'static str> {
        let deadline = tokio::time::Instant::now() + within;
        let mut stopping = {
            let mut running = self.running();
            self.inner.closing.cancel();
            std::mem::take(&mut *running)
        };
        let mut aborted = Vec::new();
        while let Some(r) = stopping.pop() {
            r.stop.cancel();
            let abort = r.handle.abort_handle();
            if tokio::time::timeout_at(deadline, r.handle).await.is_err() {
                abort.abort();
                tracing::warn!(
                    task = r.name,
                    "did not stop by the shutdown deadline; aborted"
                );
                aborted.push(r.name);
            }
        }
        aborted
    }

    fn running(&self) -> std::sync::MutexGuard<'_, Vec<Running>> {
        self.inner.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records, when dropped, that its task has ended.
    struct Ended(&'static str, Arc<Mutex<Vec<&'static str>>>);
    impl Drop for Ended {
        fn drop(&mut self) {
            self.1.lock().unwrap().push(self.0);
        }
    }

    #[tokio::test]
    async fn tasks_stop_in_reverse_start_order_each_before_the_next() {
        let tasks = Tasks::new();
        let ended = Arc::new(Mutex::new(Vec::new()));
        for name in ["first", "second", "third"] {
            let guard = Ended(name, ended.clone());
            tasks.spawn(name, async move {
                let _guard = guard;
                std::future::pending::<()>().await
            });
        }
        assert_eq!(tasks.len(), 3);
        let aborted = tasks.shutdown(Duration::from_secs(5)).await;
        assert!(aborted.is_empty(), "{aborted:?}");
        assert_eq!(*ended.lock().unwrap(), ["third", "second", "first"]);
        assert!(tasks.is_empty());
    }

    #[tokio::test]
    async fn a_graceful_task_finishes_its_work_after_the_signal() {
        let tasks = Tasks::new();
        let flushed = Arc::new(Mutex::new(Vec::new()));
        let f = flushed.clone();
        tasks.spawn_graceful("flusher", move |stop| async move {
            stop.cancelled().await;
            tokio::task::yield_now().await;
            f.lock().unwrap().push("flushed");
        });
        assert!(tasks.shutdown(Duration::from_secs(5)).await.is_empty());
        assert_eq!(*flushed.lock().unwrap(), ["flushed"]);
    }

    #[tokio::test]
    async fn a_task_that_ignores_the_signal_is_aborted_at_the_deadline_and_named() {
        let tasks = Tasks::new();
        let ended = Arc::new(Mutex::new(Vec::new()));
        let guard = Ended("stubborn", ended.clone());
        tasks.spawn_graceful("stubborn", move |_stop| async move {
            let _guard = guard;
            std::future::pending::<()>().await
        });
        let began = tokio::time::Instant::now();
        let aborted = tasks.shutdown(Duration::from_millis(200)).await;
        assert_eq!(aborted, ["stubborn"]);
        assert!(began.elapsed() >= Duration::from_millis(200));
        // Aborted means dropped: wait for the runtime to have dropped it.
        while ended.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn nothing_starts_once_shutdown_is_over_and_finished_tasks_are_forgotten() {
        let tasks = Tasks::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tasks.spawn("short", async move {
            let _ = tx.send(());
        });
        rx.await.unwrap();
        // The short task has sent; it ends at once after.
        while !tasks.is_empty() {
            tokio::task::yield_now().await;
        }
        tasks.shutdown(Duration::from_secs(1)).await;
        assert!(tasks.is_closing());
        let ran = Arc::new(Mutex::new(false));
        let r = ran.clone();
        tasks.spawn("late", async move {
            *r.lock().unwrap() = true;
        });
        assert!(tasks.is_empty());
        tokio::task::yield_now().await;
        assert!(!*ran.lock().unwrap());
    }
}
