//! The snapshot file: what a group's `current.snap` holds, and what a leader streams to a
//! follower byte for byte.
//!
//! ```text
//! "LRSNAP02"            8 bytes
//! header length         u32, big-endian (at most 64 MiB)
//! header                openraft's SnapshotMeta, bincode
//! body length           u64, big-endian
//! body checksum         u64, big-endian, xxh3-64 of the body
//! body                  the application's bytes (StateMachine::snapshot)
//! ```
//!
//! The checksum is checked over the whole body before any of it is restored, so a flipped
//! byte on disk or in a transfer is an error, never a silently different state. Files of
//! the first format (a bare header length, the header, the body: no magic, no checksum)
//! are still read; their header length can never read as the magic, which is far over the
//! length limit.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use openraft::{BasicNode, SnapshotMeta};

use crate::codec;
use crate::types::NodeId;

/// A snapshot's metadata.
pub(crate) type Meta = SnapshotMeta<NodeId, BasicNode>;

const MAGIC: &[u8; 8] = b"LRSNAP02";
const MAX_HEADER: usize = 64 * 1024 * 1024;

/// Writes a snapshot file at `path` (created or truncated): the header for `meta`, then
/// what `body` writes, then the body's length and checksum; synced before it returns.
pub(crate) fn write(
    path: &Path,
    meta: &Meta,
    body: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    crate::failpoint::error_if_armed(crate::failpoint::SNAPSHOT_ERROR)?;
    let header = codec::encode(meta);
    let header_len = u32::try_from(header.len())
        .ok()
        .filter(|&l| l as usize <= MAX_HEADER)
        .ok_or_else(|| io::Error::other("snapshot header too large"))?;
    let mut out = BufWriter::new(File::create(path)?);
    out.write_all(MAGIC)?;
    out.write_all(&header_len.to_be_bytes())?;
    out.write_all(&header)?;
    let sums_at = (MAGIC.len() + 4 + header.len()) as u64;
    out.write_all(&[0u8; 16])?;
    let mut hashing = Hashing {
        inner: out,
        hasher: xxhash_rust::xxh3::Xxh3::new(),
        len: 0,
    };
    body(&mut hashing)?;
    let (len, sum) = (hashing.len, hashing.hasher.digest());
    let mut file = hashing.inner.into_inner().map_err(|e| e.into_error())?;
    file.seek(SeekFrom::Start(sums_at))?;
    file.write_all(&len.to_be_bytes())?;
    file.write_all(&sum.to_be_bytes())?;
    file.sync_all()
}

/// Reads the header of the snapshot file at `path` and checks its body against its length
/// and checksum; returns the metadata and a reader of exactly the body.
pub(crate) fn open_verified(path: &Path) -> io::Result<(Meta, impl Read)> {
    verified(
        BufReader::new(File::open(path)?),
        &path.display().to_string(),
    )
}

/// Checks `bytes` as the whole of a snapshot file, as [`open_verified`] does (for the
/// fuzz targets: any bytes must give an answer, never a crash or a huge allocation).
pub fn check(bytes: &[u8]) -> io::Result<()> {
    let (_, mut body) = verified(io::Cursor::new(bytes), "(bytes)")?;
    io::copy(&mut body, &mut io::sink())?;
    Ok(())
}

fn verified<R: Read + Seek>(mut input: R, name: &str) -> io::Result<(Meta, io::Take<R>)> {
    let (meta, sums) = read_header(&mut input)?;
    let Some((len, sum)) = sums else {
        // The first format: nothing to check the body against.
        return Ok((meta, input.take(u64::MAX)));
    };
    let body_at = input.stream_position()?;
    let mut hashing = Hashing {
        inner: io::sink(),
        hasher: xxhash_rust::xxh3::Xxh3::new(),
        len: 0,
    };
    io::copy(&mut (&mut input).take(len), &mut hashing)?;
    let trailing = input.read(&mut [0u8; 1])?;
    if hashing.len != len || trailing != 0 {
        return Err(damaged(name, "its length does not match its header"));
    }
    if hashing.hasher.digest() != sum {
        return Err(damaged(name, "its checksum does not match its body"));
    }
    input.seek(SeekFrom::Start(body_at))?;
    Ok((meta, input.take(len)))
}

fn damaged(name: &str, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("snapshot {name} is damaged: {why}"),
    )
}

/// The metadata, and the body's length and checksum (`None` in the first format).
fn read_header(input: &mut impl Read) -> io::Result<(Meta, Option<(u64, u64)>)> {
    let mut first = [0u8; 4];
    input.read_exact(&mut first)?;
    let current = first == MAGIC[..4];
    let len = if current {
        let mut rest = [0u8; 4];
        input.read_exact(&mut rest)?;
        if rest != MAGIC[4..] {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a snapshot file (unknown format)",
            ));
        }
        let mut len = [0u8; 4];
        input.read_exact(&mut len)?;
        u32::from_be_bytes(len) as usize
    } else {
        u32::from_be_bytes(first) as usize
    };
    if len > MAX_HEADER {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "snapshot header too large",
        ));
    }
    let mut header = vec![0u8; len];
    input.read_exact(&mut header)?;
    let meta = codec::decode(&header)?;
    if !current {
        return Ok((meta, None));
    }
    let mut sums = [0u8; 16];
    input.read_exact(&mut sums)?;
    let (len, sum) = sums.split_at(8);
    Ok((
        meta,
        Some((
            u64::from_be_bytes(len.try_into().expect("8 bytes")),
            u64::from_be_bytes(sum.try_into().expect("8 bytes")),
        )),
    ))
}

/// Counts and hashes what passes through to `inner`.
struct Hashing<W> {
    inner: W,
    hasher: xxhash_rust::xxh3::Xxh3,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            last_log_id: None,
            last_membership: Default::default(),
            snapshot_id: "test-1".into(),
        }
    }

    fn written(body: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("current.snap");
        write(&path, &meta(), |out| out.write_all(body)).unwrap();
        (dir, path)
    }

    #[test]
    fn a_written_snapshot_reads_back_exactly() {
        let (_dir, path) = written(b"the whole state");
        let (read_meta, mut body) = open_verified(&path).unwrap();
        assert_eq!(read_meta, meta());
        let mut bytes = Vec::new();
        body.read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes, b"the whole state");
    }

    #[test]
    fn a_flipped_byte_in_the_body_is_refused() {
        let (_dir, path) = written(&[7u8; 4096]);
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() - 100;
        bytes[at] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let e = open_verified(&path).err().expect("the damage is found");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("checksum"), "{e}");
    }

    #[test]
    fn a_cut_or_extended_body_is_refused() {
        let (_dir, path) = written(&[7u8; 4096]);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert!(open_verified(&path).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        std::fs::write(&path, &longer).unwrap();
        assert!(open_verified(&path).is_err());
    }

    #[test]
    fn the_first_format_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("current.snap");
        let header = codec::encode(&meta());
        let mut bytes = (header.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(b"old body");
        std::fs::write(&path, &bytes).unwrap();
        let (read_meta, mut body) = open_verified(&path).unwrap();
        assert_eq!(read_meta, meta());
        let mut read = Vec::new();
        body.read_to_end(&mut read).unwrap();
        assert_eq!(read, b"old body");
    }
}
