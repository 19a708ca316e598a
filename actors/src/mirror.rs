//! The Postgres mirror: every committed change to a link lands in Postgres exactly once, in
//! log order, without ever slowing or refusing a redirect or a write.
//!
//! Each node runs one mirror task. Every 100 ms, for every shard it leads, it takes the
//! changes after the shard's watermark from the shard's change feed
//! ([`crate::shard::feed`]) and writes them with the new watermark, all shards in one
//! transaction; a watermark only moves from the value read (`UPDATE ... WHERE
//! applied_index = old`), so a stale leader racing a new one writes nothing.
//! A new leader resumes from the watermark. When the feed no longer reaches back to the
//! watermark (a snapshot was restored, or the feed was trimmed), the shard resyncs: every
//! link is upserted and rows the shard no longer has are marked deleted. Postgres being
//! slow or down only makes the mirror lag; it catches up when Postgres is back.
//!
//! Watermarks are log indexes, which mean something only in the cluster whose logs they
//! count: each row names the cluster's incarnation (the meta group's
//! [`MetaCommand::SetClusterId`], set by the first meta leader whose mirror needs it). A
//! cluster that finds no watermark of its own for a shard (a cluster restored from this
//! mirror, or any other cluster pointed at the same database) resyncs the shard, rather
//! than take another cluster's indexes for its own and skip its changes. A shard's group is
//! created once in a cluster and its log never starts over, so the cluster's incarnation is
//! the group's too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};

use crate::domain::Link;
use crate::groups::{Command, GroupState, Outcome};
use crate::meta::{MetaCommand, MetaOutcome, MetaReader};
use crate::replicas::{LocalShard, Replicas};
use crate::shard::feed::{Change, Since};

/// How often the task looks for new changes.
const TICK: Duration = Duration::from_millis(100);
/// Changes taken from one shard per pass, about (whole log entries).
const BATCH: usize = 5_000;
/// Links upserted per statement during a resync.
const RESYNC_CHUNK: usize = 5_000;
/// Failures are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The watermark row of the meta group (API keys).
const KEYS: i32 = -1;

/// What the mirror reads of its node: the replicas it hosts (the shards it leads are
/// mirrored), the meta group and its directory (the API keys), and the watermarks it keeps.
pub(crate) struct Mirrored {
    /// The node's shard replicas.
    pub(crate) replicas: Arc<Replicas>,
    /// The meta group.
    pub(crate) meta: linkrift_raft::Group<GroupState>,
    /// Its state, read.
    pub(crate) directory: MetaReader,
    /// The watermarks, shared with the node's status.
    pub(crate) state: Arc<MirrorState>,
}

/// The mirror's state shared with the rest of the node: the watermark of each group it
/// mirrors (by watermark row: the shard, or [`KEYS`]).
#[derive(Default)]
pub(crate) struct MirrorState {
    watermarks: Mutex<HashMap<i32, u64>>,
}

impl MirrorState {
    /// The last log index of `shard` (or [`KEYS`]) known to be in Postgres, if this node
    /// mirrors it.
    pub(crate) fn watermark(&self, shard: i32) -> Option<u64> {
        self.watermarks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&shard)
            .copied()
    }

    fn set(&self, shard: i32, index: Option<u64>) {
        let mut w = self.watermarks.lock().unwrap_or_else(|p| p.into_inner());
        match index {
            Some(i) => w.insert(shard, i),
            None => w.remove(&shard),
        };
    }
}

/// A pool that connects when first used: a node starts whether Postgres is up or not.
pub fn pool(url: &str) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy(url)
}

/// Creates or updates the mirror's tables.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("../migrations/postgres").run(pool).await
}

/// Why a shard's round did not complete.
#[derive(Debug, thiserror::Error)]
enum MirrorError {
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("another node moved the watermark of {0}; rereading it")]
    Raced(i32),
    #[error("the cluster has no incarnation yet (its meta leader sets one): {0}")]
    NoClusterId(String),
}

/// The cluster's incarnation, as watermark rows name it; set (on the meta leader) if it is
/// not yet.
async fn cluster_id(node: &Mirrored) -> Result<String, MirrorError> {
    if let Some(id) = node.directory.cluster_id() {
        return Ok(format!("{id:032x}"));
    }
    if !node.meta.is_leader() {
        return Err(MirrorError::NoClusterId("waiting for it".into()));
    }
    let id = loop {
        let id = rand::random::<u128>();
        if id != 0 {
            break id;
        }
    };
    match node
        .meta
        .write(Command::Meta(MetaCommand::SetClusterId { id }))
        .await
    {
        Ok(Outcome::Meta(MetaOutcome::ClusterId(id))) => {
            tracing::info!(
                cluster = format!("{id:032x}"),
                "the cluster's incarnation is set"
            );
            Ok(format!("{id:032x}"))
        }
        Ok(other) => Err(MirrorError::NoClusterId(format!("answered {other:?}"))),
        Err(e) => Err(MirrorError::NoClusterId(e.to_string())),
    }
}

/// Runs the mirror until the node stops.
pub(crate) async fn run(node: Mirrored, pool: PgPool) {
    let mut migrated = false;
    let mut last_log: Option<Instant> = None;
    let mut pause = TICK;
    // Every series exists from the start, so rates and alerts see zeros, not gaps.
    for name in [
        "mirror_rows_written_total",
        "mirror_errors_total",
        "mirror_resyncs_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    loop {
        tokio::time::sleep(pause).await;
        let result = async {
            if !migrated {
                migrate(&pool)
                    .await
                    .map_err(|e| MirrorError::Postgres(e.into()))?;
                migrated = true;
                tracing::info!("postgres mirror tables are up to date");
            }
            round(&node, &pool).await
        }
        .await;
        match result {
            Ok(()) => pause = TICK,
            Err(e) => {
                if last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                    tracing::warn!(error = %e, "the postgres mirror is behind; retrying");
                    last_log = Some(Instant::now());
                }
                metrics::counter!("mirror_errors_total").increment(1);
                pause = (pause * 2).clamp(TICK, Duration::from_secs(5));
            }
        }
    }
}

/// One pass over the groups this node leads, in one transaction (one commit per pass, however
/// many shards moved).
async fn round(node: &Mirrored, pool: &PgPool) -> Result<(), MirrorError> {
    let cluster = cluster_id(node).await?;
    let cluster = cluster.as_str();
    let shards = node.replicas.all();
    let mut tx = pool.begin().await?;
    let mut moved: Vec<(i32, u64)> = Vec::new();
    let forget_raced = |e: MirrorError| {
        if let MirrorError::Raced(id) = e {
            node.state.set(id, None);
        }
        e
    };
    for (shard, local) in shards {
        if !local.group.is_leader() {
            node.state.set(shard as i32, None);
            continue;
        }
        if let Some(w) = mirror_shard(node, pool, &mut tx, cluster, shard, &local)
            .await
            .map_err(forget_raced)?
        {
            moved.push((shard as i32, w));
        }
    }
    if !node.meta.is_leader() {
        node.state.set(KEYS, None);
    } else if let Some(w) = mirror_keys(node, pool, &mut tx, cluster)
        .await
        .map_err(forget_raced)?
    {
        moved.push((KEYS, w));
    }
    if !moved.is_empty() {
        tx.commit().await?;
    }
    for (id, w) in moved {
        node.state.set(id, Some(w));
    }
    for (shard, local) in node.replicas.pin().iter() {
        if let Some(w) = node.state.watermark(*shard as i32) {
            let through = local.group.last_applied().map_or(0, |l| l.index);
            metrics::gauge!("mirror_lag_entries", "shard" => shard.to_string())
                .set(through.saturating_sub(w) as f64);
        }
    }
    metrics::gauge!("mirror_last_success_timestamp_seconds")
        .set(linkrift_model::now_ms() as f64 / 1000.0);
    Ok(())
}

/// This cluster's watermark of `id`, cached while this node leads it; `None` if this
/// cluster has none yet.
async fn watermark(
    node: &Mirrored,
    pool: &PgPool,
    cluster: &str,
    id: i32,
) -> Result<Option<u64>, sqlx::Error> {
    match node.state.watermark(id) {
        Some(w) => Ok(Some(w)),
        None => {
            let w = read_watermark(pool, cluster, id).await?;
            node.state.set(id, w);
            Ok(w)
        }
    }
}

/// Writes shard `shard`'s changes since its watermark (one batch, or one resync) into
/// `tx`; the watermark it moves to, if any.
async fn mirror_shard(
    node: &Mirrored,
    pool: &PgPool,
    tx: &mut Transaction<'_, Postgres>,
    cluster: &str,
    shard: u32,
    local: &LocalShard,
) -> Result<Option<u64>, MirrorError> {
    let id = shard as i32;
    let mirrored = watermark(node, pool, cluster, id).await?;
    let reader = local.reader();
    // No watermark of this cluster's: whatever the table holds for the shard is another
    // cluster's (or nothing), so the whole shard is written.
    let since = match mirrored {
        Some(m) => reader.changes_since(m, BATCH),
        None => Since::Gap,
    };
    match since {
        Since::Changes(changes, upto) => {
            let mirrored = mirrored.unwrap_or(0);
            if upto <= mirrored {
                return Ok(None);
            }
            let rows = upsert(tx, shard, &changes).await?;
            move_watermark(tx, cluster, id, Some(mirrored), upto).await?;
            metrics::counter!("mirror_rows_written_total").increment(rows);
            Ok(Some(upto))
        }
        Since::Gap => {
            // The state and the index it reflects, read together under the group's lock.
            let (links, through) = local.group.read(|_| reader.everything());
            tracing::info!(shard, ?mirrored, through, links = links.len(), "the change feed does not reach back to this cluster's watermark (or it has none); resyncing the shard");
            let mut rows = 0;
            for chunk in links.chunks(RESYNC_CHUNK) {
                let changes: Vec<(u64, Change)> = chunk
                    .iter()
                    .map(|l| (through, Change::Upsert(l.clone())))
                    .collect();
                rows += upsert(tx, shard, &changes).await?;
            }
            let live: Vec<String> = links.iter().map(|l| l.code.as_str().to_string()).collect();
            let gone = sqlx::query(
                "UPDATE links SET deleted = true, log_index = $3 \
                 WHERE shard = $1 AND NOT deleted AND code <> ALL($2)",
            )
            .bind(id)
            .bind(&live)
            .bind(through as i64)
            .execute(&mut **tx)
            .await?;
            move_watermark(tx, cluster, id, mirrored, through).await?;
            metrics::counter!("mirror_rows_written_total").increment(rows + gone.rows_affected());
            metrics::counter!("mirror_resyncs_total").increment(1);
            Ok(Some(through))
        }
    }
}

/// Writes the API keys into `tx` when the meta group moved past their watermark: keys are
/// few, so every change writes them all (hashes only). The watermark it moves to, if any.
async fn mirror_keys(
    node: &Mirrored,
    pool: &PgPool,
    tx: &mut Transaction<'_, Postgres>,
    cluster: &str,
) -> Result<Option<u64>, MirrorError> {
    let mirrored = watermark(node, pool, cluster, KEYS).await?;
    // The keys and the index they reflect, read together under the group's lock.
    let (keys, through) = node.meta.read(|a| {
        let through = a.last_applied.map_or(0, |l| l.index);
        (node.directory.all(), through)
    });
    if mirrored.is_some_and(|m| through <= m) {
        return Ok(None);
    }
    let scopes =
        |k: &crate::domain::ApiKeyRecord| serde_json::to_string(&k.scopes).expect("scopes encode");
    let done = sqlx::query(
        "INSERT INTO api_keys (id, name, hash, scopes, created_at, revoked_at) \
         SELECT id, name, hash, ARRAY(SELECT jsonb_array_elements_text(scopes::jsonb)), \
                timestamptz 'epoch' + created * interval '1 millisecond', \
                timestamptz 'epoch' + revoked * interval '1 millisecond' \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[]) \
              AS t(id, name, hash, scopes, created, revoked) \
         ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, hash = EXCLUDED.hash, \
             scopes = EXCLUDED.scopes, created_at = EXCLUDED.created_at, \
             revoked_at = EXCLUDED.revoked_at",
    )
    .bind(keys.iter().map(|k| k.id.clone()).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.name.clone()).collect::<Vec<_>>())
    .bind(
        keys.iter()
            .map(|k| k.hash.as_str().to_string())
            .collect::<Vec<_>>(),
    )
    .bind(keys.iter().map(scopes).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.created_at).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.revoked_at).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    move_watermark(tx, cluster, KEYS, mirrored, through).await?;
    metrics::counter!("mirror_rows_written_total").increment(done.rows_affected());
    Ok(Some(through))
}

async fn read_watermark(pool: &PgPool, cluster: &str, id: i32) -> Result<Option<u64>, sqlx::Error> {
    let row: Option<(i64,)> = sqlx::query_as(
        "SELECT applied_index FROM mirror_watermarks WHERE cluster = $1 AND shard = $2",
    )
    .bind(cluster)
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(i,)| i as u64))
}

/// Moves this cluster's watermark of `shard` from `from` (`None`: it has none yet) to
/// `to`, or fails if another node moved it meanwhile.
async fn move_watermark(
    tx: &mut Transaction<'_, Postgres>,
    cluster: &str,
    shard: i32,
    from: Option<u64>,
    to: u64,
) -> Result<(), MirrorError> {
    let moved = match from {
        None => {
            sqlx::query(
                "INSERT INTO mirror_watermarks (cluster, shard, applied_index) \
                 VALUES ($1, $2, $3) ON CONFLICT (cluster, shard) DO NOTHING",
            )
            .bind(cluster)
            .bind(shard)
            .bind(to as i64)
            .execute(&mut **tx)
            .await?
        }
        Some(from) => {
            sqlx::query(
                "UPDATE mirror_watermarks SET applied_index = $4, updated_at = now() \
                 WHERE cluster = $1 AND shard = $2 AND applied_index = $3",
            )
            .bind(cluster)
            .bind(shard)
            .bind(from as i64)
            .bind(to as i64)
            .execute(&mut **tx)
            .await?
        }
    };
    if moved.rows_affected() == 1 {
        Ok(())
    } else {
        Err(MirrorError::Raced(shard))
    }
}

/// Writes the final state of every link `changes` touch (the last change of each wins: the
/// changes are in log order); returns the rows written.
async fn upsert(
    tx: &mut Transaction<'_, Postgres>,
    shard: u32,
    changes: &[(u64, Change)],
) -> Result<u64, sqlx::Error> {
    let mut last: HashMap<&str, (u64, &Link, bool)> = HashMap::new();
    for (index, change) in changes {
        let (link, deleted) = match change {
            Change::Upsert(l) => (l, false),
            Change::Delete(l) => (l, true),
        };
        last.insert(link.code.as_str(), (*index, link, deleted));
    }
    if last.is_empty() {
        return Ok(0);
    }
    let mut cols = Columns::default();
    for (index, link, deleted) in last.values() {
        cols.push(*index, link, *deleted);
    }
    let done = sqlx::query(
        "INSERT INTO links (code, shard, url, title, tags, created_at, updated_at, expires_at, \
                            redirect, archived, version, deleted, log_index) \
         SELECT code, $2, url, title, ARRAY(SELECT jsonb_array_elements_text(tags::jsonb)), \
                timestamptz 'epoch' + created * interval '1 millisecond', \
                timestamptz 'epoch' + updated * interval '1 millisecond', \
                timestamptz 'epoch' + expires * interval '1 millisecond', \
                redirect, archived, version, deleted, log_index \
         FROM UNNEST($1::text[], $3::text[], $4::text[], $5::text[], $6::int8[], $7::int8[], \
                     $8::int8[], $9::int2[], $10::bool[], $11::int8[], $12::bool[], $13::int8[]) \
              AS t(code, url, title, tags, created, updated, expires, redirect, archived, \
                   version, deleted, log_index) \
         ON CONFLICT (code) DO UPDATE SET shard = EXCLUDED.shard, url = EXCLUDED.url, \
             title = EXCLUDED.title, tags = EXCLUDED.tags, created_at = EXCLUDED.created_at, \
             updated_at = EXCLUDED.updated_at, expires_at = EXCLUDED.expires_at, \
             redirect = EXCLUDED.redirect, archived = EXCLUDED.archived, \
             version = EXCLUDED.version, deleted = EXCLUDED.deleted, \
             log_index = EXCLUDED.log_index",
    )
    .bind(&cols.code)
    .bind(shard as i32)
    .bind(&cols.url)
    .bind(&cols.title)
    .bind(&cols.tags)
    .bind(&cols.created)
    .bind(&cols.updated)
    .bind(&cols.expires)
    .bind(&cols.redirect)
    .bind(&cols.archived)
    .bind(&cols.version)
    .bind(&cols.deleted)
    .bind(&cols.log_index)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}

/// Links as columns, for one `UNNEST` upsert.
#[derive(Default)]
struct Columns {
    code: Vec<String>,
    url: Vec<String>,
    title: Vec<Option<String>>,
    tags: Vec<String>,
    created: Vec<i64>,
    updated: Vec<i64>,
    expires: Vec<Option<i64>>,
    redirect: Vec<i16>,
    archived: Vec<bool>,
    version: Vec<i64>,
    deleted: Vec<bool>,
    log_index: Vec<i64>,
}

impl Columns {
    fn push(&mut self, index: u64, link: &Link, deleted: bool) {
        let tags: Vec<&str> = link.tags.iter().map(|t| t.as_str()).collect();
        self.code.push(link.code.as_str().to_string());
        self.url.push(link.url.as_str().to_string());
        self.title
            .push(link.title.as_ref().map(|t| t.as_str().to_string()));
        self.tags
            .push(serde_json::to_string(&tags).expect("tags encode"));
        self.created.push(link.created_at);
        self.updated.push(link.updated_at);
        self.expires.push(link.expires_at);
        self.redirect.push(link.redirect.code() as i16);
        self.archived.push(link.archived);
        self.version.push(link.version as i64);
        self.deleted.push(deleted);
        self.log_index.push(index as i64);
    }
}
