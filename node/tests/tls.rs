//! Mutual TLS between real nodes: `linkrift certs` makes a CA and node certificates; nodes
//! of that CA form a cluster over TLS on the peer and cluster ports; a node with another
//! CA's certificate cannot join.

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::json;
use support::cluster::member;
use support::ADMIN_KEY;

fn linkrift(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_linkrift"))
        .args(args)
        .output()
        .unwrap()
}

fn certs(args: &[&str]) -> String {
    let out = linkrift(&[&["certs"], args].concat());
    assert!(
        out.status.success(),
        "certs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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
