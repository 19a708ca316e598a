//! A shard's pure half: its links and the commands that change them (`state`), the feed
//! of changes the mirror reads (`feed`), and which shard a code lives in (`shard_of`).

pub mod feed;
mod state;

pub use state::{RequestId, ShardCommand, ShardOutcome, ShardReader, ShardState, DEDUPE_WINDOW_MS};

use xxhash_rust::xxh3::xxh3_64;

/// The shard a code lives in: `jump_consistent_hash(xxh3_64(code), shards)`. Stable
/// forever for a given shard count, and a future split moves the fewest codes.
pub fn shard_of(code: &str, shards: u32) -> u32 {
    jump_consistent_hash(xxh3_64(code.as_bytes()), shards)
}

/// Lamping and Veach, "A Fast, Minimal Memory, Consistent Hash Algorithm" (2014).
pub fn jump_consistent_hash(mut key: u64, buckets: u32) -> u32 {
    assert!(buckets > 0, "at least one bucket");
    let (mut b, mut j) = (-1i64, 0i64);
    while j < buckets as i64 {
        b = j;
        key = key.wrapping_mul(2862933555777941757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_hash_keys_only_ever_move_to_the_new_bucket() {
        // The defining property: growing n -> n+1 buckets moves a key to bucket n or not at all.
        for key in (0..5_000u64).map(|k| k.wrapping_mul(0x9E37_79B9_7F4A_7C15)) {
            assert_eq!(jump_consistent_hash(key, 1), 0);
            for n in 1..100 {
                let (before, after) = (
                    jump_consistent_hash(key, n),
                    jump_consistent_hash(key, n + 1),
                );
                assert!(before < n && after <= n);
                assert!(
                    after == before || after == n,
                    "key {key}: {before} -> {after} going to {} buckets",
                    n + 1
                );
            }
        }
    }

    #[test]
    fn growing_the_shard_count_moves_few_codes() {
        let codes: Vec<String> = (0..10_000).map(|i| format!("code{i}")).collect();
        let moved = codes
            .iter()
            .filter(|c| shard_of(c, 64) != shard_of(c, 65))
            .count();
        // Ideal is 1/65 of the codes (about 154).
        assert!(moved < 300, "{moved} of 10000 codes moved");
        let spread: std::collections::BTreeSet<u32> =
            codes.iter().map(|c| shard_of(c, 64)).collect();
        assert_eq!(spread.len(), 64, "every shard gets codes");
    }
}
