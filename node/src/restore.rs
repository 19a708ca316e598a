//! `linkrift restore --from-postgres URL --data-dir DIR`: builds a new one-node cluster from
//! the Postgres mirror (every live link exactly as mirrored, every API key by its hash),
//! then checks it against the mirror: link counts and a checksum over (code, URL, version)
//! in code order must match.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use futures::TryStreamExt;
use linkrift_actors::domain::{
    ApiKeyHash, ApiKeyRecord, DestinationUrl, Link, RedirectStatus, Scope, ShortCode, Tag, Title,
    UrlPolicy,
};
use linkrift_actors::service::{LinkService, ServiceConfig};
use sqlx::Row;
use xxhash_rust::xxh3::Xxh3;

/// The restore command's arguments.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The mirror's database, e.g. postgres://user@host/db.
    #[arg(long = "from-postgres", env = "LINKRIFT_POSTGRES_URL")]
    pub from: String,
    /// An empty (or absent) data directory for the new node.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Shards of the new cluster.
    #[arg(long, default_value_t = 64)]
    pub shard_count: u32,
}

/// A checksum over links in code order: what the mirror and the restored node must agree on.
fn checksum<'a>(links: impl Iterator<Item = (&'a str, &'a str, u64)>) -> u64 {
    let mut h = Xxh3::new();
    for (code, url, version) in links {
        h.update(code.as_bytes());
        h.update(b"\0");
        h.update(url.as_bytes());
        h.update(b"\0");
        h.update(&version.to_le_bytes());
    }
    h.digest()
}

fn link_from_row(row: &sqlx::postgres::PgRow) -> anyhow::Result<Link> {
    let code: String = row.get("code");
    let url: String = row.get("url");
    let context = || format!("mirror row {code:?}");
    // The destination was accepted when it was made: keep its scheme whatever it is.
    let scheme = url
        .split(':')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let policy = UrlPolicy {
        extra_schemes: vec![scheme],
        own_hosts: vec![],
    };
    let tags: Vec<String> = row.get("tags");
    Ok(Link {
        code: ShortCode::parse(&code).with_context(context)?,
        url: DestinationUrl::parse(&url, &policy).with_context(context)?,
        title: row
            .get::<Option<String>, _>("title")
            .map(|t| Title::parse(&t))
            .transpose()
            .with_context(context)?,
        tags: Tag::parse_all(&tags).with_context(context)?,
        created_at: row.get("created"),
        updated_at: row.get("updated"),
        expires_at: row.get("expires"),
        redirect: RedirectStatus::try_from(row.get::<i16, _>("redirect") as u16)
            .with_context(context)?,
        archived: row.get("archived"),
        version: row.get::<i64, _>("version") as u64,
    })
}

/// Runs the restore; returns what to print.
pub async fn run(args: RestoreArgs) -> anyhow::Result<String> {
    if args.data_dir.join("linkrift.json").exists() {
        bail!(
            "{} already holds a node: restore needs an empty data directory",
            args.data_dir.display()
        );
    }
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&args.from)
        .await
        .context("connecting to the mirror")?;
    let rows = sqlx::query(
        "SELECT code, url, title, tags, redirect, archived, version, \
                (extract(epoch FROM created_at) * 1000)::int8 AS created, \
                (extract(epoch FROM updated_at) * 1000)::int8 AS updated, \
                (extract(epoch FROM expires_at) * 1000)::int8 AS expires \
         FROM links WHERE NOT deleted ORDER BY code",
    )
    .fetch_all(&pool)
    .await
    .context("reading the mirror's links")?;
    let links: Vec<Link> = rows
        .iter()
        .map(link_from_row)
        .collect::<anyhow::Result<_>>()?;
    let key_rows = sqlx::query(
        "SELECT id, name, hash, scopes, \
                (extract(epoch FROM created_at) * 1000)::int8 AS created, \
                (extract(epoch FROM revoked_at) * 1000)::int8 AS revoked \
         FROM api_keys ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .context("reading the mirror's keys")?;
    let keys: Vec<ApiKeyRecord> = key_rows
        .iter()
        .map(|r| {
            let scopes: Vec<String> = r.get("scopes");
            Ok(ApiKeyRecord {
                id: r.get("id"),
                name: r.get("name"),
                hash: ApiKeyHash::from_hex(r.get("hash"))?,
                scopes: scopes
                    .iter()
                    .map(|s| Scope::parse(s))
                    .collect::<Result<_, _>>()?,
                created_at: r.get("created"),
                revoked_at: r.get("revoked"),
            })
        })
        .collect::<Result<_, linkrift_actors::domain::Invalid>>()
        .context("a mirrored key")?;
    let mirror_sum = checksum(
        links
            .iter()
            .map(|l| (l.code.as_str(), l.url.as_str(), l.version)),
    );

    let service = Arc::new(
        LinkService::open(ServiceConfig {
            data_dir: args.data_dir.clone(),
            shard_count: args.shard_count,
            ..ServiceConfig::default()
        })
        .await
        .with_context(|| format!("creating a node in {}", args.data_dir.display()))?,
    );
    for key in keys.iter().cloned() {
        service.restore_key(key).await.context("restoring a key")?;
    }
    futures::stream::iter(links.iter().cloned().map(Ok::<_, anyhow::Error>))
        .try_for_each_concurrent(64, |link| {
            let service = service.clone();
            async move {
                let code = link.code.to_string();
                service
                    .restore_link(link)
                    .await
                    .with_context(|| format!("restoring {code}"))
            }
        })
        .await?;

    // Read everything back, in code order, and compare.
    let mut restored: Vec<Arc<Link>> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let (page, next) = service.list(1000, cursor.as_deref(), None).await?;
        restored.extend(page);
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let restored_sum = checksum(
        restored
            .iter()
            .map(|l| (l.code.as_str(), l.url.as_str(), l.version)),
    );
    let keys_back = service.keys().len();
    service.shutdown().await;
    if restored.len() != links.len() || restored_sum != mirror_sum || keys_back != keys.len() {
        bail!(
            "the restored node does not match the mirror: {} links (mirror {}), checksum \
             {restored_sum:016x} (mirror {mirror_sum:016x}), {keys_back} keys (mirror {})",
            restored.len(),
            links.len(),
            keys.len()
        );
    }
    Ok(format!(
        "restored {} links and {} API keys into {}: checksum {restored_sum:016x} matches the mirror\n",
        restored.len(),
        keys.len(),
        args.data_dir.display()
    ))
}
