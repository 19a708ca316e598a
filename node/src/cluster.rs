//! `linkrift cluster ...`: operator commands, run against any node's admin API.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use linkrift_actors::status::ClusterStatus;
use serde::Deserialize;

/// Where to reach a node, and as whom.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// Base URL of any node's HTTP listener.
    #[arg(long, env = "LINKRIFT_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// An admin key.
    #[arg(long, env = "LINKRIFT_ADMIN_KEY", hide_env_values = true)]
    pub key: String,
    /// For an https:// URL: the CA certificate (PEM) to check the node's certificate
    /// against, besides the system's trusted roots.
    #[arg(long, env = "LINKRIFT_CA_CERT")]
    pub ca_cert: Option<std::path::PathBuf>,
}

/// The cluster commands.
#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Nodes and their states, leaders and replicas per node, moves in flight, and
    /// under-replicated groups.
    Status {
        #[command(flatten)]
        target: Target,
        /// Print the status as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Make a node hand over its leaderships, take no new replicas and answer not-ready.
    Drain {
        /// The node's id (see `cluster status`).
        node: u64,
        #[command(flatten)]
        target: Target,
    },
    /// Move a node's replicas to the other nodes, then remove it from the cluster.
    Leave {
        /// The node's id (see `cluster status`).
        node: u64,
        #[command(flatten)]
        target: Target,
        /// Print progress until the node holds nothing and has left.
        #[arg(long)]
        wait: bool,
        /// With --wait, give up waiting after this many seconds (the leave goes on).
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
        /// Leave even if the shards must run with fewer replicas than the replication
        /// factor because no other node can take them (never below a quorum).
        #[arg(long)]
        force: bool,
    },
    /// Stop a drain or leave: the node is active again.
    Cancel {
        /// The node's id (see `cluster status`).
        node: u64,
        #[command(flatten)]
        target: Target,
    },
}

/// A node's state, as the admin API answers an operation.
#[derive(Debug, Deserialize)]
struct NodeAnswer {
    id: u64,
    state: String,
}

/// Runs a cluster command; returns what to print last.
pub async fn run(command: ClusterCommand) -> anyhow::Result<String> {
    match command {
        ClusterCommand::Status { target, json } => {
            let status = status(&target).await?;
            Ok(if json {
                serde_json::to_string_pretty(&status)? + "\n"
            } else {
                status.render()
            })
        }
        ClusterCommand::Drain { node, target } => {
            let answer = operate(&target, node, "drain").await?;
            Ok(format!("node {} is {}\n", answer.id, answer.state))
        }
        ClusterCommand::Cancel { node, target } => {
            let answer = operate(&target, node, "cancel").await?;
            Ok(format!("node {} is {}\n", answer.id, answer.state))
        }
        ClusterCommand::Leave {
            node,
            target,
            wait,
            timeout,
            force,
        } => {
            let action = if force { "leave?force=true" } else { "leave" };
            let answer = operate(&target, node, action).await?;
            if !wait {
                return Ok(format!(
                    "node {} is {}; follow it with `linkrift cluster status`\n",
                    answer.id, answer.state
                ));
            }
            println!("node {} is {}", answer.id, answer.state);
            wait_until_left(&target, node, Duration::from_secs(timeout)).await
        }
    }
}

/// Where else to ask for the status while `node` leaves: the other members' HTTP
/// listeners. (The leaving node stops once it is gone, and asking it would fail; a node
/// listening on an unspecified address is asked at its peer address's IP.)
fn other_targets(status: &ClusterStatus, node: u64, asking: &Target) -> Vec<Target> {
    let scheme = asking.url.split_once("://").map_or("http", |(s, _)| s);
    status
        .nodes
        .iter()
        .filter(|n| n.id != node && matches!(n.state.as_str(), "active" | "draining"))
        .filter_map(|n| {
            let http: std::net::SocketAddr = n.http.parse().ok()?;
            let ip = if http.ip().is_unspecified() {
                n.addr.parse::<std::net::SocketAddr>().ok()?.ip()
            } else {
                http.ip()
            };
            Some(Target {
                url: format!("{scheme}://{}", std::net::SocketAddr::new(ip, http.port())),
                key: asking.key.clone(),
                ca_cert: asking.ca_cert.clone(),
            })
        })
        .collect()
}

/// How many polls in a row (a second apart) must show a leaving node in another state
/// before `--wait` concludes that its leave was cancelled.
const STATE_CONFIRMATIONS: u32 = 5;

/// Prints the leave's progress (replicas left, moves in flight, an estimate) until the
/// node is removed.
async fn wait_until_left(target: &Target, node: u64, timeout: Duration) -> anyhow::Result<String> {
    let started = Instant::now();
    let mut first: Option<usize> = None;
    let mut last_line = String::new();
    let mut others: Vec<Target> = Vec::new();
    let mut asking = 0usize;
    let mut not_leaving = 0u32;
    loop {
        let ask = if asking == 0 {
            target
        } else {
            &others[(asking - 1) % others.len()]
        };
        let status = match status(ask).await {
            Ok(s) => s,
            Err(e) if started.elapsed() < timeout => {
                println!("(status unavailable: {e:#}; retrying)");
                // Ask the next of the other members, if any are known.
                asking = if others.is_empty() { 0 } else { asking + 1 };
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let found = other_targets(&status, node, target);
        if !found.is_empty() {
            others = found;
        }
        let state = status
            .node_status(node)
            .map_or("removed", |n| n.state.as_str());
        match state {
            "removed" => return Ok(format!("node {node} has left the cluster\n")),
            "leaving" => not_leaving = 0,
            // A member whose copy of the meta group lags (just after a partition, say) may
            // still show the node as it was before the leave: believe it only once it
            // persists. (The chaos tests saw a completed leave reported as cancelled.)
            _ if not_leaving + 1 < STATE_CONFIRMATIONS => {
                not_leaving += 1;
                // And ask another member next.
                asking = if others.is_empty() { 0 } else { asking + 1 };
            }
            other => {
                bail!("node {node} is {other} now: the leave was cancelled or the node was lost")
            }
        }
        let left = status.replicas_on(node);
        let initial = *first.get_or_insert(left);
        let elapsed = started.elapsed().as_secs_f64();
        let done = initial.saturating_sub(left);
        let estimate = if done > 0 && left > 0 {
            format!("about {:.0} s left", left as f64 * elapsed / done as f64)
        } else if left == 0 {
            "leaving the meta group".to_string()
        } else {
            "estimating".to_string()
        };
        let line = format!(
            "node {node}: {left} replica(s) left of {initial}, {} move(s) in flight, {estimate}",
            status.moves.len()
        );
        if line != last_line {
            println!("{line}");
            last_line = line;
        }
        if started.elapsed() >= timeout {
            bail!("node {node} still holds {left} replica(s) after {timeout:?}; the leave goes on");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn status(target: &Target) -> anyhow::Result<ClusterStatus> {
    let body = request(target, reqwest::Method::GET, "admin/status").await?;
    serde_json::from_str(&body).context("the node's answer is not a cluster status")
}

async fn operate(target: &Target, node: u64, action: &str) -> anyhow::Result<NodeAnswer> {
    let path = format!("admin/nodes/{node}/{action}");
    let body = request(target, reqwest::Method::POST, &path).await?;
    serde_json::from_str(&body).context("the node's answer is not a node record")
}

/// An HTTP client that trusts the system's roots and `--ca-cert`.
fn client(target: &Target) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder();
    if let Some(path) = &target.ca_cert {
        let pem =
            std::fs::read(path).with_context(|| format!("reading --ca-cert {}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("--ca-cert {} is not PEM certificates", path.display()))?;
        if certs.is_empty() {
            bail!("--ca-cert {} holds no certificate", path.display());
        }
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().context("setting up the HTTP client")
}

/// Sends an admin request; a non-2xx answer becomes an error carrying its message.
async fn request(target: &Target, method: reqwest::Method, path: &str) -> anyhow::Result<String> {
    let url = format!("{}/{path}", target.url.trim_end_matches('/'));
    let response = client(target)?
        .request(method, &url)
        .bearer_auth(&target.key)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let body = response.text().await.context("reading the answer")?;
    if !status.is_success() {
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or(body);
        bail!("{url} answered {status}: {message}");
    }
    Ok(body)
}
