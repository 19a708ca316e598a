//! The faults, each done, held and undone, with a record of whether it demonstrably
//! happened.
//!
//! (Over 600 lines: one `match` arm per fault, each doing, holding and undoing it, so that
//! a fault's whole life reads in one place.)

use std::time::{Duration, Instant};

use anyhow::Result;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use crate::cgroup::Cgroup;
use crate::cluster::{signal, Cluster, Launch};
use crate::history::FaultRecord;
use crate::net::{self, Net};
use crate::times::{httpdate, rfc3339_micros};
use crate::workload::micros;
use crate::{ClickHouse, Postgres};

/// Every kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    KillMinority,
    KillShardLeader,
    KillMetaLeader,
    Pause,
    PartitionHalves,
    IsolateLeader,
    MajoritiesRing,
    OneWay,
    ClockSkew,
    /// A node joins, and is killed while a replica is moving to it.
    JoinKilledMidMove,
    /// The node that joined leaves.
    Leave,
    /// A member leaves, is wiped, and joins again as a new node.
    RemoveWipeRejoin,
    /// 30% of the packets between every two members dropped, at random (nftables
    /// `numgen random`).
    PacketLoss,
    /// The members split in two for 300 ms, healed for 200 ms, and split again
    /// differently, for the whole hold.
    FlappingPartition,
    /// A member's wall clock jumps while it runs (libfaketime's timestamp file): 60 s
    /// ahead, then 30 s behind, then running twice as fast.
    ClockJumps,
    /// Every member killed at once (SIGKILL, nothing forgotten by the disks).
    KillAll,
    /// A member restarted with slow links: each Raft request it sends and each reply it
    /// gives waits 100 ms and then its bytes at 256 KiB/s (the `raft.link_delay`
    /// failpoint; this kernel has no netem), then restarted without.
    SlowLinks,
    /// A member frozen by the cgroup freezer (it cannot tell, unlike SIGSTOP).
    Freeze,
    /// A member held to 3% of one CPU (cgroup `cpu.cfs_quota_us`).
    CpuStarve,
    PostgresDown,
    /// Every PostgreSQL process stopped (SIGSTOP): connections open, nothing answered.
    PostgresPause,
    ClickHouseDown,
    /// ClickHouse stopped (SIGSTOP).
    ClickHousePause,
    Failpoint(&'static str),
    /// A member restarts with an I/O error failpoint armed (its disk fails after a while):
    /// it must fail-stop (exit 74), and recover when started again on a healthy disk.
    DiskError(&'static str),
    /// A member loses power: SIGKILL, and every write it did not sync is forgotten.
    PowerCut,
    /// Every member loses power at once.
    PowerCutAll,
}

impl Fault {
    /// The faults of one round, in an order drawn from `rng` (a join always before its leave);
    /// power cuts only with `power` (the nodes' data on faultfs mounts).
    pub fn round(rng: &mut StdRng, rejoin: bool, power: bool) -> Vec<Fault> {
        use linkrift_raft::failpoint::{
            AFTER_FLUSH, APPLY, BEFORE_FLUSH, CLICK_WRITE_ERROR, FLUSH_ERROR, SNAPSHOT_ERROR,
        };
        let mut faults = vec![
            Fault::KillMinority,
            Fault::KillShardLeader,
            Fault::KillMetaLeader,
            Fault::Pause,
            Fault::PartitionHalves,
            Fault::IsolateLeader,
            Fault::MajoritiesRing,
            Fault::OneWay,
            Fault::ClockSkew,
            Fault::PacketLoss,
            Fault::FlappingPartition,
            Fault::ClockJumps,
            Fault::KillAll,
            Fault::SlowLinks,
            Fault::Freeze,
            Fault::CpuStarve,
            Fault::PostgresDown,
            Fault::PostgresPause,
            Fault::ClickHouseDown,
            Fault::ClickHousePause,
            Fault::Failpoint(BEFORE_FLUSH),
            Fault::Failpoint(AFTER_FLUSH),
            Fault::Failpoint(APPLY),
            Fault::DiskError(FLUSH_ERROR),
            Fault::DiskError(CLICK_WRITE_ERROR),
            Fault::DiskError(SNAPSHOT_ERROR),
        ];
        if rejoin {
            faults.push(Fault::RemoveWipeRejoin);
        }
        if power {
            faults.extend([Fault::PowerCut, Fault::PowerCutAll]);
        }
        faults.shuffle(rng);
        let at = rng.gen_range(0..=faults.len());
        faults.insert(at, Fault::JoinKilledMidMove);
        let after = rng.gen_range(at + 1..=faults.len());
        faults.insert(after, Fault::Leave);
        faults
    }

    pub fn name(&self) -> String {
        match self {
            Fault::Failpoint(name) => format!("failpoint {name}"),
            Fault::DiskError(name) => format!("disk error {name}"),
            other => format!("{other:?}"),
        }
    }
}

/// What the faults act on.
pub struct Env {
    pub cluster: Cluster,
    pub net: Net,
    pub pg: Postgres,
    pub ch: ClickHouse,
    pub t0: Instant,
    /// `t0` on the wall clock, microseconds since the epoch (to place what nodes log).
    pub t0_unix_us: u64,
    /// Indexes of the nodes that are members now.
    pub members: Vec<usize>,
    /// The node that joins and leaves, once declared.
    pub spare: Option<usize>,
    pub rng: StdRng,
    /// How long a fault stays in force.
    pub hold: Duration,
    /// How long the cluster is left alone after a fault has settled.
    pub calm: Duration,
}

/// What a fault did, before it is timed and settled.
struct Done {
    fired: bool,
    detail: String,
    crashes: Vec<(usize, u64)>,
}

impl Env {
    fn ip(&self, index: usize) -> String {
        self.cluster.nodes[index - 1].ip.clone()
    }

    fn any_member(&mut self) -> usize {
        *self.members.choose(&mut self.rng).unwrap()
    }

    /// The member leading the most shard groups (or leading the meta group, with `meta`).
    async fn leader(&mut self, meta: bool) -> Option<usize> {
        let status = self.cluster.status().await?;
        let leaders = self.cluster.leaders(&status);
        if meta {
            return leaders.iter().find(|(g, _)| *g == 0).map(|(_, i)| *i);
        }
        let mut counts = std::collections::BTreeMap::new();
        for (g, i) in leaders {
            if g != 0 {
                *counts.entry(i).or_insert(0) += 1;
            }
        }
        counts.into_iter().max_by_key(|(_, c)| *c).map(|(i, _)| i)
    }

    /// Stops every process of `pids` in turn (SIGSTOP), holds, and resumes them; whether
    /// there were any and each was seen stopped.
    async fn pause(&self, pids: &[u32]) -> bool {
        let mut all = !pids.is_empty();
        for &pid in pids {
            let sent = signal(pid, "STOP");
            // The signal is delivered asynchronously: wait for the stopped state.
            let mut stopped = false;
            for _ in 0..100 {
                stopped = proc_state(pid) == "T";
                if stopped {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            all &= sent && stopped;
        }
        tokio::time::sleep(self.hold).await;
        for &pid in pids {
            signal(pid, "CONT");
        }
        all
    }

    /// A random member, moved into a cgroup of this run's own in `controller`.
    fn member_cgroup(&mut self, controller: &str) -> Result<(usize, Cgroup)> {
        let k = self.any_member();
        let pid = self
            .cluster
            .node(k)
            .pid()
            .ok_or_else(|| anyhow::anyhow!("node {k} is not running"))?;
        let name = format!("linkrift_chaos_{}_n{k}", std::process::id());
        Ok((k, Cgroup::enter(controller, &name, pid)?))
    }

    /// Kills `index` now, holds, and starts it again.
    async fn kill_and_restart(&mut self, index: usize) -> Result<Done> {
        let fired = self.cluster.node(index).kill();
        // Once it is gone: an answer it gave may still reach its client after this.
        let at = micros(self.t0);
        tokio::time::sleep(self.hold).await;
        self.cluster.start(index, &Launch::default())?;
        Ok(Done {
            fired,
            detail: format!("node {index} killed (SIGKILL) and restarted"),
            crashes: vec![(index, at)],
        })
    }

    /// Cuts the power of `nodes` at once, holds, and starts them again.
    async fn power_cut(&mut self, nodes: Vec<usize>) -> Result<Done> {
        let mut fired = true;
        let mut lost = Vec::new();
        // Every process first, then every disk: the cut is one moment for all of them.
        let mut killed = Vec::new();
        let mut crashes = Vec::new();
        for &k in &nodes {
            killed.push(self.cluster.node(k).kill());
            crashes.push((k, micros(self.t0)));
        }
        for &k in &nodes {
            let (_, bytes) = self.cluster.node(k).power_cut()?;
            lost.push(format!("node {k} {bytes} bytes"));
        }
        fired &= killed.iter().all(|&k| k);
        tokio::time::sleep(self.hold).await;
        for &k in &nodes {
            self.cluster.start(k, &Launch::default())?;
        }
        Ok(Done {
            fired,
            detail: format!(
                "power cut (SIGKILL, unsynced writes forgotten: {}), restarted",
                lost.join(", ")
            ),
            crashes,
        })
    }

    async fn partition(&mut self, pairs: Vec<(String, String)>, what: String) -> Result<Done> {
        self.net.drop_between(&pairs)?;
        let rules = self.net.rules()?;
        tokio::time::sleep(self.hold).await;
        self.net.heal()?;
        Ok(Done {
            fired: rules == pairs.len() && !pairs.is_empty(),
            detail: format!("{what}: {rules} drop rules in force"),
            crashes: vec![],
        })
    }

    /// Does `fault`, holds it, undoes it, and waits for the cluster to settle.
    pub async fn run(&mut self, fault: Fault) -> FaultRecord {
        let start = micros(self.t0);
        let done = match self.inflict(fault).await {
            Ok(done) => done,
            Err(e) => Done {
                fired: false,
                detail: format!("failed: {e:#}"),
                crashes: vec![],
            },
        };
        // Whatever happened, nothing stays broken for the next fault. Every fault starts
        // again what it stopped, so a member that is not running died by itself (an
        // abort, a signal, a fail-stop, a start that failed): an anomaly, never hidden by
        // the restart.
        let _ = self.net.heal();
        let mut unplanned_exits = Vec::new();
        for &i in &self.members.clone() {
            let node = self.cluster.node(i);
            node.signal("CONT");
            if !node.is_running() {
                unplanned_exits.push(format!(
                    "node {i} was not running after the fault ({})",
                    node.exit_description()
                ));
                let _ = self.cluster.start(i, &Launch::default());
            }
        }
        let settled = self
            .cluster
            .wait_settled(&self.members, Duration::from_secs(120))
            .await;
        let end = micros(self.t0);
        // A calm spell before the next fault, longer than the staleness bound, so that
        // reads are held to the bound between faults.
        tokio::time::sleep(self.calm).await;
        FaultRecord {
            name: fault.name(),
            start,
            end,
            fired: done.fired,
            detail: done.detail,
            settled: settled.is_ok(),
            unsettled: settled.err().map(|e| e.to_string()),
            unplanned_exits,
            crashes: done.crashes,
        }
    }

    async fn inflict(&mut self, fault: Fault) -> Result<Done> {
        match fault {
            Fault::PowerCut => {
                let k = self.any_member();
                self.power_cut(vec![k]).await
            }
            Fault::PowerCutAll => self.power_cut(self.members.clone()).await,
            Fault::DiskError(name) => {
                let k = self.any_member();
                self.cluster.node(k).kill();
                let at = micros(self.t0);
                // The error may come before the node says where it serves.
                let mut launch = Launch::failpoint(name, 5);
                if name == linkrift_raft::failpoint::SNAPSHOT_ERROR {
                    // Snapshots come every 20,000 entries of a group: far apart in a run.
                    // With 100, the groups whose log has grown that much since their last
                    // snapshot build one as soon as the node has replayed them.
                    launch
                        .env
                        .push(("LINKRIFT_SNAPSHOT_AFTER_ENTRIES".into(), "100".into()));
                }
                let _ = self.cluster.start(k, &launch);
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut status = None;
                while status.is_none() && Instant::now() < deadline {
                    status = self.cluster.node(k).exit_code();
                    if status.is_none() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                let stopped = micros(self.t0);
                let log =
                    std::fs::read_to_string(&self.cluster.nodes[k - 1].log).unwrap_or_default();
                let said =
                    log.contains("storage failed") && log.contains(&format!("failpoint {name}"));
                // Clicks are lost from the failure on, which may be a while before the exit:
                // the failure's moment is the one its loss window counts back from.
                let failed = log
                    .lines()
                    .rev()
                    .find(|l| l.contains("storage failed: this node stops serving"))
                    .and_then(|l| l.split_whitespace().next())
                    .and_then(rfc3339_micros)
                    .and_then(|at| at.checked_sub(self.t0_unix_us));
                self.cluster.node(k).kill();
                self.cluster.start(k, &Launch::default())?;
                Ok(Done {
                    fired: status == Some(Some(74)) && said,
                    detail: format!(
                        "node {k} armed {name}: exit status {:?} (74 is a storage fail-stop), logged {said}; restarted",
                        status.flatten()
                    ),
                    crashes: [(k, at), (k, stopped)]
                        .into_iter()
                        .chain(failed.map(|f| (k, f)))
                        .collect(),
                })
            }
            Fault::KillMinority => {
                let k = self.any_member();
                self.kill_and_restart(k).await
            }
            Fault::KillShardLeader | Fault::KillMetaLeader => {
                let meta = fault == Fault::KillMetaLeader;
                let k = self
                    .leader(meta)
                    .await
                    .ok_or_else(|| anyhow::anyhow!("no leader to kill"))?;
                self.kill_and_restart(k).await
            }
            Fault::Pause => {
                let k = self.any_member();
                let pids: Vec<u32> = self.cluster.node(k).pid().into_iter().collect();
                let stopped = self.pause(&pids).await;
                Ok(Done {
                    fired: stopped,
                    detail: format!(
                        "node {k} paused (SIGSTOP, seen stopped: {stopped}) and resumed"
                    ),
                    crashes: vec![],
                })
            }
            Fault::PartitionHalves => {
                let mut shuffled = self.members.clone();
                shuffled.shuffle(&mut self.rng);
                let (a, b) = shuffled.split_at(shuffled.len() / 2);
                let ips = |s: &[usize]| s.iter().map(|&i| self.ip(i)).collect::<Vec<_>>();
                let pairs = net::split(&ips(a), &ips(b));
                self.partition(pairs, format!("nodes {a:?} cut from {b:?}"))
                    .await
            }
            Fault::IsolateLeader => {
                let k = self
                    .leader(false)
                    .await
                    .ok_or_else(|| anyhow::anyhow!("no leader to isolate"))?;
                let rest: Vec<String> = self
                    .members
                    .iter()
                    .filter(|&&i| i != k)
                    .map(|&i| self.ip(i))
                    .collect();
                let pairs = net::split(&[self.ip(k)], &rest);
                self.partition(pairs, format!("leader node {k} isolated"))
                    .await
            }
            Fault::MajoritiesRing => {
                let mut ring = self.members.clone();
                ring.shuffle(&mut self.rng);
                let ips: Vec<String> = ring.iter().map(|&i| self.ip(i)).collect();
                self.partition(
                    net::majorities_ring(&ips),
                    format!("majorities ring {ring:?}"),
                )
                .await
            }
            Fault::OneWay => {
                let mut two = self.members.clone();
                two.shuffle(&mut self.rng);
                let (a, b) = (two[0], two[1]);
                let pairs = vec![(self.ip(a), self.ip(b))];
                self.partition(pairs, format!("packets from node {a} to node {b} dropped"))
                    .await
            }
            Fault::ClockSkew => {
                let k = self.any_member();
                self.cluster.node(k).kill();
                let at = micros(self.t0);
                self.cluster.start(k, &Launch::skewed(90))?;
                let skew = self.date_skew(k).await;
                tokio::time::sleep(self.hold).await;
                self.cluster.node(k).kill();
                let again = micros(self.t0);
                self.cluster.start(k, &Launch::default())?;
                Ok(Done {
                    fired: skew.is_some_and(|s| (80..=100).contains(&s)),
                    detail: format!("node {k} restarted with its clock 90 s ahead: its Date header was {skew:?} s ahead"),
                    crashes: vec![(k, at), (k, again)],
                })
            }
            Fault::JoinKilledMidMove => {
                let k = match self.spare {
                    Some(k) => k,
                    None => {
                        let k = self.cluster.add()?;
                        self.spare = Some(k);
                        k
                    }
                };
                self.join(k).await?;
                let id = self.cluster.nodes[k - 1].id;
                self.members.push(k);
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut moving = false;
                while !moving && Instant::now() < deadline {
                    if let Some(s) = self.cluster.status().await {
                        moving = s["groups"].as_array().into_iter().flatten().any(|g| {
                            g["learners"]
                                .as_array()
                                .is_some_and(|l| l.iter().any(|x| x == id))
                        });
                    }
                    if !moving {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                self.cluster.node(k).kill();
                let at = micros(self.t0);
                tokio::time::sleep(self.hold).await;
                self.cluster.start(k, &Launch::default())?;
                Ok(Done {
                    fired: moving,
                    detail: format!("node {k} (id {id}) joined and was killed while a replica was moving to it: {moving}"),
                    crashes: vec![(k, at)],
                })
            }
            Fault::Leave => {
                let k = self
                    .spare
                    .ok_or_else(|| anyhow::anyhow!("no joined node to leave"))?;
                self.leave(k).await
            }
            Fault::RemoveWipeRejoin => {
                let candidates: Vec<usize> = self
                    .members
                    .iter()
                    .copied()
                    .filter(|&i| i != 1 && Some(i) != self.spare)
                    .collect();
                let k = *candidates.choose(&mut self.rng).unwrap();
                let left = self.leave(k).await?;
                let seed = self.cluster.nodes[0].cluster_addr();
                self.cluster.node(k).wipe(seed);
                self.join(k).await?;
                self.members.push(k);
                Ok(Done {
                    fired: left.fired,
                    detail: format!(
                        "{}; wiped and joined again as id {}",
                        left.detail,
                        self.cluster.nodes[k - 1].id
                    ),
                    crashes: vec![],
                })
            }
            Fault::PostgresDown => {
                self.pg.stop();
                let refused = std::net::TcpStream::connect(("127.0.0.1", self.pg.port())).is_err();
                tokio::time::sleep(self.hold).await;
                self.pg.resume();
                Ok(Done {
                    fired: refused,
                    detail: format!(
                        "PostgreSQL stopped (pg_ctl stop, fast) and started; connections refused meanwhile: {refused}"
                    ),
                    crashes: vec![],
                })
            }
            Fault::PostgresPause => {
                // The postmaster first, so that it starts no new process meanwhile.
                let pids = self.pg.pids();
                let stopped = self.pause(&pids).await;
                Ok(Done {
                    fired: stopped,
                    detail: format!(
                        "{} PostgreSQL processes stopped (SIGSTOP) and resumed",
                        pids.len()
                    ),
                    crashes: vec![],
                })
            }
            Fault::ClickHousePause => {
                let pids: Vec<u32> = self.ch.pid().into_iter().collect();
                let stopped = self.pause(&pids).await;
                Ok(Done {
                    fired: stopped,
                    detail: "ClickHouse stopped (SIGSTOP) and resumed".into(),
                    crashes: vec![],
                })
            }
            Fault::PacketLoss => {
                let ips: Vec<String> = self.members.iter().map(|&i| self.ip(i)).collect();
                let mut pairs = Vec::new();
                for a in &ips {
                    for b in ips.iter().filter(|b| *b != a) {
                        pairs.push((a.clone(), b.clone()));
                    }
                }
                self.net.lose_between(&pairs, 30)?;
                let rules = self.net.rules()?;
                tokio::time::sleep(self.hold).await;
                self.net.heal()?;
                Ok(Done {
                    fired: rules == pairs.len(),
                    detail: format!(
                        "30% of packets lost between every two members: {rules} rules in force"
                    ),
                    crashes: vec![],
                })
            }
            Fault::FlappingPartition => {
                let until = Instant::now() + self.hold;
                let (cut, healed) = (Duration::from_millis(300), Duration::from_millis(200));
                let (mut flaps, mut shown) = (0, 0);
                while Instant::now() < until {
                    let mut shuffled = self.members.clone();
                    shuffled.shuffle(&mut self.rng);
                    let (a, b) = shuffled.split_at(shuffled.len() / 2);
                    let ips = |s: &[usize]| s.iter().map(|&i| self.ip(i)).collect::<Vec<_>>();
                    let pairs = net::split(&ips(a), &ips(b));
                    self.net.drop_between(&pairs)?;
                    flaps += 1;
                    shown += usize::from(self.net.rules()? == pairs.len());
                    tokio::time::sleep(cut).await;
                    self.net.heal()?;
                    tokio::time::sleep(healed).await;
                }
                Ok(Done {
                    fired: flaps >= 3 && shown == flaps,
                    detail: format!("{flaps} partitions of the members into halves, each for {cut:?}, healed {healed:?} between"),
                    crashes: vec![],
                })
            }
            Fault::ClockJumps => {
                let k = self.any_member();
                let file = self.cluster.root.join(format!("n{k}.faketime"));
                std::fs::write(&file, "+0\n")?;
                self.cluster.node(k).kill();
                let at = micros(self.t0);
                self.cluster.start(k, &Launch::clock_file(&file))?;
                let mut seen = Vec::new();
                for (offset, expect) in [("+60s", 60), ("-30s", -30)] {
                    std::fs::write(&file, format!("{offset}\n"))?;
                    // libfaketime reads the file again once a second. (The Date header
                    // does not follow a jump back: the HTTP server renews it only once the
                    // clock passes the second it last wrote.)
                    let deadline = Instant::now() + Duration::from_secs(5);
                    let mut skew = None;
                    let mut probe = 0;
                    while Instant::now() < deadline {
                        probe += 1;
                        skew = self.created_skew(k, probe).await;
                        if skew.is_some_and(|s| (s - expect).abs() <= 5) {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    seen.push(skew);
                    tokio::time::sleep(self.hold / 3).await;
                }
                std::fs::write(&file, "+0 x2\n")?;
                tokio::time::sleep(self.hold / 3).await;
                self.cluster.node(k).kill();
                let again = micros(self.t0);
                self.cluster.start(k, &Launch::default())?;
                let fired = matches!(seen.as_slice(), [Some(a), Some(b)] if (a - 60).abs() <= 5 && (b + 30).abs() <= 5);
                Ok(Done {
                    fired,
                    detail: format!("node {k}'s wall clock jumped +60 s, then -30 s, then ran twice as fast (links created through it said {seen:?} s); restarted"),
                    crashes: vec![(k, at), (k, again)],
                })
            }
            Fault::KillAll => {
                let members = self.members.clone();
                let mut killed = true;
                let mut crashes = Vec::new();
                for &k in &members {
                    killed &= self.cluster.node(k).kill();
                    crashes.push((k, micros(self.t0)));
                }
                tokio::time::sleep(self.hold).await;
                for &k in &members {
                    self.cluster.start(k, &Launch::default())?;
                }
                Ok(Done {
                    fired: killed,
                    detail: format!("every member ({members:?}) killed (SIGKILL) and restarted"),
                    crashes,
                })
            }
            Fault::SlowLinks => {
                let k = self.any_member();
                self.cluster.node(k).kill();
                let at = micros(self.t0);
                let launch = Launch {
                    env: vec![(
                        "FAILPOINTS".into(),
                        format!(
                            "{}=return(100:262144)",
                            linkrift_raft::failpoint::LINK_DELAY
                        ),
                    )],
                };
                self.cluster.start(k, &launch)?;
                tokio::time::sleep(self.hold).await;
                // Shown by the node's count of delayed requests.
                let slow = self.metric(k, "raft_link_delayed_total").await;
                self.cluster.node(k).kill();
                let again = micros(self.t0);
                self.cluster.start(k, &Launch::default())?;
                Ok(Done {
                    fired: slow.is_some_and(|n| n > 0.0),
                    detail: format!("node {k} restarted with 100 ms and 256 KiB/s on every Raft message it sends ({slow:?} delayed), then without"),
                    crashes: vec![(k, at), (k, again)],
                })
            }
            Fault::Freeze => {
                let (k, group) = self.member_cgroup("freezer")?;
                group.set("freezer.state", "FROZEN")?;
                let deadline = Instant::now() + Duration::from_secs(5);
                while group.get("freezer.state") != "FROZEN" && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let state = group.get("freezer.state");
                tokio::time::sleep(self.hold).await;
                drop(group);
                Ok(Done {
                    fired: state == "FROZEN",
                    detail: format!("node {k} frozen by the cgroup freezer ({state}) and thawed"),
                    crashes: vec![],
                })
            }
            Fault::CpuStarve => {
                let (k, group) = self.member_cgroup("cpu")?;
                group.set("cpu.cfs_period_us", "100000")?;
                group.set("cpu.cfs_quota_us", "3000")?;
                let quota = group.get("cpu.cfs_quota_us");
                tokio::time::sleep(self.hold).await;
                let throttled = group
                    .get("cpu.stat")
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("nr_throttled ")
                            .and_then(|n| n.parse::<u64>().ok())
                    })
                    .unwrap_or(0);
                drop(group);
                Ok(Done {
                    fired: quota == "3000" && throttled > 0,
                    detail: format!("node {k} held to 3% of a CPU: throttled {throttled} times"),
                    crashes: vec![],
                })
            }
            Fault::ClickHouseDown => {
                self.ch.stop();
                let down = self.ch.try_query("SELECT 1").await.is_err();
                tokio::time::sleep(self.hold).await;
                self.ch.resume().await;
                Ok(Done {
                    fired: down,
                    detail: "ClickHouse killed and started".into(),
                    crashes: vec![],
                })
            }
            Fault::Failpoint(name) => {
                let k = self.any_member();
                self.cluster.node(k).kill();
                let at = micros(self.t0);
                // It may fire before the node says where it serves.
                let _ = self.cluster.start(k, &Launch::failpoint(name, 50));
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut aborted = None;
                while aborted.is_none() && Instant::now() < deadline {
                    aborted = self.cluster.node(k).exited_by(6);
                    if aborted.is_none() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                let crashed = micros(self.t0);
                let log =
                    std::fs::read_to_string(&self.cluster.nodes[k - 1].log).unwrap_or_default();
                let said = log.contains(&format!("failpoint {name} fired"));
                self.cluster.node(k).kill();
                self.cluster.start(k, &Launch::default())?;
                Ok(Done {
                    fired: aborted == Some(true) && said,
                    detail: format!("node {k} armed {name}: aborted {aborted:?}, logged {said}"),
                    crashes: vec![(k, at), (k, crashed)],
                })
            }
        }
    }

    /// Starts node `k` with an empty data directory, joining node 1. A join is refused
    /// while the cluster cannot reach every member (the node exits and says why), so it
    /// is tried again, as an operator would, for up to a minute.
    async fn join(&mut self, k: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let _ = std::fs::remove_dir_all(&self.cluster.nodes[k - 1].dir);
            match self.cluster.start(k, &Launch::default()) {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => {
                    self.cluster.node(k).kill();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// `linkrift cluster leave ID --wait` for node `k`; the node exits once it has left.
    async fn leave(&mut self, k: usize) -> Result<Done> {
        let id = self.cluster.nodes[k - 1].id.to_string();
        let via = *self.members.iter().find(|&&i| i != k).unwrap();
        let out = tokio::task::block_in_place(|| {
            self.cluster
                .cli(via, &["leave", &id, "--wait", "--timeout", "180"])
        });
        self.members.retain(|&i| i != k);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.cluster.node(k).is_running() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let exited = !self.cluster.node(k).is_running();
        self.cluster.node(k).kill();
        Ok(Done {
            fired: out.is_ok() && exited,
            detail: format!(
                "node {k} (id {id}) left: {}; exited by itself: {exited}",
                match &out {
                    Ok(_) => "ok".to_string(),
                    Err(e) => format!("{e:#}"),
                }
            ),
            crashes: vec![],
        })
    }

    /// The value of the metric `name` (summed over its labels) on node `k`'s `/metrics`.
    async fn metric(&self, k: usize, name: &str) -> Option<f64> {
        let text = self
            .cluster
            .http
            .get(self.cluster.nodes[k - 1].url("/metrics"))
            .bearer_auth(crate::cluster::ADMIN_KEY)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let values: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    /// How far ahead of this machine's clock node `k`'s is, in seconds, by the creation
    /// time of a link created through it (probe `n`: a code of its own, outside the
    /// workload's).
    async fn created_skew(&self, k: usize, n: u32) -> Option<i64> {
        let r = self
            .cluster
            .http
            .post(self.cluster.nodes[k - 1].url("/v1/links"))
            .bearer_auth(crate::cluster::ADMIN_KEY)
            .json(&serde_json::json!({
                "url": "https://clock.example/",
                "code": format!("clock{k}p{n}t{}", micros(self.t0)),
            }))
            .send()
            .await
            .ok()?;
        let body: serde_json::Value = r.json().await.ok()?;
        let created = rfc3339_micros(body["created_at"].as_str()?)? as i64;
        let ours = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_micros() as i64;
        Some((created - ours) / 1_000_000)
    }

    /// How far ahead of this machine's clock node `k`'s Date header is, in seconds.
    async fn date_skew(&self, k: usize) -> Option<i64> {
        let r = self
            .cluster
            .http
            .get(self.cluster.nodes[k - 1].url("/healthz"))
            .send()
            .await
            .ok()?;
        let date = r.headers().get("date")?.to_str().ok()?;
        let theirs = httpdate(date)?;
        let ours = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs() as i64;
        Some(theirs - ours)
    }
}

/// The state letter of a process (`R`, `S`, `T` for stopped...).
fn proc_state(pid: u32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or("")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn a_round_has_every_fault_and_joins_before_leaving() {
        for seed in 0..50 {
            let round = Fault::round(&mut StdRng::seed_from_u64(seed), false, false);
            assert_eq!(round.len(), 28);
            let powered = Fault::round(&mut StdRng::seed_from_u64(seed), false, true);
            assert_eq!(powered.len(), round.len() + 2);
            assert!(powered.contains(&Fault::PowerCut) && powered.contains(&Fault::PowerCutAll));
            let join = round
                .iter()
                .position(|f| *f == Fault::JoinKilledMidMove)
                .unwrap();
            let leave = round.iter().position(|f| *f == Fault::Leave).unwrap();
            assert!(join < leave);
        }
    }
}
