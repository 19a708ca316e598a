//! Clusters of real `linkrift` processes on 127.0.0.x: starting members, waiting for the
//! placement to settle, steady load, and reading every link back.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use linkrift_actors::placement;
use serde_json::{json, Value};

use super::{Node, ADMIN_KEY};

pub const SECRET: &str = "cluster-test-secret-0123456789abcdef";

/// Starts node `i` on 127.0.0.`i` (every port picked by the OS), joining `seed` if given.
pub fn member(root: &Path, i: u8, seed: Option<&Node>, extra: &[&str]) -> Node {
    let ip = format!("127.0.0.{i}");
    let (http, peer, cluster) = (format!("{ip}:0"), format!("{ip}:0"), format!("{ip}:0"));
    let mut flags = vec!["--http", http.as_str(), "--cluster", cluster.as_str()];
    // Raft groups record a member's peer address: a restarted node passes its old one.
    if !extra.contains(&"--peer") {
        flags.extend(["--peer", peer.as_str()]);
    }
    if let Some(seed) = seed {
        flags.extend(["--join", seed.cluster.as_str()]);
    }
    flags.extend(extra);
    let dir = root.join(format!("n{i}"));
    let log = root.join(format!("n{i}.log"));
    let mut env = vec![
        ("LINKRIFT_ADMIN_KEY", ADMIN_KEY),
        ("LINKRIFT_CLUSTER_SECRET", SECRET),
    ];
    // Nodes on one machine, as in development: plaintext between them, unless the test
    // gives them certificates.
    if !extra.contains(&"--node-tls-ca") {
        env.push(("LINKRIFT_NODE_PLAINTEXT", "true"));
    }
    Node::start_logged(&dir, &env, &flags, Some(&log))
}

pub async fn admin_status(node: &Node) -> Value {
    node.get_json("/admin/status", ADMIN_KEY).await
}

/// Waits until `nodes` are all active and ready, and every shard's voters are exactly
/// its replicas by the placement rule, with a leader and no learner left over.
pub async fn wait_placed(nodes: &[&Node], rf: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    let ids: Vec<u64> = nodes.iter().map(|n| n.node_id).collect();
    let mut last = Value::Null;
    loop {
        let mut ready = true;
        for n in nodes {
            let r = n.http.get(n.url("/readyz")).send().await;
            ready &= r.is_ok_and(|r| r.status() == 200);
        }
        if ready {
            let s = admin_status(nodes[0]).await;
            let active: Vec<u64> = s["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["state"] == "active")
                .map(|n| n["id"].as_u64().unwrap())
                .collect();
            let placed = active.len() == ids.len()
                && s["groups"].as_array().unwrap().iter().all(|g| {
                    let id = g["group"].as_u64().unwrap();
                    let mut voters: Vec<u64> = serde_json::from_value(g["voters"].clone()).unwrap();
                    voters.sort();
                    let learners = g["learners"].as_array().unwrap();
                    if id == 0 {
                        return !g["leader"].is_null()
                            && voters.len() == placement::meta_voter_count(ids.len());
                    }
                    let mut want = placement::replicas((id - 1) as u32, &ids, rf);
                    want.sort();
                    !g["leader"].is_null() && learners.is_empty() && voters == want
                });
            if placed {
                return s;
            }
            last = s;
        }
        assert!(
            Instant::now() < deadline,
            "placement not reached within 120 s; last status: {last:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Steady traffic against every node in `targets`: redirects of known codes, and creates
/// (each retried with its idempotency key until acknowledged, or counted as unknown).
pub struct Load {
    stop: Arc<AtomicBool>,
    redirects: tokio::task::JoinHandle<(u64, Vec<String>)>,
    creates: tokio::task::JoinHandle<(BTreeMap<String, String>, Vec<String>)>,
}

impl Load {
    pub fn start(targets: Arc<Mutex<Vec<String>>>, known: Vec<(String, String)>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let hard_stop = Instant::now() + Duration::from_secs(300);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let redirects = {
            let (stop, targets, client) = (stop.clone(), targets.clone(), client.clone());
            tokio::spawn(async move {
                let (mut ok, mut failures) = (0u64, Vec::new());
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) && Instant::now() < hard_stop {
                    let base = {
                        let t = targets.lock().unwrap();
                        t[i % t.len()].clone()
                    };
                    let (code, url) = &known[i % known.len()];
                    i += 1;
                    match client.get(format!("{base}/{code}")).send().await {
                        Ok(r)
                            if r.status() == 302
                                && r.headers()
                                    .get("location")
                                    .is_some_and(|l| l.to_str().unwrap() == url) =>
                        {
                            ok += 1
                        }
                        Ok(r) => {
                            let status = r.status();
                            let body = r.text().await.unwrap_or_default();
                            failures.push(format!("{base}/{code}: {status} {body}"));
                        }
                        Err(e) => failures.push(format!("{base}/{code}: {e}")),
                    }
                }
                (ok, failures)
            })
        };
        let creates = {
            let (stop, targets) = (stop.clone(), targets);
            tokio::spawn(async move {
                let (mut acked, mut unknown) = (BTreeMap::new(), Vec::new());
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) && Instant::now() < hard_stop {
                    let url = format!("https://load.example/{i}");
                    let mut done = false;
                    for attempt in 0..10 {
                        let base = {
                            let t = targets.lock().unwrap();
                            t[(i + attempt) % t.len()].clone()
                        };
                        let r = client
                            .post(format!("{base}/v1/links"))
                            .bearer_auth(ADMIN_KEY)
                            .header("idempotency-key", format!("load-{i}"))
                            .json(&json!({ "url": url }))
                            .send()
                            .await;
                        if let Ok(r) = r {
                            if r.status() == 201 {
                                let body: Value = r.json().await.unwrap();
                                acked.insert(url.clone(), body["code"].as_str().unwrap().into());
                                done = true;
                                break;
                            }
                        }
                    }
                    if !done {
                        unknown.push(url);
                    }
                    i += 1;
                }
                (acked, unknown)
            })
        };
        Load {
            stop,
            redirects,
            creates,
        }
    }

    pub async fn finish(self) -> ((u64, Vec<String>), (BTreeMap<String, String>, Vec<String>)) {
        self.stop.store(true, Ordering::Relaxed);
        (self.redirects.await.unwrap(), self.creates.await.unwrap())
    }
}

pub fn assert_no_failed_redirect(ok: u64, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} of {} redirects failed: {:#?}",
        failures.len(),
        ok as usize + failures.len(),
        &failures[..failures.len().min(10)]
    );
}

/// Every link in the cluster, by URL (listing through `node`, page by page); or the
/// status and body of a page that was refused.
pub async fn all_links(node: &Node) -> Result<Vec<(String, String)>, (u16, String)> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/links?limit=1000&cursor={c}"),
            None => "/v1/links?limit=1000".to_string(),
        };
        let r = node
            .http
            .get(node.url(&path))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        if status != 200 {
            return Err((status, r.text().await.unwrap_or_default()));
        }
        let page: Value = r.json().await.unwrap();
        for l in page["links"].as_array().unwrap() {
            out.push((
                l["url"].as_str().unwrap().to_string(),
                l["code"].as_str().unwrap().to_string(),
            ));
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return Ok(out),
        }
    }
}

pub async fn seed_links(node: &Node, n: usize) -> Vec<(String, String)> {
    let mut known = Vec::new();
    for i in 0..n {
        let url = format!("https://seed.example/{i}");
        let (status, body) = node.create(ADMIN_KEY, json!({ "url": url })).await;
        assert_eq!(status, 201, "{body}");
        known.push((body["code"].as_str().unwrap().to_string(), url));
    }
    known
}

/// A directory for a test's nodes (data and logs), removed afterwards unless
/// `LINKRIFT_KEEP_TEST_DIRS` is set (then its path is printed).
pub struct Root {
    _dir: Option<tempfile::TempDir>,
    path: std::path::PathBuf,
}

impl Root {
    pub fn new() -> Root {
        let dir = tempfile::tempdir().unwrap();
        if std::env::var_os("LINKRIFT_KEEP_TEST_DIRS").is_some() {
            let path = dir.keep();
            eprintln!("test directory kept: {}", path.display());
            return Root { _dir: None, path };
        }
        Root {
            path: dir.path().to_path_buf(),
            _dir: Some(dir),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Three members on 127.0.0.1-3 with `flags`, joined through node 1, every shard on all
/// three; and the status then.
pub async fn trio(root: &Path, flags: &[&str]) -> ([Node; 3], Value) {
    let n1 = member(root, 1, None, flags);
    n1.wait_ready().await;
    let n2 = member(root, 2, Some(&n1), flags);
    let n3 = member(root, 3, Some(&n1), flags);
    let s = wait_placed(&[&n1, &n2, &n3], 3).await;
    ([n1, n2, n3], s)
}

/// Asserts every acknowledged create (URL → code) is listed through `via` at its code, and
/// no URL twice; the codes by URL.
///
/// `via` lists from its own replicas, which apply a change when they learn it is committed
/// (at the latest with the leader's next heartbeat, 300 ms): a create acknowledged just
/// before the call may not be listed yet. So the listing is taken again, for up to 5 s,
/// until every acknowledged create is in it; what is missing after that is lost.
pub async fn assert_acknowledged_once(
    via: &Node,
    acked: &BTreeMap<String, String>,
) -> std::collections::HashMap<String, Vec<String>> {
    // Right after a membership change a listing may be refused with 503 (no replica of a
    // shard answered in time), which asks the client to try again: it is, until the
    // deadline, and a listing still refused then fails the test.
    let deadline = Instant::now() + Duration::from_secs(10);
    let by_url = loop {
        let mut by_url: std::collections::HashMap<String, Vec<String>> = Default::default();
        match all_links(via).await {
            Ok(links) => {
                for (url, code) in links {
                    by_url.entry(url).or_default().push(code);
                }
            }
            Err((503, _)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err((status, body)) => panic!("listing the links answered {status}: {body}"),
        }
        if acked.keys().all(|u| by_url.contains_key(u)) || Instant::now() > deadline {
            break by_url;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (url, code) in acked {
        assert_eq!(
            by_url.get(url),
            Some(&vec![code.clone()]),
            "acknowledged {url} at {code}"
        );
    }
    for (url, codes) in &by_url {
        assert_eq!(codes.len(), 1, "{url} created more than once: {codes:?}");
    }
    by_url
}
