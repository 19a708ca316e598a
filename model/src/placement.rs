//! Where shard replicas belong: a pure function of (shards, nodes, replication factor).
//!
//! Rendezvous (highest-random-weight) hashing: each shard ranks every node by
//! `xxh3_64(shard, node)` and takes the top `rf`. Adding a node moves only the replicas it
//! wins (about `shards × rf / nodes`), removing one moves only the replicas it held, and
//! every node computes the same answer from the same inputs. The meta group's placement
//! table is this target; each shard's Raft membership is the truth a driver moves toward it.

use crate::NodeId;
use xxhash_rust::xxh3::xxh3_64;

/// The weight of `node` for `shard`; the highest weights win.
fn weight(shard: u32, node: NodeId) -> u64 {
    let mut key = [0u8; 12];
    key[..4].copy_from_slice(&shard.to_be_bytes());
    key[4..].copy_from_slice(&node.to_be_bytes());
    xxh3_64(&key)
}

/// The nodes that should hold `shard`: the `rf` highest-weighted of `nodes` (fewer when
/// there are fewer nodes), best first. `nodes` need not be sorted or unique.
pub fn replicas(shard: u32, nodes: &[NodeId], rf: usize) -> Vec<NodeId> {
    let mut ranked: Vec<NodeId> = nodes.to_vec();
    ranked.sort_unstable();
    ranked.dedup();
    ranked.sort_by_key(|&n| std::cmp::Reverse((weight(shard, n), n)));
    ranked.truncate(rf);
    ranked
}

/// The nodes that should hold `shard` when some nodes (`keepers`: draining ones) keep the
/// replicas they have but take no new one: the rendezvous ranking over `takers` and
/// `keepers`, where a keeper counts only if it is among `current`, the shard's members.
/// Nodes in neither list (leaving, lost) hold nothing in the target.
pub fn target(
    shard: u32,
    takers: &[NodeId],
    keepers: &[NodeId],
    current: &[NodeId],
    rf: usize,
) -> Vec<NodeId> {
    let all: Vec<NodeId> = takers.iter().chain(keepers).copied().collect();
    replicas(shard, &all, all.len())
        .into_iter()
        .filter(|n| takers.contains(n) || current.contains(n))
        .take(rf)
        .collect()
}

/// The target placement of every shard.
pub fn placement(shards: u32, nodes: &[NodeId], rf: usize) -> Vec<Vec<NodeId>> {
    (0..shards).map(|s| replicas(s, nodes, rf)).collect()
}

/// How many voters the meta group keeps: 3, or 5 once there are 5 nodes or more (never
/// more than there are nodes).
pub fn meta_voter_count(nodes: usize) -> usize {
    if nodes >= 5 {
        5
    } else {
        nodes.min(3)
    }
}

/// Replicas in `to` that `from` does not have: the replica moves between two placements.
pub fn moves(from: &[Vec<NodeId>], to: &[Vec<NodeId>]) -> usize {
    from.iter()
        .zip(to)
        .map(|(a, b)| b.iter().filter(|n| !a.contains(n)).count())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn replication_factor_is_capped_by_the_node_count() {
        assert_eq!(replicas(0, &[7], 3), vec![7]);
        assert_eq!(replicas(0, &[7, 8], 3).len(), 2);
        assert_eq!(replicas(0, &[1, 2, 3, 4, 5], 3).len(), 3);
        assert!(replicas(0, &[], 3).is_empty());
        assert_eq!(
            replicas(5, &[3, 1, 2, 1], 3).len(),
            3,
            "duplicates do not count twice"
        );
    }

    #[test]
    fn meta_voters_grow_to_five() {
        let counts: Vec<usize> = (1..=7).map(meta_voter_count).collect();
        assert_eq!(counts, vec![1, 2, 3, 3, 5, 5, 5]);
    }

    #[test]
    fn load_is_spread_evenly() {
        let nodes: Vec<NodeId> = (1..=5).collect();
        let p = placement(4096, &nodes, 3);
        let mut load = [0usize; 6];
        for shard in &p {
            for &n in shard {
                load[n as usize] += 1;
            }
        }
        let ideal = 4096 * 3 / 5;
        for n in &nodes {
            let l = load[*n as usize];
            assert!(
                l.abs_diff(ideal) < ideal / 10,
                "node {n} holds {l} replicas, ideal {ideal}"
            );
        }
    }

    #[test]
    fn a_draining_node_keeps_its_replicas_and_takes_no_new_one() {
        let nodes: Vec<NodeId> = (1..=5).collect();
        for shard in 0..64 {
            let before = replicas(shard, &nodes, 3);
            // Node 1 drains: the target is what it was.
            let takers: Vec<NodeId> = (2..=5).collect();
            assert_eq!(target(shard, &takers, &[1], &before, 3), before);
            // Node 2 then leaves while node 1 drains: node 1 gains nothing.
            let takers: Vec<NodeId> = (3..=5).collect();
            let after = target(shard, &takers, &[1], &before, 3);
            assert!(!after.contains(&2), "shard {shard}: {after:?}");
            assert_eq!(after.contains(&1), before.contains(&1), "shard {shard}");
            assert_eq!(after.len(), 3, "shard {shard}: {after:?}");
        }
    }

    proptest! {
        #[test]
        fn placements_are_distinct_ordered_and_independent_of_input_order(
            mut nodes in proptest::collection::vec(1u64..50, 0..12),
            shard in 0u32..4096,
            rf in 1usize..6,
        ) {
            let a = replicas(shard, &nodes, rf);
            nodes.reverse();
            prop_assert_eq!(&a, &replicas(shard, &nodes, rf));
            let mut unique = a.clone();
            unique.sort();
            unique.dedup();
            prop_assert_eq!(unique.len(), a.len());
            prop_assert!(a.iter().all(|n| nodes.contains(n)));
        }

        #[test]
        fn a_join_moves_only_replicas_to_the_new_node(
            count in 1u64..12,
            rf in 1usize..4,
        ) {
            let before: Vec<NodeId> = (1..=count).collect();
            let mut after = before.clone();
            after.push(100);
            let (p0, p1) = (placement(256, &before, rf), placement(256, &after, rf));
            for (a, b) in p0.iter().zip(&p1) {
                for n in b.iter().filter(|n| !a.contains(n)) {
                    prop_assert_eq!(*n, 100, "only the new node gains replicas");
                }
            }
            // About shards × rf / nodes replicas move (when the node count exceeds rf).
            if count as usize >= rf {
                let moved = moves(&p0, &p1) as f64;
                let ideal = 256.0 * rf as f64 / (count + 1) as f64;
                prop_assert!(moved < ideal * 1.5 + 8.0, "{} moved, ideal {}", moved, ideal);
            }
        }

        #[test]
        fn a_leave_moves_only_the_leaving_nodes_replicas(count in 2u64..12, rf in 1usize..4) {
            let before: Vec<NodeId> = (1..=count).collect();
            let after: Vec<NodeId> = before.iter().copied().filter(|&n| n != 1).collect();
            let (p0, p1) = (placement(256, &before, rf), placement(256, &after, rf));
            for (a, b) in p0.iter().zip(&p1) {
                // Every replica that stays put was already there; the only lost one is node 1's.
                let lost: Vec<_> = a.iter().filter(|n| !b.contains(n)).collect();
                prop_assert!(lost.iter().all(|&&n| n == 1), "lost {:?}", lost);
            }
        }
    }
}
