//! `/v1/keys`: API keys, admin only. A new key is shown once, in the create response.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use linkrift_actors::domain::{ApiKeyRecord, Invalid, Scope};
use serde::{Deserialize, Serialize};

use crate::auth::authorize;
use crate::error::ApiError;
use crate::json::Json;
use crate::AppState;

/// Body of `POST /v1/keys`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyBody {
    /// What the key is for: 1 to 200 characters, not all white space.
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    name: String,
    /// What it may do (admin grants everything).
    #[schema(schema_with = scopes_schema)]
    scopes: Vec<String>,
}

/// One or more of the scope names.
fn scopes_schema() -> utoipa::openapi::Array {
    utoipa::openapi::ArrayBuilder::new()
        .items(
            utoipa::openapi::ObjectBuilder::new()
                .schema_type(utoipa::openapi::Type::String)
                .enum_values(Some(["admin", "links:write", "links:read"])),
        )
        .min_items(Some(1))
        .build()
}

/// The answer of `POST /v1/keys`: the record, and the key itself, shown this once.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    record: KeyView,
    /// The key in clear text: store it now, it is never shown again.
    key: String,
}

/// The answer of `GET /v1/keys`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct KeyList {
    keys: Vec<KeyView>,
}

/// A key as listed (never the key itself).
#[derive(Serialize, utoipa::ToSchema)]
pub struct KeyView {
    id: String,
    name: String,
    #[schema(value_type = Vec<String>)]
    scopes: Vec<Scope>,
    created_at: i64,
    revoked_at: Option<i64>,
}

impl From<ApiKeyRecord> for KeyView {
    fn from(r: ApiKeyRecord) -> Self {
        Self {
            id: r.id,
            name: r.name,
            scopes: r.scopes,
            created_at: r.created_at,
            revoked_at: r.revoked_at,
        }
    }
}

/// `POST /v1/keys`: makes a key; the response carries it in clear text, once.
#[utoipa::path(post, path = "/v1/keys", request_body = CreateKeyBody, security(("api_key" = [])),
    responses((status = 201, description = "the key record plus `key`, shown once", body = CreatedKey)))]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<CreateKeyBody>,
) -> Result<Response, ApiError> {
    authorize(&headers, &state.service, Scope::Admin)?;
    if body.name.trim().is_empty() || body.name.chars().count() > 200 {
        return Err(Invalid {
            field: "name",
            message: "must be 1 to 200 characters".into(),
        }
        .into());
    }
    if body.scopes.is_empty() {
        return Err(Invalid {
            field: "scopes",
            message: "name at least one of admin, links:write, links:read".into(),
        }
        .into());
    }
    let mut scopes = body
        .scopes
        .iter()
        .map(|s| Scope::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    scopes.sort();
    scopes.dedup();
    let (key, record) = state.service.create_key(body.name, scopes).await?;
    let created = CreatedKey {
        record: KeyView::from(record),
        key: key.reveal().to_string(),
    };
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

/// `GET /v1/keys`: every key, without secrets.
#[utoipa::path(get, path = "/v1/keys", security(("api_key" = [])), responses((status = 200, body = KeyList)))]
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&headers, &state.service, Scope::Admin)?;
    let keys: Vec<KeyView> = state
        .service
        .keys()
        .into_iter()
        .map(KeyView::from)
        .collect();
    Ok(axum::Json(KeyList { keys }).into_response())
}

/// `DELETE /v1/keys/{id}`: revokes a key at once.
#[utoipa::path(delete, path = "/v1/keys/{id}", security(("api_key" = [])), params(("id" = String, Path)),
    responses((status = 200, body = KeyView), (status = 404, body = crate::error::ErrorBody)))]
pub async fn revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&headers, &state.service, Scope::Admin)?;
    let record = state.service.revoke_key(&id).await?;
    Ok(axum::Json(KeyView::from(record)).into_response())
}
