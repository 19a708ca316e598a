//! Commit throughput and latency of Raft groups on three local nodes, with flushing on,
//! beside a baseline measured in the same run: sled insert + flush on one node, the disk
//! cost every commit pays at least once. Then disk bytes per entry before and after purge.
//!
//! `cargo bench -p linkrift-raft --bench commit` (options: `--seconds N` per phase, default
//! 10; `--writers N` concurrent writers, default 32; `--value-bytes N`, default 200).

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use linkrift_raft::{GroupId, RaftConfig};
use support::{cluster, set, wait_for, TestNode};

struct Args {
    seconds: u64,
    writers: usize,
    value_bytes: usize,
}

fn args() -> Args {
    let mut a = Args {
        seconds: 10,
        writers: 32,
        value_bytes: 200,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .and_then(|v| v.parse().ok())
                .expect("a number after the flag")
        };
        match flag.as_str() {
            "--seconds" => a.seconds = value() as u64,
            "--writers" => a.writers = value(),
            "--value-bytes" => a.value_bytes = value(),
            _ => {} // cargo bench passes `--bench`
        }
    }
    a
}

struct Row {
    name: String,
    ops: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
}

impl Row {
    fn print(&self) {
        let us = |q| self.latency.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} |",
            self.name,
            self.ops as f64 / self.elapsed.as_secs_f64(),
            us(0.5),
            us(0.99),
            us(0.999)
        );
    }
}

/// Runs `writers` concurrent loops of `op` for `seconds`; returns throughput and latency.
async fn drive<F, Fut>(name: &str, writers: usize, seconds: u64, op: F) -> Row
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let op = op.clone();
        tasks.spawn(async move {
            let mut h = Histogram::<u64>::new(3).unwrap();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                op(w, i).await;
                h.record(t.elapsed().as_nanos() as u64).unwrap();
                i += 1;
            }
            h
        });
    }
    let mut latency = Histogram::<u64>::new(3).unwrap();
    while let Some(h) = tasks.join_next().await {
        latency.add(h.unwrap()).unwrap();
    }
    Row {
        name: name.to_string(),
        ops: latency.len(),
        elapsed: start.elapsed(),
        latency,
    }
}

fn dir_bytes(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

async fn raft_phase(
    args: &Args,
    groups: u64,
    writers: usize,
) -> (Row, Vec<TestNode>, tempfile::TempDir, u64) {
    let root = tempfile::tempdir().unwrap();
    let nodes = cluster(root.path(), 3, groups, RaftConfig::default()).await;
    let leaders: Vec<_> = (1..=groups)
        .map(|g| {
            let leader = nodes
                .iter()
                .find(|n| n.group(g).is_leader())
                .expect("leader");
            leader.group(g)
        })
        .collect();
    let leaders = Arc::new(leaders);
    let value = "v".repeat(args.value_bytes);
    let row = drive(
        &format!("raft, {groups} group(s) on 3 nodes, {writers} writer(s)"),
        writers,
        args.seconds,
        move |w, i| {
            let group = leaders[w % leaders.len()].clone();
            let value = value.clone();
            async move {
                group
                    .write(set(format!("w{w}-{i}"), value))
                    .await
                    .expect("write commits");
            }
        },
    )
    .await;
    let entries = row.ops;
    let (requests, flushes) = nodes.iter().fold((0, 0), |(r, f), n| {
        let s = n.node().flusher().stats();
        (
            r + s.requests.load(Ordering::Relaxed),
            f + s.flushes.load(Ordering::Relaxed),
        )
    });
    eprintln!(
        "  {}: {requests} flush requests served by {flushes} flushes on 3 nodes",
        row.name
    );
    (row, nodes, root, entries)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = args();
    println!(
        "{} s per phase, {} concurrent writers, {}-byte values, {} CPUs",
        args.seconds,
        args.writers,
        args.value_bytes,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!("| what | ops/s | p50 µs | p99 µs | p99.9 µs |");
    println!("|---|---|---|---|---|");

    // Baseline: the same writers doing sled insert + flush (group commit) on one node.
    let base_dir = tempfile::tempdir().unwrap();
    let durable = linkrift_raft::DurableDb::open(&base_dir.path().join("raft.sled"), 64 << 20)
        .expect("sled opens");
    let db = durable.db().clone();
    let flusher = linkrift_raft::flush::Flusher::start(durable, Default::default());
    let value = vec![b'v'; args.value_bytes];
    let baseline = drive(
        "baseline: sled insert + sync, 1 node",
        args.writers,
        args.seconds,
        move |w, i| {
            let (db, flusher, value) = (db.clone(), flusher.clone(), value.clone());
            async move {
                db.insert(format!("w{w}-{i}"), value).unwrap();
                flusher.flush().await.unwrap();
            }
        },
    )
    .await;
    baseline.print();

    // Unloaded latency: one writer, so nothing queues.
    let (row, mut nodes, _root, _) = raft_phase(&args, 1, 1).await;
    row.print();
    for n in &mut nodes {
        n.stop().await;
    }

    let mut disk_rows = Vec::new();
    for groups in [1u64, 8] {
        let (row, mut nodes, root, entries) = raft_phase(&args, groups, args.writers).await;
        row.print();
        // Disk use: before and after every group snapshots and purges its log.
        let sled_dir = root.path().join("node1").join("raft.sled");
        let before = dir_bytes(&sled_dir);
        for g in 1..=groups {
            for n in &nodes {
                n.group(g).raft().trigger().snapshot().await.unwrap();
            }
        }
        for g in 1..=groups {
            for n in &nodes {
                let group = n.node().group(GroupId(g)).unwrap();
                wait_for("snapshot and purge", Duration::from_secs(60), || {
                    let m = group.raft().metrics().borrow().clone();
                    (m.snapshot.is_some() && m.purged.is_some()).then_some(())
                })
                .await;
            }
        }
        // Measure what sled has written, not what it still buffers.
        nodes[0].node().db().flush_async().await.unwrap();
        let after = dir_bytes(&sled_dir);
        let snapshots = dir_bytes(&root.path().join("node1").join("groups"));
        disk_rows.push((groups, entries, before, after, snapshots));
        for n in &mut nodes {
            n.stop().await;
        }
    }
    println!();
    println!(
        "Disk use of node 1: its sled log store, before and after every group snapshots and purges"
    );
    println!();
    println!("| groups | entries | sled bytes | per entry | sled bytes after purge | per entry | snapshot files |");
    println!("|---|---|---|---|---|---|---|");
    for (groups, entries, before, after, snapshots) in disk_rows {
        println!(
            "| {groups} | {entries} | {before} | {:.0} | {after} | {:.0} | {snapshots} |",
            before as f64 / entries as f64,
            after as f64 / entries as f64
        );
    }
}
