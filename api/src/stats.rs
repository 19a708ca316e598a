//! A link's clicks: `GET /v1/links/{code}/stats` (counts over a time range, from either
//! click store) and `GET /v1/links/{code}/clicks` (the raw events, from ClickHouse).

use std::collections::BTreeMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use linkrift_actors::domain::{Invalid, Scope};
use linkrift_actors::service::now_ms;
use linkrift_actors::{Bots, ExportFormat, Summary, DIMENSIONS};
use serde::{Deserialize, Serialize};

use futures::StreamExt;
use linkrift_actors::service::ServiceError;

use crate::auth::authorize;
use crate::error::ApiError;
use crate::links::{parse_time, rfc3339};
use crate::AppState;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// Values listed per dimension, most clicked first.
const TOP: usize = 10;

/// Query parameters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// Start (RFC 3339); default 7 days before `to`.
    #[param(format = DateTime)]
    from: Option<String>,
    /// End (RFC 3339); default now; at most 366 days after `from` (31 with `hour`).
    #[param(format = DateTime)]
    to: Option<String>,
    /// `hour` or `day` (default).
    #[param(schema_with = interval_schema)]
    interval: Option<String>,
    /// `exclude` (default), `include` or `only`.
    #[param(schema_with = bots_schema)]
    bots: Option<String>,
}

/// A string, one of `values`.
fn one_of(values: &[&str]) -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .enum_values(Some(values.iter().copied()))
        .build()
}

fn interval_schema() -> utoipa::openapi::Object {
    one_of(&["hour", "day"])
}

fn bots_schema() -> utoipa::openapi::Object {
    one_of(&["exclude", "include", "only"])
}

fn format_schema() -> utoipa::openapi::Object {
    one_of(&["ndjson", "csv"])
}

/// One point of the time series.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Point {
    /// Start of the hour or day (RFC 3339, UTC).
    t: String,
    /// Clicks in it.
    clicks: u64,
}

/// One value of a dimension.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Top {
    /// The value (`""`: unknown, e.g. no referer).
    value: String,
    /// Clicks with it.
    clicks: u64,
}

/// A link's stats.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Stats {
    code: String,
    from: String,
    to: String,
    interval: String,
    bots: String,
    total: u64,
    unique_visitors: u64,
    series: Vec<Point>,
    countries: Vec<Top>,
    referrers: Vec<Top>,
    devices: Vec<Top>,
    browsers: Vec<Top>,
    os: Vec<Top>,
}

fn bad(field: &'static str, message: &str) -> Invalid {
    Invalid {
        field,
        message: message.into(),
    }
}

fn top(values: Option<&BTreeMap<String, u64>>) -> Vec<Top> {
    let mut all: Vec<Top> = values
        .into_iter()
        .flatten()
        .map(|(v, n)| Top {
            value: v.clone(),
            clicks: *n,
        })
        .collect();
    all.sort_by(|a, b| b.clicks.cmp(&a.clicks).then_with(|| a.value.cmp(&b.value)));
    all.truncate(TOP);
    all
}

/// Builds the answer from the store's summary; `step` is an hour or a day.
fn build(code: String, from: i64, to: i64, step: i64, bots: &str, tally: Summary) -> Stats {
    let mut buckets: BTreeMap<i64, u64> = BTreeMap::new();
    let mut t = from.div_euclid(step) * step;
    while t <= to {
        buckets.insert(t, 0);
        t += step;
    }
    for (hour, n) in &tally.hours {
        if (from.div_euclid(HOUR_MS) * HOUR_MS..=to).contains(hour) {
            *buckets.entry(hour.div_euclid(step) * step).or_default() += n;
        }
    }
    let dim = |name: &str| top(tally.dims.get(name));
    Stats {
        total: buckets.values().sum(),
        unique_visitors: tally.unique_visitors,
        series: buckets
            .into_iter()
            .map(|(t, clicks)| Point {
                t: rfc3339(t),
                clicks,
            })
            .collect(),
        countries: dim(DIMENSIONS[0]),
        referrers: dim(DIMENSIONS[1]),
        devices: dim(DIMENSIONS[2]),
        browsers: dim(DIMENSIONS[3]),
        os: dim(DIMENSIONS[4]),
        code,
        from: rfc3339(from),
        to: rfc3339(to),
        interval: if step == HOUR_MS { "hour" } else { "day" }.into(),
        bots: bots.into(),
    }
}

/// `from` and `to` (default: the last 7 days), at most 366 days apart.
fn range(from: Option<&str>, to: Option<&str>) -> Result<(i64, i64), Invalid> {
    let to = match to {
        Some(s) => parse_time("to", s)?,
        None => now_ms(),
    };
    let from = match from {
        Some(s) => parse_time("from", s)?,
        None => to - 7 * DAY_MS,
    };
    if from > to || to - from > 366 * DAY_MS {
        return Err(bad(
            "from",
            "must be before `to`, and at most 366 days before it",
        ));
    }
    Ok((from, to))
}

/// `bots` (default `exclude`), and its name.
fn bots(value: Option<&str>) -> Result<(Bots, &'static str), Invalid> {
    match value.unwrap_or("exclude") {
        "exclude" => Ok((Bots::Exclude, "exclude")),
        "include" => Ok((Bots::Include, "include")),
        "only" => Ok((Bots::Only, "only")),
        _ => Err(bad("bots", "must be exclude, include or only")),
    }
}

/// `GET /v1/links/{code}/stats?from=&to=&interval=hour|day&bots=exclude|include|only`.
#[utoipa::path(get, path = "/v1/links/{code}/stats", security(("api_key" = [])),
    params(("code" = String, Path), StatsQuery),
    responses((status = 200, body = Stats), (status = 422, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody)))]
pub async fn stats(
    State(state): State<AppState>,
    Path(code): Path<String>,
    q: Result<Query<StatsQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&headers, &state.service, Scope::LinksRead)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let (from, to) = range(q.from.as_deref(), q.to.as_deref())?;
    let step = match q.interval.as_deref().unwrap_or("day") {
        "hour" if to - from <= 31 * DAY_MS => HOUR_MS,
        "hour" => return Err(bad("interval", "hour takes a range of at most 31 days").into()),
        "day" => DAY_MS,
        _ => return Err(bad("interval", "must be hour or day").into()),
    };
    let (bots, name) = bots(q.bots.as_deref())?;
    if state.service.get(&code).await?.is_none() {
        return Err(ApiError::not_found(format!("no link {code:?}")));
    }
    let summary = state.service.click_summary(&code, from, to, bots).await?;
    Ok(axum::Json(build(code, from, to, step, name, summary)).into_response())
}

/// Query parameters of an export.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// `ndjson` (default) or `csv`.
    #[param(schema_with = format_schema)]
    format: Option<String>,
    /// Start (RFC 3339); default 7 days before `to`.
    #[param(format = DateTime)]
    from: Option<String>,
    /// End (RFC 3339); default now; at most 366 days after `from`.
    #[param(format = DateTime)]
    to: Option<String>,
    /// `exclude` (default), `include` or `only`.
    #[param(schema_with = bots_schema)]
    bots: Option<String>,
}

/// `GET /v1/links/{code}/clicks?format=ndjson|csv&from=&to=&bots=`: the link's raw click
/// events, oldest first, streamed from ClickHouse. Without ClickHouse there are only hourly
/// roll-ups, and the answer is 501.
#[utoipa::path(get, path = "/v1/links/{code}/clicks", security(("api_key" = [])),
    params(("code" = String, Path), ExportQuery),
    responses((status = 200, description = "NDJSON or CSV, one click event per line"),
              (status = 422, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody),
              (status = 501, body = crate::error::ErrorBody),
              (status = 503, body = crate::error::ErrorBody)))]
pub async fn export(
    State(state): State<AppState>,
    Path(code): Path<String>,
    q: Result<Query<ExportQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&headers, &state.service, Scope::LinksRead)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let (format, content_type) = match q.format.as_deref().unwrap_or("ndjson") {
        "ndjson" => (ExportFormat::Ndjson, "application/x-ndjson"),
        "csv" => (ExportFormat::Csv, "text/csv; charset=utf-8"),
        _ => return Err(bad("format", "must be ndjson or csv").into()),
    };
    let (from, to) = range(q.from.as_deref(), q.to.as_deref())?;
    let (bots, _) = bots(q.bots.as_deref())?;
    let Some(store) = state.service.clickhouse() else {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_IMPLEMENTED,
            "clickhouse_required",
            "raw click events are kept only in ClickHouse (set clickhouse_url); \
             this cluster keeps hourly roll-ups, see /v1/links/{code}/stats",
        ));
    };
    if state.service.get(&code).await?.is_none() {
        return Err(ApiError::not_found(format!("no link {code:?}")));
    }
    let mut cursor = store
        .export(&code, from, to, bots, format)
        .map_err(|e| ApiError::from(ServiceError::Unavailable(e.to_string())))?;
    // The first chunk decides the status: ClickHouse refusing the query is a 503, not a
    // 200 with an error in its body.
    let first = cursor
        .next()
        .await
        .map_err(|e| ApiError::from(ServiceError::Unavailable(format!("ClickHouse: {e}"))))?;
    let rest = futures::stream::unfold(Some(cursor), |cursor| async move {
        let mut cursor = cursor?;
        match cursor.next().await {
            Ok(Some(chunk)) => Some((Ok(chunk), Some(cursor))),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "a click export broke off");
                Some((Err(std::io::Error::other(e.to_string())), None))
            }
        }
    });
    let body = futures::stream::iter(first.map(Ok)).chain(rest);
    Ok((
        [(axum::http::header::CONTENT_TYPE, content_type)],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}
