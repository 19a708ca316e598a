//! `linkrift cluster ...`: operator commands, run against any node's admin API.

use anyhow::{bail, Context};
use linkrift_actors::status::ClusterStatus;

/// Where to reach a node, and as whom.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// Base URL of any node's HTTP listener.
    #[arg(long, env = "LINKRIFT_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// An admin key.
    #[arg(long, env = "LINKRIFT_ADMIN_KEY", hide_env_values = true)]
    pub key: String,
}

/// The cluster commands.
#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Nodes, leaders and replicas per node, and under-replicated groups.
    Status {
        #[command(flatten)]
        target: Target,
        /// Print the status as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a cluster command; returns what to print.
pub async fn run(command: ClusterCommand) -> anyhow::Result<String> {
    match command {
        ClusterCommand::Status { target, json } => {
            let url = format!("{}/admin/status", target.url.trim_end_matches('/'));
            let response = reqwest::Client::new()
                .get(&url)
                .bearer_auth(&target.key)
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
            let parsed: ClusterStatus =
                serde_json::from_str(&body).context("the node's answer is not a cluster status")?;
            Ok(if json {
                serde_json::to_string_pretty(&parsed)?
            } else {
                parsed.render()
            })
        }
    }
}
