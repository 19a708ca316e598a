//! The real `linkrift` binary over HTTP: the link lifecycle, durability across kill -9 and
//! restarts, and bad input answered with the right status and a clear JSON error.

mod support;

use serde_json::{json, Value};
use support::{error_code, Node, ADMIN_KEY};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_redirect_update_delete() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::ready(dir.path()).await;

    let (status, link) = node
        .create(ADMIN_KEY, json!({"url": "https://example.com/a", "code": "promo", "tags": ["x"], "title": "Promo"}))
        .await;
    assert_eq!(status, 201, "{link}");
    assert_eq!(link["short_url"], format!("{}/promo", node.base));
    assert_eq!(link["version"], 1);
    assert_eq!(
        node.redirect("promo").await,
        (302, Some("https://example.com/a".into()))
    );

    // HEAD answers like GET, without a body.
    let head = node.http.head(node.url("/promo")).send().await.unwrap();
    assert_eq!(head.status(), 302);
    assert_eq!(head.headers()["cache-control"], "private, max-age=0");

    // Update with the version we saw: the redirect follows at once.
    let r = node
        .http
        .patch(node.url("/v1/links/promo"))
        .bearer_auth(ADMIN_KEY)
        .header("if-match", "\"1\"")
        .json(&json!({"url": "https://example.com/b", "redirect_status": 301, "title": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"], "\"2\"");
    let updated: Value = r.json().await.unwrap();
    assert_eq!(
        (updated["version"].clone(), updated["title"].clone()),
        (json!(2), Value::Null)
    );
    assert_eq!(
        node.redirect("promo").await,
        (301, Some("https://example.com/b".into()))
    );

    // Read it back, list it, archive it (410), delete it (404).
    let got: Value = node.get_json("/v1/links/promo", ADMIN_KEY).await;
    assert_eq!(got["url"], "https://example.com/b");
    // A linearizable read answers the same, through the shard's leader.
    let consistent: Value = node
        .get_json("/v1/links/promo?consistent=true", ADMIN_KEY)
        .await;
    assert_eq!(
        (consistent["url"].clone(), consistent["version"].clone()),
        (json!("https://example.com/b"), json!(2))
    );
    let r = node
        .http
        .get(node.url("/v1/links/nosuch?consistent=true"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Only `true` asks for one: anything else is refused, not taken as a local read.
    for bad in ["false", "1", "yes", "TRUE", ""] {
        let r = node
            .http
            .get(node.url(&format!("/v1/links/promo?consistent={bad}")))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "consistent={bad}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(error_code(&body), "bad_request", "{body}");
    }
    let page: Value = node.get_json("/v1/links?tag=x", ADMIN_KEY).await;
    assert_eq!(page["links"].as_array().unwrap().len(), 1);
    let r = node
        .http
        .patch(node.url("/v1/links/promo"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"archived": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(node.redirect("promo").await.0, 410);
    let r = node
        .http
        .delete(node.url("/v1/links/promo"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(node.redirect("promo").await.0, 404);
    let r = node.http.get(node.url("/promo")).send().await.unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(error_code(&body), "not_found");

    // An expired link answers 410.
    let (status, _) = node.create(ADMIN_KEY, json!({"url": "https://example.com/", "code": "old", "expires_at": "2001-01-01T00:00:00Z"})).await;
    assert_eq!(status, 201);
    assert_eq!(node.redirect("old").await.0, 410);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_codes_and_idempotent_retries() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::ready(dir.path()).await;
    let send = || {
        node.http
            .post(node.url("/v1/links"))
            .bearer_auth(ADMIN_KEY)
            .header("idempotency-key", "order-42")
            .json(&json!({"url": "https://example.com/once"}))
            .send()
    };
    let first: Value = send().await.unwrap().json().await.unwrap();
    let again: Value = send().await.unwrap().json().await.unwrap();
    let code = first["code"].as_str().unwrap();
    assert_eq!(code.len(), 7);
    assert_eq!(
        again["code"], code,
        "a retried request returns the first link"
    );
    let page: Value = node.get_json("/v1/links", ADMIN_KEY).await;
    assert_eq!(
        page["links"].as_array().unwrap().len(),
        1,
        "and creates nothing twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_links_survive_kill_9_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::ready(dir.path()).await;
    let (status, _) = node
        .create(
            ADMIN_KEY,
            json!({"url": "https://example.com/survivor", "code": "survivor"}),
        )
        .await;
    assert_eq!(status, 201);
    node.kill9();

    let node = Node::start(dir.path());
    assert!(
        node.printed_key.is_none(),
        "a restarted node keeps its keys"
    );
    node.wait_ready().await;
    assert_eq!(
        node.redirect("survivor").await,
        (302, Some("https://example.com/survivor".into()))
    );

    // 10,000 links through the bulk endpoint, then a clean restart.
    let mut codes = Vec::new();
    for batch in 0..10 {
        let links: Vec<Value> = (0..1000)
            .map(|i| json!({"url": format!("https://example.com/{batch}/{i}")}))
            .collect();
        let r = node
            .http
            .post(node.url("/v1/links/bulk"))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({"links": links}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        for (i, item) in body["results"].as_array().unwrap().iter().enumerate() {
            assert_eq!(item["status"], 201, "{item}");
            codes.push((
                item["link"]["code"].as_str().unwrap().to_string(),
                format!("https://example.com/{batch}/{i}"),
            ));
        }
    }
    assert_eq!(codes.len(), 10_000);
    assert!(node.terminate().success(), "SIGTERM shuts down cleanly");

    let node = Node::start(dir.path());
    node.wait_ready().await;
    for (code, url) in &codes {
        assert_eq!(
            node.redirect(code).await,
            (302, Some(url.clone())),
            "link {code} after restart"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_admin_key_is_generated_and_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with(dir.path(), &[], &[]);
    let key = node
        .printed_key
        .clone()
        .expect("a generated admin key is printed");
    node.wait_ready().await;
    let r = node
        .http
        .get(node.url("/v1/keys"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert!(!body.contains(&key), "keys are never shown again");
    assert!(node.terminate().success());
    // Only the hash is stored: the clear key is in no file of the data directory.
    fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
            if entry.file_type().unwrap().is_dir() {
                files(&entry.path(), out);
            } else {
                out.push(entry.path());
            }
        }
    }
    let mut all = Vec::new();
    files(dir.path(), &mut all);
    assert!(!all.is_empty());
    for file in all {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(key.len()).any(|w| w == key.as_bytes()),
            "clear key found in {}",
            file.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_describes_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path());
    let doc: Value = node
        .http
        .get(node.url("/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let methods = |path: &str| -> Vec<String> {
        doc["paths"][path]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    };
    for (path, expected) in [
        ("/{code}", vec!["get"]),
        ("/v1/links", vec!["get", "post"]),
        ("/v1/links/bulk", vec!["post"]),
        ("/v1/links/{code}", vec!["delete", "get", "patch"]),
        ("/v1/keys", vec!["get", "post"]),
        ("/v1/keys/{id}", vec!["delete"]),
        ("/healthz", vec!["get"]),
        ("/readyz", vec!["get"]),
        ("/metrics", vec!["get"]),
        ("/admin/status", vec!["get"]),
    ] {
        let mut got = methods(path);
        got.sort();
        assert_eq!(got, expected, "methods of {path}");
    }
    assert!(doc["components"]["schemas"]["LinkView"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_through_every_shard_in_code_order() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::ready(dir.path()).await;
    let mut expected = Vec::new();
    for i in 0..25 {
        let code = format!("p{i:02}");
        let tags = if i % 5 == 0 { vec!["fives"] } else { vec![] };
        let (status, _) = node
            .create(
                ADMIN_KEY,
                json!({"url": "https://example.com/", "code": code, "tags": tags}),
            )
            .await;
        assert_eq!(status, 201);
        expected.push(code);
    }
    let page = |query: String| {
        let node = &node;
        async move {
            let r = node
                .http
                .get(node.url(&format!("/v1/links?{query}")))
                .bearer_auth(ADMIN_KEY)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let query = match &cursor {
            Some(c) => format!("limit=10&cursor={c}"),
            None => "limit=10".to_string(),
        };
        let body = page(query).await;
        seen.extend(
            body["links"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["code"].as_str().unwrap().to_string()),
        );
        cursor = body["next_cursor"].as_str().map(str::to_string);
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(
        seen, expected,
        "every link once, in code order, across 8 shards"
    );
    let fives = page("tag=fives&limit=2".into()).await;
    let codes: Vec<&str> = fives["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, vec!["p00", "p05"]);
    assert_eq!(fives["next_cursor"], "p05");
}
