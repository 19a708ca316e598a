//! The near cache: links of shards this node holds no replica of, as a replica last
//! answered for them.
//!
//! Bounded (least recently used entries go first) and every entry expires: found links
//! after `ttl`, "no such link" answers after `negative_ttl`. Updates and deletes broadcast
//! an invalidation to every node, so an entry normally dies within the broadcast's delivery
//! time; the TTL bounds staleness when a broadcast is lost. A fill that was in flight while
//! an invalidation arrived is not stored, so a slow answer cannot resurrect a stale entry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;
use moka::Expiry;

use crate::domain::Link;

/// Near-cache settings.
#[derive(Clone, Copy, Debug)]
pub struct CacheConfig {
    /// Most entries kept.
    pub capacity: u64,
    /// How long a found link is served from the cache at most.
    pub ttl: Duration,
    /// How long a "no such link" answer is kept.
    pub negative_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            capacity: 100_000,
            ttl: Duration::from_secs(5),
            negative_ttl: Duration::from_secs(1),
        }
    }
}

type Entry = Option<Arc<Link>>;

struct Lifetime(CacheConfig);

impl Expiry<Arc<str>, Entry> for Lifetime {
    fn expire_after_create(&self, _: &Arc<str>, value: &Entry, _: Instant) -> Option<Duration> {
        Some(if value.is_some() {
            self.0.ttl
        } else {
            self.0.negative_ttl
        })
    }
}

/// The cache; cheap to share.
pub struct NearCache {
    entries: Cache<Arc<str>, Entry>,
    /// Bumped by every invalidation; a fill stores its answer only if no invalidation
    /// arrived while it was in flight.
    epoch: AtomicU64,
}

/// A ticket taken before asking a replica, redeemed by [`NearCache::fill`].
pub struct Ticket(u64);

impl NearCache {
    /// An empty cache.
    pub fn new(config: CacheConfig) -> Self {
        Self {
            entries: Cache::builder()
                .max_capacity(config.capacity)
                .expire_after(Lifetime(config))
                .build(),
            epoch: AtomicU64::new(0),
        }
    }

    /// The cached answer for `code`: `Some(None)` is a cached "no such link".
    pub fn get(&self, code: &str) -> Option<Entry> {
        self.entries.get(code)
    }

    /// Call before asking a replica for `code`.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.epoch.load(Ordering::Acquire))
    }

    /// Stores a replica's answer, unless an invalidation arrived since `ticket`.
    pub fn fill(&self, ticket: Ticket, code: &str, answer: Entry) {
        if self.epoch.load(Ordering::Acquire) == ticket.0 {
            self.entries.insert(Arc::from(code), answer);
            // An invalidation may have slipped in between the check and the insert.
            if self.epoch.load(Ordering::Acquire) != ticket.0 {
                self.entries.invalidate(code);
            }
        }
    }

    /// Forgets `code` (it changed somewhere).
    pub fn invalidate(&self, code: &str) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.entries.invalidate(code);
    }

    /// Entries held (approximate).
    pub fn len(&self) -> u64 {
        self.entries.entry_count()
    }

    /// Whether the cache is empty (approximate).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(code: &str) -> Arc<Link> {
        Link::sample(code)
    }

    #[test]
    fn a_fill_overtaken_by_an_invalidation_is_not_stored() {
        let cache = NearCache::new(CacheConfig::default());
        let ticket = cache.ticket();
        cache.invalidate("abcd");
        cache.fill(ticket, "abcd", Some(link("abcd")));
        assert!(cache.get("abcd").is_none());

        let ticket = cache.ticket();
        cache.fill(ticket, "abcd", Some(link("abcd")));
        assert!(cache.get("abcd").unwrap().is_some());
        cache.invalidate("abcd");
        assert!(cache.get("abcd").is_none());
    }

    #[test]
    fn negative_answers_expire_sooner() {
        let cache = NearCache::new(CacheConfig {
            capacity: 10,
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_millis(1),
        });
        cache.fill(cache.ticket(), "gone", None);
        cache.fill(cache.ticket(), "here", Some(link("here")));
        let expired = Instant::now() + Duration::from_millis(1);
        while Instant::now() < expired {
            std::hint::spin_loop();
        }
        assert!(
            cache.get("gone").is_none(),
            "the negative entry outlived its TTL"
        );
        assert!(cache.get("here").is_some());
    }
}
