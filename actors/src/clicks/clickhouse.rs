//! The ClickHouse click store: every node's click actor inserts its batches into one
//! `clicks` table; stats read the hourly roll-up, and exports stream the raw events.
//!
//! The schema is `migrations/clickhouse/`, applied (every statement is `IF NOT EXISTS`)
//! when the store is first reached. It runs on ClickHouse 18.16 and on current versions, so
//! rows go as plain `RowBinary` (the client's validation, which needs
//! `RowBinaryWithNamesAndTypes`, is off) and queries bind their values on the client side
//! (18.16 has no server-side parameters).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::event::ClickEvent;
use super::rollup::{Bots, DIMENSIONS};
use super::Summary;

/// The migrations, in order: `(name, statements)`.
const MIGRATIONS: &[(&str, &str)] = &[(
    "0001_clicks",
    include_str!("../../../migrations/clickhouse/0001_clicks.sql"),
)];

/// How long an insert may take before it is given up (and retried from the spool).
const INSERT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the ClickHouse store is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClickHouseConfig {
    /// The HTTP interface, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// The database (created when missing).
    pub database: String,
    /// The user.
    pub user: String,
    /// Its password.
    pub password: String,
    /// For an https URL: a CA certificate (PEM) to trust besides the system's roots.
    pub ca: Option<std::path::PathBuf>,
}

/// Why the store could not be used.
#[derive(Debug)]
pub struct StoreError {
    url: String,
    source: clickhouse::error::Error,
}

impl std::fmt::Display for StoreError {
    /// The whole chain of causes: the crate's own message for a failed connection is only
    /// "client error (Connect)", and the reason (a refused certificate, a refused
    /// connection) is in its sources.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClickHouse at {}: {}", self.url, self.source)?;
        let mut cause = std::error::Error::source(&self.source);
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

impl std::error::Error for StoreError {}

/// A raw event's export formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// One JSON object per line.
    Ndjson,
    /// CSV with a header line.
    Csv,
}

/// A stream of exported bytes.
pub type ExportStream = clickhouse::query::BytesCursor;

/// A handle on the store (cheap to clone).
#[derive(Clone)]
pub struct ClickHouse {
    client: clickhouse::Client,
    config: ClickHouseConfig,
}

/// A click as inserted: the columns of `clicks`, in order.
#[derive(clickhouse::Row, Serialize)]
struct ClickRow<'a> {
    #[serde(with = "clickhouse::serde::uuid")]
    click_id: uuid::Uuid,
    short_code: &'a str,
    shard: u32,
    clicked_at: u32,
    clicked_ms: u16,
    ip_address: &'a str,
    user_agent: &'a str,
    referer: &'a str,
    referer_host: &'a str,
    country_code: &'a str,
    device_type: &'a str,
    browser: &'a str,
    os: &'a str,
    language: &'a str,
    is_bot: u8,
    visitor: u64,
}

impl<'a> ClickRow<'a> {
    fn of(e: &'a ClickEvent) -> Self {
        let at = e.at_ms.max(0);
        Self {
            click_id: e.id,
            short_code: &e.code,
            shard: e.shard,
            clicked_at: u32::try_from(at / 1000).unwrap_or(u32::MAX),
            clicked_ms: (at % 1000) as u16,
            ip_address: &e.ip,
            user_agent: &e.user_agent,
            referer: &e.referer,
            referer_host: &e.referer_host,
            country_code: &e.country,
            device_type: e.device.name(),
            browser: &e.browser,
            os: &e.os,
            language: &e.language,
            is_bot: u8::from(e.bot),
            visitor: e.visitor(),
        }
    }
}

#[derive(clickhouse::Row, Deserialize)]
struct HourRow {
    hour: u32,
    clicks: u64,
}

#[derive(clickhouse::Row, Deserialize)]
struct ValueRow {
    value: String,
    clicks: u64,
}

#[derive(clickhouse::Row, Deserialize)]
struct CountRow {
    n: u64,
}

/// The `is_bot` values a query counts.
fn bot_values(bots: Bots) -> &'static str {
    match bots {
        Bots::Exclude => "(0)",
        Bots::Include => "(0, 1)",
        Bots::Only => "(1)",
    }
}

/// Splits a migration into its statements (`;` at a line's end; `--` comments dropped).
fn statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in sql.lines() {
        let line = line.trim_end();
        if line.trim_start().starts_with("--") {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        if line.ends_with(';') {
            let statement = current.trim().trim_end_matches(';').trim().to_string();
            if !statement.is_empty() {
                out.push(statement);
            }
            current.clear();
        }
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_string());
    }
    out
}

/// TCP keepalive on connections to ClickHouse (as the clickhouse crate's own client).
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// Idle pooled connections are closed before ClickHouse's own 3 s keep-alive timeout would.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a ClickHouse client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `clickhouse_ca` does not read as PEM certificates.
    #[error("clickhouse_ca {}: {source}", path.display())]
    CaUnreadable {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: rustls::pki_types::pem::Error,
    },
    /// `clickhouse_ca` holds no certificate.
    #[error("clickhouse_ca {} holds no certificate", path.display())]
    CaEmpty {
        /// The file.
        path: std::path::PathBuf,
    },
    /// rustls refused a certificate of `clickhouse_ca`, or the TLS settings.
    #[error("clickhouse_ca: {0}")]
    Tls(#[source] rustls::Error),
}

/// A ClickHouse client whose https trusts the system's roots and `ca` (the clickhouse
/// crate's own would panic where the system has no roots, and takes no CA of ours).
fn client(ca: Option<&std::path::Path>) -> Result<clickhouse::Client, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system certificates are skipped: `ca` may be all that is needed.
    let system = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(system.certs);
    if let Some(path) = ca {
        use rustls::pki_types::pem::PemObject;
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|source| ClientError::CaUnreadable {
                path: path.to_path_buf(),
                source,
            })?;
        if certs.is_empty() {
            return Err(ClientError::CaEmpty {
                path: path.to_path_buf(),
            });
        }
        for cert in certs {
            roots.add(cert).map_err(ClientError::Tls)?;
        }
    } else if added == 0 {
        tracing::debug!("no system CA certificates found; https to ClickHouse needs clickhouse_ca");
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(ClientError::Tls)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut tcp = hyper_util::client::legacy::connect::HttpConnector::new();
    tcp.set_keepalive(Some(TCP_KEEPALIVE));
    tcp.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp);
    Ok(clickhouse::Client::with_http_client(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector),
    ))
}

impl ClickHouse {
    /// A handle; nothing is sent until the store is used. Fails only on a `ca` file that
    /// does not load.
    pub fn new(config: ClickHouseConfig) -> Result<Self, ClientError> {
        let client = client(config.ca.as_deref())?
            .with_url(&config.url)
            .with_user(&config.user)
            .with_password(&config.password)
            .with_compression(clickhouse::Compression::None)
            .with_validation(false);
        Ok(Self { client, config })
    }

    fn err(&self, source: clickhouse::error::Error) -> StoreError {
        StoreError {
            url: crate::domain::redacted(&self.config.url),
            source,
        }
    }

    fn db(&self) -> clickhouse::Client {
        self.client.clone().with_database(&self.config.database)
    }

    /// Creates the database and applies the migrations.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.client
            .query("CREATE DATABASE IF NOT EXISTS ?")
            .bind(clickhouse::sql::Identifier(&self.config.database))
            .execute()
            .await
            .map_err(|e| self.err(e))?;
        let db = self.db();
        for (name, sql) in MIGRATIONS {
            for statement in statements(sql) {
                db.query_raw(&statement)
                    .execute()
                    .await
                    .map_err(|e| self.err(e))?;
            }
            tracing::debug!(migration = name, "ClickHouse migration applied");
        }
        Ok(())
    }

    /// Inserts a batch in one `INSERT`.
    pub async fn insert(&self, batch: &[ClickEvent]) -> Result<(), StoreError> {
        let mut insert = self
            .db()
            .insert::<ClickRow<'_>>("clicks")
            .await
            .map_err(|e| self.err(e))?
            .with_timeouts(Some(INSERT_TIMEOUT), Some(INSERT_TIMEOUT));
        for e in batch {
            insert
                .write(&ClickRow::of(e))
                .await
                .map_err(|e| self.err(e))?;
        }
        insert.end().await.map_err(|e| self.err(e))
    }

    /// The clicks of `code` in the hours from `from_ms`'s to `to_ms`'s, from the hourly
    /// roll-up (which counts distinct events, so batches inserted twice count once).
    pub async fn summary(
        &self,
        code: &str,
        from_ms: i64,
        to_ms: i64,
        bots: Bots,
    ) -> Result<Summary, StoreError> {
        let db = self.db();
        let from = from_ms.max(0) / 1000 / 3600 * 3600;
        let to = to_ms.max(0) / 1000;
        let filter = format!(
            "short_code = ? AND hour >= toDateTime(?) AND hour <= toDateTime(?) AND is_bot IN {}",
            bot_values(bots)
        );
        let hours = db
            .query(&format!(
                "SELECT toUInt32(hour) AS hour, uniqExactMerge(clicks) AS clicks \
                 FROM clicks_hourly WHERE {filter} GROUP BY hour ORDER BY hour"
            ))
            .bind(code)
            .bind(from)
            .bind(to)
            .fetch_all::<HourRow>()
            .await
            .map_err(|e| self.err(e))?;
        let mut summary = Summary {
            hours: hours
                .into_iter()
                .map(|h| (i64::from(h.hour) * 1000, h.clicks))
                .collect(),
            ..Summary::default()
        };
        let columns = [
            "country_code",
            "referer_host",
            "device_type",
            "browser",
            "os",
        ];
        for (name, column) in DIMENSIONS.iter().zip(columns) {
            let values = db
                .query(&format!(
                    "SELECT {column} AS value, uniqExactMerge(clicks) AS clicks \
                     FROM clicks_hourly WHERE {filter} GROUP BY value"
                ))
                .bind(code)
                .bind(from)
                .bind(to)
                .fetch_all::<ValueRow>()
                .await
                .map_err(|e| self.err(e))?;
            if !values.is_empty() {
                let map: BTreeMap<String, u64> =
                    values.into_iter().map(|v| (v.value, v.clicks)).collect();
                summary.dims.insert((*name).to_string(), map);
            }
        }
        summary.unique_visitors = db
            .query(&format!(
                "SELECT uniqExactMerge(visitors) AS n FROM clicks_hourly WHERE {filter}"
            ))
            .bind(code)
            .bind(from)
            .bind(to)
            .fetch_one::<CountRow>()
            .await
            .map_err(|e| self.err(e))?
            .n;
        Ok(summary)
    }

    /// Streams `code`'s raw events from `from_ms` to `to_ms` (inclusive), oldest first, each
    /// once (`FINAL`).
    pub fn export(
        &self,
        code: &str,
        from_ms: i64,
        to_ms: i64,
        bots: Bots,
        format: ExportFormat,
    ) -> Result<ExportStream, StoreError> {
        let at = "toUInt64(clicked_at) * 1000 + clicked_ms";
        // A spreadsheet opening the CSV runs a cell that starts with = + - @ (or a tab or
        // carriage return) as a formula, and visitors choose their user agent and referer:
        // such cells get a leading apostrophe (OWASP's advice), in CSV only.
        let cell = |column: &str, name: &str| match format {
            ExportFormat::Ndjson => format!("{column} AS {name}"),
            ExportFormat::Csv => format!(
                "if(match({column}, '^[=+@\\t\\r-]'), concat('\\'', {column}), {column}) AS {name}"
            ),
        };
        let query = format!(
            "SELECT toString(click_id) AS id, {code}, shard, {at} AS at_ms, \
             ip_address AS ip, {user_agent}, {referer}, {referer_host}, country_code AS country, \
             device_type AS device, {browser}, {os}, {language}, is_bot AS bot \
             FROM clicks FINAL \
             WHERE short_code = ? AND clicked_at >= toDateTime(?) AND clicked_at <= toDateTime(?) \
             AND {at} >= ? AND {at} <= ? AND is_bot IN {} \
             ORDER BY clicked_at, clicked_ms, click_id",
            bot_values(bots),
            code = cell("short_code", "code"),
            user_agent = cell("user_agent", "user_agent"),
            referer = cell("referer", "referer"),
            referer_host = cell("referer_host", "referer_host"),
            browser = cell("browser", "browser"),
            os = cell("os", "os"),
            language = cell("language", "language"),
        );
        let format = match format {
            ExportFormat::Ndjson => "JSONEachRow",
            ExportFormat::Csv => "CSVWithNames",
        };
        let (from, to) = (from_ms.max(0), to_ms.max(0));
        self.db()
            .query(&query)
            .bind(code)
            .bind(from / 1000)
            .bind(to / 1000)
            .bind(from)
            .bind(to)
            .with_setting("output_format_json_quote_64bit_integers", "0")
            .fetch_bytes(format)
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_split_into_statements() {
        let all = statements(MIGRATIONS[0].1);
        assert_eq!(all.len(), 3, "{all:#?}");
        assert!(all[0].starts_with("CREATE TABLE IF NOT EXISTS clicks\n"));
        assert!(all.iter().all(|s| !s.contains("--") && !s.ends_with(';')));
    }
}
