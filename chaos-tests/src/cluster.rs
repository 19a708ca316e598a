//! Real `linkrift` processes. Node `i` listens on 127.0.0.(10+i) with fixed ports, so a
//! restarted node comes back where the cluster expects it; 127.0.0.1 stays for the
//! clients, PostgreSQL and ClickHouse, so no partition rule ever cuts them off.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::disk::PowerDisk;

/// The admin key every node of a run shares.
pub const ADMIN_KEY: &str = "chaos-admin-key-0123456789abcdefghij";
const SECRET: &str = "chaos-cluster-secret-0123456789abcdef";
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// How one node is started; kept so it can be started again the same way.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    /// Extra environment (failpoints, a fake clock) for this start only.
    pub env: Vec<(String, String)>,
}

impl Launch {
    /// A start with the failpoint `name` armed to fire on its `after`+1-th hit.
    pub fn failpoint(name: &str, after: u32) -> Launch {
        Launch {
            env: vec![("FAILPOINTS".into(), format!("{name}={after}*off->return"))],
        }
    }

    /// A start under libfaketime reading its offset from `file` once a second, which the
    /// runner rewrites to move the wall clock while the node runs (the monotonic clock is
    /// left alone, as NTP leaves it).
    pub fn clock_file(file: &Path) -> Launch {
        Launch {
            env: vec![
                ("LD_PRELOAD".into(), LIBFAKETIME.into()),
                ("FAKETIME_TIMESTAMP_FILE".into(), file.display().to_string()),
                ("FAKETIME_CACHE_DURATION".into(), "1".into()),
                ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
                ("FAKETIME_DONT_RESET".into(), "1".into()),
            ],
        }
    }

    /// A start under libfaketime: the wall clock `offset` seconds off.
    pub fn skewed(offset: i64) -> Launch {
        Launch {
            env: vec![
                ("LD_PRELOAD".into(), LIBFAKETIME.into()),
                ("FAKETIME".into(), format!("{offset:+}s")),
                ("FAKETIME_DONT_RESET".into(), "1".into()),
                // The wall clock only, as NTP moves it: a faked monotonic clock also moves
                // the absolute deadlines of futex waits (Rust's timed waits), which the
                // kernel keeps on the real one, so a 50 ms wait took 90 s.
                ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
            ],
        }
    }
}

/// Sends the signal `name` (STOP, CONT, TERM) to `pid`; whether it was delivered.
pub fn signal(pid: u32, name: &str) -> bool {
    Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

/// One node of the run (running or not).
pub struct Node {
    /// 1-based; its address is 127.0.0.(10+index).
    pub index: usize,
    /// The node id it printed when it last started.
    pub id: u64,
    pub ip: String,
    pub http: u16,
    peer: u16,
    cluster: u16,
    pub dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    /// Whether it was started with `--join` (only read with an empty data directory).
    join: Option<String>,
    common: Vec<String>,
    /// The mount its data directory is on, which a power cut acts on.
    disk: Option<PowerDisk>,
}

/// The nodes of a run, and what they share.
pub struct Cluster {
    pub bin: PathBuf,
    /// The `faultfs` program, if each node's data is to be on a mount of its own.
    faultfs: Option<PathBuf>,
    pub root: PathBuf,
    pub nodes: Vec<Node>,
    base_port: u16,
    /// Flags every node gets (mirror, ClickHouse, shard count).
    pub common: Vec<String>,
    pub http: reqwest::Client,
    /// The deliberate bug every start arms (`--mutation`), a failpoint name.
    pub mutation: Option<String>,
}

impl Node {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}:{}{path}", self.ip, self.http)
    }

    pub fn cluster_addr(&self) -> String {
        format!("{}:{}", self.ip, self.cluster)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => c.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// How the process ended, for a report: its exit status or signal, or that it was
    /// never started (or already reaped).
    pub fn exit_description(&mut self) -> String {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => match (status.code(), status.signal()) {
                (_, Some(signal)) => format!("killed by signal {signal}"),
                (Some(code), _) => format!("exited with status {code}"),
                _ => status.to_string(),
            },
            Some(Ok(None)) => "still running".into(),
            Some(Err(e)) => format!("status unknown: {e}"),
            None => "not started".into(),
        }
    }

    /// Starts the process and waits for its serving line (its id).
    pub fn start(&mut self, bin: &Path, launch: &Launch) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut c = Command::new(bin);
        c.arg("serve")
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--http", &format!("{}:{}", self.ip, self.http)])
            .args(["--peer", &format!("{}:{}", self.ip, self.peer)])
            .args(["--cluster", &self.cluster_addr()])
            .args(&self.common)
            .env("LINKRIFT_ADMIN_KEY", ADMIN_KEY)
            .env("LINKRIFT_CLUSTER_SECRET", SECRET)
            // Three nodes on one machine: plaintext between them (as in development).
            .env("LINKRIFT_NODE_PLAINTEXT", "true")
            // The workload's rate is the runner's to choose, not the API's limits'.
            .env("LINKRIFT_API_RATE_PER_KEY", "0")
            .env("LINKRIFT_API_RATE_PER_IP", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        if let Some(seed) = &self.join {
            c.args(["--join", seed]);
        }
        for (k, v) in &launch.env {
            c.env(k, v);
        }
        let mut child = c
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(id) = serving_id(&line) {
                        self.id = id;
                        return Ok(());
                    }
                }
                Err(_) => bail!(
                    "node {} did not print where it serves within 60 s (see {})",
                    self.index,
                    self.log.display()
                ),
            }
        }
    }

    /// SIGKILL, and reaps it.
    pub fn kill(&mut self) -> bool {
        match self.child.take() {
            Some(mut c) => {
                let _ = c.kill();
                let _ = c.wait();
                true
            }
            None => false,
        }
    }

    /// Sends `name` (STOP, CONT, TERM) to the process.
    pub fn signal(&self, name: &str) -> bool {
        self.pid().is_some_and(|pid| signal(pid, name))
    }

    /// Whether it has exited, killed by `signal`; reaps it.
    pub fn exited_by(&mut self, signal: i32) -> Option<bool> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status.signal() == Some(signal))
    }

    /// A power cut: SIGKILL, then every write it did not sync is forgotten. Returns whether
    /// it was running, and how many unsynced bytes were lost.
    pub fn power_cut(&mut self) -> Result<(bool, u64)> {
        let killed = self.kill();
        let disk = self
            .disk
            .as_mut()
            .context("this node's data is not on a faultfs mount")?;
        Ok((killed, disk.cut()?))
    }

    /// Once it has exited by itself: its exit code (`None` inside when a signal ended it);
    /// reaps it.
    pub fn exit_code(&mut self) -> Option<Option<i32>> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status.code())
    }

    /// Kills it and deletes its data (its log file stays): it starts anew, joining `seed`.
    pub fn wipe(&mut self, seed: String) {
        self.kill();
        std::fs::remove_dir_all(&self.dir).ok();
        self.join = Some(seed);
    }
}

/// "linkrift serving http://A with data in D (node N, ...": N.
fn serving_id(line: &str) -> Option<u64> {
    let rest = line.strip_prefix("linkrift serving ")?;
    let at = rest.find("(node ")? + "(node ".len();
    let digits: String = rest[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// A free run of `n` ports on every 127.0.0.x the run uses (checked on 127.0.0.11).
fn free_ports(n: u16, seed: u64) -> u16 {
    for attempt in 0..200u64 {
        let base = 20_000 + ((seed.wrapping_mul(7919) + attempt * 104_729) % 30_000) as u16;
        let all_free = (0..n).all(|p| {
            std::net::TcpListener::bind(("127.0.0.11", base + p)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", base + p)).is_ok()
        });
        if all_free {
            return base;
        }
    }
    panic!("no free run of {n} ports on loopback");
}

impl Cluster {
    /// Nodes 1..=`count` (not started); node 1 bootstraps, the others join it.
    /// With `faultfs`, each node's data directory is on a mount of its own.
    pub fn new(
        bin: PathBuf,
        faultfs: Option<PathBuf>,
        root: PathBuf,
        count: usize,
        common: Vec<String>,
        seed: u64,
    ) -> Result<Cluster> {
        let base_port = free_ports(3 * 16, seed);
        let mut cluster = Cluster {
            bin,
            faultfs,
            root,
            nodes: Vec::new(),
            base_port,
            common,
            mutation: None,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        };
        for _ in 0..count {
            cluster.add()?;
        }
        Ok(cluster)
    }

    /// Whether the nodes' data directories are on `faultfs` mounts (power cuts work).
    pub fn has_power_disks(&self) -> bool {
        self.faultfs.is_some()
    }

    /// Declares one more node (not started), joining node 1.
    pub fn add(&mut self) -> Result<usize> {
        let index = self.nodes.len() + 1;
        let port = self.base_port + 3 * index as u16;
        let join = (index > 1).then(|| self.nodes[0].cluster_addr());
        let disk = match &self.faultfs {
            Some(bin) => Some(PowerDisk::mount(
                bin,
                self.root.join(format!("n{index}.disk")),
            )?),
            None => None,
        };
        let dir = match &disk {
            Some(disk) => disk.mount.join("data"),
            None => self.root.join(format!("n{index}")),
        };
        self.nodes.push(Node {
            index,
            id: 0,
            ip: format!("127.0.0.{}", 10 + index),
            http: port,
            peer: port + 1,
            cluster: port + 2,
            dir,
            log: self.root.join(format!("n{index}.log")),
            child: None,
            join,
            common: self.common.clone(),
            disk,
        });
        Ok(index)
    }

    pub fn node(&mut self, index: usize) -> &mut Node {
        &mut self.nodes[index - 1]
    }

    pub fn start(&mut self, index: usize, launch: &Launch) -> Result<()> {
        let bin = self.bin.clone();
        let Some(mutation) = &self.mutation else {
            return self.nodes[index - 1].start(&bin, launch);
        };
        // The deliberate bug next to this start's own failpoints (`;` separates them).
        let mut launch = launch.clone();
        let armed = format!("{mutation}=return");
        match launch.env.iter_mut().find(|(k, _)| k == "FAILPOINTS") {
            Some((_, v)) => *v = format!("{v};{armed}"),
            None => launch.env.push(("FAILPOINTS".into(), armed)),
        }
        self.nodes[index - 1].start(&bin, &launch)
    }

    /// Base URLs of every declared node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url("")).collect()
    }

    /// `/admin/status` from the first node that answers.
    pub async fn status(&self) -> Option<Value> {
        for n in &self.nodes {
            let r = self
                .http
                .get(n.url("/admin/status"))
                .bearer_auth(ADMIN_KEY)
                .send()
                .await;
            if let Ok(r) = r {
                if r.status().is_success() {
                    if let Ok(v) = r.json::<Value>().await {
                        return Some(v);
                    }
                }
            }
        }
        None
    }

    /// The index of the node whose id is `id`.
    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.nodes.iter().find(|n| n.id == id).map(|n| n.index)
    }

    /// Leaders by group from a status: (group, leader's node index).
    pub fn leaders(&self, status: &Value) -> Vec<(u64, usize)> {
        status["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| {
                let leader = g["leader"].as_u64()?;
                Some((g["group"].as_u64()?, self.index_of(leader)?))
            })
            .collect()
    }

    /// Waits until every node in `indexes` answers `/readyz` 200, every group has a
    /// leader, and no shard group has a learner (no move in flight).
    pub async fn wait_settled(&self, indexes: &[usize], within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            // What is not settled yet: unready nodes with their reasons, then groups.
            let mut waiting = Vec::new();
            for &i in indexes {
                match self.http.get(self.nodes[i - 1].url("/readyz")).send().await {
                    Ok(r) if r.status() == 200 => {}
                    Ok(r) => {
                        let body: Value = r.json().await.unwrap_or_default();
                        let why = body["error"]["message"].as_str().unwrap_or("?");
                        waiting.push(format!("node {i} not ready: {why}"));
                    }
                    Err(e) => waiting.push(format!("node {i} not answering: {e}")),
                }
            }
            if waiting.is_empty() {
                match self.status().await {
                    Some(s) => {
                        let groups = s["groups"].as_array().cloned().unwrap_or_default();
                        if groups.is_empty() {
                            waiting.push("the status lists no group".into());
                        }
                        for g in groups {
                            // The meta group keeps nodes past its voter count as learners.
                            let learners = g["learners"].as_array().is_some_and(|l| !l.is_empty());
                            if g["leader"].is_null() || (g["group"] != 0 && learners) {
                                waiting.push(format!(
                                    "group {}: leader {}, learners {}",
                                    g["group"], g["leader"], g["learners"]
                                ));
                            }
                        }
                    }
                    None => waiting.push("no node answers /admin/status".into()),
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "nodes {indexes:?} not ready and settled within {within:?}: {}",
                    waiting.join("; ")
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Runs `linkrift cluster ARGS` against node `via`; its output.
    pub fn cli(&self, via: usize, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.bin)
            .arg("cluster")
            .args(args)
            .args(["--url", &self.nodes[via - 1].url("")])
            .env("LINKRIFT_ADMIN_KEY", ADMIN_KEY)
            .env("RUST_BACKTRACE", "0")
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            bail!("linkrift cluster {args:?}: {text}");
        }
        Ok(text)
    }

    /// Lines of the nodes' logs that report a death or a fatal error: a panic, a failed
    /// allocation (Rust's allocation-failure abort), a fatal runtime error or stack
    /// overflow, a storage fail-stop. What a failpoint caused names the failpoint (its abort
    /// says "failpoint ... fired", its I/O error is "failpoint NAME") and is planned.
    pub fn deaths_in_logs(&self) -> Vec<String> {
        const MARKERS: [&str; 5] = [
            "panicked",
            "memory allocation of",
            "fatal runtime error",
            "has overflowed its stack",
            "storage failed",
        ];
        let mut found = Vec::new();
        for n in &self.nodes {
            let text = std::fs::read_to_string(&n.log).unwrap_or_default();
            let death =
                |l: &&str| MARKERS.iter().any(|m| l.contains(m)) && !l.contains("failpoint");
            for line in text.lines().filter(death) {
                found.push(format!("node {}: {line}", n.index));
            }
        }
        found
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.signal("CONT");
            n.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deaths_in_the_logs_are_found_and_what_a_failpoint_caused_is_not() {
        let root = tempfile::tempdir().unwrap();
        let cluster = Cluster::new(
            "linkrift".into(),
            None,
            root.path().to_path_buf(),
            2,
            Vec::new(),
            1,
        )
        .unwrap();
        std::fs::write(
            &cluster.nodes[0].log,
            "INFO fine\n\
             ERROR linkrift_raft::fault: storage failed: source=raft_log_sync error=failpoint raft.flush_error\n\
             failpoint raft.apply fired: aborting\n",
        )
        .unwrap();
        std::fs::write(
            &cluster.nodes[1].log,
            "thread 'tokio-runtime-worker' panicked at raft/src/node.rs:1:1\n\
             memory allocation of 1125899906842624 bytes failed\n\
             ERROR linkrift_raft::fault: storage failed: source=flush error=No space left on device\n",
        )
        .unwrap();
        let found = cluster.deaths_in_logs();
        assert_eq!(found.len(), 3, "{found:#?}");
        assert!(
            found.iter().all(|l| l.starts_with("node 2: ")),
            "{found:#?}"
        );
    }
}
