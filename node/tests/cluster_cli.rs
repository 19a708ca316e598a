//! `linkrift cluster status` against a real node.

mod support;

use std::process::Command;

use support::{Node, ADMIN_KEY};

fn cli(args: &[&str], key: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_linkrift"))
        .args(args)
        .env("LINKRIFT_ADMIN_KEY", key)
        .output()
        .expect("linkrift runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_node_its_leaderships_and_no_under_replicated_group() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::ready(dir.path()).await;

    let out = cli(
        &["cluster", "status", "--url", &node.base, "--json"],
        ADMIN_KEY,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["shard_count"], 8);
    assert_eq!(status["replication_factor"], 1);
    assert_eq!(
        status["groups"].as_array().unwrap().len(),
        9,
        "meta + 8 shards"
    );
    assert!(status["groups"]
        .as_array()
        .unwrap()
        .iter()
        .all(|g| g["leader"] == 1 && g["voters"] == serde_json::json!([1])));
    assert_eq!(status["nodes"][0]["leads"], 9);
    assert_eq!(status["under_replicated"], serde_json::json!([]));

    let out = cli(&["cluster", "status", "--url", &node.base], ADMIN_KEY);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("NODE") && text.contains("under-replicated groups: none"),
        "{text}"
    );

    // A key without the admin scope, and no node at all, fail with a reason.
    let reader = node.new_key(&["links:read"]).await;
    let out = cli(&["cluster", "status", "--url", &node.base], &reader);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("403"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(
        &["cluster", "status", "--url", "http://127.0.0.1:9"],
        ADMIN_KEY,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));
}
