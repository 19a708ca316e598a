//! Settings reach the node from a TOML file, `LINKRIFT_*` variables and flags, each
//! overriding the one before; a bad setting stops the node with a clear message.

mod support;

use std::process::Command;

use serde_json::json;
use support::{Node, ADMIN_KEY};

async fn generated_code_length(node: &Node) -> usize {
    let (status, link) = node
        .create(ADMIN_KEY, json!({"url": "https://example.com/"}))
        .await;
    assert_eq!(status, 201);
    link["code"].as_str().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_then_environment_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("linkrift.toml");
    std::fs::write(&file, "code_length = 9\npublic_url = \"https://sho.rt\"\n").unwrap();
    let file = file.to_str().unwrap();
    let data = dir.path().join("data");

    let node = Node::start_with(
        &data,
        &[("LINKRIFT_ADMIN_KEY", ADMIN_KEY)],
        &["--config", file],
    );
    node.wait_ready().await;
    assert_eq!(generated_code_length(&node).await, 9, "from the file");
    let (_, link) = node
        .create(
            ADMIN_KEY,
            json!({"url": "https://example.com/", "code": "x1"}),
        )
        .await;
    assert_eq!(
        link["short_url"], "https://sho.rt/x1",
        "public_url from the file"
    );
    let (status, _) = node
        .create(ADMIN_KEY, json!({"url": "https://sho.rt/loop"}))
        .await;
    assert_eq!(status, 422, "the public host is refused as a destination");
    drop(node);

    let env = [
        ("LINKRIFT_ADMIN_KEY", ADMIN_KEY),
        ("LINKRIFT_CODE_LENGTH", "5"),
    ];
    let node = Node::start_with(&data, &env, &["--config", file]);
    node.wait_ready().await;
    assert_eq!(
        generated_code_length(&node).await,
        5,
        "the environment overrides the file"
    );
    drop(node);

    let node = Node::start_with(&data, &env, &["--config", file, "--code-length", "6"]);
    node.wait_ready().await;
    assert_eq!(
        generated_code_length(&node).await,
        6,
        "a flag overrides both"
    );
}

#[test]
fn bad_settings_stop_the_node_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_linkrift"));
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--http", "127.0.0.1:0"])
            .args(args);
        for (k, v) in env {
            command.env(k, v);
        }
        let out = command.output().unwrap();
        assert!(!out.status.success(), "{args:?} {env:?} must fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(run(&["--config", "/nonexistent.toml"], &[]).contains("does not exist"));
    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "shard_cuont = 8\n").unwrap();
    assert!(run(&["--config", typo.to_str().unwrap()], &[]).contains("shard_cuont"));
    assert!(run(&["--code-length", "2"], &[]).contains("code_length must be 4 to 64"));
    assert!(run(&[], &[("LINKRIFT_SHARD_COUNT", "0")]).contains("shard_count must be 1 to 4096"));
    assert!(run(&[], &[("LINKRIFT_LOG_FORMAT", "xml")]).contains("log_format must be text or json"));
    assert!(run(&[], &[("LINKRIFT_ADMIN_KEY", "short")])
        .contains("admin_key has 5 bytes, fewer than 32"));
    assert!(run(&["--allow-scheme", "JavaScript"], &[]).contains("never allowed"));
    for bad in ["ftp://u:hunter2@ch.example/", "u:hunter2 at ch"] {
        let said = run(&["--clickhouse-url", bad], &[]);
        assert!(said.contains("clickhouse_url"), "{said}");
        assert!(
            !said.contains("hunter2"),
            "the password is not shown: {said}"
        );
    }
    let placeholder = "change-me-admin-key-0123456789abcdef";
    let said = run(&[], &[("LINKRIFT_ADMIN_KEY", placeholder)]);
    assert!(said.contains("admin_key is a placeholder"), "{said}");
    assert!(!said.contains(placeholder), "the key is not shown: {said}");
    assert!(run(&[], &[("LINKRIFT_CLUSTER_SECRET", "")]).contains("cluster_secret is empty"));
    assert!(run(&[], &[("LINKRIFT_CLUSTER_SECRET", "hunter2hunter2")])
        .contains("cluster_secret has 14 bytes, fewer than 32"));
    // A node of a cluster talks to the others over TLS, or in plaintext only when asked.
    let secret = (
        "LINKRIFT_CLUSTER_SECRET",
        "a-cluster-secret-0123456789abcdefgh",
    );
    let said = run(&[], &[secret]);
    assert!(
        said.contains("needs mutual TLS") && said.contains("node_plaintext"),
        "{said}"
    );
    let said = run(
        &[
            "--node-plaintext",
            "--node-tls-ca",
            "ca.pem",
            "--node-tls-cert",
            "n.pem",
            "--node-tls-key",
            "n-key.pem",
        ],
        &[secret],
    );
    assert!(said.contains("set one or the other"), "{said}");
}
