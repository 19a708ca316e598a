//! The public API of [`LinkService`] for clicks: recording one (never waiting on the
//! request path), and the summaries from the embedded roll-ups or ClickHouse.

use super::*;

impl LinkService {
    /// Hands a redirect's click to the click thread, without waiting (`seen.shard` is the
    /// code's, from [`LinkService::shard_of`]).
    pub fn record_click(&self, seen: crate::clicks::event::Seen<'_>) {
        self.core.clicks.record(seen);
    }

    /// The clicks of `code` from `from_ms` to `to_ms`: from ClickHouse, or every node's
    /// roll-ups added up. A node that does not answer, or ClickHouse down, is named in the
    /// error: stats are exact or refused.
    pub async fn click_summary(
        &self,
        code: &str,
        from_ms: i64,
        to_ms: i64,
        bots: crate::clicks::rollup::Bots,
    ) -> Result<crate::clicks::Summary, ServiceError> {
        let core = &self.core;
        if let Some(store) = &core.clickhouse {
            return store
                .summary(code, from_ms, to_ms, bots)
                .await
                .map_err(|e| ServiceError::Unavailable(e.to_string()));
        }
        let mut tally = core
            .rollups
            .tally_off_runtime(code.to_string(), from_ms, to_ms, bots)
            .await
            .map_err(|e| ServiceError::Internal(format!("click store: {e}")))?;
        let others: Vec<NodeId> = core
            .cx
            .meta
            .directory
            .in_states(&[NodeState::Active, NodeState::Draining, NodeState::Leaving])
            .into_iter()
            .filter(|&n| n != core.cx.settings.me)
            .collect();
        let request = Request::ClickTally {
            code: code.to_string(),
            from_ms,
            to_ms,
            bots,
        };
        let asks = others.iter().map(|&n| {
            let request = &request;
            async move { (n, core.cx.peers.call(n, request, CALL_TIMEOUT).await) }
        });
        for (node, answer) in futures::future::join_all(asks).await {
            match answer {
                Ok(Reply::Tally(t)) => tally.merge(t),
                other => {
                    return Err(ServiceError::Unavailable(format!(
                        "node {node} did not give its clicks: {other:?}"
                    )))
                }
            }
        }
        Ok(tally.into())
    }

    /// The ClickHouse click store, when one is configured.
    pub fn clickhouse(&self) -> Option<&crate::clicks::clickhouse::ClickHouse> {
        self.core.clickhouse.as_ref()
    }
}
