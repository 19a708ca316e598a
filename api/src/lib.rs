//! Linkrift's HTTP layer (axum): redirects, the `/v1` REST API, health, readiness and
//! metrics. It talks to the cluster only through [`LinkService`].
//!
//! Every failure, whatever produced it, is answered with one JSON shape,
//! `{"error": {"code": "...", "message": "..."}}` ([`error::ApiError`]).

pub mod admin;
pub mod auth;
pub mod error;
pub mod json;
pub mod keys;
pub mod limits;
pub mod links;
pub mod openapi;
pub mod ops;
pub mod redirect;
pub mod stats;
pub mod stripes;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use linkrift_actors::service::LinkService;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::error::ApiError;

/// How the HTTP layer behaves.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Base of the short links this service hands out, e.g. `https://sho.rt`.
    pub public_url: String,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// `max-age` of redirect responses; 0 makes every click reach the service, so edits
    /// and takedowns apply at once.
    pub redirect_cache_seconds: u32,
    /// A header a trusted proxy sets to the client's country (e.g. `CF-IPCountry`).
    pub country_header: Option<axum::http::HeaderName>,
    /// Whether redirects are counted as clicks.
    pub click_capture: bool,
    /// If set, `/metrics` answers only requests presenting this key (its hash) as
    /// `Authorization: Bearer KEY`.
    pub metrics_key: Option<linkrift_actors::domain::ApiKeyHash>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            public_url: "http://127.0.0.1:8080".into(),
            max_body_bytes: 4 * 1024 * 1024,
            redirect_cache_seconds: 0,
            country_header: None,
            click_capture: true,
            metrics_key: None,
        }
    }
}

/// What every handler can reach: one shared allocation, so that the clone axum makes for
/// each request (and its drop) is one reference count, not one per part (the profile of
/// `bench/profile.sh` had 2–3 % of a redirect's CPU in cloning and dropping the parts).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// The state over `shared`.
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct Shared {
    /// The node's link service.
    pub service: Arc<LinkService>,
    /// HTTP settings.
    pub config: Arc<ApiConfig>,
    /// Renders the Prometheus exposition.
    pub metrics: PrometheusHandle,
    /// What the redirect handler prepares once.
    pub redirect: Arc<redirect::Prepared>,
    /// The API's rate limits.
    pub limits: Arc<limits::RateLimits>,
}

/// The whole HTTP API.
pub fn router(state: AppState) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/{code}", get(redirect::redirect))
        .route("/v1/links", post(links::create).get(links::list))
        .route("/v1/links/bulk", post(links::bulk))
        .route(
            "/v1/links/{code}",
            get(links::get).patch(links::update).delete(links::remove),
        )
        .route("/v1/links/{code}/stats", get(stats::stats))
        .route("/v1/links/{code}/clicks", get(stats::export))
        .route("/v1/keys", post(keys::create).get(keys::list))
        .route("/v1/keys/{id}", delete(keys::revoke))
        .route("/admin/status", get(admin::status))
        .route("/admin/shards/{shard}/replicas", get(admin::replicas))
        .route("/admin/nodes/{id}/drain", post(admin::drain))
        .route("/admin/nodes/{id}/leave", post(admin::leave))
        .route("/admin/nodes/{id}/cancel", post(admin::cancel))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/v1/openapi.json", get(openapi::document))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// The one middleware every request passes, outermost first: the rate limits, a body
/// announced over the limit refused before any of it is read (a body without a length is
/// cut off at the limit while it is read, by `DefaultBodyLimit`), and every request counted
/// by route template and status (`http_requests_total`, `http_request_duration_seconds`,
/// in [`stripes`]).
/// One layer, not three: each `from_fn` layer boxes the rest of the request's future, and
/// the three were about 12 % of a redirect's CPU in `bench/profile.sh`'s profile.
async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let response = match limits::check(&state, &request) {
        limits::Verdict::Refused(refused) => refused,
        verdict => {
            let announced = request
                .headers()
                .get(axum::http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let mut response =
                if announced.is_some_and(|len| len > state.config.max_body_bytes as u64) {
                    error::body_too_large(state.config.max_body_bytes).into_response()
                } else {
                    next.run(request).await
                };
            if let limits::Verdict::Allowed(allowed) = verdict {
                allowed.annotate(&mut response);
            }
            response
        }
    };
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    stripes::request(route, response.status().as_u16(), start.elapsed());
    response
}
