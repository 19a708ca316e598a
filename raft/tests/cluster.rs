//! Three real nodes on 127.0.0.1–3 (plus a fourth on 127.0.0.4), eight groups each, over
//! the real peer transport: election, replication, leader loss, membership changes,
//! snapshot catch-up and restart from disk.
//!
//! (Over 600 lines: the replication core's multi-node tests, sharing one harness of real
//! nodes.)

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use support::{cluster, set, test_config, wait_converged, wait_for, wait_leader, write, TestNode};

const GROUPS: u64 = 8;
const LONG: Duration = Duration::from_secs(30);

/// Writes `count` keys `{prefix}-{i}` to every group; returns what each group must hold.
async fn fill(
    nodes: &[TestNode],
    prefix: &str,
    count: usize,
) -> BTreeMap<u64, BTreeMap<String, String>> {
    let mut expected = BTreeMap::new();
    for g in 1..=GROUPS {
        let entries: &mut BTreeMap<String, String> = expected.entry(g).or_default();
        for i in 0..count {
            let (k, v) = (format!("{prefix}-{i}"), format!("g{g}-{prefix}-{i}"));
            write(nodes, g, set(&k, &v), LONG).await;
            entries.insert(k, v);
        }
    }
    expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_elected_entries_replicate_and_survive_leader_loss_and_restart() {
    support::init_tracing();
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(root.path(), 3, GROUPS, test_config()).await;

    let mut expected = fill(&nodes, "a", 20).await;
    for g in 1..=GROUPS {
        let map = wait_converged(&nodes, g, LONG).await;
        assert_eq!(
            map, expected[&g],
            "group {g} replicated exactly what was written"
        );
    }

    // Kill the leader of group 1: a new leader is elected among the others, nothing
    // committed is lost, and every group keeps taking writes.
    let old = wait_leader(&nodes, 1, LONG).await;
    let idx = nodes.iter().position(|n| n.id == old).unwrap();
    nodes[idx].stop().await;
    let new = wait_leader(&nodes, 1, LONG).await;
    assert_ne!(new, old, "a stopped node cannot lead");
    for (g, more) in fill(&nodes, "b", 10).await {
        expected.get_mut(&g).unwrap().extend(more);
    }
    for g in 1..=GROUPS {
        let map = wait_converged(&nodes, g, LONG).await;
        assert_eq!(
            map, expected[&g],
            "group {g} on the survivors after losing node {old}"
        );
    }

    // The stopped node reopens all its groups from disk and catches up.
    nodes[idx].restart().await;
    assert_eq!(
        nodes[idx].node().group_ids().len(),
        GROUPS as usize,
        "every group reopened"
    );
    for g in 1..=GROUPS {
        let map = wait_converged(&nodes, g, LONG).await;
        assert_eq!(map, expected[&g], "group {g} after node {old} came back");
    }
    for n in &mut nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_is_added_and_promoted_to_voter() {
    support::init_tracing();
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(root.path(), 3, GROUPS, test_config()).await;
    let expected = fill(&nodes, "a", 10).await;

    let fourth = TestNode::start(root.path(), 4, test_config()).await;
    for g in 1..=GROUPS {
        fourth
            .node()
            .create_group(linkrift_raft::GroupId(g))
            .await
            .unwrap();
    }
    nodes.push(fourth);
    for g in 1..=GROUPS {
        let leader = wait_leader(&nodes, g, LONG).await;
        let leader = nodes.iter().find(|n| n.id == leader).unwrap().group(g);
        leader
            .add_learner(4, nodes[3].addr.to_string())
            .await
            .expect("learner added");
        leader
            .change_voters([1, 2, 3, 4])
            .await
            .expect("learner promoted");
    }
    for g in 1..=GROUPS {
        let map = wait_converged(&nodes, g, LONG).await;
        assert_eq!(map, expected[&g], "group {g} on the promoted node");
        let voters: BTreeSet<u64> = nodes[3]
            .group(g)
            .read(|a| a.membership.membership().voter_ids().collect());
        assert_eq!(
            voters,
            BTreeSet::from([1, 2, 3, 4]),
            "node 4 votes in group {g}"
        );
    }
    // With four voters a quorum is three: node 4's vote now counts, so losing two of the
    // original three stops commits while losing one does not.
    nodes[0].stop().await;
    write(&nodes, 1, set("after", "promotion"), LONG).await;
    let map = wait_converged(&nodes, 1, LONG).await;
    assert_eq!(map.get("after").map(String::as_str), Some("promotion"));
    for n in &mut nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_behind_a_purged_log_catches_up_by_snapshot() {
    support::init_tracing();
    let root = tempfile::tempdir().unwrap();
    let config = linkrift_raft::RaftConfig {
        snapshot_after_entries: 40,
        keep_after_snapshot: 0,
        // Small chunks, so a snapshot takes several frames.
        snapshot_chunk_bytes: 512,
        ..test_config()
    };
    let mut nodes = cluster(root.path(), 3, GROUPS, config).await;
    let mut expected = fill(&nodes, "a", 5).await;
    for g in 1..=GROUPS {
        wait_converged(&nodes, g, LONG).await;
    }

    // Node 3 misses enough entries that the others snapshot and purge past its log.
    let behind: BTreeMap<u64, u64> = (1..=GROUPS)
        .map(|g| {
            (
                g,
                nodes[2]
                    .group(g)
                    .raft()
                    .metrics()
                    .borrow()
                    .last_log_index
                    .unwrap(),
            )
        })
        .collect();
    nodes[2].stop().await;
    for (g, more) in fill(&nodes, "b", 100).await {
        expected.get_mut(&g).unwrap().extend(more);
    }
    for g in 1..=GROUPS {
        wait_for(&format!("group {g} to purge past node 3"), LONG, || {
            let purged = nodes[..2]
                .iter()
                .map(|n| {
                    n.group(g)
                        .raft()
                        .metrics()
                        .borrow()
                        .purged
                        .map_or(0, |p| p.index)
                })
                .min()?;
            (purged > behind[&g]).then_some(())
        })
        .await;
    }

    nodes[2].restart().await;
    for g in 1..=GROUPS {
        let map = wait_converged(&nodes, g, LONG).await;
        assert_eq!(map, expected[&g], "group {g} on the node that caught up");
        let snapshot = nodes[2].group(g).raft().metrics().borrow().snapshot;
        assert!(
            snapshot.is_some_and(|s| s.index > behind[&g]),
            "group {g} caught up through a snapshot"
        );
    }
    for n in &mut nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_group_leaves_no_data_and_stays_gone_after_restart() {
    support::init_tracing();
    let root = tempfile::tempdir().unwrap();
    let mut nodes = vec![TestNode::start(root.path(), 1, test_config()).await];
    for g in 1..=2 {
        let group = nodes[0]
            .node()
            .create_group(linkrift_raft::GroupId(g))
            .await
            .unwrap();
        group
            .initialize(BTreeMap::from([(1, nodes[0].addr.to_string())]))
            .await
            .unwrap();
        wait_leader(&nodes, g, LONG).await;
        write(&nodes, g, set("k", "v"), LONG).await;
        group.raft().trigger().snapshot().await.unwrap();
    }
    let dir = linkrift_raft::node::group_dir(&nodes[0].dir, linkrift_raft::GroupId(2));
    wait_for("the snapshot file of group 2", LONG, || {
        dir.join("current.snap").exists().then_some(())
    })
    .await;

    nodes[0]
        .node()
        .remove_group(linkrift_raft::GroupId(2))
        .await
        .unwrap();
    assert!(!dir.exists(), "snapshot directory deleted");
    assert!(
        !nodes[0]
            .node()
            .db()
            .tree_names()
            .iter()
            .any(|t| t.starts_with(b"g/2/")),
        "log trees of group 2 dropped"
    );
    nodes[0].stop().await;
    nodes[0].restart().await;
    assert_eq!(nodes[0].node().group_ids(), vec![linkrift_raft::GroupId(1)]);
    wait_leader(&nodes, 1, LONG).await;
    let map = wait_converged(&nodes, 1, LONG).await;
    assert_eq!(
        map.get("k").map(String::as_str),
        Some("v"),
        "group 1 kept its data"
    );
    nodes[0].stop().await;
}

/// Node 1 alone, hosting and leading group 1, with `k` set to `value`.
async fn one_node_group(
    root: &std::path::Path,
    value: &str,
) -> (Vec<TestNode>, linkrift_raft::Group<support::Kv>) {
    support::init_tracing();
    let nodes = vec![TestNode::start(root, 1, test_config()).await];
    let group = nodes[0]
        .node()
        .create_group(linkrift_raft::GroupId(1))
        .await
        .unwrap();
    group
        .initialize(BTreeMap::from([(1, nodes[0].addr.to_string())]))
        .await
        .unwrap();
    wait_leader(&nodes, 1, LONG).await;
    write(&nodes, 1, set("k", value), LONG).await;
    (nodes, group)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_keeps_its_incarnation_across_restarts_and_an_old_record_gets_one() {
    let root = tempfile::tempdir().unwrap();
    let (mut nodes, group) = one_node_group(root.path(), "v").await;
    drop(group);
    let id = linkrift_raft::GroupId(1);
    let first = nodes[0].node().incarnation(id).expect("hosted");
    assert_ne!(first, 0);
    nodes[0].stop().await;
    nodes[0].restart().await;
    assert_eq!(nodes[0].node().incarnation(id), Some(first), "kept");

    // A group list written before incarnations existed holds no value for the group.
    nodes[0].stop().await;
    {
        let db = sled::open(nodes[0].dir.join("raft.sled")).unwrap();
        let hosted = db.open_tree("groups").unwrap();
        assert_eq!(
            hosted.get(id.0.to_be_bytes()).unwrap().as_deref(),
            Some(&first.to_be_bytes()[..])
        );
        hosted.insert(id.0.to_be_bytes(), &[]).unwrap();
        db.flush().unwrap();
    }
    nodes[0].restart().await;
    let given = nodes[0].node().incarnation(id).expect("still hosted");
    assert!(given != 0 && given != first, "{given:x}");
    let map = wait_converged(&nodes, 1, LONG).await;
    assert_eq!(map.get("k").map(String::as_str), Some("v"), "data kept");
    nodes[0].stop().await;
    nodes[0].restart().await;
    assert_eq!(nodes[0].node().incarnation(id), Some(given), "recorded");
    nodes[0].stop().await;
}

/// `(1 << 50)` as a bincode length: a varint marker and eight little-endian bytes.
fn huge_length() -> Vec<u8> {
    let mut bytes = vec![0xfd];
    bytes.extend((1u64 << 50).to_le_bytes());
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_entry_announcing_a_huge_length_is_refused_without_allocating_it() {
    let root = tempfile::tempdir().unwrap();
    let (mut nodes, group) = one_node_group(root.path(), "v").await;
    drop(group);
    nodes[0].stop().await;
    {
        // The last entry of the log, rewritten as an entry whose payload announces 2^50
        // bytes (as one flipped length byte on disk could).
        let db = sled::open(nodes[0].dir.join("raft.sled")).unwrap();
        let log = db.open_tree("g/1/log").unwrap();
        let (key, _) = log.last().unwrap().expect("entries");
        let index = u64::from_be_bytes(key.as_ref().try_into().unwrap());
        let entry = openraft::Entry::<linkrift_raft::TypeConfig> {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: openraft::EntryPayload::Normal(linkrift_raft::Payload(vec![7; 3])),
        };
        let mut bytes = linkrift_raft::codec::encode(&entry);
        assert_eq!(bytes[bytes.len() - 4..], [3, 7, 7, 7]);
        bytes.truncate(bytes.len() - 4);
        bytes.extend(huge_length());
        log.insert(key, bytes).unwrap();
        db.flush().unwrap();
    }
    let err = nodes[0]
        .try_restart()
        .await
        .expect_err("a node with a damaged log does not start");
    assert!(
        err.to_string().contains("exceeds what the bytes can hold"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_announcing_a_huge_length_is_refused_without_allocating_it() {
    let root = tempfile::tempdir().unwrap();
    let (mut nodes, group) = one_node_group(root.path(), "v").await;
    group.raft().trigger().snapshot().await.unwrap();
    let path = linkrift_raft::node::group_dir(&nodes[0].dir, linkrift_raft::GroupId(1))
        .join("current.snap");
    wait_for("the snapshot file", LONG, || path.exists().then_some(())).await;
    drop(group);
    nodes[0].stop().await;
    // A well-formed file with a correct checksum whose body (the state: a map) holds one
    // key announcing 2^50 bytes.
    let file = std::fs::read(&path).unwrap();
    let header_len = u32::from_be_bytes(file[8..12].try_into().unwrap()) as usize;
    let mut forged = file[..12 + header_len].to_vec();
    let mut body = vec![1];
    body.extend(huge_length());
    forged.extend((body.len() as u64).to_be_bytes());
    forged.extend(xxhash_rust::xxh3::xxh3_64(&body).to_be_bytes());
    forged.extend(body);
    std::fs::write(&path, forged).unwrap();
    let err = nodes[0]
        .try_restart()
        .await
        .expect_err("a node with a damaged snapshot does not start");
    let text = err.to_string();
    assert!(text.contains("exceeds what the bytes can hold"), "{text}");
    assert!(text.contains("rejoin"), "{text}");
}

/// Copies the files of `from` into `to` (a directory tree of plain files).
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A crash inside `remove_group`, after the group left the durable group list but before
/// its snapshot directory was deleted, left `current.snap` behind; hosting the shard again
/// restored the old replica's state and membership from it (issue 17, item 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_hosted_again_after_a_crash_inside_its_removal_starts_empty() {
    let root = tempfile::tempdir().unwrap();
    let id = linkrift_raft::GroupId(1);
    let (mut nodes, group) = one_node_group(root.path(), "old incarnation").await;
    group.raft().trigger().snapshot().await.unwrap();
    let dir = linkrift_raft::node::group_dir(&nodes[0].dir, id);
    wait_for("the snapshot file", LONG, || {
        dir.join("current.snap").exists().then_some(())
    })
    .await;
    let kept = root.path().join("kept");
    copy_tree(&dir, &kept);
    drop(group);

    nodes[0].node().remove_group(id).await.unwrap();
    nodes[0].stop().await;
    // As if the process had died after the flush and before the directory was deleted.
    copy_tree(&kept, &dir);
    nodes[0].restart().await;
    assert!(nodes[0].node().group_ids().is_empty());
    assert!(
        !dir.exists(),
        "start-up deletes the directory of a group it does not host"
    );

    // And should a leftover appear anyway, hosting the group again starts from nothing.
    copy_tree(&kept, &dir);
    let again = nodes[0].node().create_group(id).await.unwrap();
    again.read(|a| {
        assert_eq!(a.last_applied, None, "the new replica applied nothing");
        assert!(
            a.state.map.is_empty(),
            "old state came back: {:?}",
            a.state.map
        );
        assert_eq!(a.membership.membership().voter_ids().count(), 0);
    });
    nodes[0].stop().await;
}

/// A snapshot that cannot be written is a storage error like any other: the node's fault
/// latch trips (and `linkrift serve` exits), rather than the group dying unnoticed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_cannot_be_written_trips_the_storage_fault() {
    let root = tempfile::tempdir().unwrap();
    let id = linkrift_raft::GroupId(1);
    let (mut nodes, group) = one_node_group(root.path(), "v").await;
    assert!(!nodes[0].node().fault().is_tripped());
    // The group's directory becomes a file: the snapshot's temporary file cannot be made.
    let dir = linkrift_raft::node::group_dir(&nodes[0].dir, id);
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
    group.raft().trigger().snapshot().await.unwrap();
    let reason = wait_for("the storage fault", LONG, || {
        nodes[0].node().fault().reason()
    })
    .await;
    assert!(reason.starts_with("snapshot: "), "{reason}");
    drop(group);
    nodes[0].stop().await;
}

/// Releasing a replica deleted its vote, and a new, empty replica granted any vote (openraft
/// 0.9 checks no membership when voting): a stale node could be elected with its help and
/// truncate committed entries (issue 17, item 4). Now the vote outlives the replica, and a
/// replica with no membership yet refuses to vote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_hosted_again_after_release_keeps_its_vote_and_does_not_vote_while_empty() {
    use linkrift_raft::transport::client::{Lane, PeerPool, Replica};
    use linkrift_raft::transport::frame::FrameKind;
    support::init_tracing();
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(root.path(), 3, 1, test_config()).await;
    write(&nodes, 1, set("k", "v"), LONG).await;
    let leader = wait_leader(&nodes, 1, LONG).await;
    let released = nodes.iter().position(|n| n.id != leader).unwrap();
    let gone = nodes[released].id;
    let lead = nodes.iter().find(|n| n.id == leader).unwrap().group(1);
    let stay: std::collections::BTreeSet<_> = nodes
        .iter()
        .map(|n| n.id)
        .filter(|&id| id != gone)
        .collect();
    lead.raft().change_membership(stay, false).await.unwrap();
    let vote = nodes[released].group(1).raft().metrics().borrow().vote;
    assert!(vote.leader_id.term > 0);

    let id = linkrift_raft::GroupId(1);
    nodes[released].node().remove_group(id).await.unwrap();
    let again = nodes[released].node().create_group(id).await.unwrap();
    // (The metrics show the stored vote once the new replica's Raft core has started.)
    let kept = wait_for(
        "the new replica to keep the released one's vote",
        LONG,
        || {
            let v = again.raft().metrics().borrow().vote;
            (v.leader_id == vote.leader_id).then_some(v)
        },
    )
    .await;
    assert!(!kept.committed);

    // A candidate asks the empty replica for its vote, in a term above the kept one.
    let shutdown = tokio_util::sync::CancellationToken::new();
    let pool = PeerPool::new(
        99,
        "127.0.0.9".parse().unwrap(),
        linkrift_raft::transport::PeerSecurity::plaintext(support::SECRET),
        &test_config(),
        shutdown.clone(),
        tokio_util::task::TaskTracker::new(),
    );
    let request = openraft::raft::VoteRequest::<linkrift_raft::NodeId> {
        vote: openraft::Vote::new(vote.leader_id.term + 5, 99),
        last_log_id: None,
    };
    let reply = pool
        .peer(&nodes[released].addr.to_string())
        .call(
            Replica {
                group: 1,
                node: gone,
                incarnation: 0,
            },
            FrameKind::Vote,
            linkrift_raft::codec::encode(&request),
            Lane::Control,
            LONG,
        )
        .await
        .unwrap();
    assert_eq!(
        reply.kind,
        FrameKind::Failure,
        "the empty replica answered the vote"
    );
    assert!(String::from_utf8_lossy(&reply.payload).contains("no membership yet"));
    shutdown.cancel();
    drop((lead, again));
    for n in &mut nodes {
        n.stop().await;
    }
}

/// Requests refused for naming an earlier incarnation, in `snapshotter`'s recorder.
fn stale_incarnations(snapshotter: &metrics_util::debugging::Snapshotter) -> u64 {
    support::counter(
        snapshotter,
        "raft_frames_refused_total",
        Some(("reason", "stale_incarnation")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_created_again_under_a_replication_stream_gets_nothing_from_it() {
    // (Each test runs in its own process under nextest, so the recorder is this test's.)
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("no other recorder");
    support::init_tracing();
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(root.path(), 3, 1, test_config()).await;
    write(&nodes, 1, set("before", "1"), LONG).await;
    wait_converged(&nodes, 1, LONG).await;
    let leader = wait_leader(&nodes, 1, LONG).await;
    let x = nodes.iter().position(|n| n.id != leader).unwrap();
    let id = linkrift_raft::GroupId(1);
    let first = nodes[x].node().incarnation(id).expect("hosted");

    // The replica is deleted and created again while its node is still a voter (which
    // Linkrift never does: it deletes a replica only after the node left the group). The
    // leader's stream to it still holds what the deleted replica acknowledged.
    nodes[x].node().remove_group(id).await.unwrap();
    nodes[x].node().create_group(id).await.unwrap();
    let second = nodes[x].node().incarnation(id).expect("hosted again");
    assert_ne!(first, second, "a new replica is a new incarnation");
    let others: Vec<_> = (0..nodes.len()).filter(|&i| i != x).collect();
    for i in 0..5 {
        write(&nodes, 1, set(format!("after{i}"), "1"), LONG).await;
    }
    wait_for("the new replica to refuse the old stream", LONG, || {
        (stale_incarnations(&snapshotter) > 0).then_some(())
    })
    .await;
    let applied = nodes[others[0]].group(1).last_applied();
    wait_for("the two others to apply the writes", LONG, || {
        (nodes[others[1]].group(1).last_applied() == applied).then_some(())
    })
    .await;
    assert_eq!(
        nodes[x].node().last_log_index(id).unwrap(),
        None,
        "the new replica took entries from a stream that belongs to the old one"
    );

    // It stays refused while the term and the membership stay: the leader keeps what it
    // knows of the old replica to itself. (Linkrift never deletes a member's replica; it
    // takes the node out of the group first, and any membership change starts afresh:
    // `node/tests/membership.rs` moves replicas away and back.)
    let before = stale_incarnations(&snapshotter);
    write(&nodes, 1, set("after5", "1"), LONG).await;
    wait_for("more refusals", LONG, || {
        (stale_incarnations(&snapshotter) > before).then_some(())
    })
    .await;
    assert_eq!(nodes[x].node().last_log_index(id).unwrap(), None);
    for n in &mut nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_entries_and_each_gets_its_own_response() {
    support::init_tracing();
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(root.path(), 3, 1, test_config()).await;
    let leader = wait_leader(&nodes, 1, LONG).await;
    let group = nodes.iter().find(|n| n.id == leader).unwrap().group(1);
    let first_index = group.raft().metrics().borrow().last_log_index.unwrap();

    const WRITES: usize = 400;
    for round in 0..2 {
        let mut writes = tokio::task::JoinSet::new();
        for i in 0..WRITES {
            let group = group.clone();
            writes.spawn(async move {
                let previous = group
                    .write(set(format!("k{i}"), format!("{i}-{round}")))
                    .await
                    .unwrap();
                (i, previous)
            });
        }
        while let Some(done) = writes.join_next().await {
            let (i, previous) = done.unwrap();
            let expected = (round > 0).then(|| format!("{i}-{}", round - 1));
            assert_eq!(
                previous, expected,
                "write {i} in round {round} got another write's response"
            );
        }
    }
    let entries = group.raft().metrics().borrow().last_log_index.unwrap() - first_index;
    assert!(
        entries < 2 * WRITES as u64,
        "{} writes took {entries} entries: none were batched",
        2 * WRITES
    );
    let map = wait_converged(&nodes, 1, LONG).await;
    assert_eq!(map.len(), WRITES);
    for n in &mut nodes {
        n.stop().await;
    }
}
