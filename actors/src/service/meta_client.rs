//! The meta client: proposing to the meta group from any node (here when this node
//! leads it, else through the leader).

use super::*;

impl Core {
    pub(super) async fn until_meta_led<T, F, Fut>(&self, mut attempt: F) -> Result<T, ServiceError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, GroupError>>,
    {
        let deadline = Instant::now() + self.write_timeout;
        let mut metrics = self.meta.raft().metrics();
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
    pub(crate) async fn meta_command(
        &self,
        command: MetaCommand,
    ) -> Result<MetaOutcome, ServiceError> {
        if self.is_handing_over(&self.meta) {
            return Err(ServiceError::Unavailable(
                "this node is handing over the meta group's leadership".into(),
            ));
        }
        let outcome = self
            .until_meta_led(|| self.meta.write(Command::Meta(command.clone())))
            .await?;
        match outcome {
            Outcome::Meta(o) => Ok(o),
            other => Err(ServiceError::Internal(format!(
                "meta group answered {other:?}"
            ))),
        }
    }

    /// Proposes `command` to the meta group, through its leader wherever it is.
    pub(crate) async fn propose_meta(
        &self,
        command: MetaCommand,
    ) -> Result<MetaOutcome, ServiceError> {
        let core = self;
        let deadline = Instant::now() + core.write_timeout;
        loop {
            match core.meta.leader() {
                // No leader known here (after a restart on a new peer address, the leader
                // cannot reach this node until the change is recorded): any other member
                // forwards to the leader it knows.
                None => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let ask = Request::Meta(command.clone());
                    match core.peers.call_any(&ask, left.min(CALL_TIMEOUT * 2)).await {
                        Ok(Reply::Meta(outcome)) => return Ok(outcome),
                        Ok(Reply::Refused(Refusal::Failed(e))) => {
                            return Err(ServiceError::Internal(e))
                        }
                        other => {
                            tracing::debug!(answer = ?other, "a meta proposal through any member failed")
                        }
                    }
                }
                Some(leader) if leader == core.me && !core.is_handing_over(&core.meta) => {
                    return core.meta_command(command).await
                }
                Some(leader) if leader == core.me => {}
                Some(leader) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match core
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
            let mut metrics = core.meta.raft().metrics();
            let _ =
                tokio::time::timeout(left.min(Duration::from_millis(100)), metrics.changed()).await;
        }
    }

    /// Sends `request` to the meta leader when it is another node.
    pub(super) async fn to_meta_leader(&self, request: &Request, timeout: Duration) -> Reply {
        match self.meta.leader() {
            Some(leader) if leader != self.me => self
                .peers
                .call(leader, request, timeout)
                .await
                .unwrap_or_else(|e| Reply::Refused(Refusal::Unavailable(e.to_string()))),
            _ => Reply::Refused(Refusal::Unavailable("the meta group has no leader".into())),
        }
    }
}
