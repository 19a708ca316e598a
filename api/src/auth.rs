//! API keys on requests: `Authorization: Bearer KEY`, checked against stored hashes.

use axum::http::{header, HeaderMap};
use linkrift_actors::domain::{ApiKeyRecord, Scope};
use linkrift_actors::service::LinkService;

use crate::error::ApiError;

/// The key presenting a request, if it grants `scope`.
pub fn authorize(
    headers: &HeaderMap,
    service: &LinkService,
    scope: Scope,
) -> Result<ApiKeyRecord, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("send an API key as 'Authorization: Bearer KEY'"))?;
    let key = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| ApiError::unauthorized("the Authorization header must be 'Bearer KEY'"))?;
    let record = service
        .authenticate(key)
        .ok_or_else(|| ApiError::unauthorized("unknown API key"))?;
    if record.revoked_at.is_some() {
        return Err(ApiError::unauthorized(format!(
            "API key {} has been revoked",
            record.id
        )));
    }
    if !record.grants(scope) {
        let wanted = serde_json::to_string(&scope).unwrap_or_default();
        return Err(ApiError::forbidden(format!(
            "API key {} lacks the {wanted} scope",
            record.id
        )));
    }
    Ok(record)
}
