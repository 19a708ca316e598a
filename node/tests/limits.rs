//! Limits on the API: rate limits per key and per client address (429 with `Retry-After` and the
//! `RateLimit` headers above them, nothing refused below them, redirects never limited),
//! and `/metrics` behind a key.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{error_code, Node, ADMIN_KEY};

/// Starts a node allowing 5 requests per second per key and 2 per address, in bursts of
/// 2 seconds' worth (10 and 4 requests).
async fn limited(dir: &std::path::Path) -> Node {
    let node = Node::start_with(
        dir,
        &[
            ("LINKRIFT_ADMIN_KEY", ADMIN_KEY),
            ("LINKRIFT_API_RATE_PER_KEY", "5"),
            ("LINKRIFT_API_RATE_PER_IP", "2"),
            ("LINKRIFT_API_RATE_BURST_SECONDS", "2"),
        ],
        &[],
    );
    node.wait_ready().await;
    node
}

async fn get(node: &Node, path: &str, key: Option<&str>) -> reqwest::Response {
    let mut request = node.http.get(node.url(path));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_above_the_limits_get_429_with_retry_after_and_none_below() {
    let dir = tempfile::tempdir().unwrap();
    let node = limited(dir.path()).await;
    // Creating the second key and a link uses 2 of the admin key's 10.
    let other = node.new_key(&["links:read"]).await;
    let (status, body) = node
        .create(
            ADMIN_KEY,
            json!({"url": "https://example.com/", "code": "home"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    // The rest of the admin key's burst is served, with the headers. (Time passing
    // between requests only adds to what is allowed: 5 a second.)
    for _ in 0..8 {
        let r = get(&node, "/v1/links/home", Some(ADMIN_KEY)).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["ratelimit-policy"], "\"per-key\";q=10;w=2");
        assert!(r.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"per-key\";r="));
    }
    // Going on faster than 5 a second is refused soon.
    let r = over_the_limit(&node, "/v1/links/home", Some(ADMIN_KEY)).await;
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert_eq!(r.headers()["ratelimit-policy"], "\"per-key\";q=10;w=2");
    assert_eq!(
        r.headers()["ratelimit"],
        format!("\"per-key\";r=0;t={retry}").as_str()
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(error_code(&body), "rate_limited", "{body}");

    // Another key has its own limit; redirects and health checks have none.
    let r = get(&node, "/v1/links/home", Some(&other)).await;
    assert_eq!(r.status(), 200);
    for _ in 0..50 {
        assert_eq!(node.redirect("home").await.0, 302);
    }
    assert_eq!(get(&node, "/healthz", None).await.status(), 200);

    // Once the time it named has passed, the key is served again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(&node, "/v1/links/home", Some(ADMIN_KEY)).await;
        if r.status() == 200 {
            break;
        }
        assert_eq!(r.status(), 429);
        assert!(Instant::now() < deadline, "still limited after 10 s");
        let wait: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }

    // Without a known key, the client's address is limited: a burst of 4.
    for i in 0..4 {
        let key = (i % 2 == 1).then_some("lr_not-a-key");
        assert_eq!(get(&node, "/v1/links/home", key).await.status(), 401);
    }
    over_the_limit(&node, "/v1/links/home", Some("lr_not-a-key")).await;
    // Any API path, from the same address, with no key at all.
    let r = over_the_limit(&node, "/v1/openapi.json", None).await;
    assert_eq!(r.headers()["ratelimit-policy"], "\"per-address\";q=4;w=2");
    // A known key from the same address is not held back by the address's limit.
    assert_eq!(
        get(&node, "/v1/links/home", Some(&other)).await.status(),
        200
    );
}

/// Sends requests for `path` with `key` until one is refused with 429 (at most 40, sent faster than
/// any limit here lets through), and returns that one.
async fn over_the_limit(node: &Node, path: &str, key: Option<&str>) -> reqwest::Response {
    for _ in 0..40 {
        let r = get(node, path, key).await;
        if r.status() == 429 {
            return r;
        }
    }
    panic!("40 requests in a row were all let through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_behind_a_key_answer_only_that_key() {
    const METRICS_KEY: &str = "metrics-key-for-the-test-0123456789abcdef";
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with(
        dir.path(),
        &[
            ("LINKRIFT_ADMIN_KEY", ADMIN_KEY),
            ("LINKRIFT_METRICS_KEY", METRICS_KEY),
        ],
        &[],
    );
    node.wait_ready().await;
    for key in [
        None,
        Some(ADMIN_KEY),
        Some("metrics-key-for-the-test-0123456789abcdeX"),
    ] {
        let r = get(&node, "/metrics", key).await;
        assert_eq!(r.status(), 401, "{key:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(error_code(&body), "unauthorized");
        assert!(!body.to_string().contains(METRICS_KEY));
    }
    let r = get(&node, "/metrics", Some(METRICS_KEY)).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("http_requests_total"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_limited_only_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with(
        dir.path(),
        &[
            ("LINKRIFT_ADMIN_KEY", ADMIN_KEY),
            ("LINKRIFT_REDIRECT_RATE_PER_IP", "1"),
            ("LINKRIFT_API_RATE_BURST_SECONDS", "2"),
        ],
        &[],
    );
    node.wait_ready().await;
    let (status, body) = node
        .create(
            ADMIN_KEY,
            json!({"url": "https://example.com/", "code": "home"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // A burst of two is let through; going on faster than one a second is not.
    for _ in 0..2 {
        assert_eq!(node.redirect("home").await.0, 302);
    }
    let r = over_the_limit(&node, "/home", None).await;
    assert_eq!(
        r.headers()["ratelimit-policy"],
        "\"redirects-per-address\";q=2;w=2"
    );
    assert!(r.headers().contains_key("retry-after"));
    // The API and health checks are not redirects.
    assert_eq!(get(&node, "/healthz", None).await.status(), 200);
    assert_eq!(
        get(&node, "/v1/links/home", Some(ADMIN_KEY)).await.status(),
        200
    );
}
