//! `GET|HEAD /{code}`: the hot path. The link is read from this node's replica through a
//! lock-free handle: no actor round trip, no await on I/O.

use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use linkrift_actors::service::now_ms;

use crate::error::ApiError;
use crate::AppState;

/// Redirects to the link's destination with its status code.
#[utoipa::path(get, path = "/{code}", params(("code" = String, Path)),
    responses((status = 302, description = "redirect (or 301, 307, 308 as the link says)"),
              (status = 404, body = crate::error::ErrorBody), (status = 410, body = crate::error::ErrorBody)))]
pub async fn redirect(State(state): State<AppState>, Path(code): Path<String>) -> Response {
    let start = Instant::now();
    let found = state.service.lookup(&code);
    // Every lookup is answered from memory on this node (its replica of the shard); the
    // near cache for shards held elsewhere counts here too once the cluster has one.
    metrics::counter!("cache_requests_total").increment(1);
    if found.is_some() {
        metrics::counter!("cache_hits_total").increment(1);
    }
    let response = match found {
        Some(link) if link.is_live(now_ms()) => {
            let status = StatusCode::from_u16(link.redirect.code()).unwrap_or(StatusCode::FOUND);
            match HeaderValue::from_str(link.url.as_str()) {
                Ok(location) => {
                    let cache = format!("private, max-age={}", state.config.redirect_cache_seconds);
                    let mut response = status.into_response();
                    let headers = response.headers_mut();
                    headers.insert(header::LOCATION, location);
                    headers.insert(
                        header::CACHE_CONTROL,
                        HeaderValue::from_str(&cache).expect("ascii"),
                    );
                    response
                }
                Err(_) => ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "unusable destination",
                )
                .into_response(),
            }
        }
        Some(link) if link.archived => ApiError::new(
            StatusCode::GONE,
            "archived",
            format!("link {code:?} has been archived"),
        )
        .into_response(),
        Some(_) => ApiError::new(
            StatusCode::GONE,
            "expired",
            format!("link {code:?} has expired"),
        )
        .into_response(),
        None => ApiError::not_found(format!("no link {code:?}")).into_response(),
    };
    metrics::histogram!("redirect_duration_seconds").record(start.elapsed());
    response
}
