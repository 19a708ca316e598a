//! Click analytics into a real ClickHouse (a throwaway `clickhouse-server` per test): every
//! redirect of a real `linkrift` process lands exactly once, an outage loses nothing, a
//! restart replays the spool, and the stats agree with the embedded store's.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::clickhouse::ClickHouse;
use support::cluster::{member, Root};
use support::{certs, error_code, Node, ADMIN_KEY};

const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
const SAFARI_IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1";
const FIREFOX_LINUX: &str =
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0";
const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";

/// The traffic's shapes: user agent, country, referer. Click `i` has shape `i % 6`; shapes
/// 4 and 5 are bots.
const SHAPES: [(&str, &str, &str); 6] = [
    (CHROME, "BR", "https://news.example.com/a"),
    (CHROME, "DE", ""),
    (SAFARI_IPHONE, "US", "https://t.example.org/x"),
    (FIREFOX_LINUX, "BR", "https://news.example.com/b"),
    (GOOGLEBOT, "US", ""),
    ("curl/8.5.0", "", ""),
];

fn node_with(root: &Path, i: u8, clickhouse: Option<&ClickHouse>) -> Node {
    let mut flags = vec!["--country-header", "CF-IPCountry"];
    if let Some(ch) = clickhouse {
        flags.extend(["--clickhouse-url", ch.url.as_str()]);
    }
    member(root, i, None, &flags)
}

async fn create(node: &Node, code: &str) {
    let (status, body) = node
        .create(
            ADMIN_KEY,
            json!({ "url": format!("https://example.com/{code}"), "code": code }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

/// Redirects `code` with click shape `i` on `node`; whether it answered 302.
async fn click(client: &reqwest::Client, node: &Node, code: &str, i: usize) -> bool {
    let (ua, country, referer) = SHAPES[i % SHAPES.len()];
    let mut request = client
        .get(node.url(&format!("/{code}")))
        .header("user-agent", ua)
        .header("cf-ipcountry", country);
    if !referer.is_empty() {
        request = request.header("referer", referer);
    }
    request.send().await.is_ok_and(|r| r.status() == 302)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// `n` clicks of `code`, 8 at a time; all must answer 302.
async fn clicks(node: &Node, code: &str, n: usize) {
    let client = client();
    let done = futures::future::join_all((0..8).map(|w| {
        let client = &client;
        async move {
            let mut ok = 0;
            for i in (w..n).step_by(8) {
                assert!(click(client, node, code, i).await, "click {i} failed");
                ok += 1;
            }
            ok
        }
    }))
    .await;
    assert_eq!(done.iter().sum::<usize>(), n);
}

async fn get(node: &Node, path: &str) -> (u16, String) {
    let r = node
        .http
        .get(node.url(path))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn stats(node: &Node, code: &str, query: &str) -> Value {
    let (status, body) = get(node, &format!("/v1/links/{code}/stats?{query}")).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits until `sql` answers `want` (and fails at once if it goes past it). Until the node
/// has created the table, the query fails; that counts as not yet. It fails when the count
/// has not moved for `within` (a spool draining on a loaded machine keeps moving), and in
/// any case after five times `within`.
async fn wait_count(ch: &ClickHouse, sql: &str, want: u64, within: Duration) {
    let started = Instant::now();
    let (mut seen, mut moved) = (None, Instant::now());
    loop {
        let answer = ch.try_query(sql).await;
        if let Ok(n) = &answer {
            let n: u64 = n.parse().unwrap();
            assert!(n <= want, "{sql}: {n}, more than the {want} clicks made");
            if n == want {
                return;
            }
            if seen != Some(n) {
                (seen, moved) = (Some(n), Instant::now());
            }
        }
        assert!(
            moved.elapsed() < within && started.elapsed() < 5 * within,
            "{sql}: {answer:?}, not {want} (stuck for {:?}, {:?} in all)",
            moved.elapsed(),
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_export_defuses_cells_a_spreadsheet_would_run() {
    let ch = ClickHouse::start().await;
    let root = Root::new();
    let node = node_with(root.path(), 1, Some(&ch));
    node.wait_ready().await;
    create(&node, "sheet").await;
    let client = client();
    let hostile = [
        (
            "=HYPERLINK(\"https://evil.example/\",\"x\")",
            "https://ok.example/",
        ),
        ("@SUM(1+1)", "https://ok.example/"),
        ("Mozilla/5.0 plain", "-2+3"),
    ];
    for (ua, referer) in hostile {
        let r = client
            .get(node.url("/sheet"))
            .header("user-agent", ua)
            .header("referer", referer)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 302);
    }
    wait_count(
        &ch,
        "SELECT count() FROM linkrift.clicks WHERE short_code = 'sheet'",
        hostile.len() as u64,
        Duration::from_secs(30),
    )
    .await;
    let (status, csv) = get(&node, "/v1/links/sheet/clicks?format=csv&bots=include").await;
    assert_eq!(status, 200, "{csv}");
    assert!(csv.contains("\"'=HYPERLINK("), "{csv}");
    assert!(csv.contains("\"'@SUM(1+1)\""), "{csv}");
    assert!(csv.contains("\"'-2+3\""), "{csv}");
    assert!(csv.contains("\"Mozilla/5.0 plain\""), "{csv}");
    // NDJSON is data for programs: the values as they came.
    let (status, ndjson) = get(&node, "/v1/links/sheet/clicks?bots=include").await;
    assert_eq!(status, 200, "{ndjson}");
    let agents: Vec<String> = ndjson
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["user_agent"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(agents.contains(&"@SUM(1+1)".to_string()), "{agents:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_redirect_is_one_event_in_clickhouse() {
    let ch = ClickHouse::start().await;
    let root = Root::new();
    let node = node_with(root.path(), 1, Some(&ch));
    node.wait_ready().await;
    create(&node, "counted").await;
    const N: usize = 3_000;
    clicks(&node, "counted", N).await;

    // Exactly N rows, none twice, without relying on merges.
    wait_count(
        &ch,
        "SELECT count() FROM linkrift.clicks WHERE short_code = 'counted'",
        N as u64,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        ch.number("SELECT uniqExact(click_id) FROM linkrift.clicks WHERE short_code = 'counted'")
            .await,
        N as u64
    );
    let bots = (0..N).filter(|i| i % 6 >= 4).count() as u64;
    assert_eq!(
        ch.number("SELECT sum(is_bot) FROM linkrift.clicks WHERE short_code = 'counted'")
            .await,
        bots
    );

    // The stats come from the hourly roll-up.
    let all = stats(&node, "counted", "bots=include&interval=hour").await;
    assert_eq!(all["total"], N as u64, "{all:#}");
    let people = stats(&node, "counted", "").await;
    assert_eq!(people["total"], N as u64 - bots, "{people:#}");
    assert_eq!(people["unique_visitors"], 3, "three browsers, one address");
    assert_eq!(
        stats(&node, "counted", "bots=only").await["unique_visitors"],
        2
    );

    // The raw events, as NDJSON and CSV.
    let (status, ndjson) = get(&node, "/v1/links/counted/clicks?bots=include").await;
    assert_eq!(status, 200, "{ndjson}");
    let events: Vec<Value> = ndjson
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), N);
    let ids: std::collections::HashSet<&str> =
        events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), N, "every event once");
    let first = &events[0];
    assert_eq!(first["code"], "counted");
    assert_eq!(first["ip"], "127.0.0.0", "truncated to 24 bits");
    assert!(
        first["at_ms"].as_u64().unwrap() > 1_700_000_000_000,
        "{first}"
    );
    assert!(
        events
            .windows(2)
            .all(|w| w[0]["at_ms"].as_u64() <= w[1]["at_ms"].as_u64()),
        "oldest first"
    );
    let (status, csv) = get(&node, "/v1/links/counted/clicks?format=csv").await;
    assert_eq!(status, 200, "{csv}");
    let mut lines = csv.lines();
    assert!(lines.next().unwrap().starts_with("\"id\",\"code\""));
    assert_eq!(
        lines.count() as u64,
        N as u64 - bots,
        "people only, by default"
    );

    // Bad requests, and ClickHouse down.
    let (status, body) = get(&node, "/v1/links/counted/clicks?format=xml").await;
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (status, error_code(&body)),
        (422, "invalid_input"),
        "{body}"
    );
    assert_eq!(get(&node, "/v1/links/nosuchcode/clicks").await.0, 404);
    let mut ch = ch;
    ch.stop();
    let (status, body) = get(&node, "/v1/links/counted/stats").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("ClickHouse"), "{body}");
    assert_eq!(get(&node, "/v1/links/counted/clicks").await.0, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clickhouse_outage_under_load_loses_nothing() {
    let mut ch = ClickHouse::start().await;
    let root = Root::new();
    let node = Arc::new(node_with(root.path(), 1, Some(&ch)));
    node.wait_ready().await;
    create(&node, "steady").await;

    // Redirects from 4 clients until told to stop (at most 2 minutes).
    let stop = Arc::new(AtomicBool::new(false));
    let load = (0..4)
        .map(|w| {
            let (node, stop) = (node.clone(), stop.clone());
            tokio::spawn(async move {
                let client = client();
                let hard_stop = Instant::now() + Duration::from_secs(120);
                let (mut ok, mut failed) = (0u64, 0u64);
                let mut i = w;
                while !stop.load(Ordering::Relaxed) && Instant::now() < hard_stop {
                    if click(&client, &node, "steady", i).await {
                        ok += 1;
                    } else {
                        failed += 1;
                    }
                    i += 4;
                }
                (ok, failed)
            })
        })
        .collect::<Vec<_>>();

    // Wait for clicks to reach ClickHouse, then take it away for 30 s.
    wait_until(
        "clicks reach ClickHouse",
        Duration::from_secs(30),
        || async { metric(&node.metrics().await, "clicks_ingested_total") > 0.0 },
    )
    .await;
    ch.stop();
    let down = Instant::now();
    wait_until(
        "clicks wait in the spool",
        Duration::from_secs(30),
        || async { metric(&node.metrics().await, "clicks_spooled") > 0.0 },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(down.elapsed())).await;
    ch.resume().await;
    // Traffic goes on while the spool drains.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for task in load {
        let (o, f) = task.await.unwrap();
        ok += o;
        failed += f;
    }
    assert_eq!(failed, 0, "no redirect fails while ClickHouse is away");
    assert!(ok > 1_000, "only {ok} redirects");

    // Every redirect is an event, once. (A batch cut off by the outage may have been
    // inserted before it is sent again; the table keeps one row per event id.)
    wait_count(
        &ch,
        "SELECT count() FROM linkrift.clicks FINAL WHERE short_code = 'steady'",
        ok,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        ch.number("SELECT uniqExact(click_id) FROM linkrift.clicks WHERE short_code = 'steady'")
            .await,
        ok
    );
    assert_eq!(
        stats(&node, "steady", "bots=include").await["total"],
        ok,
        "the roll-up counts each event once"
    );
    let m = node.metrics().await;
    assert_eq!(metric(&m, "clicks_dropped_total"), 0.0, "{m}");
    wait_until("the spool is empty", Duration::from_secs(10), || async {
        metric(&node.metrics().await, "clicks_spooled") == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_clicks_are_sent_after_a_restart() {
    let mut ch = ClickHouse::start().await;
    let root = Root::new();
    let node = node_with(root.path(), 1, Some(&ch));
    node.wait_ready().await;
    create(&node, "later").await;
    ch.stop();
    clicks(&node, "later", 500).await;
    // A clean stop writes what is batched to the spool.
    assert!(node.terminate().success());
    ch.resume().await;
    let node = node_with(root.path(), 1, Some(&ch));
    node.wait_ready().await;
    wait_count(
        &ch,
        "SELECT count() FROM linkrift.clicks WHERE short_code = 'later'",
        500,
        Duration::from_secs(30),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_stores_give_the_same_stats_for_the_same_traffic() {
    let ch = ClickHouse::start().await;
    let root = Root::new();
    let embedded = node_with(root.path(), 1, None);
    let clickhouse = node_with(root.path(), 2, Some(&ch));
    embedded.wait_ready().await;
    clickhouse.wait_ready().await;
    for node in [&embedded, &clickhouse] {
        create(node, "same").await;
        clicks(node, "same", 600).await;
    }
    wait_count(
        &ch,
        "SELECT count() FROM linkrift.clicks WHERE short_code = 'same'",
        600,
        Duration::from_secs(30),
    )
    .await;
    wait_until(
        "the embedded store has them",
        Duration::from_secs(15),
        || async { stats(&embedded, "same", "bots=include").await["total"] == 600 },
    )
    .await;
    for query in ["bots=include", "bots=exclude", "bots=only"] {
        let (a, b) = (
            stats(&embedded, "same", query).await,
            stats(&clickhouse, "same", query).await,
        );
        assert!(a["total"].as_u64().unwrap() > 0, "{query}: {a:#}");
        for field in [
            "total",
            "unique_visitors",
            "countries",
            "referrers",
            "devices",
            "browsers",
            "os",
            "bots",
        ] {
            assert_eq!(a[field], b[field], "{query}: {field}");
        }
        let sum = |s: &Value| -> u64 {
            s["series"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["clicks"].as_u64().unwrap())
                .sum()
        };
        assert_eq!(sum(&a), sum(&b), "{query}: series");
    }
    let people = stats(&clickhouse, "same", "").await;
    assert_eq!(people["total"], 400);
    assert_eq!(
        people["countries"][0],
        json!({ "value": "BR", "clicks": 200 })
    );
}

async fn wait_until<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clicks_reach_clickhouse_over_https_with_a_private_ca() {
    let root = Root::new();
    let (pki, other) = (root.path().join("pki"), root.path().join("other"));
    for dir in [&pki, &other] {
        let dir = dir.to_str().unwrap();
        certs(&["init", dir]);
        certs(&["node", dir, "--name", "ch", "--host", "127.0.0.1"]);
    }
    let ch = ClickHouse::start_tls(&pki.join("ch.pem"), &pki.join("ch-key.pem")).await;
    let https = ch.https_url.clone().unwrap();

    // A node that trusts another CA: ClickHouse is unreachable to it, its clicks wait in
    // the spool, and the error says why.
    let ca = other.join("ca.pem").display().to_string();
    let stranger = member(
        root.path(),
        2,
        None,
        &["--clickhouse-url", &https, "--clickhouse-ca", &ca],
    );
    stranger.wait_ready().await;
    create(&stranger, "untrusted").await;
    clicks(&stranger, "untrusted", 6).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(root.path().join("n2.log")).unwrap();
        if log.contains("certificate") {
            break;
        }
        assert!(Instant::now() < deadline, "no certificate error: {log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        ch.try_query("EXISTS TABLE linkrift.clicks")
            .await
            .as_deref(),
        Ok("0"),
        "nothing was written through an untrusted connection"
    );

    let ca = pki.join("ca.pem").display().to_string();
    let node = member(
        root.path(),
        1,
        None,
        &["--clickhouse-url", &https, "--clickhouse-ca", &ca],
    );
    node.wait_ready().await;
    create(&node, "sealed").await;
    clicks(&node, "sealed", 60).await;
    wait_count(
        &ch,
        "SELECT count() FROM linkrift.clicks WHERE short_code = 'sealed'",
        60,
        Duration::from_secs(30),
    )
    .await;
    let people = stats(&node, "sealed", "bots=include").await;
    assert_eq!(people["total"], 60, "{people:#}");
}

#[test]
fn a_clickhouse_ca_that_does_not_load_stops_the_node_at_start() {
    let root = tempfile::tempdir().unwrap();
    let ca = root.path().join("ca.pem");
    std::fs::write(&ca, "not a certificate").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_linkrift"))
        .args(["serve", "--data-dir"])
        .arg(root.path().join("data"))
        .args([
            "--http",
            "127.0.0.1:0",
            "--clickhouse-url",
            "https://127.0.0.1:1",
        ])
        .arg("--clickhouse-ca")
        .arg(&ca)
        .env("LINKRIFT_ADMIN_KEY", ADMIN_KEY)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("clickhouse_ca") && said.contains("no certificate"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_leaves_sends_its_spooled_clicks_first() {
    let mut ch = ClickHouse::start().await;
    let root = Root::new();
    // Four nodes, so that the three that stay can take the leaver's replicas.
    let flags = ["--clickhouse-url", ch.url.as_str()];
    let n1 = member(root.path(), 1, None, &flags);
    n1.wait_ready().await;
    let n3 = member(root.path(), 3, Some(&n1), &flags);
    let n4 = member(root.path(), 4, Some(&n1), &flags);
    let mut n2 = member(root.path(), 2, Some(&n1), &flags);
    support::cluster::wait_placed(&[&n1, &n2, &n3, &n4], 3).await;
    create(&n1, "parting").await;
    // Clicks on node 2 while ClickHouse is down: all of them wait in node 2's spool.
    ch.stop();
    clicks(&n2, "parting", 300).await;
    let r = n1
        .http
        .post(n1.url(&format!("/admin/nodes/{}/leave", n2.node_id)))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    // Node 2 is out and stops serving; only then does ClickHouse come back, so nothing
    // but the leave itself can send what the spool holds.
    let deadline = Instant::now() + Duration::from_secs(120);
    while n2.http.get(n2.url("/healthz")).send().await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "node 2 still serves after its leave"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ch.resume().await;
    let exit = n2.wait_exit(Duration::from_secs(120)).await;
    assert!(exit.success(), "node 2 exited with {exit}");
    wait_count(
        &ch,
        "SELECT count() FROM linkrift.clicks WHERE short_code = 'parting'",
        300,
        Duration::from_secs(30),
    )
    .await;
}

/// A node whose wall clock is 90 s ahead (libfaketime) delivers every click, stamped with
/// its clock. Only the wall clock: the chaos tests' clock skew once faked the monotonic
/// clock too, which no real machine does (NTP steps the wall clock alone), and every click
/// of the skewed node went missing there: the click thread's 50 ms waits (a futex with an
/// absolute monotonic deadline, which libfaketime moved 90 s ahead) took 90 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_clock_is_ahead_delivers_its_clicks() {
    const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "libfaketime is missing: scripts/test installs it (apt-get install libfaketime)"
    );
    let ch = ClickHouse::start().await;
    let root = Root::new();
    let env = [
        ("LINKRIFT_ADMIN_KEY", ADMIN_KEY),
        ("LD_PRELOAD", LIBFAKETIME),
        ("FAKETIME", "+90s"),
        ("FAKETIME_DONT_RESET", "1"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    let node = Node::start_with(
        &root.path().join("n1"),
        &env,
        &[
            "--clickhouse-url",
            ch.url.as_str(),
            "--country-header",
            "CF-IPCountry",
        ],
    );
    node.wait_ready().await;
    create(&node, "ahead").await;
    clicks(&node, "ahead", 200).await;
    wait_count(
        &ch,
        "SELECT count() FROM linkrift.clicks WHERE short_code = 'ahead'",
        200,
        Duration::from_secs(30),
    )
    .await;
    // Stamped with the node's clock: about 90 s ahead of this one.
    let ahead: i64 = ch
        .query("SELECT toInt64(min(clicked_at)) - toInt64(now()) FROM linkrift.clicks WHERE short_code = 'ahead'")
        .await
        .parse()
        .unwrap();
    assert!((60..=90).contains(&ahead), "clicks stamped {ahead} s ahead");
}
