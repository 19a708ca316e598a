//! Health, readiness and the Prometheus exposition.

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use linkrift_actors::domain::ApiKeyHash;

use crate::error::ApiError;
use crate::AppState;

/// Always 200 while the process serves HTTP.
#[utoipa::path(get, path = "/healthz", responses((status = 200)))]
pub async fn healthz() -> Response {
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

/// 200 once every group on this node has a leader; 503 before.
#[utoipa::path(get, path = "/readyz", responses((status = 200), (status = 503, body = crate::error::ErrorBody)))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    match state.service.readiness() {
        Ok(()) => axum::Json(serde_json::json!({"status": "ready"})).into_response(),
        Err(why) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            why.to_string(),
        )
        .into_response(),
    }
}

/// The Prometheus text exposition, with Raft figures refreshed per scrape. With
/// `metrics_key` set, only for requests presenting it as `Authorization: Bearer KEY`.
#[utoipa::path(get, path = "/metrics", responses(
    (status = 200, content_type = "text/plain"),
    (status = 401, description = "metrics_key is set and the request does not present it", body = crate::error::ErrorBody),
))]
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(want) = &state.config.metrics_key {
        let presented = crate::auth::bearer(&headers).map(ApiKeyHash::of);
        if presented.as_ref() != Some(want) {
            return ApiError::unauthorized(
                "this node's metrics need its metrics_key as 'Authorization: Bearer KEY'",
            )
            .into_response();
        }
    }
    let mut leaderless = 0u64;
    for (group, m) in state.service.raft_metrics() {
        let group = group.0.to_string();
        let leader = m.current_leader == Some(m.id);
        metrics::gauge!("raft_is_leader", "group" => group.clone()).set(if leader {
            1.0
        } else {
            0.0
        });
        metrics::gauge!("raft_term", "group" => group.clone()).set(m.current_term as f64);
        metrics::gauge!("raft_last_log_index", "group" => group.clone())
            .set(m.last_log_index.unwrap_or(0) as f64);
        metrics::gauge!("raft_last_applied_index", "group" => group.clone())
            .set(m.last_applied.map_or(0, |l| l.index) as f64);
        if m.current_leader.is_none() {
            leaderless += 1;
        }
    }
    metrics::gauge!("raft_leaderless_groups").set(leaderless as f64);
    let (requests, flushes) = state.service.flush_counts();
    metrics::counter!("raft_log_flush_requests_total").absolute(requests);
    metrics::counter!("raft_log_flushes_total").absolute(flushes);
    metrics::gauge!("links_total").set(state.service.link_count() as f64);
    for (node_state, count) in state.service.node_states() {
        metrics::gauge!("cluster_nodes", "state" => node_state).set(count as f64);
    }
    metrics::gauge!("replica_moves_led").set(state.service.moves_led() as f64);
    metrics::gauge!("raft_under_replicated_groups")
        .set(state.service.under_replicated_led() as f64);
    let mut text = state.metrics.render();
    crate::stripes::render(&mut text);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
