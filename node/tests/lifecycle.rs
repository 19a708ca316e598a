//! The Kubernetes lifecycle script (`deploy/k8s/lifecycle.sh`), run as the StatefulSet
//! runs it, against real `linkrift` processes on 127.0.0.1-3 and a stand-in for the
//! Kubernetes API that answers the StatefulSet's replicas: pod 0 starts the cluster, the
//! others join it, and a `preStop` leaves the cluster only when the pod is scaled away.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::cluster::{admin_status, wait_placed, Root, SECRET};
use support::{Node, ADMIN_KEY};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s/lifecycle.sh")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Serves `GET .../statefulsets/linkrift` with `spec.replicas` from `replicas`, pretty
/// printed as the API server does.
async fn fake_api(replicas: Arc<AtomicU64>) -> String {
    let app = axum::Router::new().route(
        "/apis/apps/v1/namespaces/test/statefulsets/linkrift",
        axum::routing::get(move || {
            let n = replicas.load(Ordering::SeqCst);
            async move {
                serde_json::to_string_pretty(&serde_json::json!({
                    "kind": "StatefulSet",
                    "metadata": { "name": "linkrift", "namespace": "test" },
                    "spec": { "replicas": n, "serviceName": "linkrift-peers" },
                    "status": { "replicas": 3, "readyReplicas": 3 }
                }))
                .unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

struct Pods {
    root: Root,
    peer_port: u16,
    cluster_port: u16,
    api: String,
}

impl Pods {
    fn env(&self, command: &mut Command, ordinal: u8) {
        let pki = self.pki(ordinal);
        let bin = Path::new(env!("CARGO_BIN_EXE_linkrift")).parent().unwrap();
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
        command
            .env("PATH", path)
            .env("HOSTNAME", format!("linkrift-{ordinal}"))
            .env("POD_IP", format!("127.0.0.{}", ordinal + 1))
            .env("POD_NAMESPACE", "test")
            .env("STS_NAME", "linkrift")
            .env("PEERS_SERVICE", "linkrift-peers")
            .env("PEER_PORT", self.peer_port.to_string())
            .env("CLUSTER_PORT", self.cluster_port.to_string())
            .env("SEED_ADDR", "127.0.0.1")
            .env("KUBERNETES_API", &self.api)
            .env(
                "SERVICE_ACCOUNT_DIR",
                self.root.path().join("no-service-account"),
            )
            .env(
                "LINKRIFT_DATA_DIR",
                self.root.path().join(format!("pod{ordinal}")),
            )
            .env("LINKRIFT_HTTP", format!("127.0.0.{}:0", ordinal + 1))
            .env("LINKRIFT_SHARD_COUNT", "8")
            .env("LINKRIFT_LOG", "warn")
            .env("LINKRIFT_ADMIN_KEY", ADMIN_KEY)
            .env("LINKRIFT_CLUSTER_SECRET", SECRET)
            // Mutual TLS as the StatefulSet has it: the CA Secret, and the pod's files.
            .env("CA_DIR", self.root.path().join("ca"))
            .env("PKI_DIR", &pki)
            .env("LINKRIFT_NODE_TLS_CA", pki.join("ca.pem"))
            .env("LINKRIFT_NODE_TLS_CERT", pki.join("node.pem"))
            .env("LINKRIFT_NODE_TLS_KEY", pki.join("node-key.pem"));
    }

    /// `linkrift-lifecycle certs`, as the init container: the pod's certificate.
    fn certs(&self, ordinal: u8) {
        let mut command = Command::new("sh");
        command.arg(script()).arg("certs");
        self.env(&mut command, ordinal);
        let out = command.output().unwrap();
        assert!(
            out.status.success(),
            "certs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pki = self.pki(ordinal);
        let mut files: Vec<String> = std::fs::read_dir(&pki)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        // The CA key stays in the Secret.
        assert_eq!(files, ["ca.pem", "node-key.pem", "node.pem"]);
    }

    fn pki(&self, ordinal: u8) -> std::path::PathBuf {
        self.root.path().join(format!("pod{ordinal}-pki"))
    }

    /// `linkrift-lifecycle start`, as the container's command (after the init container).
    fn start(&self, ordinal: u8) -> Node {
        std::fs::create_dir_all(self.pki(ordinal)).unwrap();
        self.certs(ordinal);
        let mut command = Command::new("sh");
        command.arg(script()).arg("start");
        self.env(&mut command, ordinal);
        let log = self.root.path().join(format!("pod{ordinal}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        command.stdout(Stdio::piped()).stderr(log);
        Node::spawn(command, &self.root.path().join(format!("pod{ordinal}")))
    }

    /// `linkrift-lifecycle prestop`, as the preStop hook; its exit status and output.
    async fn prestop(&self, ordinal: u8, node: &Node) -> (bool, String) {
        let mut command = tokio::process::Command::new("sh");
        command.arg(script()).arg("prestop");
        let mut std_command = Command::new("sh");
        self.env(&mut std_command, ordinal);
        for (k, v) in std_command.get_envs() {
            command.env(k, v.unwrap());
        }
        command.env("LINKRIFT_URL", &node.base);
        let out = tokio::time::timeout(Duration::from_secs(180), command.output())
            .await
            .expect("the preStop hook ends")
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

fn state_of(status: &serde_json::Value, id: u64) -> String {
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == id)
        .map(|n| n["state"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_join_through_pod_0_and_only_a_scaled_away_pod_leaves() {
    let replicas = Arc::new(AtomicU64::new(3));
    let pods = Pods {
        root: Root::new(),
        peer_port: free_port(),
        cluster_port: free_port(),
        api: fake_api(replicas.clone()).await,
    };
    // The cluster CA, as the operator makes it for the Secret.
    let ca = pods.root.path().join("ca");
    let made = Command::new(env!("CARGO_BIN_EXE_linkrift"))
        .args(["certs", "init"])
        .arg(&ca)
        .output()
        .unwrap();
    assert!(made.status.success());
    let p0 = pods.start(0);
    p0.wait_ready().await;
    let p1 = pods.start(1);
    let mut p2 = pods.start(2);
    wait_placed(&[&p0, &p1, &p2], 3).await;
    assert_eq!(
        p1.peer,
        format!("127.0.0.2:{}", pods.peer_port),
        "a pod binds its own address"
    );

    // A restart (replicas still 3): the hook leaves nothing.
    let (ok, out) = pods.prestop(2, &p2).await;
    assert!(ok, "{out}");
    assert!(!out.contains("leaves"), "{out}");
    assert_eq!(state_of(&admin_status(&p0).await, p2.node_id), "active");

    // Scaled to 2: pod 2 leaves the cluster, and its node exits by itself.
    replicas.store(2, Ordering::SeqCst);
    let (ok, out) = pods.prestop(2, &p2).await;
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("node {} leaves", p2.node_id)),
        "{out}"
    );
    assert!(p2.wait_exit(Duration::from_secs(60)).await.success());
    // Pod 1 is below the new replica count: its hook is a restart's.
    let (ok, out) = pods.prestop(1, &p1).await;
    assert!(ok, "{out}");
    assert!(!out.contains("leaves"), "{out}");

    let status = wait_placed(&[&p0, &p1], 3).await;
    assert_eq!(state_of(&status, p2.node_id), "removed");
    assert_eq!(state_of(&status, p1.node_id), "active");

    // The stand-in API down: a stop is taken for a restart, never a leave.
    let broken = Pods {
        api: "http://127.0.0.1:9".into(),
        ..pods
    };
    let (ok, out) = broken.prestop(1, &p1).await;
    assert!(ok, "{out}");
    assert!(out.contains("treating this stop as a restart"), "{out}");
}
