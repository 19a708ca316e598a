//! The Postgres mirror against a real PostgreSQL server started for each test: mixed
//! traffic on three nodes lands row by row, and Postgres stopped under load costs no
//! request and is caught up with.
//!
//! (Over 600 lines: the mirror's end-to-end tests, each starting real nodes and a real
//! PostgreSQL; they share this file's helpers.)

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};
use support::cluster::{assert_no_failed_redirect, member, seed_links, trio, Load, Root};
use support::postgres::Postgres;
use support::{certs, Node, ADMIN_KEY};

/// What the cluster and the mirror must agree on, per live link.
#[derive(Debug, PartialEq, Eq, Clone)]
struct Row3 {
    url: String,
    title: Option<String>,
    tags: Vec<String>,
    redirect: i64,
    archived: bool,
    version: i64,
}

/// Every live link, read through `via` (page by page).
async fn cluster_links(via: &Node) -> BTreeMap<String, Row3> {
    let mut out = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/links?limit=1000&cursor={c}"),
            None => "/v1/links?limit=1000".to_string(),
        };
        let page = via.get_json(&path, ADMIN_KEY).await;
        for l in page["links"].as_array().unwrap() {
            out.insert(
                l["code"].as_str().unwrap().to_string(),
                Row3 {
                    url: l["url"].as_str().unwrap().to_string(),
                    title: l["title"].as_str().map(str::to_string),
                    tags: serde_json::from_value(l["tags"].clone()).unwrap(),
                    redirect: l["redirect_status"].as_i64().unwrap(),
                    archived: l["archived"].as_bool().unwrap(),
                    version: l["version"].as_i64().unwrap(),
                },
            );
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

/// Every row of the mirror: live ones, and the codes marked deleted (empty before the
/// mirror has created its tables).
async fn mirror_links(pg: &PgPool) -> (BTreeMap<String, Row3>, Vec<String>) {
    let rows = sqlx::query(
        "SELECT code, url, title, tags, redirect, archived, version, deleted FROM links",
    )
    .fetch_all(pg)
    .await
    .or_else(|e| match &e {
        sqlx::Error::Database(d) if d.code().as_deref() == Some("42P01") => Ok(vec![]),
        _ => Err(e),
    })
    .unwrap();
    let (mut live, mut deleted) = (BTreeMap::new(), Vec::new());
    for r in rows {
        let code: String = r.get("code");
        if r.get::<bool, _>("deleted") {
            deleted.push(code);
            continue;
        }
        live.insert(
            code,
            Row3 {
                url: r.get("url"),
                title: r.get("title"),
                tags: r.get("tags"),
                redirect: r.get::<i16, _>("redirect") as i64,
                archived: r.get("archived"),
                version: r.get("version"),
            },
        );
    }
    (live, deleted)
}

/// Waits until the mirror's live rows equal the cluster's links (read through `via`), and
/// every code in `deleted` is marked deleted.
async fn wait_mirrored(via: &Node, pg: &PgPool, deleted: &[String], within: Duration) {
    let want = cluster_links(via).await;
    let deadline = Instant::now() + within;
    loop {
        let (live, gone) = mirror_links(pg).await;
        if live == want && deleted.iter().all(|c| gone.contains(c)) {
            return;
        }
        if Instant::now() >= deadline {
            let missing: Vec<_> = want
                .keys()
                .filter(|c| !live.contains_key(*c))
                .take(5)
                .collect();
            let extra: Vec<_> = live
                .keys()
                .filter(|c| !want.contains_key(*c))
                .take(5)
                .collect();
            let differ: Vec<_> = want
                .iter()
                .filter(|(c, r)| live.get(*c).is_some_and(|l| l != *r))
                .take(3)
                .collect();
            panic!(
                "the mirror does not equal the cluster after {within:?}: {} links, {} rows; \
                 missing {missing:?}, extra {extra:?}, different {differ:?}",
                want.len(),
                live.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn connect(pg: &Postgres) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect(&pg.url)
        .await
        .unwrap()
}

/// Creates, updates and deletes through all of `nodes`, `concurrency` at a time; returns
/// the codes deleted.
async fn mixed_traffic(nodes: &[&Node], creates: usize, concurrency: usize) -> Vec<String> {
    // Creates in bulk, through every node in turn.
    let mut codes = Vec::new();
    for (i, start) in (0..creates).step_by(1000).enumerate() {
        let node = nodes[i % nodes.len()];
        let links: Vec<Value> = (start..(start + 1000).min(creates))
            .map(|n| json!({ "url": format!("https://mirror.example/{n}"), "tags": [format!("t{}", n % 7)] }))
            .collect();
        let r = node
            .http
            .post(node.url("/v1/links/bulk"))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({ "links": links }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        for item in body["results"].as_array().unwrap() {
            assert_eq!(item["status"], 201, "{item}");
            codes.push(item["link"]["code"].as_str().unwrap().to_string());
        }
    }
    // A quarter are updated (some twice), a sixth deleted.
    let ops: Vec<(usize, String, bool)> = codes
        .iter()
        .enumerate()
        .filter_map(|(i, c)| match i % 12 {
            0..=2 => Some((i, c.clone(), false)),
            3 => Some((i, c.clone(), true)),
            4 => Some((i, c.clone(), false)),
            _ => None,
        })
        .chain(
            codes
                .iter()
                .enumerate()
                .step_by(12)
                .map(|(i, c)| (i, c.clone(), false)),
        )
        .collect();
    let deleted = Arc::new(Mutex::new(Vec::new()));
    futures::stream::iter(ops)
        .for_each_concurrent(concurrency, |(i, code, delete)| {
            let node = nodes[i % nodes.len()];
            let deleted = deleted.clone();
            async move {
                let url = node.url(&format!("/v1/links/{code}"));
                let r = if delete {
                    node.http.delete(url).bearer_auth(ADMIN_KEY).send().await
                } else {
                    node.http
                        .patch(url)
                        .bearer_auth(ADMIN_KEY)
                        .json(&json!({ "title": format!("changed {i}"), "tags": ["edited"] }))
                        .send()
                        .await
                }
                .unwrap();
                assert!(
                    r.status().is_success(),
                    "{} {code}: {}",
                    r.status(),
                    r.text().await.unwrap()
                );
                if delete {
                    deleted.lock().unwrap().push(code);
                }
            }
        })
        .await;
    let deleted = deleted.lock().unwrap().clone();
    deleted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_changes_on_three_nodes_land_in_postgres_row_by_row() {
    let pg = Postgres::start();
    let root = Root::new();
    let ([n1, n2, n3], _) = trio(root.path(), &["--postgres-url", pg.url.as_str()]).await;
    // 6,700 creates, then 3,350 updates and deletes: 10,050 changes.
    let deleted = mixed_traffic(&[&n1, &n2, &n3], 6_700, 32).await;
    assert!(!deleted.is_empty());
    // Keys: one kept, one revoked.
    let mut made = Vec::new();
    for (node, scope) in [(&n3, "links:read"), (&n2, "links:write")] {
        let r = node
            .http
            .post(node.url("/v1/keys"))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({ "name": "mirrored", "scopes": [scope] }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let body: Value = r.json().await.unwrap();
        made.push((
            body["id"].as_str().unwrap().to_string(),
            body["key"].as_str().unwrap().to_string(),
        ));
    }
    let (kept, revoked_id) = (made[0].1.clone(), made[1].0.clone());
    let r = n1
        .http
        .delete(n1.url(&format!("/v1/keys/{revoked_id}")))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "revoking {revoked_id}: {}",
        r.status()
    );
    let keys = n1.get_json("/v1/keys", ADMIN_KEY).await;
    let db = connect(&pg).await;
    wait_mirrored(&n2, &db, &deleted, Duration::from_secs(60)).await;
    // Every key is there, by hash only, the revoked one marked.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows: Vec<(String, String, bool)> =
            sqlx::query_as("SELECT id, hash, revoked_at IS NOT NULL FROM api_keys")
                .fetch_all(&db)
                .await
                .unwrap();
        let listed = keys["keys"].as_array().unwrap().len();
        let revoked_rows: Vec<&String> = rows.iter().filter(|r| r.2).map(|r| &r.0).collect();
        if rows.len() == listed && revoked_rows == vec![&revoked_id] {
            for (_, hash, _) in &rows {
                assert_eq!(hash.len(), 64, "a SHA-256 in hex");
                assert!(!hash.contains(&kept) && !kept.contains(hash.as_str()));
            }
            break;
        }
        assert!(Instant::now() < deadline, "keys not mirrored: {rows:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Each shard's watermark is where its log is, all of one cluster's.
    let marks: Vec<(i32, i64)> =
        sqlx::query_as("SELECT shard, applied_index FROM mirror_watermarks ORDER BY shard")
            .fetch_all(&db)
            .await
            .unwrap();
    let clusters: Vec<(String,)> = sqlx::query_as("SELECT DISTINCT cluster FROM mirror_watermarks")
        .fetch_all(&db)
        .await
        .unwrap();
    assert!(
        clusters.len() == 1 && clusters[0].0.len() == 32,
        "one cluster's incarnation, in hex: {clusters:?}"
    );
    assert_eq!(
        marks.len(),
        9,
        "the meta group (-1) and 8 shards: {marks:?}"
    );
    let s = n1.get_json("/admin/status", ADMIN_KEY).await;
    assert!(
        s["mirror_lag"].is_u64(),
        "cluster status reports the mirror's lag: {s}"
    );
    for (shard, index) in marks {
        let applied = s["groups"][(shard + 1) as usize]["applied"]
            .as_i64()
            .unwrap();
        assert!(
            index <= applied && index > 0,
            "shard {shard}: watermark {index}, applied {applied}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_under_load_fails_no_request_and_the_mirror_catches_up() {
    let pg = Postgres::start();
    let root = Root::new();
    let ([n1, n2, n3], _) = trio(root.path(), &["--postgres-url", pg.url.as_str()]).await;
    let known = seed_links(&n1, 30).await;
    let db = connect(&pg).await;
    wait_mirrored(&n1, &db, &[], Duration::from_secs(30)).await;
    db.close().await;

    let targets = Arc::new(Mutex::new(vec![
        n1.base.clone(),
        n2.base.clone(),
        n3.base.clone(),
    ]));
    let load = Load::start(targets, known);
    pg.stop();
    let down = Instant::now();
    // Writes and redirects go on while Postgres is down; the mirror falls behind.
    let deleted = mixed_traffic(&[&n1, &n2, &n3], 2_000, 16).await;
    while down.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pg.resume();
    let ((ok, failures), (acked, unknown)) = load.finish().await;
    assert_no_failed_redirect(ok, &failures);
    assert!(
        unknown.is_empty(),
        "creates failed while Postgres was down: {unknown:?}"
    );
    assert!(!acked.is_empty());
    let db = connect(&pg).await;
    wait_mirrored(&n3, &db, &deleted, Duration::from_secs(60)).await;
    let log = std::fs::read_to_string(root.path().join("n1.log")).unwrap();
    let warnings = log.matches("the postgres mirror is behind").count();
    assert!(warnings >= 1, "the outage is logged");
    assert!(
        warnings <= 6,
        "without flooding: {warnings} warnings in 30 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_mirroring_leader_loses_and_repeats_no_row() {
    let pg = Postgres::start();
    let root = Root::new();
    let ([n1, n2, n3], s) = trio(root.path(), &["--postgres-url", pg.url.as_str()]).await;
    let known = seed_links(&n2, 30).await;
    // The node leading (and so mirroring) the most shards dies while creates stream in.
    let victim = s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|n| n["leads"].as_u64().unwrap())
        .unwrap()["id"]
        .as_u64()
        .unwrap();
    let mut nodes = vec![n1, n2, n3];
    let victim = nodes.remove(nodes.iter().position(|n| n.node_id == victim).unwrap());
    let targets = Arc::new(Mutex::new(nodes.iter().map(|n| n.base.clone()).collect()));
    let load = Load::start(targets, known);
    let db = connect(&pg).await;
    // Kill it once its mirror has written some of the load.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM links")
            .fetch_one(&db)
            .await
            .unwrap();
        if rows > 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the mirror wrote {rows} rows in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    victim.kill9();
    // Keep writing until every shard has a new leader (which mirrors from the watermark).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = nodes[0].get_json("/admin/status", ADMIN_KEY).await;
        let led = s["groups"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| !g["leader"].is_null());
        if led && s["mirror_lag"].is_u64() {
            break;
        }
        assert!(Instant::now() < deadline, "groups without a leader: {s:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ((ok, failures), (acked, _unknown)) = load.finish().await;
    assert_no_failed_redirect(ok, &failures);
    assert!(acked.len() > 100, "the load ran: {} creates", acked.len());
    wait_mirrored(&nodes[0], &db, &[], Duration::from_secs(60)).await;
    // Every acknowledged create is one row, live.
    let (live, _) = mirror_links(&db).await;
    for (url, code) in &acked {
        assert_eq!(
            live.get(code).map(|r| &r.url),
            Some(url),
            "acknowledged {code}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_compacted_past_the_watermark_resyncs_the_shard() {
    let pg = Postgres::start();
    let root = Root::new();
    // One shard, snapshotting every 100 entries.
    let flags = [
        "--postgres-url",
        pg.url.as_str(),
        "--shard-count",
        "1",
        "--snapshot-after-entries",
        "100",
        "--log",
        "info,openraft=warn",
    ];
    let node = member(root.path(), 1, None, &flags);
    node.wait_ready().await;
    let early = seed_links(&node, 50).await;
    let db = connect(&pg).await;
    wait_mirrored(&node, &db, &[], Duration::from_secs(30)).await;
    db.close().await;

    // Postgres goes away; links are deleted and many more created, until the shard has
    // taken a snapshot past the mirror's watermark.
    pg.stop();
    let mut deleted = Vec::new();
    for (code, _) in early.iter().take(10) {
        let r = node
            .http
            .delete(node.url(&format!("/v1/links/{code}")))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        deleted.push(code.clone());
    }
    let snapshot = root.path().join("n1/groups/g1/current.snap");
    let mut batch = 0;
    while !snapshot.exists() {
        // Small batches: the shard writes a bulk request's creates in few log entries.
        assert!(batch < 2000, "no snapshot after 2,000 batches of creates");
        let links: Vec<Value> = (0..20)
            .map(|i| json!({ "url": format!("https://compacted.example/{batch}/{i}") }))
            .collect();
        let r = node
            .http
            .post(node.url("/v1/links/bulk"))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({ "links": links }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        batch += 1;
    }
    // A restart restores the snapshot: the change feed now starts after it.
    let exit = node.terminate();
    assert!(exit.success());
    let node = member(root.path(), 1, None, &flags);
    node.wait_ready().await;
    pg.resume();
    let db = connect(&pg).await;
    wait_mirrored(&node, &db, &deleted, Duration::from_secs(60)).await;
    let log = std::fs::read_to_string(root.path().join("n1.log")).unwrap();
    assert!(
        log.contains("resyncing the shard"),
        "the shard was resynced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restored_from_the_mirror_serves_every_link_the_same() {
    let pg = Postgres::start();
    let root = Root::new();
    let ([n1, n2, n3], _) = trio(root.path(), &["--postgres-url", pg.url.as_str()]).await;
    let deleted = mixed_traffic(&[&n1, &n2, &n3], 600, 16).await;
    let reader = n2.new_key(&["links:read"]).await;
    let db = connect(&pg).await;
    wait_mirrored(&n1, &db, &deleted, Duration::from_secs(60)).await;
    // The keys too (the meta group is mirrored once it changes).
    let deadline = Instant::now() + Duration::from_secs(30);
    while sqlx::query_as::<_, (i64,)>("SELECT count(*) FROM api_keys")
        .fetch_one(&db)
        .await
        .unwrap()
        .0
        < 2
    {
        assert!(Instant::now() < deadline, "keys not mirrored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cluster = cluster_links(&n1).await;

    let restored_dir = root.path().join("restored");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_linkrift"))
        .args([
            "restore",
            "--from-postgres",
            &pg.url,
            "--shard-count",
            "4",
            "--data-dir",
        ])
        .arg(&restored_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("restored {} links and 2 API keys", cluster.len()))
            && stdout.contains("matches the mirror"),
        "{stdout}"
    );
    // A second restore into the same directory is refused.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_linkrift"))
        .args(["restore", "--from-postgres", &pg.url, "--data-dir"])
        .arg(&restored_dir)
        .output()
        .unwrap();
    assert!(!again.status.success());

    // The old cluster is gone; the restored node mirrors into the same database.
    let old_marks: Vec<(i32, i64)> =
        sqlx::query_as("SELECT shard, applied_index FROM mirror_watermarks ORDER BY shard")
            .fetch_all(&db)
            .await
            .unwrap();
    drop((n1, n2, n3));
    // The restored node: every link as the cluster has it, deleted ones gone, keys work.
    let node = Node::start_with(
        &restored_dir,
        &[],
        &["--http", "127.0.0.9:0", "--postgres-url", pg.url.as_str()],
    );
    node.wait_ready().await;
    assert_eq!(cluster_links(&node).await, cluster);
    for (code, row) in cluster.iter().take(100) {
        assert_eq!(
            node.redirect(code).await,
            (row.redirect as u16, Some(row.url.clone()))
        );
    }
    for code in deleted.iter().take(20) {
        assert_eq!(node.redirect(code).await.0, 404, "{code} was deleted");
    }
    let r = node
        .http
        .get(node.url("/v1/links?limit=1"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a key made before the restore still works");

    // Its changes reach the mirror at once, though its logs are far shorter than the old
    // cluster's, whose watermarks are still in the table.
    let status = node.get_json("/admin/status", ADMIN_KEY).await;
    let (shard, old_mark) = old_marks.iter().find(|(s, _)| *s >= 0).copied().unwrap();
    let applied = status["groups"][(shard + 1) as usize]["applied"]
        .as_i64()
        .unwrap();
    assert!(
        applied < old_mark,
        "shard {shard}: the restored log ({applied}) is behind the old watermark ({old_mark})"
    );
    let mut codes = Vec::new();
    for i in 0..40 {
        let code = format!("after-restore-{i}");
        let (status, body) = node
            .create(
                ADMIN_KEY,
                json!({"url": format!("https://after.example/{i}"), "code": code}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        codes.push(code);
    }
    let gone = &codes[..5];
    for code in gone {
        let r = node
            .http
            .delete(node.url(&format!("/v1/links/{code}")))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    let mut deleted = deleted;
    deleted.extend(gone.iter().cloned());
    wait_mirrored(&node, &db, &deleted, Duration::from_secs(60)).await;
}

async fn try_connect(url: &str) -> Result<PgPool, String> {
    PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_reaches_a_postgres_that_takes_only_tls_with_verify_full() {
    let root = Root::new();
    let (pki, other) = (root.path().join("pki"), root.path().join("other"));
    for dir in [&pki, &other] {
        let dir = dir.to_str().unwrap();
        certs(&["init", dir]);
        certs(&["node", dir, "--name", "pg", "--host", "127.0.0.1"]);
    }
    let pg = Postgres::start_tls(&pki.join("pg.pem"), &pki.join("pg-key.pem"));
    // The server takes TLS only.
    let plain = try_connect(&format!("{}?sslmode=disable", pg.url))
        .await
        .expect_err("a plaintext connection is refused");
    assert!(plain.contains("pg_hba.conf"), "{plain}");
    // verify-full against another CA: refused.
    let stranger = try_connect(&format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        pg.url,
        other.join("ca.pem").display()
    ))
    .await
    .expect_err("a server whose certificate another CA signed is refused");
    assert!(
        stranger.to_lowercase().contains("certificate"),
        "{stranger}"
    );

    let url = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        pg.url,
        pki.join("ca.pem").display()
    );
    let node = Node::start_logged(
        &root.path().join("n1"),
        &[("LINKRIFT_ADMIN_KEY", ADMIN_KEY)],
        &["--postgres-url", &url],
        Some(&root.path().join("n1.log")),
    );
    node.wait_ready().await;
    seed_links(&node, 20).await;
    let db = try_connect(&url).await.unwrap();
    wait_mirrored(&node, &db, &[], Duration::from_secs(30)).await;
    // Every connection the server has is encrypted.
    let unencrypted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
         WHERE client_addr IS NOT NULL AND NOT ssl",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(unencrypted, 0);
}
