//! The Raft log of each group, on sled.
//!
//! [`GroupLog`] is the storage contract: ordered entries by index, a few metadata values,
//! and a flush that makes earlier writes durable. [`SledGroupLog`] keeps one group in two
//! trees of the node's single sled `Db` (`g/<id>/log`, keyed by big-endian index so sled's
//! order is log order, and `g/<id>/meta`). [`LogStore`] adapts any `GroupLog` to openraft.
//!
//! Durability: openraft is told an append is complete (`LogFlushed`), and `save_vote` and
//! `truncate` return, only after a sync to the device that covers the write. Purge syncs the
//! new purge point before deleting entries, so a crash between the two leaves a consistent
//! log state.

use std::fmt::Debug;
use std::future::Future;
use std::io;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, LogId, RaftLogReader, StorageError, Vote};

use crate::codec;
use crate::fault::StorageFault;
use crate::flush::{sled_to_io, FlushDone, Flusher};
use crate::types::{GroupId, NodeId, TypeConfig};

/// Durable, ordered storage for one group's log. Implementations own their keyspace; all
/// methods apply immediately but are only durable after [`GroupLog::flush_then`] fires.
pub trait GroupLog: Clone + Send + Sync + 'static {
    /// Inserts (or overwrites) encoded entries by index.
    fn append(&self, entries: Vec<(u64, Vec<u8>)>) -> io::Result<()>;
    /// Encoded entries with index in `[start, end)` (`end` `None`: to the last), in order.
    fn range(&self, start: u64, end: Option<u64>) -> io::Result<Vec<Vec<u8>>>;
    /// The encoded entry with the highest index.
    fn last(&self) -> io::Result<Option<Vec<u8>>>;
    /// Removes every entry with index `>= index`.
    fn truncate_from(&self, index: u64) -> io::Result<()>;
    /// Removes every entry with index `<= index`.
    fn purge_through(&self, index: u64) -> io::Result<()>;
    /// A metadata value (vote, committed, last purged).
    fn get_meta(&self, key: &str) -> io::Result<Option<Vec<u8>>>;
    /// Sets a metadata value.
    fn put_meta(&self, key: &str, value: Vec<u8>) -> io::Result<()>;
    /// Calls `done` once every write made before this call is durable.
    fn flush_then(&self, done: FlushDone);
    /// Returns once every write made before this call is durable.
    fn flush(&self) -> impl Future<Output = io::Result<()>> + Send;
}

/// One group's log in the node's sled database.
#[derive(Clone)]
pub struct SledGroupLog {
    log: sled::Tree,
    meta: sled::Tree,
    flusher: Flusher,
}

impl SledGroupLog {
    /// Opens (creating if needed) the trees of `group` in `db`.
    pub fn open(db: &sled::Db, flusher: Flusher, group: GroupId) -> io::Result<Self> {
        let (log_name, meta_name) = Self::tree_names(group);
        Ok(Self {
            log: db.open_tree(log_name).map_err(sled_to_io)?,
            meta: db.open_tree(meta_name).map_err(sled_to_io)?,
            flusher,
        })
    }

    /// Deletes the trees of `group` from `db`.
    pub fn destroy(db: &sled::Db, group: GroupId) -> io::Result<()> {
        let (log_name, meta_name) = Self::tree_names(group);
        db.drop_tree(log_name).map_err(sled_to_io)?;
        db.drop_tree(meta_name).map_err(sled_to_io)?;
        Ok(())
    }

    fn tree_names(group: GroupId) -> (String, String) {
        (format!("g/{}/log", group.0), format!("g/{}/meta", group.0))
    }

    /// The vote this log holds, as a tombstone for its replica's release: the same term
    /// and candidate, never committed (a new replica must not take itself for a leader).
    pub fn released_vote(&self) -> io::Result<Option<Vote<NodeId>>> {
        let Some(bytes) = self.get_meta(VOTE)? else {
            return Ok(None);
        };
        let vote: Vote<NodeId> = codec::decode(&bytes)?;
        Ok(Some(Vote {
            leader_id: vote.leader_id,
            committed: false,
        }))
    }

    /// Gives a new, empty log `vote` as its vote (not durable until flushed).
    pub fn seed_vote(&self, vote: &Vote<NodeId>) -> io::Result<()> {
        self.put_meta(VOTE, codec::encode(vote))
    }

    /// The index of the last entry this log holds durably-or-not (its purge point when it
    /// holds none), read from the store itself rather than from openraft's metrics.
    pub fn last_index(&self) -> io::Result<Option<u64>> {
        if let Some(bytes) = self.last()? {
            let entry: Entry<TypeConfig> = codec::decode(&bytes)?;
            return Ok(Some(entry.log_id.index));
        }
        let purged = self.get_meta(LAST_PURGED)?;
        let purged: Option<LogId<NodeId>> = purged.map(|b| codec::decode(&b)).transpose()?;
        Ok(purged.map(|l| l.index))
    }

    /// The group a tree of this store belongs to, from the tree's name.
    pub fn group_of_tree(name: &str) -> Option<GroupId> {
        let rest = name.strip_prefix("g/")?;
        let (id, kind) = rest.split_once('/')?;
        matches!(kind, "log" | "meta")
            .then(|| id.parse().ok().map(GroupId))
            .flatten()
    }
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl GroupLog for SledGroupLog {
    fn append(&self, entries: Vec<(u64, Vec<u8>)>) -> io::Result<()> {
        let mut batch = sled::Batch::default();
        for (index, bytes) in entries {
            batch.insert(&key(index), bytes);
        }
        self.log.apply_batch(batch).map_err(sled_to_io)
    }

    fn range(&self, start: u64, end: Option<u64>) -> io::Result<Vec<Vec<u8>>> {
        let iter = match end {
            Some(end) if end <= start => return Ok(Vec::new()),
            Some(end) => self.log.range(key(start)..key(end)),
            None => self.log.range(key(start)..),
        };
        iter.map(|kv| kv.map(|(_, v)| v.to_vec()).map_err(sled_to_io))
            .collect()
    }

    fn last(&self) -> io::Result<Option<Vec<u8>>> {
        Ok(self
            .log
            .last()
            .map_err(sled_to_io)?
            .map(|(_, v)| v.to_vec()))
    }

    fn truncate_from(&self, index: u64) -> io::Result<()> {
        remove_keys(&self.log, self.log.range(key(index)..))
    }

    fn purge_through(&self, index: u64) -> io::Result<()> {
        remove_keys(&self.log, self.log.range(..=key(index)))
    }

    fn get_meta(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        Ok(self.meta.get(key).map_err(sled_to_io)?.map(|v| v.to_vec()))
    }

    fn put_meta(&self, key: &str, value: Vec<u8>) -> io::Result<()> {
        self.meta.insert(key, value).map(|_| ()).map_err(sled_to_io)
    }

    fn flush_then(&self, done: FlushDone) {
        self.flusher.flush_then(done)
    }

    fn flush(&self) -> impl Future<Output = io::Result<()>> + Send {
        let flusher = self.flusher.clone();
        async move { flusher.flush().await }
    }
}

fn remove_keys(tree: &sled::Tree, keys: sled::Iter) -> io::Result<()> {
    let mut batch = sled::Batch::default();
    for kv in keys {
        let (k, _) = kv.map_err(sled_to_io)?;
        batch.remove(k);
    }
    tree.apply_batch(batch).map_err(sled_to_io)
}

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// Adapts a [`GroupLog`] to openraft's log storage API. Every storage error it returns is
/// also reported to the node's [`StorageFault`]: openraft stops the group for good on one.
#[derive(Clone)]
pub struct LogStore<L> {
    log: L,
    fault: StorageFault,
}

impl<L: GroupLog> LogStore<L> {
    /// Wraps `log`, reporting its errors to `fault`.
    pub fn new(log: L, fault: StorageFault) -> Self {
        Self { log, fault }
    }

    /// Turns an I/O error into openraft's storage error, reporting it to the fault latch.
    fn err(
        &self,
        subject: ErrorSubject<NodeId>,
        verb: ErrorVerb,
    ) -> impl FnOnce(io::Error) -> StorageError<NodeId> + '_ {
        move |e| {
            let e = StorageError::from_io_error(subject, verb, e);
            self.fault.report("raft_log", &e);
            e
        }
    }

    fn logs_err(&self, verb: ErrorVerb) -> impl FnOnce(io::Error) -> StorageError<NodeId> + '_ {
        self.err(ErrorSubject::Logs, verb)
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        subject: ErrorSubject<NodeId>,
    ) -> Result<Option<T>, StorageError<NodeId>> {
        let bytes = self
            .log
            .get_meta(key)
            .map_err(self.err(subject.clone(), ErrorVerb::Read))?;
        bytes
            .map(|b| codec::decode(&b))
            .transpose()
            .map_err(|e| self.err(subject, ErrorVerb::Read)(e.into()))
    }

    fn write_meta<T: serde::Serialize>(
        &self,
        key: &str,
        value: &T,
        subject: ErrorSubject<NodeId>,
    ) -> Result<(), StorageError<NodeId>> {
        self.log
            .put_meta(key, codec::encode(value))
            .map_err(self.err(subject, ErrorVerb::Write))
    }

    fn decode_entries(
        &self,
        raw: Vec<Vec<u8>>,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        raw.iter()
            .map(|b| codec::decode(b).map_err(|e| self.logs_err(ErrorVerb::Read)(e.into())))
            .collect()
    }
}

impl<L: GroupLog> RaftLogReader<TypeConfig> for LogStore<L> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => Some(e + 1),
            Bound::Excluded(&e) => Some(e),
            Bound::Unbounded => None,
        };
        let raw = self
            .log
            .range(start, end)
            .map_err(self.logs_err(ErrorVerb::Read))?;
        self.decode_entries(raw)
    }
}

impl<L: GroupLog> RaftLogStorage<TypeConfig> for LogStore<L> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged: Option<LogId<NodeId>> = self.read_meta(LAST_PURGED, ErrorSubject::Logs)?;
        let last = match self.log.last().map_err(self.logs_err(ErrorVerb::Read))? {
            Some(bytes) => {
                let entry: Entry<TypeConfig> =
                    codec::decode(&bytes).map_err(|e| self.logs_err(ErrorVerb::Read)(e.into()))?;
                Some(entry.log_id)
            }
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.write_meta(VOTE, vote, ErrorSubject::Vote)?;
        self.log
            .flush()
            .await
            .map_err(self.err(ErrorSubject::Vote, ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.read_meta(VOTE, ErrorSubject::Vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // Not flushed: a lost committed index is only re-learned from the leader, and
        // entries up to it are re-applied on restart from the durable log either way.
        self.write_meta(COMMITTED, &committed, ErrorSubject::Store)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self
            .read_meta::<Option<LogId<NodeId>>>(COMMITTED, ErrorSubject::Store)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let encoded = entries
            .into_iter()
            .map(|e| (e.log_id.index, codec::encode(&e)))
            .collect();
        self.log
            .append(encoded)
            .map_err(self.logs_err(ErrorVerb::Write))?;
        self.log
            .flush_then(Box::new(move |result| callback.log_io_completed(result)));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.log
            .truncate_from(log_id.index)
            .map_err(self.logs_err(ErrorVerb::Delete))?;
        // Flushed so that a restart never resurrects entries a new leader replaced.
        self.log
            .flush()
            .await
            .map_err(self.logs_err(ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        // The purge point is synced before any entry goes, so no crash leaves a log that
        // starts later than its recorded purge point says.
        self.write_meta(LAST_PURGED, &log_id, ErrorSubject::Logs)?;
        self.log
            .flush()
            .await
            .map_err(self.logs_err(ErrorVerb::Write))?;
        self.log
            .purge_through(log_id.index)
            .map_err(self.logs_err(ErrorVerb::Delete))
    }
}
