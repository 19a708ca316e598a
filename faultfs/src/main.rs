//! `faultfs MOUNTPOINT [--capacity-mib N]`: mounts an in-memory filesystem ([`disk::Disk`])
//! at MOUNTPOINT that forgets, on command, every write not yet synced: the power cut of
//! the chaos tests (docs/RELIABILITY.md).
//!
//! - `SIGUSR1`: power cut. Every file goes back to what it held at its last
//!   `fsync`/`fdatasync`; names stay. The processes using the mount are to be SIGKILLed
//!   first (the harness does), as a power cut stops them too. Each cut prints
//!   `faultfs: power cut, N unsynced bytes forgotten`.
//! - `SIGTERM`, `SIGINT`: unmount and exit.
//!
//! It prints `faultfs: mounted MOUNTPOINT` once the mount is up. Every file is opened with
//! direct I/O, so no page cache above it holds bytes the cut forgot. It needs root (or
//! `fusermount3`) to mount.

mod disk;

use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use disk::{Attr, Disk, Kind};
use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};

/// Attributes and names are never cached by the kernel: sizes change under a power cut.
const TTL: Duration = Duration::ZERO;
const FOPEN_DIRECT_IO: u32 = 1;
const RENAME_NOREPLACE: u32 = 1;
const BLOCK: u64 = 4096;

struct Fs {
    disk: Arc<Mutex<Disk>>,
}

impl Fs {
    fn disk(&self) -> std::sync::MutexGuard<'_, Disk> {
        self.disk.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn file_attr(a: Attr, req: &Request<'_>) -> FileAttr {
    FileAttr {
        ino: a.ino,
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: UNIX_EPOCH,
        kind: match a.kind {
            Kind::File => FileType::RegularFile,
            Kind::Dir => FileType::Directory,
        },
        perm: a.perm,
        nlink: if a.kind == Kind::Dir { 2 } else { 1 },
        uid: req.uid(),
        gid: req.gid(),
        rdev: 0,
        blksize: BLOCK as u32,
        flags: 0,
    }
}

fn entry(result: Result<Attr, i32>, req: &Request<'_>, reply: ReplyEntry) {
    match result {
        Ok(a) => reply.entry(&TTL, &file_attr(a, req), 0),
        Err(e) => reply.error(e),
    }
}

fn attr(result: Result<Attr, i32>, req: &Request<'_>, reply: ReplyAttr) {
    match result {
        Ok(a) => reply.attr(&TTL, &file_attr(a, req)),
        Err(e) => reply.error(e),
    }
}

fn empty(result: Result<(), i32>, reply: ReplyEmpty) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for Fs {
    fn lookup(&mut self, req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let disk = self.disk();
        entry(
            disk.lookup(parent, name).and_then(|ino| disk.attr(ino)),
            req,
            reply,
        );
    }

    fn getattr(&mut self, req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        attr(self.disk().attr(ino), req, reply);
    }

    fn setattr(
        &mut self,
        req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let mut disk = self.disk();
        let result = (|| {
            if let Some(size) = size {
                disk.truncate(ino, size)?;
            }
            if let Some(mode) = mode {
                disk.chmod(ino, (mode & 0o7777) as u16)?;
            }
            disk.attr(ino)
        })();
        attr(result, req, reply);
    }

    fn mkdir(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut disk = self.disk();
        let made = disk.mkdir(parent, name, (mode & !umask & 0o7777) as u16);
        entry(made.and_then(|ino| disk.attr(ino)), req, reply);
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        empty(self.disk().unlink(parent, name), reply);
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        empty(self.disk().rmdir(parent, name), reply);
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        if flags & !RENAME_NOREPLACE != 0 {
            return reply.error(libc::EINVAL); // RENAME_EXCHANGE, RENAME_WHITEOUT
        }
        let no_replace = flags & RENAME_NOREPLACE != 0;
        empty(
            self.disk()
                .rename(parent, name, newparent, newname, no_replace),
            reply,
        );
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.disk().attr(ino) {
            Ok(_) => reply.opened(0, FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut disk = self.disk();
        let made = disk
            .create(parent, name, (mode & !umask & 0o7777) as u16)
            .and_then(|ino| disk.attr(ino));
        match made {
            Ok(a) => reply.created(&TTL, &file_attr(a, req), 0, 0, FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        match self.disk().read(ino, offset.max(0) as u64, size as usize) {
            Ok(bytes) => reply.data(bytes),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        match self.disk().write(ino, offset.max(0) as u64, data) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _owner: u64, reply: ReplyEmpty) {
        // close(2) makes nothing durable.
        reply.ok();
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _data: bool, reply: ReplyEmpty) {
        empty(self.disk().sync(ino), reply);
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.disk().attr(ino) {
            Ok(a) if a.kind == Kind::Dir => reply.opened(0, 0),
            Ok(_) => reply.error(libc::ENOTDIR),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.disk().entries(ino) {
            Ok(entries) => entries,
            Err(e) => return reply.error(e),
        };
        for (i, (child, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            let kind = match kind {
                Kind::File => FileType::RegularFile,
                Kind::Dir => FileType::Directory,
            };
            if reply.add(child, (i + 1) as i64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Names are durable when made (see disk.rs).
        reply.ok();
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let disk = self.disk();
        let total = disk.capacity_bytes().unwrap_or(1 << 40) / BLOCK;
        let free = total.saturating_sub(disk.used() / BLOCK);
        reply.statfs(
            total,
            free,
            free,
            1 << 20,
            1 << 20,
            BLOCK as u32,
            255,
            BLOCK as u32,
        );
    }

    fn access(&mut self, _req: &Request<'_>, ino: u64, _mask: i32, reply: ReplyEmpty) {
        empty(self.disk().attr(ino).map(|_| ()), reply);
    }
}

fn main() {
    let mut args = std::env::args_os().skip(1);
    let mut mountpoint = None;
    let mut capacity = None;
    while let Some(arg) = args.next() {
        if arg == "--capacity-mib" {
            let mib: u64 = args
                .next()
                .and_then(|v| v.to_str().and_then(|v| v.parse().ok()))
                .unwrap_or_else(|| usage("--capacity-mib needs a number"));
            capacity = Some(mib << 20);
        } else if mountpoint.is_none() {
            mountpoint = Some(PathBuf::from(arg));
        } else {
            usage("one mount point");
        }
    }
    let mountpoint = mountpoint.unwrap_or_else(|| usage("a mount point"));
    let disk = Arc::new(Mutex::new(Disk::new(capacity)));
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGUSR1,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .unwrap_or_else(|e| fail(&format!("cannot handle signals: {e}")));
    let options = [
        MountOption::FSName("faultfs".into()),
        MountOption::DefaultPermissions,
        MountOption::AllowOther,
    ];
    let session = fuser::spawn_mount2(Fs { disk: disk.clone() }, &mountpoint, &options)
        .unwrap_or_else(|e| fail(&format!("cannot mount {}: {e}", mountpoint.display())));
    println!("faultfs: mounted {}", mountpoint.display());
    for signal in signals.forever() {
        if signal == signal_hook::consts::SIGUSR1 {
            let forgotten = disk.lock().unwrap_or_else(|p| p.into_inner()).power_cut();
            println!("faultfs: power cut, {forgotten} unsynced bytes forgotten");
        } else {
            break;
        }
    }
    drop(session);
}

fn usage(what: &str) -> ! {
    fail(&format!(
        "usage: faultfs MOUNTPOINT [--capacity-mib N] ({what})"
    ))
}

fn fail(message: &str) -> ! {
    eprintln!("faultfs: {message}");
    std::process::exit(2)
}
