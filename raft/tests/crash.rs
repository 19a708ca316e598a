//! Durability under SIGKILL: a child process appends entries to four groups as fast as it
//! can and prints each acknowledgement; the parent kills it at a random moment, reopens
//! the data directory and checks that every acknowledged entry is there. Repeated over
//! several rounds on the same directory, so recovery after recovery is covered too.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use linkrift_raft::node::NodeOptions;
use linkrift_raft::{GroupId, RaftNode};
use rand::{Rng, SeedableRng};
use support::{kv_factory, set, test_config, wait_for};

const GROUPS: u64 = 4;
const ROUNDS: u32 = 6;
const DIR_VAR: &str = "LINKRIFT_CRASH_DIR";
const ROUND_VAR: &str = "LINKRIFT_CRASH_ROUND";

fn options(dir: PathBuf) -> NodeOptions {
    NodeOptions {
        node_id: 1,
        data_dir: dir,
        peer_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        cluster_secret: support::SECRET.to_vec(),
        tls: None,
        raft: test_config(),
    }
}

/// Opens the node in `dir` and waits until every group has a leader and has applied its
/// whole log.
async fn open_settled(dir: PathBuf) -> RaftNode<support::Kv> {
    let node = RaftNode::start(options(dir), kv_factory())
        .await
        .expect("node reopens");
    for g in 1..=GROUPS {
        let group = match node.group(GroupId(g)) {
            Some(group) => group,
            None => {
                let group = node.create_group(GroupId(g)).await.unwrap();
                group
                    .initialize(BTreeMap::from([(1, node.addr().to_string())]))
                    .await
                    .unwrap();
                group
            }
        };
        wait_for(
            &format!("group {g} to lead and apply its log"),
            Duration::from_secs(30),
            || {
                let m = group.raft().metrics().borrow().clone();
                (m.current_leader == Some(1) && m.last_applied.map(|l| l.index) == m.last_log_index)
                    .then_some(())
            },
        )
        .await;
    }
    node
}

/// The writer that gets killed. Runs only when the parent starts it (`--ignored`, with
/// the data directory in the environment).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of sigkill_loses_no_acknowledged_entry"]
async fn crash_child() {
    let dir = PathBuf::from(std::env::var(DIR_VAR).expect("run by the crash test"));
    let round = std::env::var(ROUND_VAR).expect("run by the crash test");
    let node = open_settled(dir).await;
    let mut writers = tokio::task::JoinSet::new();
    for g in 1..=GROUPS {
        let group = node.group(GroupId(g)).unwrap();
        let round = round.clone();
        writers.spawn(async move {
            for i in 0u64.. {
                let key = format!("r{round}-{i}");
                group.write(set(&key, "acked")).await.expect("write");
                println!("ack {g} {key}");
            }
        });
    }
    writers.join_next().await;
    unreachable!("writers run until killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_entry() {
    support::init_tracing();
    let seed = support::seed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("node");
    let mut acked: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();

    for round in 0..ROUNDS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "crash_child",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(DIR_VAR, &dir)
            .env(ROUND_VAR, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("child starts");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("ack ") {
                    let (g, key) = rest.split_once(' ').expect("ack line");
                    if tx
                        .send((g.parse::<u64>().unwrap(), key.to_string()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        });
        // Kill at a random moment once the child is writing.
        let first = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("child acknowledges a write");
        acked.entry(first.0).or_default().insert(first.1);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..400))).await;
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        reader.join().unwrap();
        let before: usize = acked.values().map(BTreeSet::len).sum();
        for (g, key) in rx.try_iter() {
            acked.entry(g).or_default().insert(key);
        }
        let total: usize = acked.values().map(BTreeSet::len).sum();
        println!(
            "round {round}: {} acknowledged in this round, {total} in all",
            total - before + 1
        );

        let node = open_settled(dir.clone()).await;
        for (g, keys) in &acked {
            let group = node.group(GroupId(*g)).unwrap();
            group.read(|applied| {
                for key in keys {
                    assert_eq!(
                        applied.state.map.get(key).map(String::as_str),
                        Some("acked"),
                        "group {g}: acknowledged {key} lost after SIGKILL in round {round} (seed {seed})"
                    );
                }
            });
        }
        node.shutdown().await;
    }
}
