//! Click analytics with the embedded store (no ClickHouse): redirects of real `linkrift`
//! processes are counted exactly, bots flagged and filtered, and every node's clicks added
//! up.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::cluster::{member, Root};
use support::{error_code, Node, ADMIN_KEY};

const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";

async fn click(node: &Node, code: &str, ua: &str, country: &str, referer: &str) {
    let r = node
        .http
        .get(node.url(&format!("/{code}")))
        .header("user-agent", ua)
        .header("cf-ipcountry", country)
        .header("referer", referer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
}

async fn stats(node: &Node, code: &str, query: &str) -> (u16, Value) {
    let r = node
        .http
        .get(node.url(&format!("/v1/links/{code}/stats?{query}")))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Waits until the stats (with `query`) count `total` clicks; returns them.
async fn wait_total(node: &Node, code: &str, query: &str, total: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, s) = stats(node, code, query).await;
        assert_eq!(status, 200, "{s}");
        if s["total"] == total {
            return s;
        }
        assert!(
            s["total"].as_u64().unwrap() < total && Instant::now() < deadline,
            "expected {total} clicks: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn top(s: &Value, dim: &str) -> Vec<(String, u64)> {
    s[dim]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["value"].as_str().unwrap().to_string(),
                t["clicks"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clicks_are_counted_exactly_and_bots_are_flagged() {
    let root = Root::new();
    let node = member(root.path(), 1, None, &["--country-header", "CF-IPCountry"]);
    node.wait_ready().await;
    let (status, body) = node
        .create(
            ADMIN_KEY,
            json!({ "url": "https://example.com/counted", "code": "counted" }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    for _ in 0..30 {
        click(
            &node,
            "counted",
            CHROME,
            "br",
            "https://News.Example.com/story",
        )
        .await;
    }
    for _ in 0..10 {
        click(&node, "counted", "curl/8.5.0", "US", "").await;
    }
    for _ in 0..5 {
        click(&node, "counted", GOOGLEBOT, "US", "").await;
    }

    let all = wait_total(&node, "counted", "bots=include&interval=hour", 45).await;
    let series: u64 = all["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["clicks"].as_u64().unwrap())
        .sum();
    assert_eq!(series, 45, "the hourly series adds up to the total");
    let people = wait_total(&node, "counted", "", 30).await;
    assert_eq!(people["bots"], "exclude");
    assert_eq!(people["interval"], "day");
    assert_eq!(top(&people, "countries"), vec![("BR".to_string(), 30)]);
    assert_eq!(
        top(&people, "referrers"),
        vec![("news.example.com".to_string(), 30)]
    );
    assert_eq!(top(&people, "devices"), vec![("desktop".to_string(), 30)]);
    assert_eq!(top(&people, "browsers"), vec![("Chrome".to_string(), 30)]);
    assert_eq!(people["unique_visitors"], 1, "one address, one browser");
    let bots = wait_total(&node, "counted", "bots=only", 15).await;
    assert_eq!(top(&bots, "devices"), vec![("bot".to_string(), 15)]);
    assert_eq!(bots["unique_visitors"], 2, "curl and Googlebot");

    // A range before the clicks has none; bad parameters and unknown links are refused.
    let (status, before) = stats(
        &node,
        "counted",
        "from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z&bots=include",
    )
    .await;
    assert_eq!((status, before["total"].as_u64()), (200, Some(0)));
    for bad in [
        "interval=week",
        "bots=maybe",
        "from=yesterday",
        "from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z",
    ] {
        let (status, body) = stats(&node, "counted", bad).await;
        assert_eq!(
            (status, error_code(&body)),
            (422, "invalid_input"),
            "{bad}: {body}"
        );
    }
    assert_eq!(stats(&node, "nosuchcode", "").await.0, 404);

    // Raw events are kept only in ClickHouse.
    let r = node
        .http
        .get(node.url("/v1/links/counted/clicks"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 501);
    let body: Value = r.json().await.unwrap();
    assert_eq!(error_code(&body), "clickhouse_required", "{body}");
}

/// The value of the sample `name` (with its labels, as printed) in an exposition.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in the exposition"))
}

/// Many redirects at once, from threads that share the click slots, with many user agents
/// and referers (interned per slot, described from memory): every one is counted, per
/// link, and none is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_redirects_are_each_counted_once() {
    const LINKS: usize = 8;
    const CLIENTS: usize = 16;
    const EACH: usize = 150;
    let root = Root::new();
    let node = member(root.path(), 1, None, &[]);
    node.wait_ready().await;
    for i in 0..LINKS {
        let (status, body) = node
            .create(
                ADMIN_KEY,
                json!({ "url": format!("https://example.com/{i}"), "code": format!("many{i}") }),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (http, base) = (node.http.clone(), node.url("/"));
            tokio::spawn(async move {
                for n in 0..EACH {
                    let i = (c + n) % LINKS;
                    // One code in four percent-encoded: it names the same link.
                    let path = if n % 4 == 0 {
                        format!("%6Dany{i}")
                    } else {
                        format!("many{i}")
                    };
                    let r = http
                        .get(format!("{base}{path}"))
                        .header("user-agent", format!("agent-{}/{}", c % 5, n % 7))
                        .header("referer", format!("https://site{}.example/", n % 3))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 302, "{path}");
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    let per_link = (CLIENTS * EACH / LINKS) as u64;
    for i in 0..LINKS {
        wait_total(&node, &format!("many{i}"), "bots=include", per_link).await;
    }
    let metrics = node.metrics().await;
    let total = (CLIENTS * EACH) as f64;
    assert_eq!(sample(&metrics, "clicks_ingested_total"), total);
    assert_eq!(sample(&metrics, "clicks_enqueued_total"), total);
    // The request counter (handles kept per thread) saw each redirect once, too.
    let redirects = "http_requests_total{route=\"/{code}\",status=\"302\"}";
    assert_eq!(sample(&metrics, redirects), total);
    for reason in ["queue_full", "store_error", "stopped"] {
        let name = format!("clicks_dropped_total{{reason=\"{reason}\"}}");
        assert_eq!(sample(&metrics, &name), 0.0, "{reason}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_nodes_clicks_are_added_up() {
    let root = Root::new();
    let n1 = member(root.path(), 1, None, &[]);
    n1.wait_ready().await;
    let n2 = member(root.path(), 2, Some(&n1), &[]);
    n2.wait_ready().await;
    let (status, body) = n1
        .create(
            ADMIN_KEY,
            json!({ "url": "https://example.com/both", "code": "both" }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    for _ in 0..11 {
        click(&n1, "both", CHROME, "DE", "").await;
    }
    for _ in 0..7 {
        click(&n2, "both", CHROME, "DE", "").await;
    }
    // Either node answers with both nodes' clicks.
    wait_total(&n1, "both", "", 18).await;
    wait_total(&n2, "both", "", 18).await;
}
