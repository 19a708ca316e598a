//! How a node's link service is set up.

use super::*;

/// How a node's link service is set up.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// Where the node keeps its data.
    pub data_dir: PathBuf,
    /// Peer (Raft) listener address.
    pub peer_addr: SocketAddr,
    /// Cluster (actor) listener address.
    pub cluster_addr: SocketAddr,
    /// The HTTP address other nodes and operators reach this node at.
    pub http_addr: String,
    /// A member's cluster address, to join its cluster (only read with an empty data dir).
    pub join: Option<SocketAddr>,
    /// Secret shared by the cluster's nodes.
    pub cluster_secret: Vec<u8>,
    /// Mutual TLS on the peer and cluster ports, if configured.
    pub tls: Option<linkrift_raft::transport::tls::Tls>,
    /// Shards of a new cluster (1–4096). Fixed once the data directory exists.
    pub shard_count: u32,
    /// Replicas per shard (capped by the number of nodes).
    pub replication_factor: usize,
    /// Replica moves in flight across the cluster at most.
    pub max_moves: usize,
    /// Length of generated codes.
    pub code_length: usize,
    /// Which destinations are accepted.
    pub url_policy: UrlPolicy,
    /// How long a write may wait for its group to have a leader.
    pub write_timeout: Duration,
    /// The near cache for shards held elsewhere.
    pub cache: CacheConfig,
    /// How long a node may be out of touch with the meta leader before it is marked lost
    /// and its replicas are re-created elsewhere.
    pub dead_after: Duration,
    /// The most a replica may lag its leader and still answer reads (`None`: no bound).
    pub replica_max_lag: Option<Duration>,
    /// The Postgres mirror's database (none: no mirror).
    pub postgres_url: Option<String>,
    /// How much of a clicking client's address is kept.
    pub click_ip: crate::clicks::event::IpPolicy,
    /// A MaxMind country (or city) database, for clicks no trusted header gave a country.
    pub geoip_database: Option<PathBuf>,
    /// The ClickHouse click store (none: clicks are rolled up in the node's own database).
    pub clickhouse: Option<crate::clicks::clickhouse::ClickHouseConfig>,
    /// How many bytes of click batches may wait on disk for ClickHouse.
    pub click_spool_max_bytes: u64,
    /// Replication settings.
    pub raft: RaftConfig,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            peer_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            cluster_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_addr: String::new(),
            join: None,
            cluster_secret: Vec::new(),
            tls: None,
            shard_count: 64,
            replication_factor: 3,
            max_moves: 4,
            code_length: 7,
            url_policy: UrlPolicy::default(),
            write_timeout: Duration::from_secs(10),
            cache: CacheConfig::default(),
            dead_after: Duration::from_secs(30),
            replica_max_lag: Some(Duration::from_secs(5)),
            postgres_url: None,
            click_ip: Default::default(),
            geoip_database: None,
            clickhouse: None,
            click_spool_max_bytes: 1 << 30,
            raft: RaftConfig::default(),
        }
    }
}
