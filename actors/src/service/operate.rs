//! What operators ask of a node: drain, leave (refused while it would lose a quorum, or
//! replicas no node can take), or cancel either.

use super::*;
use crate::cluster::membership::{quorum_lost, too_few_takers, Operation};
use crate::meta::NodeRecord;
use std::collections::HashSet;

impl LinkService {
    /// Drains, removes or reinstates node `id`, once it is safe: a leave that would drop a
    /// group below its quorum, or below the replication factor with no node to take the
    /// replicas (unless `force`), is refused with the reason.
    pub async fn operate(
        &self,
        id: NodeId,
        operation: Operation,
    ) -> Result<NodeRecord, ServiceError> {
        let core = &self.core;
        let Some(record) = core.cx.meta.directory.node(id) else {
            return Err(ServiceError::NotFound(format!("node {id}")));
        };
        let refuse = |why: String| Err(ServiceError::Refused(format!("node {id}: {why}")));
        let others_active: Vec<NodeId> = core
            .cx
            .meta
            .directory
            .active_nodes()
            .into_iter()
            .filter(|&n| n != id)
            .collect();
        let state = match operation {
            Operation::Cancel => {
                if !record.state.yields() {
                    return refuse(format!(
                        "it is {}, not draining or leaving",
                        record.state.name()
                    ));
                }
                NodeState::Active
            }
            Operation::Drain => {
                if record.state == NodeState::Active && others_active.is_empty() {
                    return refuse(
                        "it is the only active node; nothing would serve traffic".into(),
                    );
                }
                NodeState::Draining
            }
            Operation::Leave { force } => {
                if record.state != NodeState::Leaving {
                    self.check_leave(id, &others_active, force).await?;
                }
                NodeState::Leaving
            }
        };
        if let Err(why) = record.state.may_become(state) {
            return refuse(why.to_string());
        }
        let command = MetaCommand::SetNodeState {
            id,
            state,
            at: now_ms(),
        };
        match core.cx.meta.propose(command).await? {
            MetaOutcome::Node(record) => {
                tracing::info!(
                    node = id,
                    state = record.state.name(),
                    "node state changed by an operator"
                );
                Ok(record)
            }
            MetaOutcome::Refused(why) => refuse(why),
            MetaOutcome::NodeNotFound => Err(ServiceError::NotFound(format!("node {id}"))),
            other => Err(ServiceError::Internal(format!(
                "meta group answered {other:?}"
            ))),
        }
    }

    /// Refuses a leave of `id` that would lose a quorum, or replicas nobody can take.
    async fn check_leave(
        &self,
        id: NodeId,
        others_active: &[NodeId],
        force: bool,
    ) -> Result<(), ServiceError> {
        let core = &self.core;
        let refuse = |why: String| {
            Err(ServiceError::Refused(format!(
                "node {id} cannot leave: {why}"
            )))
        };
        let holders = core
            .cx
            .meta
            .directory
            .in_states(&[NodeState::Active, NodeState::Draining])
            .len();
        if let Some(why) = too_few_takers(
            others_active.len(),
            holders,
            core.cx.settings.replication_factor,
            force,
        ) {
            return refuse(why);
        }
        let status = self.status().await;
        let reachable: HashSet<NodeId> = status
            .nodes
            .iter()
            .filter(|n| n.reachable)
            .map(|n| n.id)
            .collect();
        let groups: Vec<(&str, &[NodeId])> = status
            .groups
            .iter()
            .map(|g| (g.name.as_str(), g.voters.as_slice()))
            .collect();
        match quorum_lost(id, &groups, &reachable) {
            Some(why) => refuse(why),
            None => Ok(()),
        }
    }
}
