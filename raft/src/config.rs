//! Settings of the Raft layer on one node, with defaults suited to tens of groups per node.

use std::time::Duration;

/// How this node's groups replicate. Every group on a node shares these settings.
#[derive(Clone, Debug)]
pub struct RaftConfig {
    /// Interval between leader heartbeats. Tens of groups each heartbeat on their own, so
    /// the default (300 ms) is slower than openraft's 50 ms to keep idle traffic low.
    pub heartbeat: Duration,
    /// Lower bound of the randomised election timeout (default 1.5 s).
    pub election_min: Duration,
    /// Upper bound of the randomised election timeout (default 3 s).
    pub election_max: Duration,
    /// A snapshot is taken after this many applied entries since the last one.
    pub snapshot_after_entries: u64,
    /// Entries kept in the log behind a snapshot, so a follower that is only a little
    /// behind catches up from the log instead of a whole snapshot.
    pub keep_after_snapshot: u64,
    /// Largest snapshot chunk sent in one frame. Small chunks keep a snapshot transfer
    /// from holding up the heartbeats that share its peer connection.
    pub snapshot_chunk_bytes: u64,
    /// Largest frame accepted on the peer port; a peer announcing a bigger one is cut off.
    pub max_frame_bytes: u32,
    /// How long one peer request may take before it counts as failed.
    pub request_timeout: Duration,
    /// How long an install-snapshot chunk may take.
    pub snapshot_chunk_timeout: Duration,
    /// Delay before the first reconnect to an unreachable peer; doubled up to
    /// `reconnect_max`.
    pub reconnect_min: Duration,
    /// Longest delay between reconnect attempts.
    pub reconnect_max: Duration,
    /// Memory sled may use to cache the node's logs (sled's own default is 1 GiB, which
    /// would sit beside the state machines' own copy of the same data).
    pub log_cache_bytes: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(300),
            election_min: Duration::from_millis(1500),
            election_max: Duration::from_millis(3000),
            snapshot_after_entries: 20_000,
            keep_after_snapshot: 1_000,
            snapshot_chunk_bytes: 256 * 1024,
            max_frame_bytes: 16 * 1024 * 1024,
            request_timeout: Duration::from_secs(2),
            snapshot_chunk_timeout: Duration::from_secs(10),
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(2),
            log_cache_bytes: 64 * 1024 * 1024,
        }
    }
}

impl RaftConfig {
    /// The openraft configuration these settings describe, validated.
    pub fn openraft(&self) -> Result<openraft::Config, openraft::ConfigError> {
        let millis = |d: Duration| d.as_millis() as u64;
        openraft::Config {
            cluster_name: "linkrift".to_string(),
            heartbeat_interval: millis(self.heartbeat),
            election_timeout_min: millis(self.election_min),
            election_timeout_max: millis(self.election_max),
            install_snapshot_timeout: millis(self.snapshot_chunk_timeout),
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_after_entries),
            max_in_snapshot_log_to_keep: self.keep_after_snapshot,
            snapshot_max_chunk_size: self.snapshot_chunk_bytes,
            ..Default::default()
        }
        .validate()
    }
}
