//! The embedded click store, used when no ClickHouse is configured: hourly roll-ups per
//! link, bot flag and dimension (countries, referrer hosts, devices, browsers, operating
//! systems), and the visitors seen each hour, in the node's sled database. Each node rolls
//! up the clicks it served; stats add up every node's.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::event::ClickEvent;

/// The dimensions clicks are counted by, besides the total.
pub const DIMENSIONS: [&str; 5] = ["country", "referrer", "device", "browser", "os"];
const TOTAL: u8 = 0;
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

/// The roll-up trees.
#[derive(Clone)]
pub struct Rollups {
    counts: sled::Tree,
    visitors: sled::Tree,
}

/// `code \0 hour(be) bot`: the prefix of a link's keys for one hour.
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

impl Rollups {
    /// Opens (or creates) the trees in `db`.
    pub fn open(db: &sled::Db) -> sled::Result<Self> {
        Ok(Self {
            counts: db.open_tree("click_rollups")?,
            visitors: db.open_tree("click_visitors")?,
        })
    }

    /// Adds a batch of clicks.
    pub fn record(&self, batch: &[ClickEvent]) -> sled::Result<()> {
        let mut adds: HashMap<Vec<u8>, u64> = HashMap::new();
        for e in batch {
            let prefix = hour_key(&e.code, hour_of(e.at_ms), e.bot);
            let mut total = prefix.clone();
            total.push(TOTAL);
            *adds.entry(total).or_default() += 1;
            let values = [
                e.country.as_str(),
                e.referer_host.as_str(),
                e.device.name(),
                e.browser.as_str(),
                e.os.as_str(),
            ];
            for (i, value) in values.into_iter().enumerate() {
                let mut key = prefix.clone();
                key.push(i as u8 + 1);
                key.extend_from_slice(value.as_bytes());
                *adds.entry(key).or_default() += 1;
            }
            let mut visitor = prefix;
            visitor.extend_from_slice(&e.visitor().to_be_bytes());
            self.visitors.insert(visitor, &[])?;
        }
        for (key, n) in adds {
            self.counts.update_and_fetch(key, |old| {
                let before = old
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u64::from_be_bytes);
                Some((before + n).to_be_bytes().to_vec())
            })?;
        }
        Ok(())
    }

    /// The clicks of `code` from `from_ms` to `to_ms` (hours overlapping the range).
    pub fn tally(&self, code: &str, from_ms: i64, to_ms: i64, bots: Bots) -> sled::Result<Tally> {
        let mut out = Tally::default();
        let (start, end) = (hour_key(code, hour_of(from_ms), false), {
            let mut k = hour_key(code, hour_of(to_ms), true);
            k.push(u8::MAX);
            k
        });
        let at = code.len() + 1;
        for item in self.counts.range(start.clone()..end.clone()) {
            let (key, value) = item?;
            let hour = u64::from_be_bytes(key[at..at + 8].try_into().expect("8 bytes"));
            let bot = key[at + 8] == 1;
            if !bots.counts(bot) {
                continue;
            }
            let n = value.as_ref().try_into().map_or(0, u64::from_be_bytes);
            match key[at + 9] {
                TOTAL => *out.hours.entry(hour as i64 * HOUR_MS).or_default() += n,
                dim => {
                    let name = DIMENSIONS[usize::from(dim - 1)];
                    let v = String::from_utf8_lossy(&key[at + 10..]).into_owned();
                    *out.dims
                        .entry(name.into())
                        .or_default()
                        .entry(v)
                        .or_default() += n;
                }
            }
        }
        for item in self.visitors.range(start..end) {
            let (key, _) = item?;
            if bots.counts(key[at + 8] == 1) {
                out.visitors.insert(u64::from_be_bytes(
                    key[at + 9..at + 17].try_into().expect("8 bytes"),
                ));
            }
        }
        Ok(out)
    }
}
