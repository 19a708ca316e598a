//! What the integration tests and benchmarks share: a small key-value state machine, nodes
//! on 127.0.0.x, and waiting for conditions instead of sleeping.
#![allow(dead_code, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use linkrift_raft::node::{NodeOptions, StateFactory};
use linkrift_raft::{Group, GroupId, NodeId, RaftConfig, RaftNode, StateMachine};
use serde::{Deserialize, Serialize};

pub const SECRET: &[u8] = b"test cluster secret";

/// A replicated map; each command answers the value it replaced.
#[derive(Default)]
pub struct Kv {
    pub map: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum KvCommand {
    Set { key: String, value: String },
}

impl StateMachine for Kv {
    type Command = KvCommand;
    type Response = Option<String>;

    fn apply(&mut self, _index: u64, command: KvCommand) -> Option<String> {
        match command {
            KvCommand::Set { key, value } => self.map.insert(key, value),
        }
    }

    fn snapshot(&self, out: &mut dyn Write) -> std::io::Result<()> {
        out.write_all(&linkrift_raft::codec::encode(&self.map))
    }

    fn restore(&mut self, input: &mut dyn Read) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes)?;
        self.map = linkrift_raft::codec::decode(&bytes)?;
        Ok(())
    }
}

pub fn set(key: impl Into<String>, value: impl Into<String>) -> KvCommand {
    KvCommand::Set {
        key: key.into(),
        value: value.into(),
    }
}

pub fn kv_factory() -> StateFactory<Kv> {
    Arc::new(|_| Kv::default())
}

/// Logs to the test's captured output; `RUST_LOG` picks the level (default: warnings).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Timings that keep test clusters quick without flapping on a loaded 2-core machine.
pub fn test_config() -> RaftConfig {
    RaftConfig {
        heartbeat: Duration::from_millis(100),
        election_min: Duration::from_millis(600),
        election_max: Duration::from_millis(1200),
        ..RaftConfig::default()
    }
}

/// A node of a test cluster: where it lives, so it can be stopped and started again.
pub struct TestNode {
    pub id: NodeId,
    pub dir: PathBuf,
    pub addr: SocketAddr,
    pub config: RaftConfig,
    pub node: Option<RaftNode<Kv>>,
}

impl TestNode {
    /// Starts node `id` on 127.0.0.`id`, on a free port, with its data in `root`.
    pub async fn start(root: &Path, id: NodeId, config: RaftConfig) -> TestNode {
        Self::start_tls(root, id, config, None).await
    }

    /// The same, with `tls` on the peer port.
    pub async fn start_tls(
        root: &Path,
        id: NodeId,
        config: RaftConfig,
        tls: Option<linkrift_raft::transport::tls::Tls>,
    ) -> TestNode {
        let addr = SocketAddr::from((Ipv4Addr::new(127, 0, 0, id as u8), 0));
        let dir = root.join(format!("node{id}"));
        let node = start_node_with(id, &dir, addr, config.clone(), tls).await;
        TestNode {
            id,
            dir,
            addr: node.addr(),
            config,
            node: Some(node),
        }
    }

    pub fn node(&self) -> &RaftNode<Kv> {
        self.node.as_ref().expect("node is running")
    }

    pub fn group(&self, g: u64) -> Group<Kv> {
        self.node().group(GroupId(g)).expect("group hosted")
    }

    pub fn is_running(&self) -> bool {
        self.node.is_some()
    }

    /// Stops the node as a crash would look to its peers (its data stays).
    pub async fn stop(&mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown().await;
        }
    }

    /// Starts the node again on the same address and data directory, and returns why it
    /// could not.
    pub async fn try_restart(&mut self) -> Result<(), linkrift_raft::node::NodeError> {
        assert!(self.node.is_none(), "restart a stopped node");
        let options = NodeOptions {
            node_id: self.id,
            data_dir: self.dir.clone(),
            peer_addr: self.addr,
            cluster_secret: SECRET.to_vec(),
            tls: None,
            raft: self.config.clone(),
        };
        self.node = Some(RaftNode::start(options, kv_factory()).await?);
        Ok(())
    }

    /// Starts the node again on the same address and data directory.
    pub async fn restart(&mut self) {
        assert!(self.node.is_none(), "restart a stopped node");
        self.node = Some(start_node(self.id, &self.dir, self.addr, self.config.clone()).await);
    }
}

async fn start_node(id: NodeId, dir: &Path, addr: SocketAddr, raft: RaftConfig) -> RaftNode<Kv> {
    start_node_with(id, dir, addr, raft, None).await
}

/// Starts node `id` with `tls` on its peer port.
pub async fn start_node_with(
    id: NodeId,
    dir: &Path,
    addr: SocketAddr,
    raft: RaftConfig,
    tls: Option<linkrift_raft::transport::tls::Tls>,
) -> RaftNode<Kv> {
    let options = NodeOptions {
        node_id: id,
        data_dir: dir.to_path_buf(),
        peer_addr: addr,
        cluster_secret: SECRET.to_vec(),
        tls,
        raft,
    };
    RaftNode::start(options, kv_factory())
        .await
        .expect("node starts")
}

/// Starts `n` nodes (ids 1..=n), hosts groups `1..=groups` on each and forms every group
/// with all of them as voters: formed on node 1 alone, then the others added as learners
/// and made voters, as Linkrift forms groups (a replica with no membership yet does not
/// vote, so a group cannot be initialised with several empty members at once).
pub async fn cluster(root: &Path, n: u64, groups: u64, config: RaftConfig) -> Vec<TestNode> {
    let mut nodes = Vec::new();
    for id in 1..=n {
        nodes.push(TestNode::start(root, id, config.clone()).await);
    }
    form(nodes, groups).await
}

/// Forms groups `1..=groups` on `nodes`, as [`cluster`] does.
pub async fn form(nodes: Vec<TestNode>, groups: u64) -> Vec<TestNode> {
    for g in 1..=groups {
        for n in &nodes {
            n.node()
                .create_group(GroupId(g))
                .await
                .expect("create group");
        }
        let first = &nodes[0];
        first
            .group(g)
            .initialize(BTreeMap::from([(first.id, first.addr.to_string())]))
            .await
            .expect("initialize");
        wait_leader(&nodes[..1], g, Duration::from_secs(20)).await;
        for n in &nodes[1..] {
            first
                .group(g)
                .add_learner(n.id, n.addr.to_string())
                .await
                .expect("add learner");
        }
        first
            .group(g)
            .change_voters(nodes.iter().map(|n| n.id))
            .await
            .expect("make every node a voter");
    }
    for g in 1..=groups {
        wait_leader(&nodes, g, Duration::from_secs(20)).await;
    }
    nodes
}

/// Waits until `f` returns `Some`, checking every 20 ms; panics naming `what` after `timeout`.
pub async fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Like [`wait_for`], with a condition that awaits.
pub async fn wait_for_async<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The leader of group `g` that the running nodes agree on.
pub async fn wait_leader(nodes: &[TestNode], g: u64, timeout: Duration) -> NodeId {
    wait_for(&format!("a leader of group {g}"), timeout, || {
        let leader = nodes
            .iter()
            .filter(|n| n.is_running())
            .find(|n| n.group(g).is_leader())?;
        Some(leader.id)
    })
    .await
}

/// Proposes `command` to group `g` on whichever running node leads it, following
/// not-leader answers and retrying while the group has no leader, until `timeout`.
pub async fn write(
    nodes: &[TestNode],
    g: u64,
    command: KvCommand,
    timeout: Duration,
) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let target = nodes
            .iter()
            .filter(|n| n.is_running())
            .find(|n| n.group(g).is_leader())
            .or_else(|| nodes.iter().find(|n| n.is_running()))
            .expect("a running node");
        match target.group(g).write(command.clone()).await {
            Ok(previous) => return previous,
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("write to group {g} failed: {e}"),
        }
    }
}

/// Waits until every running node has applied the same entries of group `g` and holds
/// the same map; returns that map.
pub async fn wait_converged(
    nodes: &[TestNode],
    g: u64,
    timeout: Duration,
) -> BTreeMap<String, String> {
    wait_for(&format!("group {g} to converge"), timeout, || {
        let running: Vec<_> = nodes.iter().filter(|n| n.is_running()).collect();
        let applied: BTreeSet<_> = running.iter().map(|n| n.group(g).last_applied()).collect();
        if applied.len() != 1 {
            return None;
        }
        let maps: Vec<_> = running
            .iter()
            .map(|n| n.group(g).read(|a| a.state.map.clone()))
            .collect();
        maps.windows(2)
            .all(|w| w[0] == w[1])
            .then(|| maps[0].clone())
    })
    .await
}

/// The seed of a randomised test: `LINKRIFT_TEST_SEED` if set, else a fresh one. Printed,
/// so a failing run can be repeated.
pub fn seed() -> u64 {
    let seed = std::env::var("LINKRIFT_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("LINKRIFT_TEST_SEED={seed}");
    seed
}

/// A test CA: it writes node certificates and their files.
pub struct TestCa {
    dir: std::path::PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    /// A new CA, its certificate written to `dir/ca.pem`.
    pub fn new(dir: &Path) -> TestCa {
        std::fs::create_dir_all(dir).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        TestCa {
            dir: dir.to_path_buf(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// Writes the certificate and key of `name`, valid for `hosts`; returns the files.
    pub fn node(&self, name: &str, hosts: &[&str]) -> linkrift_raft::transport::tls::TlsFiles {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let files = linkrift_raft::transport::tls::TlsFiles {
            ca: self.dir.join("ca.pem"),
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}-key.pem")),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }

    /// The loaded TLS configuration of `name` (see [`TestCa::node`]).
    pub fn tls(&self, name: &str, hosts: &[&str]) -> linkrift_raft::transport::tls::Tls {
        linkrift_raft::transport::tls::Tls::load(self.node(name, hosts)).unwrap()
    }
}

/// The value of counter `name` (with label `label` = value, if given) in `snapshotter`'s
/// recorder, summed over its other labels.
pub fn counter(
    snapshotter: &metrics_util::debugging::Snapshotter,
    name: &str,
    label: Option<(&str, &str)>,
) -> u64 {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| {
            let key = key.key();
            key.name() == name
                && label.is_none_or(|(k, v)| key.labels().any(|l| l.key() == k && l.value() == v))
        })
        .map(|(.., value)| match value {
            metrics_util::debugging::DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum()
}
