//! [`DurableDb`]: the node's sled database, with a flush that really reaches the device.
//!
//! sled 0.34.7's `flush` writes its buffers with `pwrite` and `sync_file_range` (Linux,
//! without io_uring). That starts write-back of the range and waits for it, but neither
//! flushes the device's write cache nor commits the file's size and metadata: after a power
//! cut the data can be gone. sled's only `fsync` runs in its background thread every 500 ms.
//! Items larger than a quarter of an I/O buffer are written to their own files in `blobs/`,
//! created and written without any sync at all.
//!
//! So [`DurableDb::sync`] runs sled's flush, then `fdatasync`s sled's log file `db`, then
//! `fsync`s every blob file it has not synced before and, when there was one, the `blobs/`
//! directory. Why this is correct:
//!
//! - `fsync`/`fdatasync` act on the inode, whichever descriptor wrote the pages: ours
//!   flushes what sled's descriptor wrote, and the device cache with it.
//! - A write-back error is reported to every descriptor open when it happened (Linux 4.13
//!   and later keep an error sequence per file); ours is opened before sled writes anything
//!   through the database, so no error that sled's own `sync_file_range` saw first is missed.
//! - `fdatasync` commits the file's size when it grew, which is all sled needs to read its
//!   segments back; the file's name is synced in its directory once, at open.
//! - sled's flush returns only once every write made before it is in the file, so a sync
//!   after it covers them; callers that batch (the [`crate::flush::Flusher`]) keep one sync
//!   for every writer waiting.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// sled's log file inside its directory.
const SLED_LOG: &str = "db";
/// sled's configuration file, written when the database is created.
const SLED_CONF: &str = "conf";
/// sled's directory of large items.
const SLED_BLOBS: &str = "blobs";

/// The node's sled database and what makes its writes durable. Cheap to clone.
#[derive(Clone)]
pub struct DurableDb {
    db: sled::Db,
    files: Arc<Mutex<SledFiles>>,
}

struct SledFiles {
    log: File,
    blobs: PathBuf,
    synced_blobs: HashSet<OsString>,
}

impl DurableDb {
    /// Opens sled at `path` (creating it if needed) with `cache_bytes` of cache, and syncs
    /// its files' names into their directories.
    pub fn open(path: &Path, cache_bytes: u64) -> io::Result<Self> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .open()
            .map_err(crate::flush::sled_to_io)?;
        Self::wrap(db, path)
    }

    /// Wraps a database sled opened at `path`.
    fn wrap(db: sled::Db, path: &Path) -> io::Result<Self> {
        let log = File::open(path.join(SLED_LOG))?;
        // sled writes its configuration once, when it creates the database, and never
        // syncs it.
        File::open(path.join(SLED_CONF))?.sync_all()?;
        log.sync_all()?;
        sync_dir(path)?;
        if let Some(parent) = path.parent() {
            sync_dir(parent)?;
        }
        Ok(Self {
            db,
            files: Arc::new(Mutex::new(SledFiles {
                log,
                blobs: path.join(SLED_BLOBS),
                synced_blobs: HashSet::new(),
            })),
        })
    }

    /// The database.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Blocks until every write made to the database before this call is on the device.
    /// Runs on a blocking thread (it waits for the disk).
    pub fn sync(&self) -> io::Result<()> {
        self.db.flush().map_err(crate::flush::sled_to_io)?;
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        files.log.sync_data()?;
        files.sync_new_blobs()
    }
}

impl SledFiles {
    /// Syncs the blob files that appeared since the last call, then their directory.
    fn sync_new_blobs(&mut self) -> io::Result<()> {
        let entries = match std::fs::read_dir(&self.blobs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut present = HashSet::new();
        let mut new = false;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if !self.synced_blobs.contains(&name) {
                File::open(entry.path())?.sync_all()?;
                new = true;
            }
            present.insert(name);
        }
        if new {
            sync_dir(&self.blobs)?;
        }
        // Forget what sled has removed, so the set stays as small as the directory.
        self.synced_blobs = present;
        Ok(())
    }
}

/// Syncs a directory, so that the names created, renamed or removed in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` so that after a crash `path` holds either its old content or
/// all of `bytes`: a synced temporary file renamed over it, then the directory synced.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other(format!("{} has no directory", path.display())))?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_items_land_in_blob_files_that_the_sync_covers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.sled");
        let durable = DurableDb::open(&path, 1 << 20).unwrap();
        durable.db().insert(b"small", vec![1u8; 64]).unwrap();
        // Far over a quarter of sled's I/O buffer: stored as a blob file.
        durable.db().insert(b"large", vec![2u8; 1 << 20]).unwrap();
        durable.sync().unwrap();
        let blobs = durable.files.lock().unwrap().synced_blobs.len();
        assert!(blobs >= 1, "the large item is not in a synced blob file");
        drop(durable);
        let durable = DurableDb::open(&path, 1 << 20).unwrap();
        assert_eq!(durable.db().get(b"large").unwrap().unwrap().len(), 1 << 20);
    }

    #[test]
    fn an_atomic_write_replaces_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.json");
        write_atomically(&path, b"first").unwrap();
        write_atomically(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["identity.json"]);
    }
}
