//! Bad input, each answered with the right status and a clear JSON error, while the node
//! keeps serving everyone else.

mod support;

use serde_json::{json, Value};
use support::{error_code, Node, ADMIN_KEY};

/// Sends a request and returns its status and JSON body (which every error must have).
async fn call(req: reqwest::RequestBuilder) -> (u16, Value) {
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let content_type = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let body: Value = r.json().await.unwrap_or(Value::Null);
    if status >= 400 {
        assert_eq!(
            content_type.as_deref(),
            Some("application/json"),
            "error {status} is JSON"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "error {status} explains itself: {body}"
        );
    }
    (status, body)
}

/// Announces a JSON body of `len` bytes, sends its first bytes, and reads the answer.
async fn oversized_post(node: &Node, len: usize) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = node.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/links HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {len}\r\n\r\n{{\"url\": \"https://e.com/"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // Read until the connection closes or a whole response (headers and body) is in.
    let mut response = Vec::new();
    let complete = |r: &[u8]| {
        let text = String::from_utf8_lossy(r);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return false;
        };
        let len = head.lines().find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
        });
        len.is_some_and(|len| body.len() >= len)
    };
    let read = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        let mut buf = [0u8; 4096];
        while !complete(&response) {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => response.extend_from_slice(&buf[..n]),
            }
        }
    });
    read.await
        .expect("the node answers without waiting for the body");
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .and_then(|b| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::ready(dir.path()).await;
    let (status, _) = node
        .create(
            ADMIN_KEY,
            json!({"url": "https://example.com/ok", "code": "ok"}),
        )
        .await;
    assert_eq!(status, 201);
    let post = |key: &str| {
        node.http
            .post(node.url("/v1/links"))
            .bearer_auth(key.to_string())
    };

    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        (
            "malformed JSON",
            post(ADMIN_KEY)
                .header("content-type", "application/json")
                .body("{\"url\": "),
            400,
            "invalid_json",
        ),
        (
            "unknown field",
            post(ADMIN_KEY).json(&json!({"url": "https://e.com", "colour": "red"})),
            422,
            "invalid_body",
        ),
        (
            "javascript: URL",
            post(ADMIN_KEY).json(&json!({"url": "javascript:alert(1)"})),
            422,
            "invalid_input",
        ),
        (
            "data: URL",
            post(ADMIN_KEY).json(&json!({"url": "data:text/html,<script>x</script>"})),
            422,
            "invalid_input",
        ),
        (
            "credentials in URL",
            post(ADMIN_KEY).json(&json!({"url": "https://u:p@e.com/"})),
            422,
            "invalid_input",
        ),
        (
            "link to ourselves",
            post(ADMIN_KEY).json(&json!({"url": format!("{}/x", node.base)})),
            422,
            "invalid_input",
        ),
        (
            "reserved alias",
            post(ADMIN_KEY).json(&json!({"url": "https://e.com", "code": "metrics"})),
            422,
            "invalid_input",
        ),
        (
            "bad alias",
            post(ADMIN_KEY).json(&json!({"url": "https://e.com", "code": "a/b"})),
            422,
            "invalid_input",
        ),
        (
            "alias taken",
            post(ADMIN_KEY).json(&json!({"url": "https://e.com", "code": "ok"})),
            409,
            "code_taken",
        ),
        (
            "bad redirect status",
            post(ADMIN_KEY).json(&json!({"url": "https://e.com", "redirect_status": 303})),
            422,
            "invalid_input",
        ),
        (
            "missing key",
            node.http
                .post(node.url("/v1/links"))
                .json(&json!({"url": "https://e.com"})),
            401,
            "unauthorized",
        ),
        (
            "wrong key",
            post("lr_wrong").json(&json!({"url": "https://e.com"})),
            401,
            "unauthorized",
        ),
        (
            "not JSON",
            post(ADMIN_KEY).body("url=https://e.com"),
            415,
            "unsupported_media_type",
        ),
        (
            "unknown route",
            node.http.get(node.url("/v1/nothing/here")),
            404,
            "not_found",
        ),
        (
            "wrong method",
            node.http.put(node.url("/v1/links")),
            405,
            "method_not_allowed",
        ),
        (
            "unknown code",
            node.http.get(node.url("/no-such-code")),
            404,
            "not_found",
        ),
        (
            "bad limit",
            node.http
                .get(node.url("/v1/links?limit=0"))
                .bearer_auth(ADMIN_KEY),
            422,
            "invalid_input",
        ),
    ];
    for (what, request, status, code) in cases {
        let (got, body) = call(request).await;
        assert_eq!((got, error_code(&body)), (status, code), "{what}: {body}");
        assert_eq!(
            node.redirect("ok").await.0,
            302,
            "still serving after {what}"
        );
    }

    // A 10 MB body is refused from its Content-Length alone, before it is read. (A client
    // that pushes the whole body first may see the connection closed under it, so this
    // announces the size and reads the answer.)
    let (status, body) = oversized_post(&node, 10 * 1024 * 1024).await;
    assert_eq!(
        (status, error_code(&body)),
        (413, "body_too_large"),
        "{body}"
    );
    assert_eq!(
        node.redirect("ok").await.0,
        302,
        "still serving after a 10 MB body"
    );

    // Scopes and revocation.
    let reader = node.new_key(&["links:read"]).await;
    let (status, body) = call(post(&reader).json(&json!({"url": "https://e.com"}))).await;
    assert_eq!(
        (status, error_code(&body)),
        (403, "forbidden"),
        "a links:read key cannot write"
    );
    let (status, _) = call(node.http.get(node.url("/v1/links/ok")).bearer_auth(&reader)).await;
    assert_eq!(status, 200, "but can read");
    let (status, body) = call(node.http.get(node.url("/v1/keys")).bearer_auth(&reader)).await;
    assert_eq!(
        (status, error_code(&body)),
        (403, "forbidden"),
        "keys need admin"
    );
    let writer = node.new_key(&["links:write"]).await;
    let keys: Value = node.get_json("/v1/keys", ADMIN_KEY).await;
    let writer_id = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|k| k["scopes"] == json!(["links:write"]))
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = call(
        node.http
            .delete(node.url(&format!("/v1/keys/{writer_id}")))
            .bearer_auth(ADMIN_KEY),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = call(post(&writer).json(&json!({"url": "https://e.com"}))).await;
    assert_eq!(
        (status, error_code(&body)),
        (401, "unauthorized"),
        "a revoked key is refused: {body}"
    );
    let (status, body) = call(
        node.http
            .post(node.url("/v1/keys"))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({"name": "x", "scopes": ["root"]})),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (422, "invalid_input"),
        "unknown scope"
    );

    // A stale If-Match loses nothing: the link keeps its state.
    let stale = node
        .http
        .patch(node.url("/v1/links/ok"))
        .bearer_auth(ADMIN_KEY)
        .header("if-match", "\"7\"")
        .json(&json!({"url": "https://e.com/new"}));
    let (status, body) = call(stale).await;
    assert_eq!(
        (status, error_code(&body)),
        (412, "version_mismatch"),
        "{body}"
    );
    assert_eq!(
        node.redirect("ok").await,
        (302, Some("https://example.com/ok".into()))
    );
    let (status, body) = call(
        node.http
            .delete(node.url("/v1/links/ok"))
            .bearer_auth(ADMIN_KEY)
            .header("if-match", "nope"),
    )
    .await;
    assert_eq!((status, error_code(&body)), (400, "bad_request"), "{body}");

    // A bulk request with some bad items: the good ones are created, each bad one explained.
    let bulk = json!({"links": [
        {"url": "https://example.com/1"},
        {"url": "ftp://example.com/"},
        {"url": "https://example.com/3", "code": "ok"},
        {"url": "https://example.com/4", "nonsense": true},
        {"url": "https://example.com/5", "code": "bulk5"},
    ]});
    let (status, body) = call(
        node.http
            .post(node.url("/v1/links/bulk"))
            .bearer_auth(ADMIN_KEY)
            .json(&bulk),
    )
    .await;
    assert_eq!(status, 200);
    let statuses: Vec<u64> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, vec![201, 422, 409, 422, 201], "{body}");
    assert_eq!(
        node.redirect("bulk5").await,
        (302, Some("https://example.com/5".into()))
    );
    let too_many = json!({"links": vec![json!({"url": "https://e.com"}); 1001]});
    let (status, body) = call(
        node.http
            .post(node.url("/v1/links/bulk"))
            .bearer_auth(ADMIN_KEY)
            .json(&too_many),
    )
    .await;
    assert_eq!((status, error_code(&body)), (422, "invalid_input"));

    let metrics = node.metrics().await;
    for name in [
        "redirect_duration_seconds_bucket",
        "http_requests_total",
        "cache_hits_total",
        "cache_requests_total",
        "raft_term",
    ] {
        assert!(metrics.contains(name), "/metrics exports {name}");
    }
}
