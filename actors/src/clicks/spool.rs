//! The click spool: batches bound for ClickHouse, on local disk until ClickHouse has them.
//!
//! Every batch is written here (and synced) before it is sent, one file per batch named by
//! a sequence number, and removed once ClickHouse has acknowledged it. Batches are sent
//! oldest first, so a ClickHouse outage delays clicks but does not reorder or lose them, and
//! neither does a node crash in the middle of a send: the batch is sent again at the next
//! start. (A batch sent again is harmless: see `migrations/clickhouse/`.)
//!
//! The spool is bounded (`click_spool_max_bytes`): a batch that would go past the bound is
//! dropped and counted (`clicks_dropped_total{reason="spool_full"}`), never silently.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::event::ClickEvent;

const SUFFIX: &str = "batch";
/// Batches kept in memory as well, at most.
const KEPT: usize = 8;
/// The first bytes of a batch file, and its format version.
const MAGIC: &[u8; 8] = b"LRCLK\x00\x00\x01";

/// What a spooled batch file holds about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its size on disk.
    pub bytes: u64,
    /// Its events.
    pub events: u64,
    /// Its oldest event's time (Unix ms).
    pub oldest_ms: i64,
}

/// The spool directory and what is in it.
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// Batches waiting, by sequence number.
    entries: BTreeMap<u64, Entry>,
    /// The first few batches waiting, also kept in memory: while ClickHouse keeps up, the
    /// batch just written is sent without being read back.
    kept: BTreeMap<u64, std::sync::Arc<Vec<ClickEvent>>>,
    next: u64,
}

fn file_name(seq: u64) -> String {
    format!("{seq:020}.{SUFFIX}")
}

fn encode(batch: &[ClickEvent]) -> io::Result<Vec<u8>> {
    let mut out = MAGIC.to_vec();
    let body = bincode::serde::encode_to_vec(batch, bincode::config::standard())
        .map_err(|e| io::Error::other(e.to_string()))?;
    out.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Whether `bytes` are a whole spooled batch (for the fuzz targets: any bytes must give
/// an answer, never a crash or a huge allocation).
pub fn decodes(bytes: &[u8]) -> bool {
    decode(bytes).is_ok()
}

fn decode(bytes: &[u8]) -> io::Result<Vec<ClickEvent>> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
    let rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or_else(|| bad("not a click batch (bad magic)"))?;
    if rest.len() < 8 {
        return Err(bad("truncated"));
    }
    let (sum, body) = rest.split_at(8);
    if xxhash_rust::xxh3::xxh3_64(body).to_le_bytes() != sum {
        return Err(bad("checksum mismatch"));
    }
    linkrift_raft::codec::decode(body).map_err(|e| bad(&e.0))
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, listing the batches a previous run left.
    /// Unreadable batch files are set aside (renamed `*.bad`) and counted as dropped.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut spool = Self {
            dir: dir.to_path_buf(),
            max_bytes,
            entries: BTreeMap::new(),
            kept: BTreeMap::new(),
            next: 0,
        };
        for item in fs::read_dir(dir)? {
            let path = item?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            match name
                .strip_suffix(&format!(".{SUFFIX}"))
                .map(str::parse::<u64>)
            {
                Some(Ok(seq)) => match fs::read(&path).and_then(|b| Ok((b.len(), decode(&b)?))) {
                    Ok((bytes, batch)) => {
                        let oldest_ms = batch.iter().map(|e| e.at_ms).min().unwrap_or(0);
                        spool.entries.insert(
                            seq,
                            Entry {
                                bytes: bytes as u64,
                                events: batch.len() as u64,
                                oldest_ms,
                            },
                        );
                    }
                    Err(e) => spool.set_aside(&path, &e),
                },
                // Left by a write that did not finish: never acknowledged to anyone.
                _ if name.ends_with(".tmp") => {
                    let _ = fs::remove_file(&path);
                }
                _ => {}
            }
        }
        spool.next = spool.entries.keys().next_back().map_or(0, |s| s + 1);
        Ok(spool)
    }

    fn set_aside(&self, path: &Path, why: &io::Error) {
        tracing::error!(file = %path.display(), error = %why,
            "a spooled click batch cannot be read; it is set aside and its clicks are lost");
        metrics::counter!("clicks_dropped_total", "reason" => "spool_corrupt").increment(1);
        let _ = fs::rename(path, path.with_extension("bad"));
    }

    /// Writes a batch (synced) behind the others. `Ok(false)`: the spool is full, and the
    /// batch was not written.
    pub fn push(&mut self, batch: &[ClickEvent]) -> io::Result<bool> {
        linkrift_raft::failpoint::error_if_armed(linkrift_raft::failpoint::CLICK_WRITE_ERROR)?;
        let bytes = encode(batch)?;
        if self.bytes() + bytes.len() as u64 > self.max_bytes {
            return Ok(false);
        }
        let seq = self.next;
        let path = self.dir.join(file_name(seq));
        let tmp = path.with_extension("tmp");
        {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_data()?;
        }
        fs::rename(&tmp, &path)?;
        fs::File::open(&self.dir)?.sync_all()?;
        self.next += 1;
        self.entries.insert(
            seq,
            Entry {
                bytes: bytes.len() as u64,
                events: batch.len() as u64,
                oldest_ms: batch.iter().map(|e| e.at_ms).min().unwrap_or(0),
            },
        );
        Ok(true)
    }

    /// Writes a batch like [`Spool::push`], and keeps it in memory if few are waiting.
    pub fn push_kept(&mut self, batch: std::sync::Arc<Vec<ClickEvent>>) -> io::Result<bool> {
        if !self.push(&batch)? {
            return Ok(false);
        }
        if self.kept.len() < KEPT {
            self.kept.insert(self.next - 1, batch);
        }
        Ok(true)
    }

    /// The oldest batch waiting, with its sequence number. A batch that cannot be read is
    /// set aside and the next one is given.
    pub fn oldest(&mut self) -> Option<(u64, std::sync::Arc<Vec<ClickEvent>>)> {
        while let Some((&seq, _)) = self.entries.iter().next() {
            if let Some(batch) = self.kept.get(&seq) {
                return Some((seq, batch.clone()));
            }
            let path = self.dir.join(file_name(seq));
            match fs::read(&path).and_then(|b| decode(&b)) {
                Ok(batch) => return Some((seq, std::sync::Arc::new(batch))),
                Err(e) => {
                    self.set_aside(&path, &e);
                    self.entries.remove(&seq);
                }
            }
        }
        None
    }

    /// Forgets a batch ClickHouse has.
    pub fn remove(&mut self, seq: u64) -> io::Result<()> {
        self.kept.remove(&seq);
        if self.entries.remove(&seq).is_some() {
            fs::remove_file(self.dir.join(file_name(seq)))?;
        }
        Ok(())
    }

    /// Every batch waiting, oldest first (unreadable ones are set aside).
    pub fn all(&mut self) -> Vec<(u64, Vec<ClickEvent>)> {
        let seqs: Vec<u64> = self.entries.keys().copied().collect();
        let mut out = Vec::with_capacity(seqs.len());
        for seq in seqs {
            let path = self.dir.join(file_name(seq));
            match fs::read(&path).and_then(|b| decode(&b)) {
                Ok(batch) => out.push((seq, batch)),
                Err(e) => {
                    self.set_aside(&path, &e);
                    self.entries.remove(&seq);
                }
            }
        }
        out
    }

    /// Forgets every batch up to `seq`.
    pub fn remove_through(&mut self, seq: u64) -> io::Result<()> {
        let done: Vec<u64> = self.entries.range(..=seq).map(|(s, _)| *s).collect();
        for s in done {
            self.remove(s)?;
        }
        Ok(())
    }

    /// The newest batch's sequence number.
    pub fn last(&self) -> Option<u64> {
        self.entries.keys().next_back().copied()
    }

    /// Numbers new batches after `seq` (which an emptied spool would otherwise reuse).
    pub fn continue_after(&mut self, seq: u64) {
        self.next = self.next.max(seq + 1);
    }

    /// Bytes waiting.
    pub fn bytes(&self) -> u64 {
        self.entries.values().map(|e| e.bytes).sum()
    }

    /// Events waiting.
    pub fn events(&self) -> u64 {
        self.entries.values().map(|e| e.events).sum()
    }

    /// The oldest waiting event's time (Unix ms).
    pub fn oldest_ms(&self) -> Option<i64> {
        self.entries.values().map(|e| e.oldest_ms).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clicks::event::{Describer, IpPolicy, RawClick};

    fn batch(code: &str, n: usize, at_ms: i64) -> Vec<ClickEvent> {
        let mut describer = Describer::new(IpPolicy::default(), None);
        (0..n)
            .map(|i| {
                let raw = RawClick {
                    code: code.into(),
                    at_ms: at_ms + i as i64,
                    user_agent: Some("curl/8".into()),
                    ..RawClick::default()
                };
                describer.describe(raw)
            })
            .collect()
    }

    #[test]
    fn batches_come_back_in_order_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (batch("a", 3, 2_000), batch("b", 2, 1_000));
        {
            let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
            assert!(spool.push(&a).unwrap());
            assert!(spool.push(&b).unwrap());
            assert_eq!((spool.events(), spool.oldest_ms()), (5, Some(1_000)));
        }
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(spool.events(), 5);
        let (first, got) = spool.oldest().unwrap();
        assert_eq!(*got, a);
        spool.remove(first).unwrap();
        let (second, got) = spool.oldest().unwrap();
        assert_eq!(*got, b);
        assert!(spool.push_kept(std::sync::Arc::new(a.clone())).unwrap());
        spool.remove(second).unwrap();
        assert_eq!(*spool.oldest().unwrap().1, a, "a new batch goes behind");
    }

    #[test]
    fn a_full_spool_refuses_and_a_damaged_batch_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let one = batch("a", 10, 0);
        let size = encode(&one).unwrap().len() as u64;
        let mut spool = Spool::open(dir.path(), size * 2).unwrap();
        assert!(spool.push(&one).unwrap());
        assert!(spool.push(&one).unwrap());
        assert!(!spool.push(&one).unwrap(), "past the bound");
        assert_eq!(spool.events(), 20);
        let first = dir.path().join(file_name(0));
        let mut bytes = fs::read(&first).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&first, bytes).unwrap();
        let (seq, _) = spool.oldest().unwrap();
        assert_eq!(seq, 1);
        assert!(first.with_extension("bad").exists());
        assert_eq!(spool.events(), 10);
    }

    #[test]
    fn a_batch_announcing_a_huge_length_is_refused_without_allocating_it() {
        // A checksummed batch of one event whose first string announces 2^50 bytes: the
        // checksum passes (the bytes were written so), the decode must not allocate.
        let mut body = vec![1, 0xfd];
        body.extend((1u64 << 50).to_le_bytes());
        let mut bytes = MAGIC.to_vec();
        bytes.extend(xxhash_rust::xxh3::xxh3_64(&body).to_le_bytes());
        bytes.extend(&body);
        let err = decode(&bytes).unwrap_err();
        assert!(err.to_string().contains("exceeds"), "{err}");
    }
}
