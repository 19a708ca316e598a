//! `GET|HEAD /{code}`: the hot path. The link is read from this node's replica through a
//! lock-free handle (no actor round trip, no await on I/O), or from the near cache when
//! the shard is held elsewhere; only a near-cache miss waits, for a replica's answer.

use std::time::Instant;

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use linkrift_actors::service::{now_ms, Lookup};
use linkrift_actors::Seen;

use crate::error::ApiError;
use crate::{ApiConfig, AppState};

/// What the redirect handler prepares once rather than per request: its `Cache-Control`
/// value. (Its metrics are the thread's own, in [`crate::stripes`].)
pub struct Prepared {
    cache_control: HeaderValue,
}

impl Prepared {
    /// The values for `config`.
    pub fn new(config: &ApiConfig) -> Self {
        let cache = format!("private, max-age={}", config.redirect_cache_seconds);
        Self {
            cache_control: HeaderValue::from_str(&cache).expect("ascii"),
        }
    }
}

/// The code in a redirect's path (`/{code}`), borrowed; percent-decoded only when it has
/// a `%` (a valid code never needs one).
fn code_of(path: &str) -> Option<std::borrow::Cow<'_, str>> {
    let raw = path.strip_prefix('/')?;
    if !raw.contains('%') {
        return Some(raw.into());
    }
    percent_encoding::percent_decode_str(raw).decode_utf8().ok()
}

/// Redirects to the link's destination with its status code.
#[utoipa::path(get, path = "/{code}", params(("code" = String, Path)),
    responses((status = 302, description = "redirect (or 301, 307, 308 as the link says)"),
              (status = 404, body = crate::error::ErrorBody), (status = 410, body = crate::error::ErrorBody)))]
pub async fn redirect(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let start = Instant::now();
    let prepared = &state.redirect;
    let Some(code) = code_of(request.uri().path()) else {
        return ApiError::not_found("no such link").into_response();
    };
    let shard = state.service.shard_of(&code);
    // A hit is a redirect answered from this node's memory (its replica or the near
    // cache); a miss asks another node.
    let (found, hit) = match state.service.lookup_in(shard, &code) {
        Lookup::Local(link) | Lookup::Cached(link) => (link, true),
        Lookup::Miss => match state.service.fetch(&code).await {
            Ok(link) => (link, false),
            Err(e) => {
                crate::stripes::redirect(false, start.elapsed());
                return ApiError::from(e).into_response();
            }
        },
    };
    let response = match found {
        Some(link) if link.is_live(now_ms()) => {
            let status = StatusCode::from_u16(link.redirect.code()).unwrap_or(StatusCode::FOUND);
            match HeaderValue::from_str(link.url.as_str()) {
                Ok(location) => {
                    let mut response = status.into_response();
                    let headers = response.headers_mut();
                    headers.insert(header::LOCATION, location);
                    headers.insert(header::CACHE_CONTROL, prepared.cache_control.clone());
                    if state.config.click_capture {
                        let seen = request.headers();
                        let text = |name: &header::HeaderName| {
                            seen.get(name).and_then(|v| v.to_str().ok())
                        };
                        state.service.record_click(Seen {
                            code: &link.code,
                            shard,
                            at_ms: now_ms(),
                            ip: Some(peer.ip()),
                            user_agent: text(&header::USER_AGENT),
                            referer: text(&header::REFERER),
                            accept_language: text(&header::ACCEPT_LANGUAGE),
                            country: state.config.country_header.as_ref().and_then(text),
                        });
                    }
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
    crate::stripes::redirect(hit, start.elapsed());
    response
}
