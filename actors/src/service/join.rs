//! Joining, this node's side: registering with a member, being admitted by the meta leader,
//! and refusing an older copy of itself.

use super::*;

/// Refuses to go on when this node's meta log ends before the index the cluster recorded
/// that it acknowledged: its data directory is an older copy of itself (a restored volume,
/// or a disk that lost synced writes). Going on would roll a Raft member back in every
/// group it holds. The record is committed, so no healthy node is ever behind it. When no
/// other node answers (the whole cluster starting), it cannot tell, and says so.
pub(super) async fn refuse_rolled_back(core: &Core) -> Result<(), OpenError> {
    let local = core.node.last_log_index(META)?.unwrap_or(0);
    let ask = Request::Acknowledged {
        node: core.cx.settings.me,
    };
    match core.cx.peers.call_any(&ask, CALL_TIMEOUT).await {
        Ok(Reply::Acknowledged(Some(recorded))) if recorded > local => {
            Err(OpenError::RolledBack(format!(
                "this data directory is older than the cluster's record of node {me}: its meta \
                 log ends at index {local}, and node {me} acknowledged index {recorded}. It is an \
                 old copy (a restored volume) or lost synced writes; starting it would lose \
                 committed writes. Start this node on an empty data directory with --join to \
                 rejoin as a new node (docs/OPERATIONS.md, \"Restoring a node\")",
                me = core.cx.settings.me
            )))
        }
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::warn!(error = %e, "could not ask another node whether this data directory is current");
            Ok(())
        }
    }
}

/// Registers with the cluster at `seed`: returns the identity it gives this node.
pub(super) async fn register(
    peers: &Peers,
    seed: SocketAddr,
    config: &ServiceConfig,
) -> Result<Identity, OpenError> {
    peers
        .connect(seed, Duration::from_secs(10))
        .await
        .map_err(|e| OpenError::Join(format!("cannot open a session with {seed}: {e}")))?;
    let token = rand::random::<u128>();
    let request = Request::Register {
        token,
        addrs: NodeAddrs {
            http: config.http_addr.clone(),
            peer: String::new(),
            cluster: peers.addr().to_string(),
        },
    };
    match peers.call_any(&request, Duration::from_secs(10)).await {
        Ok(Reply::Registered { id, shard_count }) => {
            tracing::info!(node = id, shards = shard_count, %seed, "registered with the cluster");
            Ok(Identity {
                node_id: id,
                shard_count,
                admitted: false,
                token,
                drained_for_shutdown: false,
                bootstrapping: false,
            })
        }
        Ok(Reply::Refused(r)) => Err(OpenError::Join(format!("{seed} refused: {r}"))),
        Ok(other) => Err(OpenError::Join(format!("{seed} answered {other:?}"))),
        Err(e) => Err(OpenError::Join(e.to_string())),
    }
}

/// Asks the meta leader (through `seed`, or any node with a session) to admit this node.
pub(super) async fn admit(
    core: &Arc<Core>,
    seed: Option<SocketAddr>,
    addrs: NodeAddrs,
) -> Result<(), OpenError> {
    let request = Request::Admit {
        id: core.cx.settings.me,
        addrs,
    };
    let deadline = Instant::now() + ADMIT_TIMEOUT;
    loop {
        let answer = core.cx.peers.call_any(&request, ADMIT_TIMEOUT).await;
        match answer {
            Ok(Reply::Done) => return Ok(()),
            Ok(Reply::Refused(Refusal::Failed(e))) => return Err(OpenError::Join(e)),
            Ok(other) => tracing::info!(answer = ?other, "not admitted yet; trying again"),
            Err(e) => {
                tracing::info!(error = %e, "not admitted yet; trying again");
                if let Some(seed) = seed {
                    let _ = core.cx.peers.connect(seed, Duration::from_secs(5)).await;
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(OpenError::Join(format!(
                "not admitted within {ADMIT_TIMEOUT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
