//! `/admin`: cluster operations, for keys with the `admin` scope.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use linkrift_actors::domain::Scope;

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
