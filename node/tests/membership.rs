//! Elastic membership with real `linkrift` processes on 127.0.0.x: leaving under load (the
//! meta leader among the leavers), a lost node replaced and rejoining with fresh data, a
//! join and a leave at once, refused leaves, a node killed in the middle of a move, a node
//! removed from shards while it was down, and draining (by command and on SIGTERM).

mod support;

use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use linkrift_actors::placement;
use linkrift_actors::shard::shard_of;
use serde_json::{json, Value};
use support::cluster::{
    admin_status, assert_acknowledged_once, assert_no_failed_redirect, member, seed_links, trio,
    wait_placed, Load, Root,
};
use support::{Node, ADMIN_KEY};

/// Runs `linkrift cluster ARGS` against `node`.
async fn cli(node: &Node, args: &[&str]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_linkrift"));
    command
        .arg("cluster")
        .args(args)
        .args(["--url", &node.base])
        .env("LINKRIFT_ADMIN_KEY", ADMIN_KEY);
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// POSTs an admin operation; the status and the body.
async fn operate(node: &Node, id: u64, action: &str) -> (u16, Value) {
    let r = node
        .http
        .post(node.url(&format!("/admin/nodes/{id}/{action}")))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn node_field<'a>(status: &'a Value, id: u64, field: &str) -> &'a Value {
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == id)
        .map_or(&Value::Null, |n| &n[field])
}

/// Polls the status through `via` until `check` holds (up to `within`).
async fn wait_status(via: &Node, within: Duration, what: &str, check: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + within;
    loop {
        let s = admin_status(via).await;
        if check(&s) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not seen within {within:?}: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn is_ready(node: &Node) -> bool {
    let r = node.http.get(node.url("/readyz")).send().await;
    r.is_ok_and(|r| r.status() == 200)
}

/// Every shard's replicas (asked through `via`) have applied the same entries and hold the
/// same links, and there are `rf` of them, all voters.
async fn assert_replicas_agree(via: &Node, shards: u32, rf: usize) {
    for shard in 0..shards {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let replicas = via
                .get_json(&format!("/admin/shards/{shard}/replicas"), ADMIN_KEY)
                .await;
            let replicas = replicas.as_array().unwrap();
            let same = |f: &str| replicas.iter().all(|r| r[f] == replicas[0][f]);
            let voters = replicas.iter().filter(|r| r["voter"] == true).count();
            if replicas.len() == rf && voters == rf && same("applied") {
                assert!(
                    same("digest") && same("links"),
                    "shard {shard}: replicas at the same index differ: {replicas:#?}"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "shard {shard}: replicas did not settle: {replicas:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Stops sending traffic to `node` once it answers not-ready, as a load balancer would.
fn unbalance(node: &Node, targets: &Arc<Mutex<Vec<String>>>) -> tokio::task::JoinHandle<()> {
    let (base, http, targets) = (node.base.clone(), node.http.clone(), targets.clone());
    tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let r = http.get(format!("{base}/readyz")).send().await;
            if r.is_ok_and(|r| r.status() == 503) {
                targets.lock().unwrap().retain(|t| *t != base);
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{base} never answered not-ready");
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_become_three_with_leave_under_load() {
    let root = Root::new();
    let n1 = member(root.path(), 1, None, &[]);
    n1.wait_ready().await;
    let mut nodes = vec![n1];
    for i in 2..=5 {
        nodes.push(member(root.path(), i, Some(&nodes[0]), &[]));
    }
    let s = wait_placed(&nodes.iter().collect::<Vec<_>>(), 3).await;
    let known = seed_links(&nodes[1], 40).await;

    // The meta leader leaves, and so does one more node, at the same time.
    let meta_leader = s["groups"][0]["leader"].as_u64().unwrap();
    let other = nodes
        .iter()
        .map(|n| n.node_id)
        .filter(|&id| id != meta_leader)
        .max()
        .unwrap();
    let (leavers, stayers): (Vec<Node>, Vec<Node>) = nodes
        .into_iter()
        .partition(|n| n.node_id == meta_leader || n.node_id == other);
    let targets = Arc::new(Mutex::new(
        stayers
            .iter()
            .chain(&leavers)
            .map(|n| n.base.clone())
            .collect::<Vec<_>>(),
    ));
    let load = Load::start(targets.clone(), known.clone());
    let balancers: Vec<_> = leavers.iter().map(|n| unbalance(n, &targets)).collect();

    let (status, body) = operate(&stayers[0], other, "leave").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "leaving");
    let id = meta_leader.to_string();
    let waited = cli(&stayers[1], &["leave", &id, "--wait", "--timeout", "240"]).await;
    let out = text(&waited.stdout);
    assert!(
        waited.status.success(),
        "leave --wait failed: {out}{}",
        text(&waited.stderr)
    );
    assert!(
        out.contains("replica(s) left of") && out.contains("move(s) in flight"),
        "progress is printed: {out}"
    );
    assert!(
        out.contains(&format!("node {meta_leader} has left the cluster")),
        "{out}"
    );
    for b in balancers {
        b.await.unwrap();
    }
    // The leavers stop by themselves once they are out.
    for mut leaver in leavers {
        let exit = leaver.wait_exit(Duration::from_secs(240)).await;
        assert!(exit.success(), "node {} exited with {exit}", leaver.node_id);
        leaver
            .wait_line("this node has left the cluster", Duration::from_secs(5))
            .await;
    }

    let stay: Vec<&Node> = stayers.iter().collect();
    let s = wait_placed(&stay, 3).await;
    let ((ok, failures), (acked, _unknown)) = load.finish().await;
    assert_no_failed_redirect(ok, &failures);
    assert!(ok > 0 && !acked.is_empty(), "the load ran");
    assert_acknowledged_once(&stayers[2], &acked).await;
    for (code, url) in &known {
        assert_eq!(stayers[2].redirect(code).await, (302, Some(url.clone())));
    }
    assert_replicas_agree(&stayers[0], 8, 3).await;
    for gone in [meta_leader, other] {
        assert_eq!(node_field(&s, gone, "state"), "removed", "{s:#}");
    }
    // The meta group ends as the three that stayed, with the leavers out of it entirely.
    let mut ids: Vec<u64> = stayers.iter().map(|n| n.node_id).collect();
    ids.sort();
    wait_status(
        &stayers[0],
        Duration::from_secs(30),
        "the meta group without the leavers",
        |s| {
            let mut voters: Vec<u64> =
                serde_json::from_value(s["groups"][0]["voters"].clone()).unwrap();
            voters.sort();
            voters == ids && s["groups"][0]["learners"].as_array().unwrap().is_empty()
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_node_is_replaced_and_rejoins_with_fresh_data() {
    let root = Root::new();
    let fast = ["--dead-after-ms", "3000"];
    let n1 = member(root.path(), 1, None, &fast);
    n1.wait_ready().await;
    let n2 = member(root.path(), 2, Some(&n1), &fast);
    let n3 = member(root.path(), 3, Some(&n1), &fast);
    let n4 = member(root.path(), 4, Some(&n1), &fast);
    wait_placed(&[&n1, &n2, &n3, &n4], 3).await;
    let known = seed_links(&n2, 60).await;
    let survivors = [n1, n2, n3];
    let targets = Arc::new(Mutex::new(
        survivors.iter().map(|n| n.base.clone()).collect::<Vec<_>>(),
    ));
    let load = Load::start(targets, known.clone());
    let lost = n4.node_id;
    n4.kill9();

    // After dead_after, every shard has three replicas again, on the survivors, and each
    // new replica holds what the others do.
    let refs: Vec<&Node> = survivors.iter().collect();
    let s = wait_placed(&refs, 3).await;
    assert_eq!(node_field(&s, lost, "state"), "lost", "{s:#}");
    assert_replicas_agree(&survivors[0], 8, 3).await;

    // It comes back with its old data: it is told it was replaced, wipes its data and
    // joins again as a new node.
    let mut back = member(root.path(), 4, Some(&survivors[0]), &fast);
    assert_eq!(back.node_id, lost, "it starts with its old identity");
    back.wait_line("this node was replaced", Duration::from_secs(60))
        .await;
    back.wait_restarted(Duration::from_secs(60)).await;
    assert!(
        back.node_id > lost,
        "it rejoined under a new id, not {}",
        back.node_id
    );
    let all = [&survivors[0], &survivors[1], &survivors[2], &back];
    let s = wait_placed(&all, 3).await;
    assert_eq!(node_field(&s, lost, "state"), "lost");
    assert_eq!(node_field(&s, back.node_id, "state"), "active");

    let ((ok, failures), (acked, _unknown)) = load.finish().await;
    assert_no_failed_redirect(ok, &failures);
    assert_acknowledged_once(&back, &acked).await;
    for (code, url) in &known {
        assert_eq!(back.redirect(code).await, (302, Some(url.clone())));
    }
    assert_replicas_agree(&back, 8, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_and_a_leave_at_once_and_leaves_that_are_refused() {
    let root = Root::new();
    let ([n1, n2, n3], _) = trio(root.path(), &[]).await;
    let known = seed_links(&n1, 30).await;

    // Three nodes, three replicas per shard: nobody could take node 3's.
    let (status, body) = operate(&n1, n3.node_id, "leave").await;
    assert_eq!(status, 409, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("join a node first"), "{message}");
    let refused = cli(&n1, &["leave", &n3.node_id.to_string()]).await;
    assert!(!refused.status.success());
    assert!(text(&refused.stderr).contains("join a node first"));
    // Unknown nodes and cancelling an active node are refused too.
    assert_eq!(operate(&n1, 99, "leave").await.0, 404);
    assert_eq!(operate(&n1, n2.node_id, "cancel").await.0, 409);

    // Node 4 joins; as soon as it is active, node 2 leaves, while the replicas are still
    // moving onto node 4.
    let n4 = member(root.path(), 4, Some(&n3), &[]);
    wait_status(&n1, Duration::from_secs(60), "node 4 active", |s| {
        node_field(s, n4.node_id, "state") == "active"
    })
    .await;
    let (status, body) = operate(&n3, n2.node_id, "leave").await;
    assert_eq!(status, 200, "{body}");
    let mut n2 = n2;
    let exit = n2.wait_exit(Duration::from_secs(180)).await;
    assert!(exit.success(), "{exit}");
    wait_placed(&[&n1, &n3, &n4], 3).await;
    for node in [&n1, &n3, &n4] {
        for (code, url) in &known {
            assert_eq!(node.redirect(code).await, (302, Some(url.clone())));
        }
    }
    assert_replicas_agree(&n4, 8, 3).await;

    // Node 4 dies (not yet marked lost: dead_after is 30 s). Every shard has a voter on it,
    // so node 1 leaving would leave those shards one reachable voter of three.
    let dead = n4.node_id;
    n4.kill9();
    let (status, body) = operate(&n1, n1.node_id, "leave?force=true").await;
    assert_eq!(status, 409, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("would lose its quorum"), "{message}");
    assert!(message.contains(&dead.to_string()), "{message}");
    let s = admin_status(&n1).await;
    assert_eq!(node_field(&s, n1.node_id, "state"), "active", "{s:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_in_the_middle_of_a_move_leaves_no_shard_stuck() {
    let root = Root::new();
    let fast = ["--dead-after-ms", "3000"];
    let ([n1, n2, n3], _) = trio(root.path(), &fast).await;
    let known = seed_links(&n1, 200).await;

    // Node 4 joins; it dies as soon as a replica is moving onto it.
    let n4 = member(root.path(), 4, Some(&n1), &fast);
    let newcomer = n4.node_id;
    let deadline = Instant::now() + Duration::from_secs(60);
    let seen = loop {
        let s = admin_status(&n1).await;
        let moving = s["moves"].as_array().unwrap().iter().find(|m| {
            m["group"] != "meta"
                && (m["catching_up"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|c| c[0] == newcomer)
                    || m["changing_to"]
                        .as_array()
                        .is_some_and(|to| to.contains(&json!(newcomer))))
        });
        if let Some(m) = moving {
            break m.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no move onto node {newcomer} seen: {s:#}"
        );
    };
    n4.kill9();
    eprintln!("killed node {newcomer} during {seen}");

    // Writes to every shard go on, and every shard ends on the three survivors with no
    // learner or joint configuration left.
    let survivors = [&n1, &n2, &n3];
    for shard in 0..8u32 {
        let code = (0..)
            .map(|i| format!("mid{i}"))
            .find(|c| linkrift_actors::shard::shard_of(c, 8) == shard)
            .unwrap();
        let url = format!("https://mid.example/{code}");
        let node = survivors[shard as usize % 3];
        let (status, body) = node
            .create(ADMIN_KEY, json!({ "url": url, "code": code }))
            .await;
        assert_eq!(status, 201, "shard {shard}: {body}");
    }
    let s = wait_placed(&survivors, 3).await;
    assert!(s["moves"].as_array().unwrap().is_empty(), "{s:#}");
    assert_eq!(node_field(&s, newcomer, "state"), "lost");
    assert_replicas_agree(&n1, 8, 3).await;
    for (code, url) in &known {
        assert_eq!(n3.redirect(code).await, (302, Some(url.clone())));
    }
}

/// Found by the chaos tests (`long`, seed 7): a node that is down while shards move off it
/// is never told to delete its replicas. Back with its old data, it must not keep serving
/// those shards' old links (or stand for election in their groups forever): it asks who
/// leads each group, learns it is no member, and deletes the replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_removed_from_shards_while_down_deletes_its_old_replicas_when_back() {
    let root = Root::new();
    // Node 3 must not be marked lost (and replaced) while it is down.
    let slow = ["--dead-after-ms", "600000"];
    let ([n1, n2, n3], _) = trio(root.path(), &slow).await;
    let known = seed_links(&n1, 60).await;
    let id3 = n3.node_id;
    n3.kill9();

    // Node 4 joins, and the shards that the placement of four nodes takes off node 3 move
    // to it while node 3 is down.
    let n4 = member(root.path(), 4, Some(&n1), &slow);
    let ids = [n1.node_id, n2.node_id, id3, n4.node_id];
    let moved: Vec<u32> = (0..8)
        .filter(|&s| !placement::replicas(s, &ids, 3).contains(&id3))
        .collect();
    assert!(!moved.is_empty(), "four nodes take some shards off node 3");
    wait_status(
        &n1,
        Duration::from_secs(120),
        "every shard on its replicas among four nodes",
        |s| {
            s["groups"].as_array().unwrap().iter().all(|g| {
                let id = g["group"].as_u64().unwrap();
                if id == 0 {
                    return true;
                }
                let mut voters: Vec<u64> = serde_json::from_value(g["voters"].clone()).unwrap();
                voters.sort();
                let mut want = placement::replicas((id - 1) as u32, &ids, 3);
                want.sort();
                !g["leader"].is_null()
                    && g["learners"].as_array().unwrap().is_empty()
                    && voters == want
            })
        },
    )
    .await;

    // The links of those shards change while node 3 is away.
    let changed: Vec<(String, String)> = known
        .iter()
        .filter(|(code, _)| moved.contains(&shard_of(code, 8)))
        .map(|(code, _)| (code.clone(), format!("https://changed.example/{code}")))
        .collect();
    assert!(
        !changed.is_empty(),
        "some seeded links are on the moved shards"
    );
    for (code, url) in &changed {
        let r = n1
            .http
            .patch(n1.url(&format!("/v1/links/{code}")))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({ "url": url }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{code}");
    }

    // Back with its old data, node 3 serves the changed links, not its old copies, and it
    // deleted exactly the replicas it no longer holds.
    let n3 = member(root.path(), 3, None, &slow);
    assert_eq!(n3.node_id, id3);
    let deadline = Instant::now() + Duration::from_secs(30);
    for (code, url) in &changed {
        loop {
            let got = n3.redirect(code).await;
            if got == (302, Some(url.clone())) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node 3 still serves {got:?} for {code}, changed to {url} while it was away"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // (It served them before it deleted its old copies: a replica that has not heard from
    // its leader since it started is past the lag bound, and the read went to the leader.)
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = n3.metrics().await;
        let dropped: usize = metrics
            .lines()
            .find_map(|l| l.strip_prefix("raft_stale_replicas_dropped_total "))
            .unwrap_or_else(|| panic!("no raft_stale_replicas_dropped_total in {metrics}"))
            .trim()
            .parse()
            .unwrap();
        assert!(
            dropped <= moved.len(),
            "dropped {dropped}; shards moved: {moved:?}"
        );
        if dropped == moved.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 3 dropped {dropped} stale replicas, not {} (shards moved: {moved:?})",
            moved.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all = [&n1, &n2, &n3, &n4];
    wait_placed(&all, 3).await;
    for node in all {
        for (code, url) in &changed {
            assert_eq!(node.redirect(code).await, (302, Some(url.clone())));
        }
    }
    assert_replicas_agree(&n3, 8, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_hands_over_leaderships_and_cancel_and_sigterm_drain_work() {
    let root = Root::new();
    let n1 = member(root.path(), 1, None, &[]);
    n1.wait_ready().await;
    let n2 = member(root.path(), 2, Some(&n1), &[]);
    let on_term = ["--drain-on-shutdown", "--log", "info,openraft=warn"];
    let n3 = member(root.path(), 3, Some(&n1), &on_term);
    let s = wait_placed(&[&n1, &n2, &n3], 3).await;
    let known = seed_links(&n2, 40).await;
    let nodes = [n1, n2, n3];
    // Traffic keeps going to every node, the draining one included.
    let targets = Arc::new(Mutex::new(
        nodes.iter().map(|n| n.base.clone()).collect::<Vec<_>>(),
    ));
    let load = Load::start(targets, known.clone());

    // The node leading the most groups drains: it ends up leading none, keeps its
    // replicas, and is not ready.
    let busiest = s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|n| n["leads"].as_u64().unwrap())
        .unwrap();
    let (victim, replicas) = (
        busiest["id"].as_u64().unwrap(),
        busiest["replicas"].as_u64().unwrap(),
    );
    assert!(busiest["leads"].as_u64().unwrap() > 0);
    let drained = cli(&nodes[0], &["drain", &victim.to_string()]).await;
    assert!(drained.status.success(), "{}", text(&drained.stderr));
    assert_eq!(
        text(&drained.stdout),
        format!("node {victim} is draining\n")
    );
    let other = nodes.iter().find(|n| n.node_id != victim).unwrap();
    wait_status(
        other,
        Duration::from_secs(30),
        "leaderships handed over",
        |s| {
            node_field(s, victim, "leads") == 0
                && s["groups"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|g| !g["leader"].is_null())
        },
    )
    .await;
    let s = admin_status(other).await;
    assert_eq!(node_field(&s, victim, "state"), "draining");
    assert_eq!(node_field(&s, victim, "replicas"), replicas, "{s:#}");
    let victim_node = nodes.iter().find(|n| n.node_id == victim).unwrap();
    assert!(!is_ready(victim_node).await, "a draining node is not ready");

    // Cancel: active and ready again.
    let cancelled = cli(other, &["cancel", &victim.to_string()]).await;
    assert!(cancelled.status.success(), "{}", text(&cancelled.stderr));
    assert_eq!(
        text(&cancelled.stdout),
        format!("node {victim} is active\n")
    );
    victim_node.wait_ready().await;

    let ((ok, failures), (acked, _unknown)) = load.finish().await;
    assert_no_failed_redirect(ok, &failures);
    assert!(ok > 0 && !acked.is_empty(), "the load ran");
    assert_acknowledged_once(&nodes[0], &acked).await;

    // SIGTERM with --drain-on-shutdown: it drains, then stops; it is active again at its
    // next start.
    let [n1, n2, n3] = nodes;
    let (id3, peer3) = (n3.node_id, n3.peer.clone());
    let exit = n3.terminate();
    assert!(exit.success(), "{exit}");
    let log = std::fs::read_to_string(root.path().join("n3.log")).unwrap();
    assert!(log.contains("draining before shutting down"), "{log}");
    assert!(log.contains("drained: this node leads no group"), "{log}");
    let s = admin_status(&n1).await;
    assert_eq!(node_field(&s, id3, "state"), "draining", "{s:#}");
    // It comes back on another peer port (as a pod does on another address): every group
    // records the new address.
    let n3 = member(root.path(), 3, None, &on_term);
    assert_ne!(n3.peer, peer3);
    wait_status(&n1, Duration::from_secs(30), "node 3 active again", |s| {
        node_field(s, id3, "state") == "active"
    })
    .await;
    n3.wait_ready().await;
    wait_placed(&[&n1, &n2, &n3], 3).await;
}
