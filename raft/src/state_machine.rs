//! The application's state machine, and its adapter to openraft with snapshots as files.
//!
//! The application implements [`StateMachine`]: a deterministic `apply`, and a way to write
//! its whole state out and read it back. [`GroupStateMachine`] wraps it for openraft: it
//! decodes commands, tracks the last applied log id and membership, and keeps the group's
//! latest snapshot as `current.snap` in the group's own directory.
//!
//! A snapshot file is self-describing and checksummed ([`crate::snapshot_file`]). The whole
//! file is what a leader streams to a follower, so the follower's copy is the same file,
//! checked before it is restored. A snapshot is written to a temporary file, synced and
//! renamed into place (the directory synced after), and never replaces a newer one, so
//! after a crash `current.snap` is always a complete snapshot. A snapshot that cannot be
//! written or installed trips the node's [`StorageFault`].

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, RaftSnapshotBuilder,
    StorageError, StoredMembership,
};
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use crate::codec;
use crate::fault::StorageFault;
use crate::freshness::Freshness;
use crate::proposer::Batch;
use crate::snapshot_file;
use crate::types::{NodeId, Payload, TypeConfig};

/// What the application replicates. `apply` must be deterministic: every replica applies
/// the same commands in the same order and must reach the same state.
pub trait StateMachine: Send + Sync + 'static {
    /// A change proposed through [`crate::Group::write`].
    type Command: Serialize + DeserializeOwned + Send + 'static;
    /// What applying a command answers.
    type Response: Serialize + DeserializeOwned + Send + 'static;

    /// Applies one committed command, from the log entry at `index` (an entry may carry
    /// several commands).
    fn apply(&mut self, index: u64, command: Self::Command) -> Self::Response;

    /// The state now reflects every entry up to `index`: called after each entry (also
    /// those without commands: blank and membership entries) and after a snapshot is
    /// restored, with its last index. For state machines that keep a change feed.
    fn advance(&mut self, _index: u64) {}

    /// Writes the whole state.
    fn snapshot(&self, out: &mut dyn Write) -> io::Result<()>;

    /// Replaces the whole state with one written by [`StateMachine::snapshot`].
    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()>;
}

use snapshot_file::Meta;

const CURRENT: &str = "current.snap";
const INCOMING: &str = "incoming.part";

/// The application state plus what Raft needs to know about it.
pub struct Applied<S> {
    /// The application's state machine.
    pub state: S,
    /// Id of the last entry applied.
    pub last_applied: Option<LogId<NodeId>>,
    /// The last membership applied.
    pub membership: StoredMembership<NodeId, BasicNode>,
}

struct Shared<S> {
    applied: RwLock<Applied<S>>,
    dir: PathBuf,
    /// Metadata of `current.snap`; held while replacing or opening it.
    current: Mutex<Option<Meta>>,
    seq: AtomicU64,
    fault: StorageFault,
}

/// Read access to a group's applied state.
pub struct StateReader<S>(Arc<Shared<S>>);

impl<S> Clone for StateReader<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<S> StateReader<S> {
    /// Locks the applied state for reading. Applying waits while the guard lives.
    pub fn read(&self) -> RwLockReadGuard<'_, Applied<S>> {
        self.0.applied.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// openraft's view of one group's [`StateMachine`].
pub struct GroupStateMachine<S> {
    shared: Arc<Shared<S>>,
    freshness: Arc<Freshness>,
}

impl<S> Clone for GroupStateMachine<S> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            freshness: self.freshness.clone(),
        }
    }
}

fn sm_err(
    fault: &StorageFault,
    verb: ErrorVerb,
) -> impl FnOnce(io::Error) -> StorageError<NodeId> + '_ {
    move |e| {
        let e = StorageError::from_io_error(ErrorSubject::StateMachine, verb, e);
        fault.report("snapshot", &e);
        e
    }
}

fn snap_err<'a>(
    fault: &'a StorageFault,
    meta: Option<&Meta>,
    verb: ErrorVerb,
) -> impl FnOnce(io::Error) -> StorageError<NodeId> + 'a {
    let subject = match meta {
        Some(m) => ErrorSubject::Snapshot(Some(m.signature())),
        None => ErrorSubject::Snapshot(None),
    };
    move |e| {
        let e = StorageError::from_io_error(subject, verb, e);
        fault.report("snapshot", &e);
        e
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(format!("snapshot task failed: {e}"))))
}

impl<S: StateMachine> GroupStateMachine<S> {
    /// Opens the state machine of a group whose files live in `dir`: `state` is restored
    /// from the latest snapshot there, if any, and leftovers of interrupted transfers are
    /// removed.
    ///
    /// Snapshots that cannot be written or installed later are reported to `fault`.
    pub fn open(dir: &Path, mut state: S, fault: StorageFault) -> io::Result<Self> {
        if !dir.exists() {
            fs::create_dir_all(dir)?;
            if let Some(parent) = dir.parent() {
                crate::durable::sync_dir(parent)?;
            }
        }
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if path.file_name().is_some_and(|n| n != CURRENT) {
                fs::remove_file(&path)?;
            }
        }
        let current = dir.join(CURRENT);
        let mut applied_meta = None;
        if current.exists() {
            let (meta, mut body) = snapshot_file::open_verified(&current)?;
            state.restore(&mut body)?;
            state.advance(meta.last_log_id.map_or(0, |l| l.index));
            applied_meta = Some(meta);
        }
        let applied = Applied {
            state,
            last_applied: applied_meta.as_ref().and_then(|m| m.last_log_id),
            membership: applied_meta
                .as_ref()
                .map(|m| m.last_membership.clone())
                .unwrap_or_default(),
        };
        let freshness = Arc::new(Freshness::new());
        if let Some(last) = applied.last_applied {
            freshness.applied(last.index);
        }
        Ok(Self {
            freshness,
            shared: Arc::new(Shared {
                applied: RwLock::new(applied),
                dir: dir.to_path_buf(),
                current: Mutex::new(applied_meta),
                seq: AtomicU64::new(0),
                fault,
            }),
        })
    }

    /// A reader of the applied state.
    pub fn reader(&self) -> StateReader<S> {
        StateReader(self.shared.clone())
    }

    /// How far behind its leader this replica is: told of every entry applied here.
    pub fn freshness(&self) -> Arc<Freshness> {
        self.freshness.clone()
    }
}

impl<S> Shared<S> {
    fn write_lock(&self) -> std::sync::RwLockWriteGuard<'_, Applied<S>> {
        self.applied.write().unwrap_or_else(|p| p.into_inner())
    }

    fn temp_path(&self) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("tmp-{n}.part"))
    }

    /// Makes the synced file `tmp` the current snapshot, unless a newer one is already
    /// current. Returns whether it did.
    fn promote(&self, tmp: &Path, meta: &Meta) -> io::Result<bool> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current
            .as_ref()
            .is_some_and(|c| c.last_log_id > meta.last_log_id)
        {
            fs::remove_file(tmp)?;
            return Ok(false);
        }
        fs::rename(tmp, self.dir.join(CURRENT))?;
        fs::File::open(&self.dir)?.sync_all()?;
        *current = Some(meta.clone());
        Ok(true)
    }

    /// Opens the current snapshot. Opening under the lock that `promote` takes makes the
    /// file and its metadata belong together; an open file survives a later replacement.
    fn open_current(&self) -> io::Result<Option<Snapshot<TypeConfig>>> {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let Some(meta) = current.clone() else {
            return Ok(None);
        };
        let file = fs::File::open(self.dir.join(CURRENT))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        }))
    }
}

/// Builds snapshots of a group in the background while it keeps applying.
pub struct GroupSnapshotBuilder<S> {
    shared: Arc<Shared<S>>,
}

impl<S: StateMachine> RaftSnapshotBuilder<TypeConfig> for GroupSnapshotBuilder<S> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let shared = self.shared.clone();
        let meta = blocking(move || {
            let tmp = shared.temp_path();
            let meta = {
                let applied = shared.applied.read().unwrap_or_else(|p| p.into_inner());
                let meta = Meta {
                    last_log_id: applied.last_applied,
                    last_membership: applied.membership.clone(),
                    snapshot_id: snapshot_id(
                        applied.last_applied,
                        shared.seq.fetch_add(1, Ordering::Relaxed),
                    ),
                };
                snapshot_file::write(&tmp, &meta, |out| applied.state.snapshot(out))?;
                meta
            };
            shared.promote(&tmp, &meta)?;
            Ok(meta)
        })
        .await
        .map_err(sm_err(&self.shared.fault, ErrorVerb::Write))?;
        tracing::debug!(snapshot = %meta.snapshot_id, "built snapshot");
        let snapshot = self.shared.open_current().map_err(snap_err(
            &self.shared.fault,
            Some(&meta),
            ErrorVerb::Read,
        ))?;
        snapshot.ok_or_else(|| {
            snap_err(&self.shared.fault, Some(&meta), ErrorVerb::Read)(io::Error::other(
                "snapshot vanished",
            ))
        })
    }
}

fn snapshot_id(last: Option<LogId<NodeId>>, seq: u64) -> String {
    match last {
        Some(id) => format!(
            "{}-{}-{}-{seq}",
            id.leader_id.term, id.leader_id.node_id, id.index
        ),
        None => format!("empty-{seq}"),
    }
}

impl<S: StateMachine> RaftStateMachine<TypeConfig> for GroupStateMachine<S> {
    type SnapshotBuilder = GroupSnapshotBuilder<S>;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        let applied = self
            .shared
            .applied
            .read()
            .unwrap_or_else(|p| p.into_inner());
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Payload>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        crate::failpoint::crash_if_armed(crate::failpoint::APPLY);
        let mut applied = self.shared.write_lock();
        let mut responses = Vec::new();
        for entry in entries {
            applied.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => Payload::default(),
                EntryPayload::Normal(Payload(bytes)) => {
                    // Every replica treats an undecodable entry or command the same way,
                    // so they stay identical; the proposer gets an empty response that it
                    // cannot decode and reports as such.
                    let Batch(commands) = codec::decode(&bytes).unwrap_or_else(|e| {
                        tracing::error!(log_id = %entry.log_id, error = %e, "skipping undecodable entry");
                        Batch::default()
                    });
                    let responses = commands
                        .into_iter()
                        .map(|Payload(command)| match codec::decode::<S::Command>(&command) {
                            Ok(command) => Payload(codec::encode(
                                &applied.state.apply(entry.log_id.index, command),
                            )),
                            Err(e) => {
                                tracing::error!(log_id = %entry.log_id, error = %e, "skipping undecodable command");
                                Payload::default()
                            }
                        })
                        .collect();
                    Payload(codec::encode(&Batch(responses)))
                }
                EntryPayload::Membership(m) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), m);
                    Payload::default()
                }
            };
            applied.state.advance(entry.log_id.index);
            responses.push(response);
        }
        let last = applied.last_applied;
        drop(applied);
        if let Some(last) = last {
            self.freshness.applied(last.index);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        GroupSnapshotBuilder {
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<tokio::fs::File>, StorageError<NodeId>> {
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.shared.dir.join(INCOMING))
            .await
            .map_err(snap_err(&self.shared.fault, None, ErrorVerb::Write))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        mut snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError<NodeId>> {
        let fault = self.shared.fault.clone();
        let err = |verb| snap_err(&fault, Some(meta), verb);
        // Copy whatever handle we were given into a file of our own, then check it
        // describes the snapshot openraft says it is before applying it.
        let tmp = self.shared.temp_path();
        snapshot.flush().await.map_err(err(ErrorVerb::Read))?;
        snapshot
            .seek(io::SeekFrom::Start(0))
            .await
            .map_err(err(ErrorVerb::Read))?;
        let mut out = tokio::fs::File::create(&tmp)
            .await
            .map_err(err(ErrorVerb::Write))?;
        tokio::io::copy(&mut *snapshot, &mut out)
            .await
            .map_err(err(ErrorVerb::Write))?;
        out.sync_all().await.map_err(err(ErrorVerb::Write))?;
        drop(out);
        drop(snapshot);

        let shared = self.shared.clone();
        let expected = meta.clone();
        blocking(move || {
            // The whole body is checked against its checksum before any of it is applied.
            let (header, mut input) = snapshot_file::open_verified(&tmp)?;
            if header != expected {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "snapshot file is {} but {} was announced",
                        header.snapshot_id, expected.snapshot_id
                    ),
                ));
            }
            {
                let mut applied = shared.write_lock();
                applied.state.restore(&mut input)?;
                applied
                    .state
                    .advance(expected.last_log_id.map_or(0, |l| l.index));
                applied.last_applied = expected.last_log_id;
                applied.membership = expected.last_membership.clone();
            }
            shared.promote(&tmp, &expected)?;
            let _ = fs::remove_file(shared.dir.join(INCOMING));
            Ok(())
        })
        .await
        .map_err(err(ErrorVerb::Write))?;
        if let Some(last) = meta.last_log_id {
            self.freshness.applied(last.index);
        }
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        self.shared
            .open_current()
            .map_err(snap_err(&self.shared.fault, None, ErrorVerb::Read))
    }
}
