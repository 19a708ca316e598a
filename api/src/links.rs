//! `/v1/links`: create, read, change, delete, list and bulk-create links.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use linkrift_actors::domain::{
    DestinationUrl, Invalid, Link, LinkPatch, RedirectStatus, Scope, ShortCode, Tag, Title,
    UrlPolicy,
};
use linkrift_actors::service::LinkSpec;
use linkrift_actors::shard::RequestId;
use serde::{Deserialize, Deserializer, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::auth::authorize;
use crate::error::ApiError;
use crate::json::Json;
use crate::AppState;

/// Most links in one bulk request.
pub const MAX_BULK: usize = 1000;
/// Largest page of a listing.
pub const MAX_PAGE: usize = 1000;

/// A link as the API shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct LinkView {
    code: String,
    short_url: String,
    url: String,
    title: Option<String>,
    tags: Vec<String>,
    created_at: String,
    updated_at: String,
    expires_at: Option<String>,
    redirect_status: u16,
    archived: bool,
    version: u64,
}

/// `ms` (Unix milliseconds) as an RFC 3339 time, UTC.
pub(crate) fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// An RFC 3339 time in Unix milliseconds, or why `field` is not one.
pub(crate) fn parse_time(field: &'static str, s: &str) -> Result<i64, Invalid> {
    let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|_| Invalid {
        field,
        message: format!("{s:?} is not an RFC 3339 time like 2030-01-31T12:00:00Z"),
    })?;
    Ok((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

impl LinkView {
    fn of(link: &Link, state: &AppState) -> Self {
        Self {
            code: link.code.to_string(),
            short_url: format!(
                "{}/{}",
                state.config.public_url.trim_end_matches('/'),
                link.code
            ),
            url: link.url.to_string(),
            title: link.title.as_ref().map(|t| t.as_str().to_string()),
            tags: link.tags.iter().map(|t| t.as_str().to_string()).collect(),
            created_at: rfc3339(link.created_at),
            updated_at: rfc3339(link.updated_at),
            expires_at: link.expires_at.map(rfc3339),
            redirect_status: link.redirect.code(),
            archived: link.archived,
            version: link.version,
        }
    }
}

/// One link answered with its version as `ETag`.
fn link_response(status: StatusCode, link: &Link, state: &AppState) -> Response {
    let mut response = (status, axum::Json(LinkView::of(link, state))).into_response();
    let etag = HeaderValue::from_str(&format!("\"{}\"", link.version)).expect("ascii");
    response.headers_mut().insert(header::ETAG, etag);
    response
}

/// The body of `POST /v1/links` (and of each bulk item).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    /// The destination: an http(s) URL with a host, not this service's own.
    #[schema(schema_with = url_schema)]
    url: String,
    /// A custom code; generated when absent.
    #[schema(schema_with = code_schema)]
    code: Option<String>,
    #[schema(schema_with = title_schema)]
    title: Option<String>,
    #[serde(default)]
    #[schema(schema_with = tags_schema)]
    tags: Vec<String>,
    /// When the link stops redirecting (then 410).
    #[schema(format = DateTime)]
    expires_at: Option<String>,
    #[schema(schema_with = redirect_status_schema)]
    redirect_status: Option<u16>,
}

/// Destinations the document promises to take: http(s), a host name of dotted labels of
/// letters, digits, `-` and `_` whose last starts with a letter (or an IPv4 address), a port, then a path, query and fragment of
/// characters a URL carries as they are. The service takes more (any host the URL
/// standard parses, characters it percent-encodes); this is the part clients can count on.
pub const URL_PATTERN: &str = "^https?://(((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])|([A-Za-z0-9_-]{1,63}\\.)*[A-Za-z_-][A-Za-z0-9_-]{0,62}\\.?)(:[1-9][0-9]{0,3})?(/[A-Za-z0-9._~!$&'()*+,;=:@/-]*)?(\\?[A-Za-z0-9._~!$&'()*+,;=:@/?-]*)?(#[A-Za-z0-9._~!$&'()*+,;=:@/?-]*)?$";
/// Short codes: `ShortCode::parse` (and not a reserved word such as `admin`).
pub const CODE_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";
/// Titles: no control characters (`char::is_control`: U+0000-U+001F, U+007F-U+009F).
pub const TITLE_PATTERN: &str = "^[^\\x00-\\x1f\\x7f-\\x9f]*$";
/// Tags: `Tag::parse`.
pub const TAG_PATTERN: &str = "^[A-Za-z0-9_.:-]{1,64}$";

/// A string of `pattern`, at most `max` characters; or also null.
fn string(pattern: &str, max: usize, nullable: bool) -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{SchemaType, Type};
    let kind = if nullable {
        SchemaType::from_iter([Type::String, Type::Null])
    } else {
        SchemaType::new(Type::String)
    };
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(kind)
        .pattern(Some(pattern))
        .max_length(Some(max))
        .build()
}

fn url_schema() -> utoipa::openapi::Object {
    string(URL_PATTERN, DestinationUrl::MAX_LEN, false)
}

fn nullable_url_schema() -> utoipa::openapi::Object {
    string(URL_PATTERN, DestinationUrl::MAX_LEN, true)
}

fn code_schema() -> utoipa::openapi::Object {
    string(CODE_PATTERN, ShortCode::MAX_LEN, true)
}

fn title_schema() -> utoipa::openapi::Object {
    string(TITLE_PATTERN, 512, true)
}

/// At most 20 tags of `TAG_PATTERN` (duplicates count, then are dropped).
fn tags_schema() -> utoipa::openapi::Array {
    utoipa::openapi::ArrayBuilder::new()
        .items(
            utoipa::openapi::ObjectBuilder::new()
                .schema_type(utoipa::openapi::Type::String)
                .pattern(Some(TAG_PATTERN)),
        )
        .max_items(Some(Tag::MAX_PER_LINK))
        .build()
}

/// 301, 302 (the default), 307 or 308.
fn redirect_status_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
            utoipa::openapi::Type::Integer,
            utoipa::openapi::Type::Null,
        ]))
        .enum_values(Some([
            serde_json::json!(301),
            serde_json::json!(302),
            serde_json::json!(307),
            serde_json::json!(308),
            serde_json::Value::Null,
        ]))
        .build()
}

impl CreateBody {
    /// Checks every field against the rules and `policy`.
    pub fn check(self, policy: &UrlPolicy) -> Result<LinkSpec, Invalid> {
        Ok(LinkSpec {
            code: self.code.as_deref().map(ShortCode::parse).transpose()?,
            url: DestinationUrl::parse(&self.url, policy)?,
            title: self.title.as_deref().map(Title::parse).transpose()?,
            tags: Tag::parse_all(&self.tags)?,
            expires_at: self
                .expires_at
                .as_deref()
                .map(|s| parse_time("expires_at", s))
                .transpose()?,
            redirect: self
                .redirect_status
                .map(RedirectStatus::try_from)
                .transpose()?
                .unwrap_or_default(),
        })
    }
}

/// A field that may be absent (leave it), `null` (clear it) or a value (set it).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// The body of `PATCH /v1/links/{code}`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    #[schema(schema_with = nullable_url_schema)]
    url: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = title_schema)]
    title: Option<Option<String>>,
    #[schema(schema_with = nullable_tags_schema)]
    tags: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<Option<String>>,
    #[schema(schema_with = redirect_status_schema)]
    redirect_status: Option<u16>,
    archived: Option<bool>,
}

/// `tags_schema`, or null (leave the tags as they are).
fn nullable_tags_schema() -> utoipa::openapi::Array {
    let mut tags = tags_schema();
    tags.schema_type = utoipa::openapi::schema::SchemaType::from_iter([
        utoipa::openapi::Type::Array,
        utoipa::openapi::Type::Null,
    ]);
    tags
}

impl UpdateBody {
    /// Checks every field present against the rules and `policy`.
    pub fn check(self, policy: &UrlPolicy) -> Result<LinkPatch, Invalid> {
        Ok(LinkPatch {
            url: self
                .url
                .as_deref()
                .map(|u| DestinationUrl::parse(u, policy))
                .transpose()?,
            title: self
                .title
                .map(|t| t.as_deref().map(Title::parse).transpose())
                .transpose()?,
            tags: self.tags.as_deref().map(Tag::parse_all).transpose()?,
            expires_at: self
                .expires_at
                .map(|t| {
                    t.as_deref()
                        .map(|s| parse_time("expires_at", s))
                        .transpose()
                })
                .transpose()?,
            redirect: self
                .redirect_status
                .map(RedirectStatus::try_from)
                .transpose()?,
            archived: self.archived,
        })
    }
}

/// The request id of a call: derived from the key and its `Idempotency-Key` header when
/// one is sent (so a client's retry is recognised), random otherwise.
fn request_id(headers: &HeaderMap, key_id: &str) -> Result<RequestId, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(uuid::Uuid::new_v4().as_u128()),
        Some(v) => {
            let v = v
                .to_str()
                .ok()
                .filter(|v| !v.is_empty() && v.len() <= 255)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "Idempotency-Key must be 1 to 255 visible ASCII characters",
                    )
                })?;
            Ok(xxhash_rust::xxh3::xxh3_128(
                format!("{key_id}\n{v}").as_bytes(),
            ))
        }
    }
}

/// `If-Match`: the version the caller last saw (`"3"`, `3` or `W/"3"`); `*` or absent: any.
fn expected_version(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let v = v
        .to_str()
        .map_err(|_| ApiError::bad_request("If-Match is not text"))?
        .trim();
    if v == "*" {
        return Ok(None);
    }
    let bare = v.trim_start_matches("W/").trim_matches('"');
    bare.parse().map(Some).map_err(|_| {
        ApiError::bad_request(format!(
            "If-Match must be a link version such as \"3\", not {v:?}"
        ))
    })
}

fn code_param(code: &str) -> Result<ShortCode, ApiError> {
    ShortCode::parse(code).map_err(|_| ApiError::not_found(format!("no link {code:?}")))
}

/// `POST /v1/links`.
#[utoipa::path(post, path = "/v1/links", request_body = CreateBody, security(("api_key" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "retry-safe request key", pattern = "^[ -~]{1,255}$")),
    responses((status = 201, body = LinkView), (status = 409, body = crate::error::ErrorBody),
              (status = 422, body = crate::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<CreateBody>,
) -> Result<Response, ApiError> {
    let key = authorize(&headers, &state.service, Scope::LinksWrite)?;
    let request = request_id(&headers, &key.id)?;
    let spec = body.check(state.service.url_policy())?;
    let link = state.service.create(request, spec).await?;
    Ok(link_response(StatusCode::CREATED, &link, &state))
}

/// Query of `GET /v1/links/{code}`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct GetQuery {
    /// `true`: a linearizable read, through the shard's leader after it has confirmed its
    /// leadership with a quorum (it sees every write acknowledged before the request).
    /// Absent: the nearest caught-up replica answers, which may lag by a moment.
    #[param(pattern = "^true$")]
    consistent: Option<String>,
}

/// `GET /v1/links/{code}[?consistent=true]`.
#[utoipa::path(get, path = "/v1/links/{code}", security(("api_key" = [])), params(("code" = String, Path), GetQuery),
    responses((status = 200, body = LinkView), (status = 400, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(code): Path<String>,
    query: Result<Query<GetQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    authorize(&headers, &state.service, Scope::LinksRead)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let link = match query.consistent.as_deref() {
        None => state.service.get(&code).await?,
        Some("true") => state.service.get_linearizable(&code).await?,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "consistent must be \"true\" or absent, not {other:?}"
            )))
        }
    };
    let link = link.ok_or_else(|| ApiError::not_found(format!("no link {code:?}")))?;
    Ok(link_response(StatusCode::OK, &link, &state))
}

/// `PATCH /v1/links/{code}`, honouring `If-Match`.
#[utoipa::path(patch, path = "/v1/links/{code}", request_body = UpdateBody, security(("api_key" = [])),
    params(("code" = String, Path), ("If-Match" = Option<String>, Header, description = "the version last seen (\"3\", W/\"3\" or *)", pattern = "^(\\*|(W/)?\"?[0-9]{1,19}\"?)$")),
    responses((status = 200, body = LinkView), (status = 404, body = crate::error::ErrorBody),
              (status = 412, body = crate::error::ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(code): Path<String>,
    Json(body): Json<UpdateBody>,
) -> Result<Response, ApiError> {
    let key = authorize(&headers, &state.service, Scope::LinksWrite)?;
    let request = request_id(&headers, &key.id)?;
    let code = code_param(&code)?;
    let expected = expected_version(&headers)?;
    let patch = body.check(state.service.url_policy())?;
    let link = state
        .service
        .update(request, &code, expected, patch)
        .await?;
    Ok(link_response(StatusCode::OK, &link, &state))
}

/// `DELETE /v1/links/{code}`, honouring `If-Match`.
#[utoipa::path(delete, path = "/v1/links/{code}", security(("api_key" = [])),
    params(("code" = String, Path), ("If-Match" = Option<String>, Header, description = "the version last seen (\"3\", W/\"3\" or *)", pattern = "^(\\*|(W/)?\"?[0-9]{1,19}\"?)$")),
    responses((status = 204), (status = 404, body = crate::error::ErrorBody), (status = 412, body = crate::error::ErrorBody)))]
pub async fn remove(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(code): Path<String>,
) -> Result<Response, ApiError> {
    let key = authorize(&headers, &state.service, Scope::LinksWrite)?;
    let request = request_id(&headers, &key.id)?;
    let code = code_param(&code)?;
    let expected = expected_version(&headers)?;
    state.service.delete(request, &code, expected).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Query of `GET /v1/links`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Links per page.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// `next_cursor` of the page before.
    cursor: Option<String>,
    /// Only links with this tag.
    #[param(pattern = "^[A-Za-z0-9_.:-]{1,64}$")]
    tag: Option<String>,
}

/// A page of links.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Page {
    links: Vec<LinkView>,
    next_cursor: Option<String>,
}

/// `GET /v1/links?limit=&cursor=&tag=`: links in code order, across all shards.
#[utoipa::path(get, path = "/v1/links", security(("api_key" = [])), params(ListQuery),
    responses((status = 200, body = Page), (status = 422, body = crate::error::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    authorize(&headers, &state.service, Scope::LinksRead)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(Invalid {
            field: "limit",
            message: format!("must be 1 to {MAX_PAGE}"),
        }));
    }
    let tag = query.tag.as_deref().map(Tag::parse).transpose()?;
    let (links, next_cursor) = state
        .service
        .list(limit, query.cursor.as_deref(), tag.as_ref())
        .await?;
    let page = Page {
        links: links.iter().map(|l| LinkView::of(l, &state)).collect(),
        next_cursor,
    };
    Ok(axum::Json(page).into_response())
}

/// Body of `POST /v1/links/bulk`: items are checked one by one, so one bad item does not
/// spoil the others.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkBody {
    /// Up to 1,000 link bodies, as for `POST /v1/links`.
    /// Each is checked as a `POST /v1/links` body (`CreateBody`) and answered in its own
    /// result, so any JSON value is taken here.
    #[schema(value_type = Vec<Value>, min_items = 1, max_items = 1000)]
    links: Vec<serde_json::Value>,
}

/// The answer of `POST /v1/links/bulk`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct BulkResults {
    /// One per item, in the order sent.
    results: Vec<BulkItem>,
}

/// The result of one bulk item: 201 and the link, or an error status and the error.
#[derive(Serialize, utoipa::ToSchema)]
pub struct BulkItem {
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    link: Option<LinkView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    error: Option<serde_json::Value>,
}

/// `POST /v1/links/bulk`: up to 1,000 creates, one result per item, in order.
#[utoipa::path(post, path = "/v1/links/bulk", request_body = BulkBody, security(("api_key" = [])),
    responses((status = 200, description = "one result per item, in order", body = BulkResults)))]
pub async fn bulk(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(body): Json<BulkBody>,
) -> Result<Response, ApiError> {
    let key = authorize(&headers, &state.service, Scope::LinksWrite)?;
    let request = request_id(&headers, &key.id)?;
    if body.links.is_empty() || body.links.len() > MAX_BULK {
        return Err(ApiError::invalid(Invalid {
            field: "links",
            message: format!("must hold 1 to {MAX_BULK} links"),
        }));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (i, item) in body.links.into_iter().enumerate() {
        let state = state.clone();
        // Each item has its own request id, derived from the call's, so a retried bulk
        // request is de-duplicated item by item.
        let item_request = xxhash_rust::xxh3::xxh3_128(
            &[request.to_le_bytes(), (i as u128).to_le_bytes()].concat(),
        );
        tasks.spawn(async move {
            let outcome = async {
                let body: CreateBody = serde_json::from_value(item).map_err(|e| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid_body",
                        format!("item {i}: {e}"),
                    )
                })?;
                let spec = body.check(state.service.url_policy())?;
                Ok::<_, ApiError>(state.service.create(item_request, spec).await?)
            }
            .await;
            let item = match outcome {
                Ok(link) => BulkItem {
                    status: 201,
                    link: Some(LinkView::of(&link, &state)),
                    error: None,
                },
                Err(e) => BulkItem {
                    status: e.status.as_u16(),
                    link: None,
                    error: Some(serde_json::json!({"code": e.code, "message": e.message})),
                },
            };
            (i, item)
        });
    }
    let mut results: Vec<Option<BulkItem>> = Vec::new();
    results.resize_with(tasks.len(), || None);
    while let Some(done) = tasks.join_next().await {
        let (i, item) = done.map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })?;
        results[i] = Some(item);
    }
    let results: Vec<BulkItem> = results.into_iter().flatten().collect();
    Ok(axum::Json(BulkResults { results }).into_response())
}
