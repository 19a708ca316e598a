//! Mutual TLS between real nodes: `linkrift certs` makes a CA and node certificates; nodes
//! of that CA form a cluster over TLS on the peer and cluster ports; a node with another
//! CA's certificate cannot join.

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::json;
use support::cluster::member;
use support::{certs, ADMIN_KEY};

fn linkrift(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_linkrift"))
        .args(args)
        .output()
        .unwrap()
}

/// The flags giving node `name` its TLS files from `dir`.
fn tls_flags(dir: &Path, name: &str) -> Vec<String> {
    vec![
        "--node-tls-ca".into(),
        dir.join("ca.pem").display().to_string(),
        "--node-tls-cert".into(),
        dir.join(format!("{name}.pem")).display().to_string(),
        "--node-tls-key".into(),
        dir.join(format!("{name}-key.pem")).display().to_string(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_of_one_ca_form_a_cluster_over_tls_and_another_ca_cannot_join() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let ca = root.path().join("pki");
    let ca_dir = ca.to_str().unwrap();
    certs(&["init", ca_dir]);
    for (name, host) in [("n1", "127.0.0.1"), ("n2", "127.0.0.2")] {
        certs(&["node", ca_dir, "--name", name, "--host", host]);
    }
    let mode = |p: &str| std::fs::metadata(ca.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode("ca-key.pem"), mode("n1-key.pem")), (0o600, 0o600));
    assert_eq!(mode("ca.pem"), 0o644);
    // Nothing is written over.
    let again = linkrift(&[
        "certs",
        "node",
        ca_dir,
        "--name",
        "n1",
        "--host",
        "127.0.0.1",
    ]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("must not exist yet"));

    let flags1 = tls_flags(&ca, "n1");
    let flags1: Vec<&str> = flags1.iter().map(String::as_str).collect();
    let n1 = member(root.path(), 1, None, &flags1);
    n1.wait_ready().await;
    let flags2 = tls_flags(&ca, "n2");
    let flags2: Vec<&str> = flags2.iter().map(String::as_str).collect();
    let n2 = member(root.path(), 2, Some(&n1), &flags2);
    n2.wait_ready().await;
    let (status, body) = n1
        .create(
            ADMIN_KEY,
            json!({"url": "https://tls.example/", "code": "sealed"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // Node 2 serves it from its replica, or asks node 1 over the cluster port.
    assert_eq!(
        n2.redirect("sealed").await,
        (302, Some("https://tls.example/".into()))
    );
    let log = std::fs::read_to_string(root.path().join("n1.log")).unwrap();
    assert!(!log.contains("not encrypted"), "{log}");

    // A node whose certificate another CA signed, with the right cluster secret.
    let other = root.path().join("other-pki");
    let other_dir = other.to_str().unwrap();
    certs(&["init", other_dir]);
    certs(&["node", other_dir, "--name", "n3", "--host", "127.0.0.3"]);
    let flags3 = tls_flags(&other, "n3");
    let out = Command::new(env!("CARGO_BIN_EXE_linkrift"))
        .args(["serve", "--data-dir"])
        .arg(root.path().join("n3"))
        .args([
            "--http",
            "127.0.0.3:0",
            "--peer",
            "127.0.0.3:0",
            "--cluster",
            "127.0.0.3:0",
        ])
        .args(["--join", &n1.cluster, "--log", "warn"])
        .args(&flags3)
        .env("LINKRIFT_CLUSTER_SECRET", support::cluster::SECRET)
        .env("LINKRIFT_ADMIN_KEY", ADMIN_KEY)
        .output()
        .unwrap();
    assert!(!out.status.success(), "the stranger joined");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("cluster"), "{said}");
    let log = std::fs::read_to_string(root.path().join("n1.log")).unwrap();
    assert!(
        log.contains("cannot hand a cluster connection over"),
        "{log}"
    );
    let (status, body) = n1
        .create(ADMIN_KEY, json!({"url": "https://still.example/"}))
        .await;
    assert_eq!(status, 201, "{body}");
}

/// `curl --cacert CA URL`: its exit status (0, or 60 for a certificate it cannot verify,
/// 35 for a failed handshake) and what it printed.
fn curl(ca: &Path, url: &str) -> (i32, String) {
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10", "--cacert"])
        .arg(ca)
        .arg(url)
        .output()
        .expect("curl runs (scripts/test installs it)");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Polls `curl` until it exits with `want`, for at most 20 s.
async fn wait_curl(ca: &Path, url: &str, want: i32) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (code, said) = curl(ca, url);
        if code == want {
            return said;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "curl {url} with {} still exits {code}, not {want}: {said}",
            ca.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_listener_serves_https_and_takes_a_new_certificate_on_sighup() {
    let root = tempfile::tempdir().unwrap();
    let (old, new) = (root.path().join("old"), root.path().join("new"));
    for dir in [&old, &new] {
        let dir = dir.to_str().unwrap();
        certs(&["init", dir]);
        certs(&["node", dir, "--name", "web", "--host", "127.0.0.1"]);
    }
    // The files the node serves with; replaced below.
    let (cert, key) = (root.path().join("web.pem"), root.path().join("web-key.pem"));
    std::fs::copy(old.join("web.pem"), &cert).unwrap();
    std::fs::copy(old.join("web-key.pem"), &key).unwrap();
    let (cert_flag, key_flag) = (cert.display().to_string(), key.display().to_string());
    let node = support::Node::start_logged(
        &root.path().join("data"),
        &[("LINKRIFT_ADMIN_KEY", ADMIN_KEY)],
        &["--tls-cert", &cert_flag, "--tls-key", &key_flag],
        Some(&root.path().join("node.log")),
    )
    .trusting(&old.join("ca.pem"));
    assert!(node.base.starts_with("https://127.0.0.1:"), "{}", node.base);
    node.wait_ready().await;
    let (status, body) = node
        .create(
            ADMIN_KEY,
            json!({"url": "https://secure.example/", "code": "tls1"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // Short links are https ones.
    assert!(
        body["short_url"].as_str().unwrap().starts_with("https://"),
        "{body}"
    );

    // A client that sends nothing holds up nobody (its handshake times out on its own).
    let _silent = std::net::TcpStream::connect(node.base.trim_start_matches("https://")).unwrap();
    let healthz = node.url("/healthz");
    let (code, said) = curl(&old.join("ca.pem"), &healthz);
    assert_eq!(code, 0, "{said}");
    // A client that does not trust the CA is refused.
    let (code, said) = curl(&new.join("ca.pem"), &healthz);
    assert_eq!(code, 60, "{said}");

    // The CLI over https, with --ca-cert; without it the certificate is not trusted.
    let out = linkrift(&[
        "cluster",
        "status",
        "--url",
        &node.base,
        "--key",
        ADMIN_KEY,
        "--ca-cert",
        old.join("ca.pem").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("active"));
    let out = linkrift(&["cluster", "status", "--url", &node.base, "--key", ADMIN_KEY]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("cannot reach"), "{said}");

    // A new certificate from another CA: in use after SIGHUP, not before.
    std::fs::copy(new.join("web.pem"), &cert).unwrap();
    std::fs::copy(new.join("web-key.pem"), &key).unwrap();
    let (code, said) = curl(&new.join("ca.pem"), &healthz);
    assert_eq!(code, 60, "taken before SIGHUP: {said}");
    hangup(&node);
    assert_eq!(
        wait_curl(&new.join("ca.pem"), &healthz, 0).await,
        r#"{"status":"ok"}"#
    );
    let (code, said) = curl(&old.join("ca.pem"), &healthz);
    assert_eq!(code, 60, "{said}");

    // Files that do not load: the last good ones stay in use, and it says so.
    std::fs::write(&cert, "not a certificate").unwrap();
    hangup(&node);
    let node = node.trusting(&new.join("ca.pem"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !node
        .metrics()
        .await
        .contains("http_tls_reloads_total{result=\"failed\"} 1")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no failed reload counted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (code, said) = curl(&new.join("ca.pem"), &healthz);
    assert_eq!(code, 0, "{said}");
    let log = std::fs::read_to_string(root.path().join("node.log")).unwrap();
    assert!(
        log.contains("do not load; keeping the previous ones"),
        "{log}"
    );
    assert_eq!(
        node.redirect("tls1").await,
        (302, Some("https://secure.example/".into()))
    );
}

fn hangup(node: &support::Node) {
    let sent = Command::new("kill")
        .args(["-HUP", &node.pid().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

#[test]
fn a_certificate_that_does_not_load_stops_the_node_at_start() {
    let root = tempfile::tempdir().unwrap();
    let cert = root.path().join("web.pem");
    std::fs::write(&cert, "not a certificate").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_linkrift"))
        .args(["serve", "--data-dir"])
        .arg(root.path().join("data"))
        .args(["--http", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(root.path().join("missing-key.pem"))
        .env("LINKRIFT_ADMIN_KEY", ADMIN_KEY)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("HTTPS certificate") && said.contains("web.pem"),
        "{said}"
    );
    // Nothing was opened: the data directory was never made.
    assert!(!root.path().join("data").exists());
}
