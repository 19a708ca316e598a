//! `/admin`: cluster operations, for keys with the `admin` scope.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use linkrift_actors::domain::Scope;
use linkrift_actors::meta::NodeRecord;
use linkrift_actors::Operation;
use serde::{Deserialize, Serialize};

use crate::auth::authorize;
use crate::error::ApiError;
use crate::AppState;

/// `GET /admin/status`: nodes, each group's leader and members, under-replicated groups.
#[utoipa::path(get, path = "/admin/status", security(("api_key" = [])),
    responses((status = 200, description = "the cluster status (see `linkrift cluster status --json`)"),
              (status = 403, body = crate::error::ErrorBody)))]
pub async fn status(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&headers, &state.service, Scope::Admin)?;
    Ok(axum::Json(state.service.status().await).into_response())
}

/// `GET /admin/shards/{shard}/replicas`: every replica of the shard with its applied log
/// index, link count and a digest of its links: replicas at the same index must agree.
#[utoipa::path(get, path = "/admin/shards/{shard}/replicas", security(("api_key" = [])),
    params(("shard" = u32, Path, description = "shard number")),
    responses((status = 200, description = "`[{node, voter, applied, links, digest}]`"),
              (status = 404, body = crate::error::ErrorBody)))]
pub async fn replicas(
    State(state): State<AppState>,
    Path(shard): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&headers, &state.service, Scope::Admin)?;
    // A path that is not a shard number names no shard.
    let shard: u32 = shard
        .parse()
        .map_err(|_| ApiError::not_found(format!("no shard {shard:?}")))?;
    let digests = state.service.replica_digests(shard).await?;
    Ok(axum::Json(digests).into_response())
}

/// Options of a leave.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LeaveOptions {
    /// Leave even if the shards must run with fewer replicas than the replication factor
    /// (never below a quorum).
    #[serde(default)]
    pub force: bool,
}

/// A node's record after an operation.
#[derive(Serialize, utoipa::ToSchema)]
pub struct NodeAnswer {
    /// The node.
    pub id: u64,
    /// Its state now: `draining`, `leaving` or `active`.
    pub state: String,
    /// When it entered that state, Unix milliseconds.
    pub state_since: i64,
}

impl From<NodeRecord> for NodeAnswer {
    fn from(r: NodeRecord) -> Self {
        Self {
            id: r.id,
            state: r.state.name().into(),
            state_since: r.state_since,
        }
    }
}

async fn operate(
    state: &AppState,
    headers: &HeaderMap,
    id: String,
    operation: Operation,
) -> Result<Response, ApiError> {
    authorize(headers, &state.service, Scope::Admin)?;
    // A path that is not a node id names no node.
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::not_found(format!("no node {id:?}")))?;
    let record = state.service.operate(id, operation).await?;
    Ok(axum::Json(NodeAnswer::from(record)).into_response())
}

/// `POST /admin/nodes/{id}/drain`: the node hands over its leaderships, takes no new
/// replicas and answers `/readyz` with 503.
#[utoipa::path(post, path = "/admin/nodes/{id}/drain", security(("api_key" = [])),
    params(("id" = u64, Path, description = "node id")),
    responses((status = 200, body = NodeAnswer),
              (status = 404, body = crate::error::ErrorBody),
              (status = 409, description = "refused, with the reason", body = crate::error::ErrorBody)))]
pub async fn drain(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    operate(&state, &headers, id, Operation::Drain).await
}

/// `POST /admin/nodes/{id}/leave`: the node drains, its replicas move to other nodes, and
/// it is removed once it holds none. Refused if it would lose a quorum, or replicas that no
/// other node can take (unless `force`).
#[utoipa::path(post, path = "/admin/nodes/{id}/leave", security(("api_key" = [])),
    params(("id" = u64, Path, description = "node id"), LeaveOptions),
    responses((status = 200, body = NodeAnswer),
              (status = 404, body = crate::error::ErrorBody),
              (status = 409, description = "refused, with the reason", body = crate::error::ErrorBody)))]
pub async fn leave(
    State(state): State<AppState>,
    Path(id): Path<String>,
    options: Result<Query<LeaveOptions>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(options) = options.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let operation = Operation::Leave {
        force: options.force,
    };
    operate(&state, &headers, id, operation).await
}

/// `POST /admin/nodes/{id}/cancel`: stops a drain or a leave; the node is active again.
#[utoipa::path(post, path = "/admin/nodes/{id}/cancel", security(("api_key" = [])),
    params(("id" = u64, Path, description = "node id")),
    responses((status = 200, body = NodeAnswer),
              (status = 404, body = crate::error::ErrorBody),
              (status = 409, description = "refused, with the reason", body = crate::error::ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    operate(&state, &headers, id, Operation::Cancel).await
}
