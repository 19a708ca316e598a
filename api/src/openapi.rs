//! The OpenAPI document of the HTTP API, served at `/v1/openapi.json`, generated from the
//! handlers' own annotations so it cannot drift from the routes.

use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::{admin, keys, links, ops, redirect, stats};

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "Linkrift", description = "A clustered URL shortener."),
    paths(
        redirect::redirect,
        links::create, links::list, links::bulk, links::get, links::update, links::remove,
        stats::stats,
        stats::export,
        keys::create, keys::list, keys::revoke,
        admin::status, admin::drain, admin::leave, admin::cancel, admin::replicas,
        ops::healthz, ops::readyz, ops::metrics,
    ),
    modifiers(&BearerKeys, &RateLimited)
)]
pub struct ApiDoc;

struct BearerKeys;

impl Modify for BearerKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("lr_...")
                    .build(),
            ),
        );
    }
}

/// Every `/v1` and `/admin` operation may be answered 429 (`limits.rs`), and redirects
/// when `redirect_rate_per_ip` is set.
struct RateLimited;

impl Modify for RateLimited {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::header::HeaderBuilder;
        use utoipa::openapi::{ObjectBuilder, ResponseBuilder, Type};
        let text = |description: &str| {
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::String))
                .description(Some(description))
                .build()
        };
        let limited = ResponseBuilder::new()
            .description("Over the rate limit of the key, or of the client's address for requests without a known key")
            .header("Retry-After", text("seconds to wait"))
            .header("RateLimit", text("what remains, e.g. \"per-key\";r=0;t=2"))
            .header("RateLimit-Policy", text("the quota over its window, e.g. \"per-key\";q=1000;w=5"))
            .build();
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !(path.starts_with("/v1/") || path.starts_with("/admin/") || path == "/{code}") {
                continue;
            }
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                operation
                    .responses
                    .responses
                    .insert("429".into(), limited.clone().into());
            }
        }
    }
}

/// `GET /v1/openapi.json`.
pub async fn document() -> Response {
    axum::Json(ApiDoc::openapi()).into_response()
}
