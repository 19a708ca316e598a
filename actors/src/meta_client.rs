//! The meta client: proposing to the meta group from any node (here when this node
//! leads it, else through the leader), and this node's record in it.

use std::time::{Duration, Instant};

use linkrift_raft::{Group, GroupError, NodeId};

use crate::cluster::peers::{Peers, CALL_TIMEOUT};
use crate::cluster::wire::{Refusal, Reply, Request};
use crate::errors::ServiceError;
use crate::groups::{Command, GroupState, Outcome};
use crate::meta::{MetaCommand, MetaOutcome, MetaReader, NodeState};

/// A handle on the meta group from this node: its replica, its directory, and the peers
/// to reach its leader through.
#[derive(Clone)]
pub(crate) struct MetaClient {
    pub(crate) me: NodeId,
    /// This node's replica of the meta group.
    pub(crate) group: Group<GroupState>,
    /// The cluster's directory, as this replica has applied it.
    pub(crate) directory: MetaReader,
    peers: std::sync::Arc<Peers>,
    write_timeout: Duration,
}

impl MetaClient {
    pub(crate) fn new(
        me: NodeId,
        group: Group<GroupState>,
        directory: MetaReader,
        peers: std::sync::Arc<Peers>,
        write_timeout: Duration,
    ) -> Self {
        Self {
            me,
            group,
            directory,
            peers,
            write_timeout,
        }
    }

    /// This node's state, as its copy of the meta group records it.
    pub(crate) fn my_state(&self) -> Option<NodeState> {
        self.directory.node(self.me).map(|n| n.state)
    }

    /// Whether this node is draining or leaving: it gives up its leaderships.
    pub(crate) fn is_yielding(&self) -> bool {
        self.my_state().is_some_and(NodeState::yields)
    }

    /// Whether this node leads `group` only to hand it over: it takes no new writes.
    pub(crate) fn is_handing_over(&self, group: &Group<GroupState>) -> bool {
        self.is_yielding()
            && group.is_leader()
            && group.read(|a| a.membership.membership().voter_ids().any(|v| v != self.me))
    }

    /// Runs `attempt` until it succeeds, fails for good, or the write timeout passes,
    /// waiting for the meta group's state to change between retryable failures.
    pub(crate) async fn until_led<T, F, Fut>(&self, mut attempt: F) -> Result<T, ServiceError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, GroupError>>,
    {
        let deadline = Instant::now() + self.write_timeout;
        let mut metrics = self.group.raft().metrics();
        loop {
            match attempt().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero()
                        || tokio::time::timeout(left, metrics.changed()).await.is_err()
                    {
                        return Err(ServiceError::Unavailable(format!(
                            "the meta group has no leader here: {e}"
                        )));
                    }
                }
                Err(e) => return Err(ServiceError::Internal(e.to_string())),
            }
        }
    }

    /// Proposes `command` to the meta group; this node must lead it.
    pub(crate) async fn propose_as_leader(
        &self,
        command: MetaCommand,
    ) -> Result<MetaOutcome, ServiceError> {
        if self.is_handing_over(&self.group) {
            return Err(ServiceError::Unavailable(
                "this node is handing over the meta group's leadership".into(),
            ));
        }
        let outcome = self
            .until_led(|| self.group.write(Command::Meta(command.clone())))
            .await?;
        match outcome {
            Outcome::Meta(o) => Ok(o),
            other => Err(ServiceError::Internal(format!(
                "meta group answered {other:?}"
            ))),
        }
    }

    /// Proposes `command` to the meta group, through its leader wherever it is.
    pub(crate) async fn propose(&self, command: MetaCommand) -> Result<MetaOutcome, ServiceError> {
        let deadline = Instant::now() + self.write_timeout;
        loop {
            match self.group.leader() {
                // No leader known here (after a restart on a new peer address, the leader
                // cannot reach this node until the change is recorded): any other member
                // forwards to the leader it knows.
                None => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let ask = Request::Meta(command.clone());
                    match self.peers.call_any(&ask, left.min(CALL_TIMEOUT * 2)).await {
                        Ok(Reply::Meta(outcome)) => return Ok(outcome),
                        Ok(Reply::Refused(Refusal::Failed(e))) => {
                            return Err(ServiceError::Internal(e))
                        }
                        other => {
                            tracing::debug!(answer = ?other, "a meta proposal through any member failed")
                        }
                    }
                }
                Some(leader) if leader == self.me && !self.is_handing_over(&self.group) => {
                    return self.propose_as_leader(command).await
                }
                Some(leader) if leader == self.me => {}
                Some(leader) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match self
                        .peers
                        .call(leader, &Request::Meta(command.clone()), left)
                        .await
                    {
                        Ok(Reply::Meta(outcome)) => return Ok(outcome),
                        Ok(Reply::Refused(Refusal::Failed(e))) => {
                            return Err(ServiceError::Internal(e))
                        }
                        other => {
                            tracing::debug!(leader, answer = ?other, "a meta proposal through the leader failed")
                        }
                    }
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ServiceError::Unavailable(
                    "the meta group's leader cannot be reached".into(),
                ));
            }
            let mut metrics = self.group.raft().metrics();
            let _ =
                tokio::time::timeout(left.min(Duration::from_millis(100)), metrics.changed()).await;
        }
    }

    /// Sends `request` to the meta leader when it is another node.
    pub(crate) async fn to_leader(&self, request: &Request, timeout: Duration) -> Reply {
        match self.group.leader() {
            Some(leader) if leader != self.me => self
                .peers
                .call(leader, request, timeout)
                .await
                .unwrap_or_else(|e| Reply::Refused(Refusal::Unavailable(e.to_string()))),
            _ => Reply::Refused(Refusal::Unavailable("the meta group has no leader".into())),
        }
    }
}
