//! The shard state machine: pure, deterministic, no I/O.
//!
//! Links live in a lock-free hash map shared with [`ShardReader`]s, so a redirect reads
//! a link without a lock or an actor round trip; an ordered index of codes serves listing.
//! Every command carries a request id and the proposer's clock: the outcome of each
//! request is remembered for [`DEDUPE_WINDOW_MS`], so a retried request (after a timeout
//! or a failover) gets the first answer instead of acting twice.
//!
//! The window is measured on the shard's own clock, not the proposers' wall clocks (one
//! node's clock 10 minutes fast would otherwise empty every shard's memory of outcomes):
//! the leader proposes a [`ShardCommand::Tick`] every few seconds with the time that passed
//! on its monotonic clock since its last one, and the shard's clock is the sum of the
//! ticks. A new leader counts from when it took over, so time a failover takes is never
//! counted: the window can only come out longer than promised, never shorter. No count
//! cap cuts it short either: what the window holds is bounded by the shard's write rate.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::{Read, Write};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

use super::feed::{Change, Feed, Since};
use crate::domain::{Link, LinkPatch, NewLink, ShortCode, Tag};

/// Identifies one API request across retries.
pub type RequestId = u128;

/// How long a request's outcome is remembered, by the shard's clock (its leaders' ticks).
pub const DEDUPE_WINDOW_MS: i64 = 10 * 60 * 1000;
/// The most one tick may advance the shard's clock: a leader that was paused (or whose
/// tick was delayed) for longer counts this much.
pub const TICK_MAX_MS: u64 = 60_000;

/// A change to a shard. `at` is the proposer's clock, Unix milliseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardCommand {
    /// Create a link at a free code.
    Create {
        /// Request id.
        request: RequestId,
        /// Proposer's clock.
        at: i64,
        /// The link.
        link: NewLink,
    },
    /// Change a link, if its version is still `expected_version` (when given).
    Update {
        /// Request id.
        request: RequestId,
        /// Proposer's clock.
        at: i64,
        /// Which link.
        code: ShortCode,
        /// Version the caller saw.
        expected_version: Option<u64>,
        /// The change.
        patch: LinkPatch,
    },
    /// Delete a link, if its version is still `expected_version` (when given).
    Delete {
        /// Request id.
        request: RequestId,
        /// Proposer's clock.
        at: i64,
        /// Which link.
        code: ShortCode,
        /// Version the caller saw.
        expected_version: Option<u64>,
    },
    /// Put back a link exactly as it was (every field, its version included), at a free
    /// code: `linkrift restore` rebuilding a cluster from the Postgres mirror.
    Restore {
        /// Request id.
        request: RequestId,
        /// Proposer's clock.
        at: i64,
        /// The link.
        link: Link,
    },
    // New variants go last: the log and the wire number them.
    /// The leader's clock moved on by `elapsed_ms` (monotonic, since its last tick or since
    /// it became leader; at most [`TICK_MAX_MS`] counts): the shard's clock, which the
    /// de-duplication window is measured by.
    Tick {
        /// Milliseconds.
        elapsed_ms: u64,
    },
}

impl ShardCommand {
    /// The request id and the proposer's clock; `None` for a tick.
    fn request(&self) -> Option<(RequestId, i64)> {
        match self {
            Self::Create { request, at, .. }
            | Self::Update { request, at, .. }
            | Self::Delete { request, at, .. }
            | Self::Restore { request, at, .. } => Some((*request, *at)),
            Self::Tick { .. } => None,
        }
    }
}

/// What a command did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardOutcome {
    /// The link was created.
    Created(Arc<Link>),
    /// The link was changed; this is the new state.
    Updated(Arc<Link>),
    /// The link was deleted; this was its last state.
    Deleted(Arc<Link>),
    /// Create refused: the code is in use.
    CodeTaken,
    /// Update or delete refused: no such link.
    NotFound,
    /// Update or delete refused: the link changed since the caller read it.
    VersionMismatch {
        /// The link's version now.
        current: u64,
    },
    /// A create submitted again by its client (the same request id, proposed anew: an
    /// `Idempotency-Key` sent again) after the link it created was deleted: answering
    /// `Created` again would name a link that is gone. A node's own retry of the same
    /// proposal is answered `Created`, since that proposal did create the link. Never
    /// remembered, only answered.
    DeletedSince(Arc<Link>),
    /// A tick was counted.
    Ticked,
}

/// The links of one shard, shared between the state machine and readers.
#[derive(Default)]
struct Table {
    links: papaya::HashMap<Arc<str>, Arc<Link>>,
    order: RwLock<BTreeSet<Arc<str>>>,
}

impl Table {
    /// Adds a link at a free code, to the map and the ordered index; the shared copy (the
    /// remembered outcome shares the table's).
    fn add(&self, link: Link) -> Arc<Link> {
        self.order
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(link.code.shared());
        let link = Arc::new(link);
        self.links.pin().insert(link.code.shared(), link.clone());
        link
    }
}

/// Reads a shard's links without locks (for redirects) or with a read lock (for listing).
#[derive(Clone)]
pub struct ShardReader {
    table: Arc<Table>,
    feed: Arc<Mutex<Feed>>,
}

impl ShardReader {
    /// The link at `code`. Lock-free and wait-free: safe on the redirect hot path.
    pub fn get(&self, code: &str) -> Option<Arc<Link>> {
        self.table.links.pin().get(code).cloned()
    }

    /// Up to `limit` links with codes after `after`, in code order, that carry `tag`.
    pub fn page(&self, after: Option<&str>, tag: Option<&Tag>, limit: usize) -> Vec<Arc<Link>> {
        let order = self.table.order.read().unwrap_or_else(|p| p.into_inner());
        let links = self.table.links.pin();
        let range = match after {
            Some(s) => {
                order.range::<str, _>((std::ops::Bound::Excluded(s), std::ops::Bound::Unbounded))
            }
            None => order.range::<str, _>(..),
        };
        range
            .filter_map(|code| links.get(&**code).cloned())
            .filter(|link| tag.is_none_or(|t| link.tags.contains(t)))
            .take(limit)
            .collect()
    }

    /// Number of links.
    pub fn len(&self) -> usize {
        self.table.links.len()
    }

    /// The number of links and an order-independent digest of their every field: equal on
    /// two replicas that have applied the same entries.
    pub fn digest(&self) -> (usize, u64) {
        let links = self.table.links.pin();
        let sum = links.values().fold(0u64, |acc, link| {
            let bytes = linkrift_codec::encode(&**link);
            acc.wrapping_add(xxhash_rust::xxh3::xxh3_64(&bytes))
        });
        (links.len(), sum)
    }

    /// Whether the shard holds no links.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The changes after log index `mirrored` (see [`Feed::since`]).
    pub fn changes_since(&self, mirrored: u64, limit: usize) -> Since {
        self.feed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .since(mirrored, limit)
    }

    /// Every link, and the log index the state reflects. Consistent only while the caller
    /// keeps the state from changing (under the group's read lock).
    pub fn everything(&self) -> (Vec<Arc<Link>>, u64) {
        let through = self
            .feed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .through();
        let links = self.table.links.pin();
        (links.values().cloned().collect(), through)
    }
}

/// The link a change applies to, if it exists and is still at the version the caller
/// expects (when it says); otherwise the refusal to answer with.
fn versioned(
    current: Option<&Arc<Link>>,
    expected: Option<u64>,
) -> Result<&Arc<Link>, ShardOutcome> {
    let current = current.ok_or(ShardOutcome::NotFound)?;
    match expected {
        Some(v) if v != current.version => Err(ShardOutcome::VersionMismatch {
            current: current.version,
        }),
        _ => Ok(current),
    }
}

/// Whether the chaos tests' deliberate bug [`crate::mutation::SKIP_DEDUPE`] is armed
/// (always `false` without the `failpoints` feature).
fn skip_dedupe() -> bool {
    static ARMED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    cfg!(feature = "failpoints")
        && *ARMED.get_or_init(|| crate::mutation::armed(crate::mutation::SKIP_DEDUPE))
}

/// The shard state machine.
#[derive(Default)]
pub struct ShardState {
    table: Arc<Table>,
    feed: Arc<Mutex<Feed>>,
    /// A snapshot was restored; the next [`ShardState::advance`] says through which index.
    restored: bool,
    /// Each remembered request's outcome, with the proposal time of its first submission.
    outcomes: HashMap<RequestId, (i64, ShardOutcome)>,
    /// Request ids in the order they were first seen, with the shard's clock then, for
    /// expiry.
    seen: VecDeque<(i64, RequestId)>,
    /// The shard's clock: the sum of its ticks, milliseconds.
    clock: i64,
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    links: Vec<Link>,
    /// (proposal time, shard clock when first seen, request, outcome).
    seen: Vec<(i64, i64, RequestId, ShardOutcome)>,
    clock: i64,
}

/// A snapshot from before the shard's clock: still read (its outcomes count as seen at
/// clock 0, so they are kept a whole window from then).
#[derive(Deserialize)]
struct SnapshotBeforeClock {
    links: Vec<Link>,
    seen: Vec<(i64, RequestId, ShardOutcome)>,
}

impl ShardState {
    /// A reader sharing this shard's table.
    pub fn reader(&self) -> ShardReader {
        ShardReader {
            table: self.table.clone(),
            feed: self.feed.clone(),
        }
    }

    /// Applies one command (outside Raft: no change is recorded in the feed).
    pub fn apply(&mut self, command: ShardCommand) -> ShardOutcome {
        self.apply_at(0, command)
    }

    /// Applies the command carried by the log entry at `index`, recording what it changed
    /// in the feed.
    pub fn apply_at(&mut self, index: u64, command: ShardCommand) -> ShardOutcome {
        let Some((request, at)) = command.request() else {
            if let ShardCommand::Tick { elapsed_ms } = command {
                self.clock += elapsed_ms.min(TICK_MAX_MS) as i64;
                self.forget_before(self.clock - DEDUPE_WINDOW_MS);
            }
            return ShardOutcome::Ticked;
        };
        let remembered = if skip_dedupe() {
            None
        } else {
            self.outcomes.get(&request)
        };
        if let Some((first_at, outcome)) = remembered {
            // The same proposal again (a node retrying after a timeout or a failover) carries
            // the same time; a client's new submission of the request carries its own.
            let resubmitted = *first_at != at;
            if let ShardOutcome::Created(link) = outcome {
                if resubmitted && !self.table.links.pin().contains_key(link.code.as_str()) {
                    return ShardOutcome::DeletedSince(link.clone());
                }
            }
            return outcome.clone();
        }
        let outcome = self.execute(command);
        let change = match &outcome {
            ShardOutcome::Created(l) | ShardOutcome::Updated(l) => Some(Change::Upsert(l.clone())),
            ShardOutcome::Deleted(l) => Some(Change::Delete(l.clone())),
            _ => None,
        };
        if let (Some(change), true) = (change, index > 0) {
            self.feed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(index, change);
        }
        self.outcomes.insert(request, (at, outcome.clone()));
        self.seen.push_back((self.clock, request));
        outcome
    }

    fn forget_before(&mut self, cutoff: i64) {
        while self.seen.front().is_some_and(|(t, _)| *t < cutoff) {
            if let Some((_, old)) = self.seen.pop_front() {
                self.outcomes.remove(&old);
            }
        }
    }

    fn execute(&mut self, command: ShardCommand) -> ShardOutcome {
        let links = self.table.links.pin();
        match command {
            ShardCommand::Create { at, link, .. } => {
                if links.contains_key(link.code.as_str()) {
                    return ShardOutcome::CodeTaken;
                }
                let link = Link {
                    code: link.code,
                    url: link.url,
                    title: link.title,
                    tags: link.tags,
                    created_at: at,
                    updated_at: at,
                    expires_at: link.expires_at,
                    redirect: link.redirect,
                    archived: false,
                    version: 1,
                };
                ShardOutcome::Created(self.table.add(link))
            }
            ShardCommand::Restore { link, .. } => {
                if links.contains_key(link.code.as_str()) {
                    return ShardOutcome::CodeTaken;
                }
                ShardOutcome::Created(self.table.add(link))
            }
            ShardCommand::Tick { .. } => ShardOutcome::Ticked,
            ShardCommand::Update {
                at,
                code,
                expected_version,
                patch,
                ..
            } => {
                let current = match versioned(links.get(code.as_str()), expected_version) {
                    Ok(current) => current,
                    Err(refusal) => return refusal,
                };
                let mut link = Link::clone(current);
                patch.apply_to(&mut link);
                link.version += 1;
                link.updated_at = at;
                let link = Arc::new(link);
                links.insert(code.shared(), link.clone());
                ShardOutcome::Updated(link)
            }
            ShardCommand::Delete {
                code,
                expected_version,
                ..
            } => {
                let current = match versioned(links.get(code.as_str()), expected_version) {
                    Ok(current) => current,
                    Err(refusal) => return refusal,
                };
                let last = current.clone();
                self.table
                    .order
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(code.as_str());
                links.remove(code.as_str());
                ShardOutcome::Deleted(last)
            }
        }
    }

    /// Writes the whole shard: links in code order, then remembered outcomes.
    pub fn write_snapshot(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let links = self.table.links.pin();
        let order = self.table.order.read().unwrap_or_else(|p| p.into_inner());
        let snapshot = Snapshot {
            links: order
                .iter()
                .filter_map(|c| links.get(&**c))
                .map(|l| Link::clone(l))
                .collect(),
            seen: self
                .seen
                .iter()
                .filter_map(|(stamp, id)| {
                    self.outcomes
                        .get(id)
                        .map(|(at, o)| (*at, *stamp, *id, o.clone()))
                })
                .collect(),
            clock: self.clock,
        };
        out.write_all(&linkrift_codec::encode(&snapshot))
    }

    /// Replaces the whole shard with a snapshot.
    pub fn restore(&mut self, input: &mut dyn Read) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes)?;
        let snapshot: Snapshot = match linkrift_codec::decode(&bytes) {
            Ok(s) => s,
            Err(e) => match linkrift_codec::decode::<SnapshotBeforeClock>(&bytes) {
                Ok(old) => Snapshot {
                    links: old.links,
                    seen: old
                        .seen
                        .into_iter()
                        .map(|(at, id, o)| (at, 0, id, o))
                        .collect(),
                    clock: 0,
                },
                Err(_) => return Err(e.into()),
            },
        };
        let links = self.table.links.pin();
        links.clear();
        let mut order = self.table.order.write().unwrap_or_else(|p| p.into_inner());
        order.clear();
        for link in snapshot.links {
            order.insert(link.code.shared());
            links.insert(link.code.shared(), Arc::new(link));
        }
        self.outcomes.clear();
        self.seen.clear();
        for (at, stamp, id, outcome) in snapshot.seen {
            self.outcomes.insert(id, (at, outcome));
            self.seen.push_back((stamp, id));
        }
        self.clock = snapshot.clock;
        self.restored = true;
        Ok(())
    }

    /// The state reflects every entry up to `index` (see
    /// `linkrift_raft::StateMachine::advance`).
    pub fn advance(&mut self, index: u64) {
        let mut feed = self.feed.lock().unwrap_or_else(|p| p.into_inner());
        if std::mem::take(&mut self.restored) {
            feed.restored(index);
        } else {
            feed.advance(index);
        }
    }
}
