//! Background loops of a node: keeping in touch with the others, undraining after a
//! restart, and which lost leader to stand against.

use super::*;

/// Keeps sessions with the other nodes up, and this node's addresses in the meta group
/// current.
pub(super) async fn keep_in_touch(core: std::sync::Weak<Core>, addrs: NodeAddrs) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut recorded = false;
    let mut lost = LostLeaders::default();
    let mut handover = Handover::default();
    let mut ticks: u64 = 0;
    loop {
        tick.tick().await;
        let Some(core) = core.upgrade() else { return };
        if core.cancel.is_cancelled() {
            return;
        }
        ticks += 1;
        if ticks % RECORD_ACKNOWLEDGED_TICKS == 0 {
            core.record_acknowledged().await;
        }
        core.peers.maintain(core.me, &core.cluster_addrs()).await;
        core.check_standing();
        core.hand_over(&mut handover);
        if !core.is_yielding() {
            core.stand_for_lost_leaders(&mut lost).await;
        }
        if !recorded {
            match core.directory.node(core.me) {
                Some(r) if r.addrs == addrs => recorded = true,
                Some(_) => {
                    let update = MetaCommand::UpdateAddrs {
                        id: core.me,
                        addrs: addrs.clone(),
                    };
                    recorded = core.propose_meta(update).await.is_ok();
                }
                None => {}
            }
        }
    }
}

/// Makes this node active again after it drained itself for a shutdown (unless an
/// operator made it leave meanwhile).
pub(super) async fn undrain(core: std::sync::Weak<Core>) {
    loop {
        let Some(core) = core.upgrade() else { return };
        if core.cancel.is_cancelled() {
            return;
        }
        let done = match core.my_state() {
            Some(NodeState::Draining) => {
                let cancel = MetaCommand::SetNodeState {
                    id: core.me,
                    state: NodeState::Active,
                    at: now_ms(),
                };
                match core.propose_meta(cancel).await {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::info!(error = %e, "could not make this node active again; will retry");
                        false
                    }
                }
            }
            _ => true,
        };
        if done {
            if let Err(e) = core.mark_drained_for_shutdown(false) {
                tracing::warn!(error = %e, "could not update the identity file");
            }
            tracing::info!("active again after draining for the last shutdown");
            return;
        }
        drop(core);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Leaders whose cluster session is gone, and the elections this node started for them.
#[derive(Default)]
pub(super) struct LostLeaders {
    /// Since when each node has had no session with this one.
    pub(super) since: HashMap<NodeId, Instant>,
    /// Groups this node stood for election in, and the leader they lost.
    pub(super) standing: HashMap<GroupId, NodeId>,
}

/// The leader this node may stand for election against: the group's leader when its
/// session is gone and this node has not stood against it yet. Once stood, never again
/// for the same leader, nor while the group has none (openraft's timers carry on).
pub(super) fn lost_leader(
    leader: Option<NodeId>,
    reachable: bool,
    stood_for: Option<NodeId>,
) -> Option<NodeId> {
    match leader {
        Some(l) if !reachable && stood_for != Some(l) => Some(l),
        _ => None,
    }
}
