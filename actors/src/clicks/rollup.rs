//! The embedded click store, used when no ClickHouse is configured: hourly roll-ups per
//! link and bot flag, each with its counts by dimension (countries, referrer hosts, devices,
//! browsers, operating systems) and the set of its visitors. Each node rolls up the clicks
//! it served; stats add up every node's.
//!
//! Writing a roll-up per click would cost several database writes per redirect, so clicks
//! are added up in memory and merged into the database (the `click_hours` tree): a little
//! at every batch, oldest first, so that each link-hour is merged about once a minute and no
//! merge is a burst. What is only in memory is also in a write-ahead log (the click batches,
//! synced, in `click-wal/`, the spool's format), replayed at start. Each stored roll-up
//! records the last logged batch merged into it, so a replay never counts a batch twice.
//!
//! (Over 600 lines with its tests, about 150; the store, its write-ahead log replay and its
//! merging share one in-memory state.)

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::event::ClickEvent;
use super::spool::Spool;

/// The hasher of the in-memory counts: keyed per process at random, several times faster
/// than SipHash on these short keys (codes and dimension values).
type Fast = foldhash::fast::RandomState;

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

/// About how long a link-hour's clicks stay in memory before they are merged.
const MERGE_EVERY: Duration = Duration::from_secs(60);
/// Link-hours kept in memory, at most: past that, the oldest are merged at once.
const MAX_IN_MEMORY: usize = 200_000;
/// Link-hours merged at one batch, at most.
const MAX_MERGE: usize = 20_000;
/// Distinct dimension values kept in memory before everything is merged (and forgotten).
const MAX_VALUES: usize = 1_000_000;
/// The key under which the newest merged batch's number is kept (not UTF-8, so no code's
/// key can be it): batch numbers are never reused, even once the log is empty.
const MERGED_THROUGH: &[u8] = b"\xff\xffmerged_through";

/// One link's clicks in one hour, people or bots.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Hour {
    /// Logged batches numbered below it are merged into it.
    merged_below: u64,
    total: u64,
    /// Counts by value, one map per dimension (see [`DIMENSIONS`]).
    dims: Vec<HashMap<String, u64>>,
    visitors: HashSet<u64>,
}

impl Hour {
    fn merge(&mut self, other: &Hour) {
        self.merged_below = self.merged_below.max(other.merged_below);
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

/// Whether `bytes` are one stored link-hour of the roll-up (for the fuzz targets).
pub fn decodes(bytes: &[u8]) -> bool {
    decode(bytes).is_ok()
}

fn decode(bytes: &[u8]) -> sled::Result<Hour> {
    linkrift_raft::codec::decode(bytes)
        .map_err(|e| sled::Error::Unsupported(format!("a click roll-up does not decode: {e}")))
}

/// One link-hour counted in memory: values are numbers given by [`InMemory::value_id`],
/// so that counting a click allocates nothing once its values have been seen.
#[derive(Default)]
struct Counting {
    /// The first and last logged batches it counts clicks of.
    first: u64,
    last: u64,
    total: u64,
    /// (value id, clicks), sorted by id.
    values: Vec<(u32, u64)>,
    /// Visitor hashes, deduplicated whenever the list doubles.
    visitors: Vec<u64>,
    deduplicated: usize,
}

impl Counting {
    fn add(&mut self, ids: [u32; 5], visitor: u64) {
        self.total += 1;
        for id in ids {
            match self.values.binary_search_by_key(&id, |v| v.0) {
                Ok(i) => self.values[i].1 += 1,
                Err(i) => self.values.insert(i, (id, 1)),
            }
        }
        self.visitors.push(visitor);
        if self.visitors.len() >= 2 * self.deduplicated.max(16) {
            self.visitors.sort_unstable();
            self.visitors.dedup();
            self.deduplicated = self.visitors.len();
        }
    }

    fn to_hour(&self, names: &[(usize, String)]) -> Hour {
        let mut dims = vec![HashMap::new(); DIMENSIONS.len()];
        for &(id, n) in &self.values {
            let (dim, value) = &names[id as usize];
            dims[*dim].insert(value.clone(), n);
        }
        Hour {
            merged_below: self.last + 1,
            total: self.total,
            dims,
            visitors: self.visitors.iter().copied().collect(),
        }
    }
}

/// A link's hours in memory, as (hour, bot) and their counts: the few not merged yet, so
/// a vector searched in turn (a B-tree's first node alone took a kilobyte per link, and
/// 100,000 links clicked in an hour missed the cache on every click).
#[derive(Default)]
struct Hours(Vec<((u64, bool), Counting)>);

impl Hours {
    fn find(&self, slot: (u64, bool)) -> Option<usize> {
        self.0.iter().position(|(at, _)| *at == slot)
    }

    /// The counts of `slot`, which the order of link-hours says is here.
    fn get(&self, slot: (u64, bool)) -> &Counting {
        &self.0[self.find(slot).expect("an ordered link-hour")].1
    }

    fn remove(&mut self, slot: (u64, bool)) {
        if let Some(i) = self.find(slot) {
            self.0.swap_remove(i);
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The clicks added up in memory and not yet merged, by code, then (hour, bot).
#[derive(Default)]
struct InMemory {
    links: HashMap<Arc<str>, Hours, Fast>,
    /// Every link-hour in `links`, oldest first: the order they are merged in.
    order: VecDeque<(Arc<str>, u64, bool)>,
    /// Value ids by dimension and value, and (dimension, value) by id.
    ids: [HashMap<Arc<str>, u32, Fast>; 5],
    names: Vec<(usize, String)>,
    merged_at: Option<Instant>,
    /// Link-hours due to be merged, carried between merges.
    due: f64,
}

impl InMemory {
    fn value_id(&mut self, dim: usize, value: &str) -> u32 {
        if let Some(&id) = self.ids[dim].get(value) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push((dim, value.to_string()));
        self.ids[dim].insert(Arc::from(value), id);
        id
    }

    fn add(&mut self, e: &ClickEvent, seq: u64) {
        let ids = [
            self.value_id(0, &e.country),
            self.value_id(1, &e.referer_host),
            self.value_id(2, e.device.name()),
            self.value_id(3, &e.browser),
            self.value_id(4, &e.os),
        ];
        let hours = match self.links.get_mut(&*e.code) {
            Some(hours) => hours,
            None => self.links.entry(e.code.clone()).or_default(),
        };
        let slot = (hour_of(e.at_ms), e.bot);
        let counting = match hours.find(slot) {
            Some(i) => &mut hours.0[i].1,
            None => {
                self.order.push_back((e.code.clone(), slot.0, slot.1));
                hours.0.push((
                    slot,
                    Counting {
                        first: seq,
                        ..Counting::default()
                    },
                ));
                &mut hours.0.last_mut().expect("just pushed").1
            }
        };
        counting.last = seq;
        counting.add(ids, e.visitor());
    }

    /// The oldest logged batch whose clicks are not all merged.
    fn oldest_unmerged(&self) -> Option<u64> {
        let (code, hour, bot) = self.order.front()?;
        Some(self.links[&**code].get((*hour, *bot)).first)
    }
}

/// The embedded store (cheap to clone).
#[derive(Clone)]
pub struct Rollups {
    hours: sled::Tree,
    durable: linkrift_raft::DurableDb,
    memory: Arc<Mutex<InMemory>>,
    log: Arc<Mutex<Spool>>,
}

fn io_error(e: std::io::Error) -> sled::Error {
    sled::Error::Io(e)
}

impl Rollups {
    /// Opens (or creates) the store: its tree in `db`, its write-ahead log in `log_dir`
    /// (at most `max_log_bytes`), whose batches not yet merged are added up again.
    pub fn open(
        durable: &linkrift_raft::DurableDb,
        log_dir: &Path,
        max_log_bytes: u64,
    ) -> sled::Result<Self> {
        let db = durable.db();
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
        // Clicks of a batch already merged into their link-hour are not added again.
        let mut memory = InMemory::default();
        let mut merged_below: HashMap<Vec<u8>, u64> = HashMap::new();
        for (seq, batch) in log.all() {
            for e in &batch {
                let key = hour_key(&e.code, hour_of(e.at_ms), e.bot);
                let below = match merged_below.get(&key) {
                    Some(&below) => below,
                    None => {
                        let below = match hours.get(&key)? {
                            Some(v) => decode(&v).map_or_else(
                                |e| {
                                    tracing::error!(error = %e, "a stored click roll-up does not decode");
                                    0
                                },
                                |h| h.merged_below,
                            ),
                            None => 0,
                        };
                        merged_below.insert(key, below);
                        below
                    }
                };
                if seq >= below {
                    memory.add(e, seq);
                }
            }
        }
        Ok(Self {
            hours,
            durable: durable.clone(),
            memory: Arc::new(Mutex::new(memory)),
            log: Arc::new(Mutex::new(log)),
        })
    }

    /// Adds a batch of clicks: logs it (synced), adds it up in memory, and merges the
    /// oldest link-hours in memory into the database. `Ok(false)`: the log is full, and the
    /// batch was not taken.
    pub fn record(&self, batch: &[ClickEvent]) -> sled::Result<bool> {
        if !self.log_and_add(batch)? {
            // The log is full of batches waiting to be merged: merge everything (which
            // empties the log), then try once more.
            self.merge()?;
            if !self.log_and_add(batch)? {
                return Ok(false);
            }
        }
        // The batch is logged and counted; a failed merge is retried at the next batch.
        if let Err(e) = self.merge_due() {
            tracing::error!(error = %e, "merging click roll-ups failed; they stay in memory and in the log");
        }
        Ok(true)
    }

    /// Logs a batch (synced) and adds it up in memory, both under the log's lock, so no
    /// merge runs between the two. `Ok(false)`: the log is full.
    fn log_and_add(&self, batch: &[ClickEvent]) -> sled::Result<bool> {
        let mut log = self.log.lock().expect("click log lock");
        if !log.push(batch).map_err(io_error)? {
            return Ok(false);
        }
        let seq = log.last().expect("just written");
        let mut memory = self.memory.lock().expect("click memory lock");
        for e in batch {
            memory.add(e, seq);
        }
        Ok(true)
    }

    /// Merges the share of link-hours due since the last merge (all of them over a minute),
    /// and more when memory holds too many.
    fn merge_due(&self) -> sled::Result<()> {
        let due = {
            let mut memory = self.memory.lock().expect("click memory lock");
            let now = Instant::now();
            let elapsed = memory
                .merged_at
                .map_or(Duration::ZERO, |t| now.duration_since(t));
            memory.merged_at = Some(now);
            memory.due +=
                memory.order.len() as f64 * elapsed.as_secs_f64() / MERGE_EVERY.as_secs_f64();
            let share = memory.due.floor();
            memory.due -= share;
            let over = memory.order.len().saturating_sub(MAX_IN_MEMORY);
            let n = if memory.names.len() > MAX_VALUES {
                usize::MAX
            } else {
                (share as usize).max(over)
            };
            // A merge holds the memory lock (stats wait for it): a bounded share per batch.
            n.min(MAX_MERGE)
        };
        self.merge_oldest(due)
    }

    /// Merges everything in memory into the database.
    pub fn merge(&self) -> sled::Result<()> {
        self.merge_oldest(usize::MAX)
    }

    /// Merges the `n` oldest link-hours in memory into the database, then forgets the
    /// logged batches whose clicks are all merged.
    fn merge_oldest(&self, n: usize) -> sled::Result<()> {
        // Held throughout: no batch is logged while the log is being forgotten.
        let mut log = self.log.lock().expect("click log lock");
        let forget_before = {
            let mut memory = self.memory.lock().expect("click memory lock");
            // The batch is built first and the link-hours leave memory only once it is
            // applied: a failed merge loses nothing, and is retried.
            let mut batch = sled::Batch::default();
            let mut newest = None;
            let taking = n.min(memory.order.len());
            for (code, hour, bot) in memory.order.iter().take(taking) {
                let counting = memory.links[&**code].get((*hour, *bot));
                newest = newest.max(Some(counting.last));
                let counted = counting.to_hour(&memory.names);
                let key = hour_key(code, *hour, *bot);
                let merged = match self.hours.get(&key)? {
                    Some(old) => match decode(&old) {
                        Ok(mut old) => {
                            old.merge(&counted);
                            old
                        }
                        Err(e) => {
                            // Its counts are lost already; keep the new ones.
                            tracing::error!(error = %e, code = %code, hour,
                                "a stored click roll-up does not decode; it is replaced");
                            counted
                        }
                    },
                    None => counted,
                };
                batch.insert(key, encode(&merged));
            }
            let Some(newest) = newest else {
                return Ok(());
            };
            let recorded = self
                .hours
                .get(MERGED_THROUGH)?
                .and_then(|v| v.as_ref().try_into().ok())
                .map_or(0, u64::from_be_bytes);
            batch.insert(MERGED_THROUGH, &newest.max(recorded).to_be_bytes());
            self.hours.apply_batch(batch)?;
            for _ in 0..taking {
                let (code, hour, bot) = memory.order.pop_front().expect("taken");
                let hours = memory.links.get_mut(&*code).expect("ordered link");
                hours.remove((hour, bot));
                if hours.is_empty() {
                    memory.links.remove(&*code);
                }
            }
            if memory.order.is_empty() {
                // Nothing refers to the values any more.
                memory.ids = Default::default();
                memory.names.clear();
            }
            memory.oldest_unmerged()
        };
        // The merged roll-ups must be on the device before the log that could rebuild them
        // goes.
        self.durable.sync().map_err(io_error)?;
        match forget_before {
            Some(0) => Ok(()),
            Some(first) => log.remove_through(first - 1).map_err(io_error),
            None => match log.last() {
                Some(last) => log.remove_through(last).map_err(io_error),
                None => Ok(()),
            },
        }
    }

    /// [`Rollups::tally`] on a blocking thread: it reads the database, and waits for a merge
    /// in progress.
    pub async fn tally_off_runtime(
        &self,
        code: String,
        from_ms: i64,
        to_ms: i64,
        bots: Bots,
    ) -> sled::Result<Tally> {
        let rollups = self.clone();
        tokio::task::spawn_blocking(move || rollups.tally(&code, from_ms, to_ms, bots))
            .await
            .map_err(|e| sled::Error::ReportableBug(format!("the click tally task failed: {e}")))?
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
            for &((hour, bot), ref counted) in hours
                .0
                .iter()
                .filter(|(at, _)| (first..=last).contains(&at.0))
            {
                if bots.counts(bot) {
                    counted.to_hour(&memory.names).count_into(hour, &mut out);
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
            let db = linkrift_raft::DurableDb::open(&dir.path().join("db"), 1 << 20).unwrap();
            let r = Rollups::open(&db, &log, 1 << 30).unwrap();
            assert!(r.record(&clicks("a", 10, H, CHROME)).unwrap());
            r.merge().unwrap();
            assert!(r.record(&clicks("a", 5, H + HOUR_MS, "curl/8")).unwrap());
            // The first batch is merged; the second is in memory only.
            assert_eq!(total(&r, "a", Bots::Include), (15, 6));
            assert_eq!(total(&r, "a", Bots::Exclude), (10, 3));
            assert_eq!(total(&r, "a", Bots::Only), (5, 3));
            assert_eq!(total(&r, "b", Bots::Include), (0, 0));
            let t = r.tally("a", H, H, Bots::Include).unwrap();
            assert_eq!(t.hours, BTreeMap::from([(H, 10)]), "one hour only");
            assert_eq!(t.dims["country"], BTreeMap::from([("BR".to_string(), 10)]));
            db.sync().unwrap();
        }
        // Reopened (as after a crash): the batch only in memory comes back from the log.
        let db = linkrift_raft::DurableDb::open(&dir.path().join("db"), 1 << 20).unwrap();
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
    fn a_partial_merge_and_a_restart_count_every_click_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let db = linkrift_raft::DurableDb::open(&dir.path().join("db"), 1 << 20).unwrap();
        {
            let r = Rollups::open(&db, &log, 1 << 30).unwrap();
            for code in ["a", "b", "c"] {
                assert!(r.record(&clicks(code, 3, H, CHROME)).unwrap());
            }
            // "a" gets more clicks in a later batch, after its first link-hour was merged.
            r.merge_oldest(2).unwrap();
            assert!(r.record(&clicks("a", 2, H, CHROME)).unwrap());
            assert_eq!(total(&r, "a", Bots::Include).0, 5);
            assert_eq!(
                Spool::open(&log, 1 << 30).unwrap().events(),
                5,
                "batches whose clicks are all merged are forgotten"
            );
        }
        let r = Rollups::open(&db, &log, 1 << 30).unwrap();
        for (code, n) in [("a", 5), ("b", 3), ("c", 3)] {
            assert_eq!(total(&r, code, Bots::Include).0, n, "{code}");
        }
        r.merge().unwrap();
        assert_eq!(Spool::open(&log, 1 << 30).unwrap().events(), 0);
        for (code, n) in [("a", 5), ("b", 3), ("c", 3)] {
            assert_eq!(total(&r, code, Bots::Include).0, n, "{code}");
        }
    }

    #[test]
    fn a_full_log_is_merged_and_the_batch_taken() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let db = linkrift_raft::DurableDb::open(&dir.path().join("db"), 1 << 20).unwrap();
        let batch = clicks("a", 50, H, CHROME);
        let size = {
            let probe = tempfile::tempdir().unwrap();
            let mut spool = Spool::open(probe.path(), u64::MAX).unwrap();
            assert!(spool.push(&batch).unwrap());
            spool.bytes()
        };
        // Room for two batches: the third finds the log full, merges, and is taken.
        let r = Rollups::open(&db, &log, size * 2).unwrap();
        for _ in 0..5 {
            assert!(r.record(&batch).unwrap());
        }
        assert_eq!(total(&r, "a", Bots::Include).0, 250);
        drop(r);
        let r = Rollups::open(&db, &log, size * 2).unwrap();
        assert_eq!(total(&r, "a", Bots::Include).0, 250, "after a restart too");
    }

    #[test]
    fn a_batch_merged_but_still_in_the_log_is_not_counted_twice() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let db = linkrift_raft::DurableDb::open(&dir.path().join("db"), 1 << 20).unwrap();
        let batch = clicks("a", 4, H, CHROME);
        {
            let r = Rollups::open(&db, &log, 1 << 30).unwrap();
            assert!(r.record(&batch).unwrap());
            r.merge().unwrap();
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
