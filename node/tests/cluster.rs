//! Real `linkrift` processes on 127.0.0.1–127.0.0.5 forming a cluster: growing under load,
//! losing a leader, deleting on one node and reading on another, and a node with the wrong
//! secret.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use support::cluster::{
    admin_status, assert_acknowledged_once, assert_no_failed_redirect, member, seed_links, trio,
    wait_placed, Load,
};
use support::ADMIN_KEY;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growing_from_one_to_five_nodes_under_load_fails_no_redirect_and_loses_no_link() {
    let root = tempfile::tempdir().unwrap();
    let n1 = member(root.path(), 1, None, &[]);
    n1.wait_ready().await;
    let known = seed_links(&n1, 40).await;
    let targets = Arc::new(Mutex::new(vec![n1.base.clone()]));
    let load = Load::start(targets.clone(), known.clone());

    let n2 = member(root.path(), 2, Some(&n1), &[]);
    let n3 = member(root.path(), 3, Some(&n2), &[]);
    targets
        .lock()
        .unwrap()
        .extend([n2.base.clone(), n3.base.clone()]);
    wait_placed(&[&n1, &n2, &n3], 3).await;

    let n4 = member(root.path(), 4, Some(&n3), &[]);
    let n5 = member(root.path(), 5, Some(&n1), &[]);
    targets
        .lock()
        .unwrap()
        .extend([n4.base.clone(), n5.base.clone()]);
    let s = wait_placed(&[&n1, &n2, &n3, &n4, &n5], 3).await;

    let ((ok, failures), (acked, unknown)) = load.finish().await;
    assert_no_failed_redirect(ok, &failures);
    assert!(
        ok > 0 && !acked.is_empty(),
        "the load ran ({ok} redirects, {} creates)",
        acked.len()
    );

    // Every acknowledged link is there, once; nothing else but the seeds and the creates
    // whose outcome the client never learned.
    let by_url = assert_acknowledged_once(&n4, &acked).await;
    assert_eq!(
        by_url.len(),
        known.len() + acked.len() + by_url.keys().filter(|u| unknown.contains(u)).count()
    );
    // Every node redirects every link, replica or not.
    for node in [&n1, &n2, &n3, &n4, &n5] {
        for (url, code) in acked.iter().take(30) {
            assert_eq!(
                node.redirect(code).await,
                (302, Some(url.clone())),
                "node {}",
                node.node_id
            );
        }
    }
    // Replicas are spread: every node holds some.
    for n in s["nodes"].as_array().unwrap() {
        assert!(n["replicas"].as_u64().unwrap() > 0, "{n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_leader_loses_no_acknowledged_write_and_writes_resume() {
    let root = tempfile::tempdir().unwrap();
    let ([n1, n2, n3], s) = trio(root.path(), &[]).await;
    let known = seed_links(&n2, 60).await;

    // The node leading the most shards goes.
    let victim = s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|n| n["leads"].as_u64().unwrap())
        .unwrap()["id"]
        .as_u64()
        .unwrap();
    let mut nodes = vec![n1, n2, n3];
    let victim = nodes.remove(nodes.iter().position(|n| n.node_id == victim).unwrap());
    let survivors = Arc::new(Mutex::new(nodes.iter().map(|n| n.base.clone()).collect()));
    let load = Load::start(survivors, known.clone());
    let victim_id = victim.node_id;
    victim.kill9();
    let killed = Instant::now();

    // Writes to every shard the victim led succeed again, through a survivor, within two
    // election timeouts (2 × 3 s; openraft's voters also refuse votes for one election
    // timeout after the last heartbeat), plus a second for three nodes and the test
    // sharing two cores.
    let led: Vec<u64> = s["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["group"].as_u64().unwrap() > 0 && g["leader"].as_u64() == Some(victim_id))
        .map(|g| g["group"].as_u64().unwrap() - 1)
        .collect();
    assert!(!led.is_empty(), "the victim led shards");
    let writes = led.iter().map(|&shard| {
        let code = (0..)
            .map(|i| format!("after{i}"))
            .find(|c| linkrift_actors::shard::shard_of(c, 8) as u64 == shard)
            .unwrap();
        let node = &nodes[shard as usize % nodes.len()];
        async move {
            let url = format!("https://after.example/{code}");
            let (status, body) = node
                .create(ADMIN_KEY, json!({ "url": url, "code": code }))
                .await;
            (shard, status, body, killed.elapsed())
        }
    });
    for (shard, status, body, resumed) in futures::future::join_all(writes).await {
        assert_eq!(status, 201, "shard {shard}: {body}");
        assert!(
            resumed < Duration::from_secs(7),
            "the first write to shard {shard} after the kill took {resumed:?}"
        );
    }
    // Keep the load going until every shard has a leader again, then a little longer.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = admin_status(&nodes[0]).await;
        if s["groups"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| !g["leader"].is_null() && g["leader"].as_u64() != Some(victim_id))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "leaderless groups 30 s after the kill: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ((ok, failures), (acked, _unknown)) = load.finish().await;
    assert_no_failed_redirect(ok, &failures);
    for node in &nodes {
        for (code, url) in &known {
            assert_eq!(node.redirect(code).await, (302, Some(url.clone())));
        }
        for (url, code) in &acked {
            assert_eq!(
                node.redirect(code).await,
                (302, Some(url.clone())),
                "acknowledged {code}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_on_one_node_stops_redirects_on_the_others_at_once() {
    let root = tempfile::tempdir().unwrap();
    // A long near-cache TTL: only the invalidation can make a non-replica forget in time.
    let ttl = ["--near-cache-ttl-ms", "60000"];
    let n1 = member(root.path(), 1, None, &ttl);
    n1.wait_ready().await;
    let n2 = member(root.path(), 2, Some(&n1), &ttl);
    let n3 = member(root.path(), 3, Some(&n1), &ttl);
    let n4 = member(root.path(), 4, Some(&n1), &ttl);
    let nodes = [&n1, &n2, &n3, &n4];
    wait_placed(&nodes, 3).await;
    let links = seed_links(&n1, 24).await;
    let s = admin_status(&n1).await;
    let voters = |shard: u64| -> Vec<u64> {
        serde_json::from_value(s["groups"][(shard + 1) as usize]["voters"].clone()).unwrap()
    };
    let mut checked = 0;
    for (code, url) in &links {
        let shard = linkrift_actors::shard::shard_of(code, 8) as u64;
        let holders = voters(shard);
        // Every node redirects it (the non-replica fills its near cache).
        for n in nodes {
            assert_eq!(n.redirect(code).await, (302, Some(url.clone())));
        }
        let outsider = nodes
            .iter()
            .find(|n| !holders.contains(&n.node_id))
            .unwrap();
        let deleter = nodes
            .iter()
            .find(|n| n.node_id != outsider.node_id)
            .unwrap();
        let r = deleter
            .http
            .delete(deleter.url(&format!("/v1/links/{code}")))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        let deleted = Instant::now();
        for n in nodes {
            loop {
                let (status, _) = n.redirect(code).await;
                if status == 404 {
                    break;
                }
                assert_eq!(status, 302);
                // Far below the 60 s TTL: the invalidation (or, on a replica, the
                // replicated delete) did it.
                assert!(
                    deleted.elapsed() < Duration::from_secs(5),
                    "node {} still redirects {code} {:?} after the delete",
                    n.node_id,
                    deleted.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        checked += 1;
        if checked == 6 {
            break;
        }
    }
}

/// Reads what the server sends until it closes the connection.
async fn wait_closed(stream: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(30), async {
        while !matches!(stream.read(&mut buf).await, Ok(0) | Err(_)) {}
    })
    .await
    .expect("the node closes the connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_lengths_on_the_peer_and_cluster_ports_close_the_connection_only() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let root = tempfile::tempdir().unwrap();
    let mut n1 = member(root.path(), 1, None, &[]);
    n1.wait_ready().await;

    // The peer port, before authenticating: a frame whose payload announces 2^50 bytes
    // (this aborted the process: `memory allocation of 1125899906842624 bytes failed`).
    let mut s = tokio::net::TcpStream::connect(&n1.peer).await.unwrap();
    let len = s.read_u32().await.unwrap();
    let mut challenge = vec![0u8; len as usize];
    s.read_exact(&mut challenge).await.unwrap();
    let mut body = vec![0x00, 0x00, 0x00, 0x01, 0x00, 0xfd];
    body.extend((1u64 << 50).to_le_bytes());
    s.write_u32(body.len() as u32).await.unwrap();
    s.write_all(&body).await.unwrap();
    wait_closed(&mut s).await;

    // The cluster port: a frame length of 2^50, then one of 2^24 (over the limit).
    for len in [1u64 << 50, 1 << 24 | 1] {
        let mut s = tokio::net::TcpStream::connect(&n1.cluster).await.unwrap();
        s.write_u64(len).await.unwrap();
        s.write_all(&[0; 64]).await.unwrap();
        wait_closed(&mut s).await;
    }

    let (status, body) = n1
        .create(ADMIN_KEY, json!({ "url": "https://still.example/" }))
        .await;
    assert_eq!(status, 201, "{body}");
    let code = body["code"].as_str().unwrap();
    assert_eq!(
        n1.redirect(code).await,
        (302, Some("https://still.example/".into()))
    );
    assert!(n1.is_running());
}

/// The value of the counter `series` (name and labels) in `node`'s metrics, 0 if absent.
async fn counter(node: &support::Node, series: &str) -> f64 {
    node.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_authenticate_on_the_cluster_port_are_capped_and_closed() {
    let root = tempfile::tempdir().unwrap();
    let n1 = member(root.path(), 1, None, &[]);
    n1.wait_ready().await;
    // Eight connections from one address that send nothing are held...
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(tokio::net::TcpStream::connect(&n1.cluster).await.unwrap());
    }
    // ...a ninth from it is closed at once...
    let mut ninth = tokio::net::TcpStream::connect(&n1.cluster).await.unwrap();
    wait_closed(&mut ninth).await;
    let refused = "cluster_connections_refused_total{reason=\"per_address\"}";
    assert_eq!(counter(&n1, refused).await, 1.0);
    // ...while another address still gets in, and a node joins meanwhile.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.9:0".parse().unwrap()).unwrap();
    let mut other = socket.connect(n1.cluster.parse().unwrap()).await.unwrap();
    let n2 = member(root.path(), 2, Some(&n1), &[]);
    n2.wait_ready().await;
    // Each is closed once its time to authenticate is over.
    for s in idle.iter_mut().chain([&mut other]) {
        wait_closed(s).await;
    }
    let timeouts = "cluster_handshakes_failed_total{reason=\"timeout\"}";
    assert_eq!(counter(&n1, timeouts).await, 9.0);
    assert_eq!(counter(&n1, refused).await, 1.0);
    // Their places are free again: eight more are held, and the ninth is refused again.
    for _ in 0..8 {
        idle.push(tokio::net::TcpStream::connect(&n1.cluster).await.unwrap());
    }
    let mut ninth = tokio::net::TcpStream::connect(&n1.cluster).await.unwrap();
    wait_closed(&mut ninth).await;
    assert_eq!(counter(&n1, refused).await, 2.0);
    let (status, body) = n2
        .create(ADMIN_KEY, json!({ "url": "https://after.example/" }))
        .await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_wrong_secret_is_refused_and_the_cluster_carries_on() {
    let root = tempfile::tempdir().unwrap();
    let n1 = member(root.path(), 1, None, &[]);
    n1.wait_ready().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_linkrift"))
        .args(["serve", "--data-dir"])
        .arg(root.path().join("intruder"))
        .args([
            "--http",
            "127.0.0.5:0",
            "--peer",
            "127.0.0.5:0",
            "--cluster",
            "127.0.0.5:0",
        ])
        .args(["--join", &n1.cluster, "--log", "warn"])
        .env(
            "LINKRIFT_CLUSTER_SECRET",
            "not-the-secret-of-this-cluster-0123456789",
        )
        .env("LINKRIFT_NODE_PLAINTEXT", "true")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refused the session: is the cluster secret the same?"),
        "{stderr}"
    );
    let log = std::fs::read_to_string(root.path().join("n1.log")).unwrap();
    assert!(
        log.contains("cluster session refused"),
        "the member logs the refusal: {log}"
    );

    let (status, body) = n1
        .create(ADMIN_KEY, json!({ "url": "https://still.example/" }))
        .await;
    assert_eq!(status, 201, "{body}");
    let code = body["code"].as_str().unwrap();
    assert_eq!(
        n1.redirect(code).await,
        (302, Some("https://still.example/".into()))
    );
    let s = admin_status(&n1).await;
    assert_eq!(
        s["nodes"].as_array().unwrap().len(),
        1,
        "the intruder was not registered: {s}"
    );
}

/// `GET /v1/links/{code}` on `node`, with `query`: the status and the URL answered.
async fn read_link(node: &support::Node, code: &str, query: &str) -> (u16, Option<String>) {
    let r = node
        .http
        .get(node.url(&format!("/v1/links/{code}{query}")))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    (status, body["url"].as_str().map(str::to_string))
}

/// `/readyz` on `node`: the status and the reason given.
async fn readiness(node: &support::Node) -> (u16, String) {
    let r = node.http.get(node.url("/readyz")).send().await.unwrap();
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    (
        status,
        body["error"]["message"].as_str().unwrap_or("").to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_replica_stops_serving_past_the_lag_bound_and_refuses_consistent_reads() {
    let root = tempfile::tempdir().unwrap();
    // On 127.0.0.11-13, so that the test's requests (from 127.0.0.1) cross no cut. The
    // default lag bound, 5 s.
    let n1 = member(root.path(), 11, None, &[]);
    n1.wait_ready().await;
    let n2 = member(root.path(), 12, Some(&n1), &[]);
    let n3 = member(root.path(), 13, Some(&n1), &[]);
    wait_placed(&[&n1, &n2, &n3], 3).await;
    let (old, new) = ("https://example.com/old", "https://example.com/new");
    let (status, link) = n1
        .create(ADMIN_KEY, json!({"url": old, "code": "lin"}))
        .await;
    assert_eq!(status, 201, "{link}");
    // Every replica has it (three nodes, three replicas).
    let deadline = Instant::now() + Duration::from_secs(10);
    while read_link(&n3, "lin", "").await != (200, Some(old.into())) {
        assert!(Instant::now() < deadline, "node 3 never applied the create");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    n3.wait_ready().await;

    let cut = support::net::Partition::between(&["127.0.0.13"], &["127.0.0.11", "127.0.0.12"]);
    let cut_at = Instant::now();
    // The update commits on nodes 1 and 2 (after an election, if node 3 led the shard).
    let r = n1
        .http
        .patch(n1.url("/v1/links/lin"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({ "url": new }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // A consistent read on node 3 never answers from its replica, which cannot have heard
    // of the update: it is refused, or (through a leader node 3 can still reach) it is the
    // update.
    let (status, url) = read_link(&n3, "lin", "?consistent=true").await;
    assert!(
        status == 503 || (status == 200 && url.as_deref() == Some(new)),
        "a consistent read on the cut-off node answered {status} {url:?}"
    );
    // On the majority side a consistent read sees the update, on either node.
    for n in [&n1, &n2] {
        assert_eq!(
            read_link(n, "lin", "?consistent=true").await,
            (200, Some(new.into()))
        );
    }
    // Node 3 says it is not ready once it lags by more than the bound...
    let (status, why) = loop {
        let (status, why) = readiness(&n3).await;
        if status == 503 {
            break (status, why);
        }
        assert!(
            cut_at.elapsed() < Duration::from_secs(8),
            "node 3 still ready {:?} after it was cut off",
            cut_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(why.contains("lags its leader"), "{status}: {why}");
    // ...and from then on serves neither the API read nor the redirect from its replica:
    // nothing it answers is older than the bound.
    let (status, url) = read_link(&n3, "lin", "").await;
    assert!(
        status == 503 || url.as_deref() == Some(new),
        "node 3 answered {status} {url:?} past the lag bound"
    );
    let (status, location) = n3.redirect("lin").await;
    assert!(
        status == 503 || location.as_deref() == Some(new),
        "node 3 redirected {status} {location:?} past the lag bound"
    );
    drop(cut);
    // Healed, node 3 catches up and serves again: its consistent reads see the update at
    // once (it asks the leader), then its own replica does.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = read_link(&n3, "lin", "?consistent=true").await;
        if got == (200, Some(new.into())) {
            break;
        }
        assert_eq!(got.0, 503, "after healing: {got:?}");
        assert!(
            Instant::now() < deadline,
            "node 3 never read the update consistently"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    n3.wait_ready().await;
    assert_eq!(read_link(&n3, "lin", "").await, (200, Some(new.into())));
    assert_eq!(n3.redirect("lin").await, (302, Some(new.into())));
}
