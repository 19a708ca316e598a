//! `linkrift serve` settings: defaults, then an optional TOML file, then `LINKRIFT_*`
//! environment variables, then command-line flags; later sources win.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Every setting of a node. The names are the TOML keys; the environment variables are
/// the same names, upper case, prefixed `LINKRIFT_`; the flags are the same with dashes.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory for all of the node's data.
    pub data_dir: PathBuf,
    /// HTTP listener: redirects, API, health, metrics.
    pub http: SocketAddr,
    /// The HTTP listener's certificate chain (PEM): with `tls_key`, it serves HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// The HTTP listener's private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Peer (Raft) listener.
    pub peer: SocketAddr,
    /// Cluster (actor) listener: forwarded writes, cache fills, invalidations, joins.
    pub cluster: SocketAddr,
    /// A member's cluster address: an empty data directory joins that cluster.
    pub join: Option<SocketAddr>,
    /// Replicas per shard (capped by the number of nodes).
    pub replication_factor: usize,
    /// Near cache (links of shards held elsewhere): most entries.
    pub near_cache_capacity: u64,
    /// Near cache: how long a found link is served from it, in milliseconds.
    pub near_cache_ttl_ms: u64,
    /// Near cache: how long "no such link" is remembered, in milliseconds.
    pub near_cache_negative_ttl_ms: u64,
    /// The most a replica may lag its leader and still answer reads and redirects, in
    /// milliseconds (0: no bound; a cut-off replica serves what it has).
    pub replica_max_lag_ms: u64,
    /// Milliseconds a node may be out of touch with the meta leader before it is marked
    /// lost and its replicas are re-created on the other nodes.
    pub dead_after_ms: u64,
    /// On SIGTERM, drain (hand over leaderships, answer not-ready) before stopping; the
    /// node is active again when it next starts. For Kubernetes `preStop`.
    pub drain_on_shutdown: bool,
    /// PostgreSQL URL of the durable mirror (none: no mirror).
    pub postgres_url: Option<String>,
    /// Log entries a group applies between snapshots (then its log is compacted).
    pub snapshot_after_entries: u64,
    /// A header a trusted proxy sets to the client's country, e.g. `CF-IPCountry`.
    pub country_header: Option<String>,
    /// A MaxMind country or city database (`.mmdb`), for the country of clicks that no
    /// trusted header gave one (none: countries only from `country_header`).
    pub geoip_database: Option<PathBuf>,
    /// Leading bits of a clicking client's IPv4 address kept (0-32).
    pub click_ip_v4_bits: u8,
    /// Leading bits of a clicking client's IPv6 address kept (0-128).
    pub click_ip_v6_bits: u8,
    /// Count redirects as clicks (turned off only to measure what counting costs).
    pub click_capture: bool,
    /// ClickHouse HTTP interface for click events, e.g. `http://127.0.0.1:8123` (none:
    /// hourly roll-ups in the node's own database).
    pub clickhouse_url: Option<String>,
    /// ClickHouse database (created when missing).
    pub clickhouse_database: String,
    /// ClickHouse user.
    pub clickhouse_user: String,
    /// ClickHouse password.
    pub clickhouse_password: String,
    /// For an https `clickhouse_url`: a CA certificate (PEM) to trust besides the system's.
    pub clickhouse_ca: Option<PathBuf>,
    /// Bytes of click batches that may wait on local disk while ClickHouse is away; past
    /// that, batches are dropped and counted.
    pub click_spool_max_bytes: u64,
    /// Base URL of the short links handed out; its host is refused as a destination.
    pub public_url: Option<String>,
    /// Shards of a new cluster (fixed once the data directory exists).
    pub shard_count: u32,
    /// Length of generated codes.
    pub code_length: usize,
    /// URL schemes accepted besides http and https.
    pub allowed_schemes: Vec<String>,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// `max-age` of redirect responses, in seconds.
    pub redirect_cache_seconds: u32,
    /// API requests per second per API key (0: unlimited).
    pub api_rate_per_key: u32,
    /// API requests per second per client address, for requests without a known key
    /// (0: unlimited).
    pub api_rate_per_ip: u32,
    /// Bursts of this many seconds' worth of requests are let through at once.
    pub api_rate_burst_seconds: u32,
    /// Redirects per second per client address (0: unlimited, the default).
    pub redirect_rate_per_ip: u32,
    /// Secret the cluster's nodes share (peer connections prove they hold it).
    pub cluster_secret: Option<String>,
    /// The first admin key of a new data directory (otherwise one is generated and printed).
    pub admin_key: Option<String>,
    /// If set, `/metrics` needs it as a bearer token.
    pub metrics_key: Option<String>,
    /// The cluster CA's certificate (PEM), for mutual TLS between nodes.
    pub node_tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM), signed by that CA.
    pub node_tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    pub node_tls_key: Option<PathBuf>,
    /// Development only: nodes of a cluster talk without TLS, authenticated by the secret
    /// alone. Without it, a node with a `cluster_secret` needs the `node_tls_*` files.
    pub node_plaintext: bool,
    /// `text` or `json`.
    pub log_format: String,
    /// Log filter, e.g. `info` or `linkrift=debug,info`.
    pub log: String,
}

/// The setting names, as TOML keys and (upper case, prefixed) environment variables.
const KEYS: &[&str] = &[
    "data_dir",
    "http",
    "tls_cert",
    "tls_key",
    "peer",
    "cluster",
    "join",
    "replication_factor",
    "near_cache_capacity",
    "near_cache_ttl_ms",
    "near_cache_negative_ttl_ms",
    "replica_max_lag_ms",
    "dead_after_ms",
    "drain_on_shutdown",
    "postgres_url",
    "snapshot_after_entries",
    "country_header",
    "geoip_database",
    "click_ip_v4_bits",
    "click_ip_v6_bits",
    "click_capture",
    "clickhouse_url",
    "clickhouse_database",
    "clickhouse_user",
    "clickhouse_password",
    "clickhouse_ca",
    "click_spool_max_bytes",
    "public_url",
    "shard_count",
    "code_length",
    "allowed_schemes",
    "max_body_bytes",
    "redirect_cache_seconds",
    "api_rate_per_key",
    "api_rate_per_ip",
    "api_rate_burst_seconds",
    "redirect_rate_per_ip",
    "cluster_secret",
    "admin_key",
    "metrics_key",
    "node_tls_ca",
    "node_tls_cert",
    "node_tls_key",
    "node_plaintext",
    "log_format",
    "log",
];

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            http: SocketAddr::from(([127, 0, 0, 1], 8080)),
            peer: SocketAddr::from(([127, 0, 0, 1], 0)),
            cluster: SocketAddr::from(([127, 0, 0, 1], 0)),
            join: None,
            replication_factor: 3,
            near_cache_capacity: 100_000,
            near_cache_ttl_ms: 5_000,
            near_cache_negative_ttl_ms: 1_000,
            replica_max_lag_ms: 5_000,
            dead_after_ms: 30_000,
            drain_on_shutdown: false,
            postgres_url: None,
            snapshot_after_entries: 20_000,
            country_header: None,
            geoip_database: None,
            click_ip_v4_bits: 24,
            click_ip_v6_bits: 48,
            click_capture: true,
            clickhouse_url: None,
            clickhouse_database: "linkrift".into(),
            clickhouse_user: "default".into(),
            clickhouse_password: String::new(),
            clickhouse_ca: None,
            click_spool_max_bytes: 1 << 30,
            public_url: None,
            shard_count: 64,
            code_length: 7,
            allowed_schemes: Vec::new(),
            max_body_bytes: 4 * 1024 * 1024,
            redirect_cache_seconds: 0,
            api_rate_per_key: 200,
            api_rate_per_ip: 20,
            api_rate_burst_seconds: 5,
            redirect_rate_per_ip: 0,
            cluster_secret: None,
            admin_key: None,
            metrics_key: None,
            node_tls_ca: None,
            node_tls_cert: None,
            node_tls_key: None,
            node_plaintext: false,
            tls_cert: None,
            tls_key: None,
            log_format: "text".into(),
            log: "info,openraft=warn".into(),
        }
    }
}

/// Flags given on the command line; `None` leaves the setting to the other sources.
#[derive(Debug, Default, Serialize, clap::Args)]
pub struct Flags {
    /// TOML file with settings (its keys are the flag names with underscores).
    #[arg(long, env = "LINKRIFT_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Data directory [default: ./data].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address [default: 127.0.0.1:8080].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<SocketAddr>,
    /// Serve HTTPS with this certificate chain (PEM), read again on SIGHUP.
    #[arg(long, requires = "tls_key")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Peer (Raft) listen address [default: 127.0.0.1, any free port].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<SocketAddr>,
    /// Cluster (actor) listen address [default: 127.0.0.1, any free port].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<SocketAddr>,
    /// Join the cluster of the member whose cluster address this is (empty data dir only).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join: Option<SocketAddr>,
    /// Replicas per shard, 1-7 [default: 3].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<usize>,
    /// Near cache TTL in milliseconds: the longest a non-replica node serves a changed link
    /// if the invalidation is lost [default: 5000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub near_cache_ttl_ms: Option<u64>,
    /// The most a replica may lag its leader and still serve, in milliseconds; 0 for no
    /// bound [default: 5000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica_max_lag_ms: Option<u64>,
    /// Milliseconds out of touch before a node is marked lost [default: 30000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_after_ms: Option<u64>,
    /// On SIGTERM, drain before stopping (active again at the next start).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub drain_on_shutdown: bool,
    /// PostgreSQL URL of the durable mirror, e.g. postgres://user@host/db [default: none].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres_url: Option<String>,
    /// Log entries a group applies between snapshots [default: 20000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_after_entries: Option<u64>,
    /// A header a trusted proxy sets to the client's country [default: none].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country_header: Option<String>,
    /// MaxMind country or city database (.mmdb) for click countries [default: none].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub geoip_database: Option<PathBuf>,
    /// ClickHouse HTTP URL for click events, e.g. http://127.0.0.1:8123 [default: none,
    /// roll-ups in the node's own database].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clickhouse_url: Option<String>,
    /// ClickHouse database [default: linkrift].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clickhouse_database: Option<String>,
    /// For an https ClickHouse URL: a CA certificate (PEM) to trust besides the system's
    /// roots [default: none].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clickhouse_ca: Option<PathBuf>,
    /// Bytes of click batches kept on disk while ClickHouse is away [default: 1073741824].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub click_spool_max_bytes: Option<u64>,
    /// Public base URL of short links [default: http://<http address>].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// Shards of a new data directory, 1-4096 [default: 64].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard_count: Option<u32>,
    /// Length of generated codes, 4-64 [default: 7].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code_length: Option<usize>,
    /// Accept this URL scheme besides http and https (repeatable).
    #[arg(long = "allow-scheme")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_schemes: Option<Vec<String>>,
    /// Largest request body in bytes [default: 4194304].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<usize>,
    /// max-age of redirects in seconds [default: 0].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_cache_seconds: Option<u32>,
    /// The cluster CA's certificate (PEM), for mutual TLS between nodes.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM), from `linkrift certs node`.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_tls_key: Option<PathBuf>,
    /// Development only: nodes talk without TLS (the cluster secret alone authenticates).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub node_plaintext: bool,
    /// API requests per second per API key, 0 for no limit [default: 200].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_rate_per_key: Option<u32>,
    /// API requests per second per client address without a known key, 0 for no limit
    /// [default: 20].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_rate_per_ip: Option<u32>,
    /// Seconds' worth of requests a client may send at once [default: 5].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_rate_burst_seconds: Option<u32>,
    /// Redirects per second per client address, 0 for no limit [default: 0].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_rate_per_ip: Option<u32>,
    /// Log format: text or json [default: text].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
    /// Log filter [default: info,openraft=warn].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
}

impl Config {
    /// Merges the sources in order of precedence and checks the result.
    pub fn load(flags: &Flags) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = &flags.config {
            if !path.exists() {
                bail!("config file {} does not exist", path.display());
            }
            figment = figment.merge(Toml::file(path));
        }
        let config: Config = figment
            // Only our own keys: other LINKRIFT_* variables (a test seed, a bench setting)
            // must not stop a node, while a typo in the TOML file still does.
            .merge(Env::prefixed("LINKRIFT_").only(KEYS))
            .merge(Serialized::defaults(flags))
            .extract()
            .context("invalid configuration")?;
        if !matches!(config.log_format.as_str(), "text" | "json") {
            bail!(
                "log_format must be text or json, not {:?}",
                config.log_format
            );
        }
        if config.join.is_some() && config.cluster_secret.is_none() {
            bail!("joining a cluster needs cluster_secret (LINKRIFT_CLUSTER_SECRET), the same on every node");
        }
        for scheme in &config.allowed_schemes {
            if linkrift_actors::domain::DENIED_SCHEMES
                .iter()
                .any(|d| d.eq_ignore_ascii_case(scheme))
            {
                bail!("allowed_schemes cannot allow {scheme:?}: javascript, vbscript, data and file destinations are never allowed");
            }
        }
        if let Some(secret) = &config.cluster_secret {
            check_secret("cluster_secret", secret)?;
        }
        if let Some(key) = &config.admin_key {
            check_secret("admin_key", key)?;
        }
        match (&config.node_tls_ca, &config.node_tls_cert, &config.node_tls_key) {
            (None, None, None) | (Some(_), Some(_), Some(_)) => {}
            _ => bail!("mutual TLS between nodes needs all of node_tls_ca, node_tls_cert and node_tls_key (`linkrift certs` makes them)"),
        }
        let node_tls = config.node_tls_ca.is_some();
        if config.node_plaintext && node_tls {
            bail!("node_plaintext turns off the TLS that node_tls_ca, node_tls_cert and node_tls_key turn on: set one or the other");
        }
        // A node with a secret is (or will be) one of several: their traffic crosses a
        // network, and is encrypted unless plaintext is asked for by name.
        if config.cluster_secret.is_some() && !node_tls && !config.node_plaintext {
            bail!("traffic between the nodes of a cluster needs mutual TLS: set node_tls_ca, node_tls_cert and node_tls_key (`linkrift certs` makes them); for development on one machine, node_plaintext = true (LINKRIFT_NODE_PLAINTEXT=true) sends it unencrypted");
        }
        if config.tls_cert.is_some() != config.tls_key.is_some() {
            bail!("HTTPS needs both tls_cert and tls_key");
        }
        if let Some(key) = &config.metrics_key {
            check_secret("metrics_key", key)?;
        }
        if let Some(url) = &config.postgres_url {
            if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
                bail!("postgres_url must be a postgres:// URL");
            }
        }
        if let Some(url) = &config.clickhouse_url {
            let parsed = url::Url::parse(url).context("clickhouse_url is not a URL")?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                // (Not echoed: the rest of a mistyped URL may be a password.)
                bail!(
                    "clickhouse_url must be the http(s) URL of ClickHouse's HTTP interface, e.g. http://127.0.0.1:8123; this one has scheme {:?}{}",
                    parsed.scheme(),
                    if parsed.host_str().is_none() { " and no host" } else { "" }
                );
            }
            let name_ok =
                |n: &str| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !name_ok(&config.clickhouse_database) {
                bail!(
                    "clickhouse_database must be letters, digits and underscores, not {:?}",
                    config.clickhouse_database
                );
            }
        }
        // A batch of 5,000 clicks with long user agents and referers is several MB.
        if config.click_spool_max_bytes < 64 << 20 {
            bail!(
                "click_spool_max_bytes must be at least 67108864 (64 MiB), not {}",
                config.click_spool_max_bytes
            );
        }
        if config.click_ip_v4_bits > 32 || config.click_ip_v6_bits > 128 {
            bail!("click_ip_v4_bits must be 0-32 and click_ip_v6_bits 0-128");
        }
        if let Some(h) = &config.country_header {
            if axum::http::HeaderName::try_from(h.as_str()).is_err() {
                bail!("country_header {h:?} is not a header name");
            }
        }
        if config.snapshot_after_entries < 100 {
            bail!(
                "snapshot_after_entries must be at least 100, not {}",
                config.snapshot_after_entries
            );
        }
        if config.api_rate_burst_seconds == 0 || config.api_rate_burst_seconds > 3_600 {
            bail!(
                "api_rate_burst_seconds must be 1 to 3600, not {}",
                config.api_rate_burst_seconds
            );
        }
        if config.dead_after_ms < 1_000 {
            bail!(
                "dead_after_ms must be at least 1000, not {}",
                config.dead_after_ms
            );
        }
        if config.near_cache_ttl_ms == 0 || config.near_cache_negative_ttl_ms == 0 {
            bail!("near cache TTLs must be at least 1 ms");
        }
        if config.replica_max_lag_ms != 0 && config.replica_max_lag_ms < 1_000 {
            bail!(
                "replica_max_lag_ms must be 0 (no bound) or at least 1000 (a few heartbeats), \
                 not {}",
                config.replica_max_lag_ms
            );
        }
        if let Some(url) = &config.public_url {
            let parsed =
                url::Url::parse(url).with_context(|| format!("public_url {url:?} is not a URL"))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                bail!("public_url must be an http(s) URL with a host, not {url:?}");
            }
        }
        Ok(config)
    }
}

/// The fewest bytes a secret (the cluster secret, the first admin key) may have.
pub const MIN_SECRET_BYTES: usize = 32;

/// Refuses a secret that is empty, shorter than [`MIN_SECRET_BYTES`], or a placeholder
/// from an example (`change-me…`). The message names the setting, never the value.
pub fn check_secret(name: &str, value: &str) -> anyhow::Result<()> {
    let folded: String = value
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase();
    let placeholder = ["changeme", "replaceme", "yoursecret", "secret", "password"]
        .iter()
        .any(|p| folded.starts_with(p));
    if value.trim().is_empty() {
        bail!("{name} is empty; make one with `openssl rand -hex 24`");
    }
    if value.len() < MIN_SECRET_BYTES {
        bail!(
            "{name} has {} bytes, fewer than {MIN_SECRET_BYTES}; make one with `openssl rand -hex 24`",
            value.len()
        );
    }
    if placeholder {
        bail!(
            "{name} is a placeholder from an example; make a real one with `openssl rand -hex 24`"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_is_read_from_the_environment() {
        let value = serde_json::to_value(Config::default()).unwrap();
        let mut fields: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut keys = KEYS.to_vec();
        fields.sort();
        keys.sort();
        assert_eq!(fields, keys, "KEYS must list every Config field");
    }

    #[test]
    fn weak_secrets_are_refused_without_showing_them() {
        let good = "3f9c1e0a7b2d4c6e8f1a3b5c7d9e0f2a4b6c8d0e";
        assert!(check_secret("cluster_secret", good).is_ok());
        for (value, why) in [
            ("", "empty"),
            ("   ", "empty"),
            ("short-but-random-Xq9", "fewer than 32"),
            ("change-me-cluster-secret-0123456789", "placeholder"),
            ("CHANGE_ME_admin_key_0123456789abcdef", "placeholder"),
            ("replace-me-with-a-real-secret-please", "placeholder"),
        ] {
            let err = check_secret("cluster_secret", value)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(why) && err.contains("cluster_secret"),
                "{value:?}: {err}"
            );
            if !value.trim().is_empty() {
                assert!(!err.contains(value), "the secret is not shown: {err}");
            }
        }
    }
}
