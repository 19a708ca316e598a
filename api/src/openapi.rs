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
    modifiers(&BearerKeys, &RateLimited, &Errors, &Redirects, &OperationIds, &Links)
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

/// Every path's operations, with their method.
fn operations(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<Item = (&'static str, &mut utoipa::openapi::path::Operation)> {
    [
        ("get", &mut item.get),
        ("post", &mut item.post),
        ("put", &mut item.put),
        ("patch", &mut item.patch),
        ("delete", &mut item.delete),
    ]
    .into_iter()
    .filter_map(|(method, op)| Some((method, op.as_mut()?)))
}

/// A response in the error shape.
fn error_response(description: &str) -> utoipa::openapi::RefOr<utoipa::openapi::Response> {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
        .into()
}

/// The errors any `/v1` and `/admin` operation can answer, as `error.rs` and `json.rs`
/// make them: added to each operation that does not document its own.
struct Errors;

impl Modify for Errors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, schema) in [
            (
                "ErrorBody",
                <crate::error::ErrorBody as utoipa::PartialSchema>::schema(),
            ),
            (
                "ErrorDetail",
                <crate::error::ErrorDetail as utoipa::PartialSchema>::schema(),
            ),
        ] {
            components.schemas.entry(name.into()).or_insert(schema);
        }
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !(path.starts_with("/v1/") || path.starts_with("/admin/"))
                || path == "/v1/openapi.json"
            {
                continue;
            }
            for (_, op) in operations(item) {
                let mut errors = vec![
                    ("400", "a malformed request: a header, a parameter or the JSON syntax of the body"),
                    ("503", "the shard or the cluster's metadata has no leader for now, or a store is unreachable: retry after Retry-After"),
                ];
                if op.security.is_some() {
                    errors.push((
                        "401",
                        "no API key, or one this service does not know (WWW-Authenticate: Bearer)",
                    ));
                    errors.push(("403", "the key lacks the scope this needs"));
                }
                if op.request_body.is_some() {
                    errors.push(("413", "the body is larger than max_body_bytes"));
                    errors.push(("415", "the body is not sent as application/json"));
                    errors.push((
                        "422",
                        "the body's fields are missing, mistyped or break a rule",
                    ));
                }
                for (status, description) in errors {
                    op.responses
                        .responses
                        .entry(status.into())
                        .or_insert_with(|| error_response(description));
                }
            }
        }
    }
}

/// A redirect answers with the status its link has; `/{code}` of a shard whose leader is
/// away, 503.
struct Redirects;

impl Modify for Redirects {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::header::HeaderBuilder;
        use utoipa::openapi::{ObjectBuilder, ResponseBuilder, Type};
        let Some(op) = openapi
            .paths
            .paths
            .get_mut("/{code}")
            .and_then(|i| i.get.as_mut())
        else {
            return;
        };
        for status in ["301", "302", "307", "308"] {
            let redirect = ResponseBuilder::new()
                .description(
                    "to the link's destination, with the status the link has (302 unless set)",
                )
                .header(
                    "Location",
                    HeaderBuilder::new()
                        .schema(ObjectBuilder::new().schema_type(Type::String))
                        .description(Some("the destination"))
                        .build(),
                )
                .build();
            op.responses
                .responses
                .insert(status.into(), redirect.into());
        }
        op.responses
            .responses
            .entry("503".into())
            .or_insert_with(|| {
                error_response("the link's shard is held elsewhere and could not be asked: retry")
            });
    }
}

/// Operation ids that say what each does (the handlers' names repeat across modules).
struct OperationIds;

impl Modify for OperationIds {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            for (method, op) in operations(item) {
                let id = match (method, path.as_str()) {
                    ("get", "/{code}") => "redirect",
                    ("post", "/v1/links") => "createLink",
                    ("get", "/v1/links") => "listLinks",
                    ("post", "/v1/links/bulk") => "createLinks",
                    ("get", "/v1/links/{code}") => "getLink",
                    ("patch", "/v1/links/{code}") => "updateLink",
                    ("delete", "/v1/links/{code}") => "deleteLink",
                    ("get", "/v1/links/{code}/stats") => "linkStats",
                    ("get", "/v1/links/{code}/clicks") => "exportClicks",
                    ("post", "/v1/keys") => "createKey",
                    ("get", "/v1/keys") => "listKeys",
                    ("delete", "/v1/keys/{id}") => "revokeKey",
                    ("get", "/admin/status") => "clusterStatus",
                    ("post", "/admin/nodes/{id}/drain") => "drainNode",
                    ("post", "/admin/nodes/{id}/leave") => "leaveNode",
                    ("post", "/admin/nodes/{id}/cancel") => "cancelNode",
                    ("get", "/admin/shards/{shard}/replicas") => "shardReplicas",
                    ("get", "/healthz") => "healthz",
                    ("get", "/readyz") => "readyz",
                    ("get", "/metrics") => "metrics",
                    _ => continue,
                };
                op.operation_id = Some(id.into());
            }
        }
    }
}

/// How the answer of one operation feeds the next (for clients and for stateful testing):
/// a created link's code to reading, changing, deleting, following it and its clicks; a
/// created key's id to revoking it.
struct Links;

impl Modify for Links {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::link::LinkBuilder;
        let link = |operation: &str, parameter: &str, from: &str| {
            LinkBuilder::new()
                .operation_id(operation)
                .parameter(parameter, from)
                .build()
        };
        let code = "$response.body#/code";
        let created = [
            ("GetLink", link("getLink", "code", code)),
            ("UpdateLink", link("updateLink", "code", code)),
            ("DeleteLink", link("deleteLink", "code", code)),
            ("FollowLink", link("redirect", "code", code)),
            ("LinkStats", link("linkStats", "code", code)),
            ("ExportClicks", link("exportClicks", "code", code)),
        ];
        let paths = &mut openapi.paths.paths;
        for (path, method, status) in [
            ("/v1/links", "post", "201"),
            ("/v1/links/{code}", "get", "200"),
            ("/v1/links/{code}", "patch", "200"),
        ] {
            if let Some(response) = answer(paths, path, method, status) {
                for (name, link) in created.clone() {
                    response.links.insert(name.into(), link.into());
                }
            }
        }
        if let Some(response) = answer(paths, "/v1/keys", "post", "201") {
            response.links.insert(
                "RevokeKey".into(),
                link("revokeKey", "id", "$response.body#/id").into(),
            );
        }
    }
}

/// The response `status` of the `method` operation of `path`.
fn answer<'a>(
    paths: &'a mut std::collections::BTreeMap<String, utoipa::openapi::PathItem>,
    path: &str,
    method: &str,
    status: &str,
) -> Option<&'a mut utoipa::openapi::Response> {
    let item = paths.get_mut(path)?;
    let op = match method {
        "post" => item.post.as_mut(),
        "patch" => item.patch.as_mut(),
        _ => item.get.as_mut(),
    }?;
    match op.responses.responses.get_mut(status)? {
        utoipa::openapi::RefOr::T(response) => Some(response),
        utoipa::openapi::RefOr::Ref(_) => None,
    }
}

/// The document as served: utoipa's, with two things it writes wrong put right.
pub fn document_json() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the document encodes");
    let operations = doc
        .get_mut("paths")
        .and_then(|p| p.as_object_mut())
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(|item| item.as_object_mut())
        .flat_map(|item| item.values_mut());
    for op in operations {
        never_null_parameters(op);
        camel_case_links(op);
    }
    doc
}

/// A parameter in a path, query or header is text or absent, never JSON null (utoipa
/// makes every optional one nullable).
fn never_null_parameters(op: &mut serde_json::Value) {
    let Some(params) = op.get_mut("parameters").and_then(|p| p.as_array_mut()) else {
        return;
    };
    for kind in params
        .iter_mut()
        .filter_map(|p| p.pointer_mut("/schema/type"))
    {
        let kept: Vec<_> = kind
            .as_array()
            .into_iter()
            .flatten()
            .filter(|k| *k != "null")
            .cloned()
            .collect();
        if let [one] = kept.as_slice() {
            *kind = one.clone();
        }
    }
}

/// Link objects spell their fields in camel case (utoipa 5.5 writes the Rust names).
fn camel_case_links(op: &mut serde_json::Value) {
    let links = op
        .get_mut("responses")
        .and_then(|r| r.as_object_mut())
        .into_iter()
        .flat_map(|r| r.values_mut())
        .filter_map(|response| response.get_mut("links")?.as_object_mut())
        .flat_map(|links| links.values_mut())
        .filter_map(|link| link.as_object_mut());
    for link in links {
        for (rust, openapi) in [
            ("operation_id", "operationId"),
            ("operation_ref", "operationRef"),
            ("request_body", "requestBody"),
        ] {
            if let Some(value) = link.remove(rust) {
                link.insert(openapi.into(), value);
            }
        }
    }
}

/// `GET /v1/openapi.json`.
pub async fn document() -> Response {
    axum::Json(document_json()).into_response()
}
