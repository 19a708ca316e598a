//! [`Disk`]: an in-memory filesystem that knows which of its bytes are durable.
//!
//! The model is the one a power cut shows on a journaling filesystem, as LazyFS models it:
//! names (create, mkdir, rename, unlink, rmdir) are durable as soon as they are made; a
//! file's contents and size are durable only up to its last `fsync`/`fdatasync`. A
//! [`Disk::power_cut`] puts every file back to what it held at its last sync (a file never
//! synced comes back empty) and keeps the tree of names as it is.
//!
//! Each file keeps its live bytes, its durable length and an undo log of what unsynced
//! writes and truncates replaced, so a sync costs nothing but clearing the log, however
//! large the file: a power cut replays the log backwards and restores the durable length.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::time::SystemTime;

/// An errno, as the FUSE layer answers it.
pub type Errno = i32;

/// The root directory's inode number.
pub const ROOT: u64 = 1;

/// What an inode is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
}

/// An inode's attributes.
#[derive(Clone, Copy, Debug)]
pub struct Attr {
    /// Its number.
    pub ino: u64,
    /// File or directory.
    pub kind: Kind,
    /// Length in bytes (files) or entries (directories).
    pub size: u64,
    /// Permission bits.
    pub perm: u16,
    /// Last change of contents.
    pub mtime: SystemTime,
}

struct File {
    data: Vec<u8>,
    durable_len: u64,
    /// What each unsynced change replaced: (offset, the bytes that were there), oldest first.
    undo: Vec<(u64, Vec<u8>)>,
}

enum Body {
    File(File),
    Dir(BTreeMap<OsString, u64>),
}

struct Inode {
    parent: u64,
    perm: u16,
    mtime: SystemTime,
    body: Body,
}

/// The filesystem.
pub struct Disk {
    inodes: HashMap<u64, Inode>,
    next: u64,
    /// Bytes of file contents held at most (`ENOSPC` past it), if set.
    capacity: Option<u64>,
    used: u64,
    /// Unsynced bytes forgotten by power cuts so far.
    pub forgotten: u64,
    /// Power cuts so far.
    pub cuts: u64,
}

fn ok_or<T>(value: Option<T>, errno: Errno) -> Result<T, Errno> {
    value.ok_or(errno)
}

impl Disk {
    /// An empty filesystem (its root directory only), holding at most `capacity` bytes of
    /// file contents if given.
    pub fn new(capacity: Option<u64>) -> Self {
        let root = Inode {
            parent: ROOT,
            perm: 0o755,
            mtime: SystemTime::now(),
            body: Body::Dir(BTreeMap::new()),
        };
        Self {
            inodes: HashMap::from([(ROOT, root)]),
            next: ROOT + 1,
            capacity,
            used: 0,
            forgotten: 0,
            cuts: 0,
        }
    }

    fn inode(&self, ino: u64) -> Result<&Inode, Errno> {
        ok_or(self.inodes.get(&ino), libc::ENOENT)
    }

    fn dir(&self, ino: u64) -> Result<&BTreeMap<OsString, u64>, Errno> {
        match &self.inode(ino)?.body {
            Body::Dir(entries) => Ok(entries),
            Body::File(_) => Err(libc::ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        match &mut ok_or(self.inodes.get_mut(&ino), libc::ENOENT)?.body {
            Body::Dir(entries) => Ok(entries),
            Body::File(_) => Err(libc::ENOTDIR),
        }
    }

    fn file_mut(&mut self, ino: u64) -> Result<&mut File, Errno> {
        match &mut ok_or(self.inodes.get_mut(&ino), libc::ENOENT)?.body {
            Body::File(f) => Ok(f),
            Body::Dir(_) => Err(libc::EISDIR),
        }
    }

    /// The attributes of `ino`.
    pub fn attr(&self, ino: u64) -> Result<Attr, Errno> {
        let inode = self.inode(ino)?;
        let (kind, size) = match &inode.body {
            Body::File(f) => (Kind::File, f.data.len() as u64),
            Body::Dir(entries) => (Kind::Dir, entries.len() as u64),
        };
        Ok(Attr {
            ino,
            kind,
            size,
            perm: inode.perm,
            mtime: inode.mtime,
        })
    }

    /// The inode `name` in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        ok_or(self.dir(parent)?.get(name).copied(), libc::ENOENT)
    }

    fn add(&mut self, parent: u64, name: &OsStr, perm: u16, body: Body) -> Result<u64, Errno> {
        if self.dir(parent)?.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let ino = self.next;
        self.next += 1;
        self.inodes.insert(
            ino,
            Inode {
                parent,
                perm,
                mtime: SystemTime::now(),
                body,
            },
        );
        self.dir_mut(parent)?.insert(name.to_os_string(), ino);
        Ok(ino)
    }

    /// Creates an empty file.
    pub fn create(&mut self, parent: u64, name: &OsStr, perm: u16) -> Result<u64, Errno> {
        let file = File {
            data: Vec::new(),
            durable_len: 0,
            undo: Vec::new(),
        };
        self.add(parent, name, perm, Body::File(file))
    }

    /// Creates an empty directory.
    pub fn mkdir(&mut self, parent: u64, name: &OsStr, perm: u16) -> Result<u64, Errno> {
        self.add(parent, name, perm, Body::Dir(BTreeMap::new()))
    }

    fn drop_inode(&mut self, ino: u64) {
        if let Some(Inode {
            body: Body::File(f),
            ..
        }) = self.inodes.remove(&ino)
        {
            self.used -= f.data.len() as u64 + undo_bytes(&f.undo);
        }
    }

    /// Removes the file `name`.
    pub fn unlink(&mut self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?;
        if self.attr(ino)?.kind == Kind::Dir {
            return Err(libc::EISDIR);
        }
        self.dir_mut(parent)?.remove(name);
        self.drop_inode(ino);
        Ok(())
    }

    /// Removes the empty directory `name`.
    pub fn rmdir(&mut self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?;
        if !self.dir(ino)?.is_empty() {
            return Err(libc::ENOTEMPTY);
        }
        self.dir_mut(parent)?.remove(name);
        self.inodes.remove(&ino);
        Ok(())
    }

    /// Moves `name` to `new_name` in `new_parent`, replacing a file or empty directory
    /// there (unless `no_replace`).
    pub fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?;
        self.dir(new_parent)?;
        let kind = self.attr(ino)?.kind;
        if kind == Kind::Dir && self.is_within(new_parent, ino) {
            return Err(libc::EINVAL);
        }
        if let Ok(target) = self.lookup(new_parent, new_name) {
            if target == ino {
                return Ok(());
            }
            if no_replace {
                return Err(libc::EEXIST);
            }
            match (kind, self.attr(target)?.kind) {
                (Kind::Dir, Kind::File) => return Err(libc::ENOTDIR),
                (Kind::File, Kind::Dir) => return Err(libc::EISDIR),
                (Kind::Dir, Kind::Dir) if !self.dir(target)?.is_empty() => {
                    return Err(libc::ENOTEMPTY)
                }
                _ => {}
            }
            self.dir_mut(new_parent)?.remove(new_name);
            self.drop_inode(target);
        }
        self.dir_mut(parent)?.remove(name);
        self.dir_mut(new_parent)?
            .insert(new_name.to_os_string(), ino);
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.parent = new_parent;
        }
        Ok(())
    }

    /// Whether directory `ino` is `ancestor` or inside it.
    fn is_within(&self, mut ino: u64, ancestor: u64) -> bool {
        loop {
            if ino == ancestor {
                return true;
            }
            match self.inodes.get(&ino) {
                Some(inode) if ino != ROOT => ino = inode.parent,
                _ => return false,
            }
        }
    }

    /// The entries of directory `ino`, with "." and "..".
    pub fn entries(&self, ino: u64) -> Result<Vec<(u64, Kind, OsString)>, Errno> {
        let dir = self.dir(ino)?;
        let parent = self.inode(ino)?.parent;
        let mut out = vec![
            (ino, Kind::Dir, ".".into()),
            (parent, Kind::Dir, "..".into()),
        ];
        for (name, &child) in dir {
            out.push((child, self.attr(child)?.kind, name.clone()));
        }
        Ok(out)
    }

    /// Up to `size` bytes of file `ino` from `offset`.
    pub fn read(&mut self, ino: u64, offset: u64, size: usize) -> Result<&[u8], Errno> {
        let file = self.file_mut(ino)?;
        let start = (offset as usize).min(file.data.len());
        let end = start.saturating_add(size).min(file.data.len());
        Ok(&file.data[start..end])
    }

    fn reserve(&mut self, more: u64) -> Result<(), Errno> {
        if self.capacity.is_some_and(|c| self.used + more > c) {
            return Err(libc::ENOSPC);
        }
        self.used += more;
        Ok(())
    }

    /// Writes `data` at `offset` of file `ino` (not durable until [`Disk::sync`]).
    pub fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Result<usize, Errno> {
        let len = self.file_mut(ino)?.data.len() as u64;
        let end = offset + data.len() as u64;
        let replaced = len.min(end).saturating_sub(offset);
        self.reserve(end.saturating_sub(len) + replaced)?;
        let file = self.file_mut(ino)?;
        if replaced > 0 {
            let (from, to) = (offset as usize, (offset + replaced) as usize);
            file.undo.push((offset, file.data[from..to].to_vec()));
        }
        if end > len {
            file.data.resize(end as usize, 0);
        }
        file.data[offset as usize..end as usize].copy_from_slice(data);
        self.touch(ino);
        Ok(data.len())
    }

    /// Sets the length of file `ino` (not durable until [`Disk::sync`]).
    pub fn truncate(&mut self, ino: u64, size: u64) -> Result<(), Errno> {
        let len = self.file_mut(ino)?.data.len() as u64;
        if size > len {
            self.reserve(size - len)?;
        }
        let file = self.file_mut(ino)?;
        if size < len {
            // The cut-off bytes stay accounted for in the undo log.
            file.undo.push((size, file.data[size as usize..].to_vec()));
        }
        file.data.resize(size as usize, 0);
        self.touch(ino);
        Ok(())
    }

    fn touch(&mut self, ino: u64) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.mtime = SystemTime::now();
        }
    }

    /// Sets the permission bits of `ino`.
    pub fn chmod(&mut self, ino: u64, perm: u16) -> Result<(), Errno> {
        ok_or(self.inodes.get_mut(&ino), libc::ENOENT)?.perm = perm;
        Ok(())
    }

    /// Makes file `ino`'s contents and length durable (`fsync`, `fdatasync`).
    pub fn sync(&mut self, ino: u64) -> Result<(), Errno> {
        let file = self.file_mut(ino)?;
        let freed = undo_bytes(&file.undo);
        file.undo.clear();
        file.durable_len = file.data.len() as u64;
        self.used -= freed;
        Ok(())
    }

    /// Forgets every write not yet synced: each file holds again what it held at its last
    /// sync. Returns how many bytes were forgotten.
    pub fn power_cut(&mut self) -> u64 {
        let mut forgotten = 0;
        let mut used = 0;
        for inode in self.inodes.values_mut() {
            let Body::File(file) = &mut inode.body else {
                continue;
            };
            for (offset, old) in file.undo.drain(..).rev() {
                forgotten += old.len() as u64;
                let end = offset as usize + old.len();
                if file.data.len() < end {
                    file.data.resize(end, 0);
                }
                file.data[offset as usize..end].copy_from_slice(&old);
            }
            forgotten += (file.data.len() as u64).saturating_sub(file.durable_len);
            file.data.resize(file.durable_len as usize, 0);
            used += file.data.len() as u64;
        }
        self.used = used;
        self.forgotten += forgotten;
        self.cuts += 1;
        forgotten
    }

    /// Bytes of file contents held (live and undo).
    pub fn used(&self) -> u64 {
        self.used
    }

    /// The most it holds, if limited.
    pub fn capacity_bytes(&self) -> Option<u64> {
        self.capacity
    }
}

fn undo_bytes(undo: &[(u64, Vec<u8>)]) -> u64 {
    undo.iter().map(|(_, b)| b.len() as u64).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents(disk: &mut Disk, ino: u64) -> Vec<u8> {
        disk.read(ino, 0, usize::MAX).unwrap().to_vec()
    }

    #[test]
    fn a_power_cut_keeps_what_was_synced_and_forgets_the_rest() {
        let mut disk = Disk::new(None);
        let f = disk.create(ROOT, "log".as_ref(), 0o644).unwrap();
        disk.write(f, 0, b"hello").unwrap();
        disk.sync(f).unwrap();
        disk.write(f, 5, b" world").unwrap(); // extends, unsynced
        disk.write(f, 0, b"J").unwrap(); // overwrites synced bytes, unsynced
        assert_eq!(contents(&mut disk, f), b"Jello world");
        assert_eq!(disk.power_cut(), 7);
        assert_eq!(contents(&mut disk, f), b"hello");
    }

    #[test]
    fn a_file_never_synced_comes_back_empty_and_names_stay() {
        let mut disk = Disk::new(None);
        let d = disk.mkdir(ROOT, "dir".as_ref(), 0o755).unwrap();
        let f = disk.create(d, "new".as_ref(), 0o644).unwrap();
        disk.write(f, 0, b"never synced").unwrap();
        disk.power_cut();
        assert_eq!(disk.lookup(d, "new".as_ref()), Ok(f));
        assert_eq!(contents(&mut disk, f), b"");
    }

    #[test]
    fn unsynced_truncates_and_rewrites_are_undone_in_order() {
        let mut disk = Disk::new(None);
        let f = disk.create(ROOT, "f".as_ref(), 0o644).unwrap();
        disk.write(f, 0, b"0123456789").unwrap();
        disk.sync(f).unwrap();
        disk.truncate(f, 4).unwrap();
        disk.write(f, 4, b"abcdefghijkl").unwrap();
        disk.write(f, 2, b"XY").unwrap();
        disk.truncate(f, 20).unwrap();
        disk.power_cut();
        assert_eq!(contents(&mut disk, f), b"0123456789");
        // And a sync in between is a new durable point.
        disk.write(f, 10, b"ab").unwrap();
        disk.sync(f).unwrap();
        disk.write(f, 0, b"zz").unwrap();
        disk.power_cut();
        assert_eq!(contents(&mut disk, f), b"0123456789ab");
    }

    #[test]
    fn a_rename_replaces_at_once_and_survives_a_cut() {
        let mut disk = Disk::new(None);
        let old = disk.create(ROOT, "id.json".as_ref(), 0o644).unwrap();
        disk.write(old, 0, b"old").unwrap();
        disk.sync(old).unwrap();
        let tmp = disk.create(ROOT, "id.json.tmp".as_ref(), 0o644).unwrap();
        disk.write(tmp, 0, b"new").unwrap();
        disk.sync(tmp).unwrap();
        disk.rename(
            ROOT,
            "id.json.tmp".as_ref(),
            ROOT,
            "id.json".as_ref(),
            false,
        )
        .unwrap();
        disk.power_cut();
        let now = disk.lookup(ROOT, "id.json".as_ref()).unwrap();
        assert_eq!(contents(&mut disk, now), b"new");
        assert!(disk.lookup(ROOT, "id.json.tmp".as_ref()).is_err());
        assert_eq!(
            disk.rename(ROOT, "nope".as_ref(), ROOT, "x".as_ref(), false),
            Err(libc::ENOENT)
        );
    }

    #[test]
    fn directories_refuse_what_posix_refuses() {
        let mut disk = Disk::new(None);
        let d = disk.mkdir(ROOT, "d".as_ref(), 0o755).unwrap();
        disk.create(d, "f".as_ref(), 0o644).unwrap();
        assert_eq!(disk.rmdir(ROOT, "d".as_ref()), Err(libc::ENOTEMPTY));
        assert_eq!(disk.unlink(ROOT, "d".as_ref()), Err(libc::EISDIR));
        assert_eq!(disk.mkdir(ROOT, "d".as_ref(), 0o755), Err(libc::EEXIST));
        assert_eq!(
            disk.rename(ROOT, "d".as_ref(), d, "inside".as_ref(), false),
            Err(libc::EINVAL)
        );
        disk.unlink(d, "f".as_ref()).unwrap();
        disk.rmdir(ROOT, "d".as_ref()).unwrap();
        assert_eq!(disk.entries(ROOT).unwrap().len(), 2);
    }

    #[test]
    fn a_full_disk_refuses_writes_until_space_is_freed() {
        let mut disk = Disk::new(Some(10));
        let f = disk.create(ROOT, "f".as_ref(), 0o644).unwrap();
        disk.write(f, 0, b"12345678").unwrap();
        assert_eq!(disk.write(f, 8, b"abc"), Err(libc::ENOSPC));
        disk.sync(f).unwrap();
        disk.unlink(ROOT, "f".as_ref()).unwrap();
        assert_eq!(disk.used(), 0);
        let g = disk.create(ROOT, "g".as_ref(), 0o644).unwrap();
        assert_eq!(disk.write(g, 0, b"abcdefghij"), Ok(10));
    }
}
