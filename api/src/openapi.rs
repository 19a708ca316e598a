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
    modifiers(&BearerKeys)
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

/// `GET /v1/openapi.json`.
pub async fn document() -> Response {
    axum::Json(ApiDoc::openapi()).into_response()
}
