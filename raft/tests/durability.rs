//! The log store reports nothing durable before a flush covers it: an append's completion
//! and `save_vote` wait for the flush the store asked for. The flush is held back by a
//! gate here, so a store that answered early would be caught.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use linkrift_raft::flush::{FlushDone, Flusher};
use linkrift_raft::log_store::{GroupLog, LogStore, SledGroupLog};
use linkrift_raft::{DurableDb, GroupId, NodeId, StorageFault, TypeConfig};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};

/// A sled group log whose flushes complete only when the test opens the gate.
#[derive(Clone)]
struct GatedLog {
    inner: SledGroupLog,
    held: Arc<Mutex<Vec<FlushDone>>>,
}

impl GatedLog {
    fn held(&self) -> usize {
        self.held.lock().unwrap().len()
    }

    /// Lets every held flush go through the real flusher.
    fn open_gate(&self) {
        for done in self.held.lock().unwrap().drain(..) {
            self.inner.flush_then(done);
        }
    }
}

impl GroupLog for GatedLog {
    fn append(&self, entries: Vec<(u64, Vec<u8>)>) -> std::io::Result<()> {
        self.inner.append(entries)
    }
    fn range(&self, start: u64, end: Option<u64>) -> std::io::Result<Vec<Vec<u8>>> {
        self.inner.range(start, end)
    }
    fn last(&self) -> std::io::Result<Option<Vec<u8>>> {
        self.inner.last()
    }
    fn truncate_from(&self, index: u64) -> std::io::Result<()> {
        self.inner.truncate_from(index)
    }
    fn purge_through(&self, index: u64) -> std::io::Result<()> {
        self.inner.purge_through(index)
    }
    fn get_meta(&self, key: &str) -> std::io::Result<Option<Vec<u8>>> {
        self.inner.get_meta(key)
    }
    fn put_meta(&self, key: &str, value: Vec<u8>) -> std::io::Result<()> {
        self.inner.put_meta(key, value)
    }
    fn flush_then(&self, done: FlushDone) {
        self.held.lock().unwrap().push(done);
    }
    async fn flush(&self) -> std::io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.flush_then(Box::new(move |r| {
            let _ = tx.send(r);
        }));
        rx.await
            .unwrap_or_else(|_| Err(std::io::Error::other("flusher gone")))
    }
}

fn entry(index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Blank,
    }
}

/// Waits (bounded) for `what` to hold; panics if it never does.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !f() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} never happened"));
}

/// Whether `task` is still running a moment from now (it is given 200 ms to finish).
async fn still_waiting<T>(task: &mut tokio::task::JoinHandle<T>) -> bool {
    tokio::time::timeout(Duration::from_millis(200), task)
        .await
        .is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_and_votes_complete_only_after_their_flush() {
    let dir = tempfile::tempdir().unwrap();
    let durable = DurableDb::open(&dir.path().join("raft.sled"), 1 << 20).unwrap();
    let db = durable.db().clone();
    let log = GatedLog {
        inner: SledGroupLog::open(
            &db,
            Flusher::start(durable, StorageFault::default()),
            GroupId(1),
        )
        .unwrap(),
        held: Arc::default(),
    };

    let mut store = LogStore::new(log.clone(), StorageFault::default());
    let mut append = tokio::spawn(async move { store.blocking_append([entry(1), entry(2)]).await });
    eventually("the append to ask for a flush", || log.held() == 1).await;
    // The flush is held: the append must still be waiting for it.
    assert!(
        still_waiting(&mut append).await,
        "append reported durable before its flush"
    );
    log.open_gate();
    append
        .await
        .unwrap()
        .expect("append completes once flushed");

    let mut store = LogStore::new(log.clone(), StorageFault::default());
    let mut vote = tokio::spawn(async move {
        let v: Vote<NodeId> = Vote::new(2, 1);
        store.save_vote(&v).await
    });
    eventually("the vote to ask for a flush", || log.held() == 1).await;
    assert!(
        still_waiting(&mut vote).await,
        "save_vote returned before its flush"
    );
    log.open_gate();
    vote.await.unwrap().expect("vote saved once flushed");

    let mut store = LogStore::new(log.clone(), StorageFault::default());
    assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id.map(|l| l.index), Some(2));
}
