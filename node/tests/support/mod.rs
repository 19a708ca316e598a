//! Starts the real `linkrift` binary on a free loopback port and talks to it over HTTP.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub mod cluster;
pub mod net;
// (Each test binary uses what it needs of them.)
#[allow(unused_imports)]
pub use linkrift_testkit::{clickhouse, postgres};

/// `linkrift certs ARGS`, which must succeed; what it printed.
pub fn certs(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_linkrift"))
        .arg("certs")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "certs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub const ADMIN_KEY: &str = "test-admin-key-0123456789abcdefghij";

/// A running `linkrift serve`.
pub struct Node {
    child: Child,
    pub base: String,
    pub dir: PathBuf,
    pub http: reqwest::Client,
    pub printed_key: Option<String>,
    /// Its node id, as it printed it.
    pub node_id: u64,
    /// Its cluster (actor) address, as it printed it.
    pub cluster: String,
    /// Its peer (Raft) address, as it printed it.
    pub peer: String,
    /// What it prints after the serving line (read on, so that it never writes to a
    /// closed pipe).
    stdout: Mutex<mpsc::Receiver<String>>,
}

/// "linkrift serving http://A with data in D (node N, peer P, cluster C)": (A, N, C, P).
fn serving(line: &str) -> Option<(String, u64, String, String)> {
    let rest = line.strip_prefix("linkrift serving ")?;
    let words: Vec<&str> = rest.split_whitespace().collect();
    let after = |w: &str| {
        let i = words.iter().position(|x| *x == w).unwrap();
        words[i + 1].trim_end_matches([',', ')']).to_string()
    };
    Some((
        words[0].to_string(),
        after("(node").parse().unwrap(),
        after("cluster"),
        after("peer"),
    ))
}

impl Node {
    /// Starts a node on `dir` with the test admin key, on a port the OS picks.
    pub fn start(dir: &Path) -> Node {
        Self::start_with(dir, &[("LINKRIFT_ADMIN_KEY", ADMIN_KEY)], &[])
    }

    /// Starts a node with extra environment variables and flags.
    pub fn start_with(dir: &Path, env: &[(&str, &str)], flags: &[&str]) -> Node {
        Self::start_logged(dir, env, flags, None)
    }

    /// Starts a node; with `log`, its log (stderr) goes to that file.
    pub fn start_logged(
        dir: &Path,
        env: &[(&str, &str)],
        flags: &[&str],
        log: Option<&Path>,
    ) -> Node {
        let mut command = Command::new(env!("CARGO_BIN_EXE_linkrift"));
        command
            .args(["serve", "--data-dir"])
            .arg(dir)
            .args(flags)
            .env_remove("LINKRIFT_ADMIN_KEY")
            .stdout(Stdio::piped())
            .stderr(match log {
                // Appended to: a restarted node's log follows its earlier one.
                Some(path) => Stdio::from(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .unwrap(),
                ),
                None => Stdio::inherit(),
            });
        // No rate limits unless a test sets them: load tests send more than the defaults.
        command
            .env("LINKRIFT_API_RATE_PER_KEY", "0")
            .env("LINKRIFT_API_RATE_PER_IP", "0");
        for (k, v) in env {
            command.env(k, v);
        }
        // Test defaults, unless the test gives its own.
        for (flag, value) in [
            ("--http", "127.0.0.1:0"),
            ("--shard-count", "8"),
            ("--log", "warn"),
        ] {
            if !flags.contains(&flag) {
                command.args([flag, value]);
            }
        }
        Self::spawn_logged(command, dir, log)
    }

    /// Runs `command`, which must be (or `exec`) `linkrift serve` with its standard output
    /// piped, and waits for it to say where it serves.
    pub fn spawn(command: Command, dir: &Path) -> Node {
        Self::spawn_logged(command, dir, None)
    }

    /// As [`Node::spawn`]; if it stops before saying where it serves, the panic shows its
    /// exit status and the end of `log` (its stderr).
    fn spawn_logged(mut command: Command, dir: &Path, log: Option<&Path>) -> Node {
        let mut child = command.spawn().expect("linkrift starts");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // Keep reading after the test stops listening: the node must not see EPIPE.
                let _ = tx.send(line);
            }
        });
        let mut printed_key = None;
        // "linkrift serving http://A with data in D (node N, peer P, cluster C)"
        let (base, node_id, cluster, peer) = loop {
            let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) else {
                let status = child.try_wait().ok().flatten();
                let said = log
                    .and_then(|p| std::fs::read_to_string(p).ok())
                    .map(|t| {
                        let from = t.len().saturating_sub(4096);
                        let from = (from..t.len())
                            .find(|i| t.is_char_boundary(*i))
                            .unwrap_or(0);
                        t[from..].to_string()
                    })
                    .unwrap_or_default();
                let _ = child.kill();
                panic!("linkrift did not say where it serves (exit status {status:?}); its log ends:\n{said}");
            };
            if let Some(key) = line.strip_prefix("admin key (shown once, store it now): ") {
                printed_key = Some(key.to_string());
            }
            if let Some(found) = serving(&line) {
                break found;
            }
        };
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Node {
            child,
            base,
            dir: dir.to_path_buf(),
            http,
            printed_key,
            node_id,
            cluster,
            peer,
            stdout: Mutex::new(rx),
        }
    }

    /// Waits (up to `within`) for a line of its standard output that starts with
    /// `prefix`; the line.
    pub async fn wait_line(&self, prefix: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let line = self.stdout.lock().unwrap().try_recv();
            match line {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => continue,
                Err(mpsc::TryRecvError::Disconnected) => {
                    panic!(
                        "node {} closed its output before printing {prefix:?}",
                        self.node_id
                    )
                }
                Err(mpsc::TryRecvError::Empty) => {}
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not print {prefix:?} within {within:?}",
                self.node_id
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the node to serve again after it started itself anew (a rejoin), and
    /// takes its new id and addresses.
    pub async fn wait_restarted(&mut self, within: Duration) {
        let line = self.wait_line("linkrift serving ", within).await;
        let (base, node_id, cluster, peer) = serving(&line).unwrap();
        (self.base, self.node_id, self.cluster, self.peer) = (base, node_id, cluster, peer);
    }

    /// Waits (up to `within`) for the process to exit by itself.
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "node {} still running after {within:?}",
                self.node_id
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its client trusts the CA certificate in `ca` (PEM), for a node serving HTTPS.
    pub fn trusting(mut self, ca: &Path) -> Node {
        let certs = reqwest::Certificate::from_pem_bundle(&std::fs::read(ca).unwrap()).unwrap();
        self.http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .tls_certs_merge(certs)
            .build()
            .unwrap();
        self
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Waits until every group has a leader (after a restart this takes an election).
    pub async fn wait_ready(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = self.http.get(self.url("/readyz")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node not ready within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process id.
    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM (through kill(1): the workspace forbids unsafe code), and the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "SIGTERM sent");
        self.child.wait().unwrap()
    }

    pub async fn create(&self, key: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url("/v1/links"))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn redirect(&self, code: &str) -> (u16, Option<String>) {
        let r = self
            .http
            .get(self.url(&format!("/{code}")))
            .send()
            .await
            .unwrap();
        let location = r
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_string());
        (r.status().as_u16(), location)
    }

    /// Starts a node on `dir` and waits until it is ready.
    pub async fn ready(dir: &Path) -> Node {
        let node = Self::start(dir);
        node.wait_ready().await;
        node
    }

    /// GET `path` with `key`, expecting 200; the JSON body.
    /// Its `/metrics` exposition.
    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn get_json(&self, path: &str, key: &str) -> Value {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "GET {path}");
        r.json().await.unwrap()
    }

    pub async fn new_key(&self, scopes: &[&str]) -> String {
        let r = self
            .http
            .post(self.url("/v1/keys"))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({"name": "test", "scopes": scopes}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let body: Value = r.json().await.unwrap();
        body["key"].as_str().unwrap().to_string()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The error code of an error body.
pub fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}
