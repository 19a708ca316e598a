//! The embedded click store, used when no ClickHouse is configured: hourly roll-ups per
//! link and bot flag, each with its counts by dimension (countries, referrer hosts, devices,
//! browsers, operating systems) and the set of its visitors. Each node rolls up the clicks
//! it served; stats add up every node's.
//!
//! Writing a roll-up per click would cost several database writes per redirect, so clicks
//! are added up in memory and merged into the database (the `click_hours` tree) about once a
//! minute. What is only in memory is also in a write-ahead log (the click batches, synced,
//! in `click-wal/`, the spool's format), replayed at start; the merge records the last batch
//! it includes in the same atomic write, so a batch is never counted twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::event::ClickEvent;
use super::spool::Spool;

/// The dimensions clicks are counted by, besides the total.
pub const DIMENSIONS: [&str; 5] = ["country", "referrer", "device", "browser", "os"];
const HOUR_MS: i64 = 3_600_000;

/// Which clicks a query counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bots {
    /// People only (the default).
    Exclude,
    /// Everyone.
    Include,
    /// Bots only.
    Only,
}

impl Bots {
    fn counts(self, bot: bool) -> bool {
        match self {
            Self::Exclude => !bot,
            Self::Include => true,
            Self::Only => bot,
        }
    }
}

/// One node's clicks of one link over a time range, by hour: what stats add up.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Clicks per hour (the hour's start, Unix milliseconds).
    pub hours: BTreeMap<i64, u64>,
    /// Clicks per dimension (see [`DIMENSIONS`]) and value.
    pub dims: BTreeMap<String, BTreeMap<String, u64>>,
    /// Visitors (hashes of truncated address and user agent).
    pub visitors: HashSet<u64>,
}

impl Tally {
    /// Adds another node's tally.
    pub fn merge(&mut self, other: Tally) {
        for (h, n) in other.hours {
            *self.hours.entry(h).or_default() += n;
        }
        for (dim, values) in other.dims {
            let mine = self.dims.entry(dim).or_default();
            for (v, n) in values {
                *mine.entry(v).or_default() += n;
            }
        }
        self.visitors.extend(other.visitors);
    }
}

impl From<Tally> for super::Summary {
    fn from(t: Tally) -> Self {
        Self {
            hours: t.hours,
            dims: t.dims,
            unique_visitors: t.visitors.len() as u64,
        }
    }
}

/// `code \0 hour(be) bot`: a link's key for one hour.
fn hour_key(code: &str, hour: u64, bot: bool) -> Vec<u8> {
    let mut key = Vec::with_capacity(code.len() + 10);
    key.extend_from_slice(code.as_bytes());
    key.push(0);
    key.extend_from_slice(&hour.to_be_bytes());
    key.push(u8::from(bot));
    key
}

fn hour_of(at_ms: i64) -> u64 {
    (at_ms.max(0) / HOUR_MS) as u64
}

/// How often what is in memory is merged into the database, at most.
const MERGE_EVERY: Duration = Duration::from_secs(60);
/// Link-hours kept in memory before a merge, at most.
const MAX_IN_MEMORY: usize = 200_000;
/// The key under which the last merged batch's sequence number is kept (not UTF-8, so no
/// code's key can be it).
const MERGED_THROUGH: &[u8] = b"\xff\xffmerged_through";

/// One link's clicks in one hour, people or bots.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Hour {
    total: u64,
    /// Counts by value, one map per dimension (see [`DIMENSIONS`]).
    dims: Vec<HashMap<String, u64>>,
    visitors: HashSet<u64>,
}

impl Hour {
    fn add(&mut self, e: &ClickEvent) {
        self.total += 1;
        if self.dims.is_empty() {
            self.dims = vec![HashMap::new(); DIMENSIONS.len()];
        }
        let values = [
            e.country.as_str(),
            e.referer_host.as_str(),
            e.device.name(),
            e.browser.as_str(),
            e.os.as_str(),
        ];
        for (dim, value) in self.dims.iter_mut().zip(values) {
            match dim.get_mut(value) {
                Some(n) => *n += 1,
                None => {
                    dim.insert(value.to_string(), 1);
                }
            }
        }
        self.visitors.insert(e.visitor());
    }

    fn merge(&mut self, other: &Hour) {
        self.total += other.total;
        if self.dims.len() < other.dims.len() {
            self.dims.resize(other.dims.len(), HashMap::new());
        }
        for (mine, theirs) in self.dims.iter_mut().zip(&other.dims) {
            for (v, n) in theirs {
                *mine.entry(v.clone()).or_default() += n;
            }
        }
        self.visitors.extend(&other.visitors);
    }

    fn count_into(&self, hour: u64, out: &mut Tally) {
        *out.hours.entry(hour as i64 * HOUR_MS).or_default() += self.total;
        for (name, values) in DIMENSIONS.iter().zip(&self.dims) {
            let mine = out.dims.entry((*name).to_string()).or_default();
            for (v, n) in values {
                *mine.entry(v.clone()).or_default() += n;
            }
        }
        out.visitors.extend(&self.visitors);
    }
}

fn encode(hour: &Hour) -> Vec<u8> {
    bincode::serde::encode_to_vec(hour, bincode::config::standard()).expect("encodes")
}

fn decode(bytes: &[u8]) -> sled::Result<Hour> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(h, _)| h)
        .map_err(|e| sled::Error::Unsupported(format!("a click roll-up does not decode: {e}")))
}

/// The clicks added up in memory since the last merge, by code, then (hour, bot).
#[derive(Default)]
struct InMemory {
    links: HashMap<String, BTreeMap<(u64, bool), Hour>>,
    link_hours: usize,
    /// The last write-ahead batch they include.
    through: Option<u64>,
    merged_at: Option<Instant>,
}

impl InMemory {
    fn add(&mut self, batch: &[ClickEvent], seq: u64) {
        for e in batch {
            let hours = match self.links.get_mut(e.code.as_str()) {
                Some(hours) => hours,
                None => self.links.entry(e.code.clone()).or_default(),
            };
            let slot = (hour_of(e.at_ms), e.bot);
            if !hours.contains_key(&slot) {
                self.link_hours += 1;
            }
            hours.entry(slot).or_default().add(e);
        }
        self.through = Some(seq);
    }
}

/// The embedded store (cheap to clone).
#[derive(Clone)]
pub struct Rollups {
    hours: sled::Tree,
    memory: Arc<Mutex<InMemory>>,
    log: Arc<Mutex<Spool>>,
}

fn io_error(e: std::io::Error) -> sled::Error {
    sled::Error::Io(e)
}

impl Rollups {
    /// Opens (or creates) the store: its tree in `db`, its write-ahead log in `log_dir`
    /// (at most `max_log_bytes`), whose batches not yet merged are added up again.
    pub fn open(db: &sled::Db, log_dir: &Path, max_log_bytes: u64) -> sled::Result<Self> {
        // The trees of the first format (a write per dimension per click), before any
        // release: not read any more.
        for old in ["click_rollups", "click_visitors"] {
            db.drop_tree(old)?;
        }
        let hours = db.open_tree("click_hours")?;
        let merged = hours
            .get(MERGED_THROUGH)?
            .and_then(|v| v.as_ref().try_into().ok())
            .map(u64::from_be_bytes);
        let mut log = Spool::open(log_dir, max_log_bytes).map_err(io_error)?;
        if let Some(merged) = merged {
            log.continue_after(merged);
        }
        let mut memory = InMemory::default();
        for (seq, batch) in log.all() {
            if merged.is_some_and(|m| seq <= m) {
                log.remove(seq).map_err(io_error)?;
            } else {
                memory.add(&batch, seq);
            }
        }
        Ok(Self {
            hours,
            memory: Arc::new(Mutex::new(memory)),
            log: Arc::new(Mutex::new(log)),
        })
    }

    /// Adds a batch of clicks: logs it (synced), then adds it up in memory, merging into
    /// the database when due. `Ok(false)`: the log is full, and the batch was not taken.
    pub fn record(&self, batch: &[ClickEvent]) -> sled::Result<bool> {
        let seq = {
            let mut log = self.log.lock().expect("click log lock");
            if !log.push(batch).map_err(io_error)? {
                return Ok(false);
            }
            log.last().expect("just written")
        };
        let due = {
            let mut memory = self.memory.lock().expect("click memory lock");
            memory.add(batch, seq);
            memory.link_hours >= MAX_IN_MEMORY
                || memory.merged_at.is_none_or(|t| t.elapsed() >= MERGE_EVERY)
        };
        if due {
            self.merge()?;
        }
        Ok(true)
    }

    /// Merges what is in memory into the database, and forgets the log it came from.
    pub fn merge(&self) -> sled::Result<()> {
        let through = {
            let mut memory = self.memory.lock().expect("click memory lock");
            memory.merged_at = Some(Instant::now());
            let Some(through) = memory.through else {
                return Ok(());
            };
            let mut batch = sled::Batch::default();
            for (code, hours) in &memory.links {
                for (&(hour, bot), counted) in hours {
                    let key = hour_key(code, hour, bot);
                    let mut merged = match self.hours.get(&key)? {
                        Some(old) => decode(&old)?,
                        None => Hour::default(),
                    };
                    merged.merge(counted);
                    batch.insert(key, encode(&merged));
                }
            }
            batch.insert(MERGED_THROUGH, &through.to_be_bytes());
            self.hours.apply_batch(batch)?;
            self.hours.flush()?;
            *memory = InMemory {
                merged_at: memory.merged_at,
                ..InMemory::default()
            };
            through
        };
        self.log
            .lock()
            .expect("click log lock")
            .remove_through(through)
            .map_err(io_error)
    }

    /// The clicks of `code` from `from_ms` to `to_ms` (hours overlapping the range).
    pub fn tally(&self, code: &str, from_ms: i64, to_ms: i64, bots: Bots) -> sled::Result<Tally> {
        let mut out = Tally::default();
        let (first, last) = (hour_of(from_ms), hour_of(to_ms));
        let start = hour_key(code, first, false);
        let mut end = hour_key(code, last, true);
        end.push(u8::MAX);
        let at = code.len() + 1;
        // Taken before the database is read: a merge in between would count twice.
        let memory = self.memory.lock().expect("click memory lock");
        for item in self.hours.range(start..end) {
            let (key, value) = item?;
            let hour = u64::from_be_bytes(key[at..at + 8].try_into().expect("8 bytes"));
            if bots.counts(key[at + 8] == 1) {
                decode(&value)?.count_into(hour, &mut out);
            }
        }
        if let Some(hours) = memory.links.get(code) {
            for (&(hour, bot), counted) in hours.range((first, false)..=(last, true)) {
                if bots.counts(bot) {
                    counted.count_into(hour, &mut out);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clicks::event::{Describer, IpPolicy, RawClick};

    const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";

    fn clicks(code: &str, n: usize, at_ms: i64, ua: &str) -> Vec<ClickEvent> {
        let mut d = Describer::new(IpPolicy::default(), None);
        (0..n)
            .map(|i| {
                d.describe(RawClick {
                    code: code.into(),
                    at_ms: at_ms + i as i64,
                    ip: Some(format!("198.51.{}.7", i % 3).parse().unwrap()),
                    user_agent: Some(ua.into()),
                    country: Some("BR".into()),
                    ..RawClick::default()
                })
            })
            .collect()
    }

    const H: i64 = 1_764_000_000_000 / HOUR_MS * HOUR_MS;

    fn total(r: &Rollups, code: &str, bots: Bots) -> (u64, usize) {
        let t = r.tally(code, H - HOUR_MS, H + 5 * HOUR_MS, bots).unwrap();
        (t.hours.values().sum(), t.visitors.len())
    }

    #[test]
    fn memory_and_database_add_up_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        {
            let db = sled::open(dir.path().join("db")).unwrap();
            let r = Rollups::open(&db, &log, 1 << 30).unwrap();
            assert!(r.record(&clicks("a", 10, H, CHROME)).unwrap());
            assert!(r.record(&clicks("a", 5, H + HOUR_MS, "curl/8")).unwrap());
            // The first record merged (none had been); the second is in memory only.
            assert_eq!(total(&r, "a", Bots::Include), (15, 6));
            assert_eq!(total(&r, "a", Bots::Exclude), (10, 3));
            assert_eq!(total(&r, "a", Bots::Only), (5, 3));
            assert_eq!(total(&r, "b", Bots::Include), (0, 0));
            let t = r.tally("a", H, H, Bots::Include).unwrap();
            assert_eq!(t.hours, BTreeMap::from([(H, 10)]), "one hour only");
            assert_eq!(t.dims["country"], BTreeMap::from([("BR".to_string(), 10)]));
            db.flush().unwrap();
        }
        // Reopened (as after a crash): the batch only in memory comes back from the log.
        let db = sled::open(dir.path().join("db")).unwrap();
        let r = Rollups::open(&db, &log, 1 << 30).unwrap();
        assert_eq!(total(&r, "a", Bots::Include), (15, 6));
        r.merge().unwrap();
        assert_eq!(
            total(&r, "a", Bots::Include),
            (15, 6),
            "merging counts nothing twice"
        );
        assert!(r.record(&clicks("a", 1, H, CHROME)).unwrap());
        assert_eq!(total(&r, "a", Bots::Exclude), (11, 3));
    }

    #[test]
    fn a_batch_merged_but_still_in_the_log_is_not_counted_twice() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let db = sled::open(dir.path().join("db")).unwrap();
        let batch = clicks("a", 4, H, CHROME);
        {
            let r = Rollups::open(&db, &log, 1 << 30).unwrap();
            assert!(r.record(&batch).unwrap());
        }
        // Put the merged batch's log file back, as a crash before its removal leaves it.
        assert_eq!(
            Spool::open(&log, 1 << 30).unwrap().events(),
            0,
            "a merge forgets its log"
        );
        let mut again = Spool::open(&log, 1 << 30).unwrap();
        assert!(again.push(&batch).unwrap());
        assert_eq!(again.last(), Some(0), "the merged batch's number");
        let r = Rollups::open(&db, &log, 1 << 30).unwrap();
        assert_eq!(total(&r, "a", Bots::Include), (4, 3));
        assert!(r.record(&clicks("a", 2, H, CHROME)).unwrap());
        assert_eq!(
            total(&r, "a", Bots::Include),
            (6, 3),
            "new batches are numbered after it"
        );
        drop(r);
        let r = Rollups::open(&db, &log, 1 << 30).unwrap();
        assert_eq!(total(&r, "a", Bots::Include), (6, 3));
    }
}
