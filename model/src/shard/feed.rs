//! A shard's change feed: the links each committed entry created, changed or deleted, by log
//! index, kept in memory on every replica so that whichever replica leads can mirror them
//! (see `linkrift_actors::mirror`). It covers the entries after `base`: a snapshot restore, or
//! trimming to [`FEED_MAX`] changes, moves `base` up, and a mirror behind it resyncs from
//! the whole state instead.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::domain::Link;

/// Changes kept at most; older ones are dropped (whole entries at a time).
pub const FEED_MAX: usize = 200_000;

/// What one command did to one link.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// The link now reads so (created or changed).
    Upsert(Arc<Link>),
    /// The link was deleted; this was its last state.
    Delete(Arc<Link>),
}

impl Change {
    /// The link's code.
    pub fn code(&self) -> &str {
        match self {
            Self::Upsert(l) | Self::Delete(l) => l.code.as_str(),
        }
    }
}

/// The changes after `base`, up to `through`.
#[derive(Debug, Default)]
pub struct Feed {
    base: u64,
    through: u64,
    changes: VecDeque<(u64, Change)>,
}

/// What a mirror at some index can take from the feed.
#[derive(Debug, PartialEq)]
pub enum Since {
    /// Every change after that index, and the index they bring the mirror to.
    Changes(Vec<(u64, Change)>, u64),
    /// The feed no longer reaches back that far: resync from the whole state.
    Gap,
}

impl Feed {
    /// Records a change made by the entry at `index`. It is handed out once the whole
    /// entry is applied ([`Feed::advance`]): an entry carries several commands.
    pub fn push(&mut self, index: u64, change: Change) {
        self.changes.push_back((index, change));
        if self.changes.len() > FEED_MAX {
            self.trim();
        }
    }

    /// Every entry up to `index` is applied (it may have changed nothing).
    pub fn advance(&mut self, index: u64) {
        self.through = self.through.max(index);
    }

    /// The state was replaced by a snapshot through `index`: earlier changes are unknown.
    pub fn restored(&mut self, index: u64) {
        self.changes.clear();
        self.base = index;
        self.through = index;
    }

    /// The last index the feed reflects.
    pub fn through(&self) -> u64 {
        self.through
    }

    /// The changes after `mirrored`: about `limit` of them, in whole entries (an entry's
    /// changes are never split), with the index they bring a mirror to.
    pub fn since(&self, mirrored: u64, limit: usize) -> Since {
        if mirrored < self.base {
            return Since::Gap;
        }
        let start = self.changes.partition_point(|(i, _)| *i <= mirrored);
        let mut out: Vec<(u64, Change)> = Vec::new();
        for (index, change) in self.changes.range(start..) {
            if *index > self.through {
                break; // an entry still being applied
            }
            let new_entry = out.last().is_none_or(|(last, _)| last != index);
            if out.len() >= limit && new_entry {
                return Since::Changes(out, index - 1);
            }
            out.push((*index, change.clone()));
        }
        Since::Changes(out, self.through.max(mirrored))
    }

    fn trim(&mut self) {
        let excess = self.changes.len() - FEED_MAX;
        let cut = self.changes[excess - 1].0;
        while self.changes.front().is_some_and(|(i, _)| *i <= cut) {
            self.changes.pop_front();
        }
        self.base = cut;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(code: &str) -> Arc<Link> {
        Link::sample(code)
    }

    #[test]
    fn hands_out_the_changes_after_an_index_cut_at_entry_boundaries() {
        let mut feed = Feed::default();
        feed.advance(2); // membership and blank entries
        feed.push(3, Change::Upsert(link("a")));
        feed.push(3, Change::Upsert(link("b")));
        feed.push(4, Change::Delete(link("a")));
        feed.advance(5);
        let Since::Changes(all, upto) = feed.since(0, 100) else {
            panic!()
        };
        assert_eq!((all.len(), upto), (3, 5));
        let Since::Changes(after3, _) = feed.since(3, 100) else {
            panic!()
        };
        assert_eq!(after3, vec![(4, Change::Delete(link("a")))]);
        // A limit inside entry 3 still takes the whole entry, and stops after it.
        for limit in [1, 2] {
            let Since::Changes(first, upto) = feed.since(0, limit) else {
                panic!()
            };
            assert_eq!((first.len(), upto), (2, 3), "limit {limit}");
        }
    }

    #[test]
    fn an_entry_being_applied_is_not_handed_out_in_part() {
        let mut feed = Feed::default();
        feed.push(1, Change::Upsert(link("a")));
        feed.advance(1);
        // Entry 2 carries two commands; only the first is applied so far.
        feed.push(2, Change::Upsert(link("b")));
        assert_eq!(
            feed.since(0, 100),
            Since::Changes(vec![(1, Change::Upsert(link("a")))], 1)
        );
        feed.push(2, Change::Upsert(link("c")));
        feed.advance(2);
        let Since::Changes(changes, upto) = feed.since(1, 100) else {
            panic!()
        };
        assert_eq!((changes.len(), upto), (2, 2));
    }

    #[test]
    fn a_restore_or_a_trim_leaves_a_gap_behind_it() {
        let mut feed = Feed::default();
        feed.push(1, Change::Upsert(link("a")));
        feed.restored(10);
        assert_eq!(feed.since(5, 10), Since::Gap);
        assert_eq!(feed.since(10, 10), Since::Changes(vec![], 10));
        for i in 11..(11 + FEED_MAX as u64 + 5) {
            feed.push(i, Change::Upsert(link("b")));
            feed.advance(i);
        }
        assert_eq!(feed.since(10, 10), Since::Gap);
        assert!(matches!(feed.since(20, 10), Since::Changes(c, _) if c[0].0 == 21));
    }
}
