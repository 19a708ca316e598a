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
    let key =
        value.to_str().ok().and_then(bearer_token).ok_or_else(|| {
            ApiError::unauthorized("the Authorization header must be 'Bearer KEY'")
        })?;
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

/// The key of a request's `Authorization: Bearer KEY` header, if it has one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()
        .and_then(bearer_token)
}

/// The token of a `Bearer` credential; the scheme is case-insensitive (RFC 9110, 11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in ["Bearer k1", "bearer k1", "BEARER  k1 ", " Bearer k1"] {
            assert_eq!(bearer_token(value), Some("k1"), "{value:?}");
        }
        for value in ["Basic k1", "Bearer", "Bearer   ", "Bearerk1", ""] {
            assert_eq!(bearer_token(value), None, "{value:?}");
        }
    }
}
