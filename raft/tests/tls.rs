//! Mutual TLS on the peer port: nodes of one CA replicate; a peer with another CA's
//! certificate, or none, gets nothing; and an on-path relay that forwards a genuine
//! handshake cannot inject a frame afterwards (without TLS it can: shown here too).

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use linkrift_raft::transport::client::{Lane, PeerPool, Replica};
use linkrift_raft::transport::frame::{encode_frame, read_frame, Frame, FrameKind};
use linkrift_raft::transport::tls::Tls;
use linkrift_raft::transport::PeerSecurity;
use support::{form, set, test_config, wait_converged, write, TestCa, TestNode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const LONG: Duration = Duration::from_secs(30);

/// A vote request no replica grants (term 0): serving it changes nothing.
fn harmless_vote() -> Vec<u8> {
    linkrift_raft::codec::encode(&linkrift_raft::openraft::raft::VoteRequest::<
        linkrift_raft::NodeId,
    > {
        vote: linkrift_raft::openraft::Vote::new(0, 99),
        last_log_id: None,
    })
}

/// Hosts group 1 on `node` alone and waits until it leads it.
async fn lead_alone(node: &TestNode) -> linkrift_raft::Group<support::Kv> {
    let group = node
        .node()
        .create_group(linkrift_raft::GroupId(1))
        .await
        .unwrap();
    group
        .initialize(std::collections::BTreeMap::from([(
            node.id,
            node.addr.to_string(),
        )]))
        .await
        .unwrap();
    support::wait_for("the node to lead its group", LONG, || {
        group.is_leader().then_some(())
    })
    .await;
    group
}

/// A pool dialing as node 99 from 127.0.0.9 with `tls`.
fn pool(tls: Option<Tls>) -> PeerPool {
    PeerPool::new(
        99,
        "127.0.0.9".parse().unwrap(),
        PeerSecurity {
            secret: support::SECRET.into(),
            tls,
        },
        &test_config(),
        tokio_util::sync::CancellationToken::new(),
        tokio_util::task::TaskTracker::new(),
    )
}

async fn vote(pool: &PeerPool, addr: &str, node: u64) -> Result<Frame, String> {
    pool.peer(addr)
        .call(
            Replica {
                group: 1,
                node,
                incarnation: 0,
            },
            FrameKind::Vote,
            harmless_vote(),
            Lane::Control,
            Duration::from_secs(5),
        )
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_of_one_ca_replicate_and_others_get_nothing() {
    support::init_tracing();
    let root = tempfile::tempdir().unwrap();
    let ca = TestCa::new(&root.path().join("ca"));
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let ip = format!("127.0.0.{id}");
        let tls = ca.tls(&format!("n{id}"), &[ip.as_str()]);
        nodes.push(TestNode::start_tls(root.path(), id, test_config(), Some(tls)).await);
    }
    let mut nodes = form(nodes, 1).await;
    write(&nodes, 1, set("k", "over tls"), LONG).await;
    let map = wait_converged(&nodes, 1, LONG).await;
    assert_eq!(map["k"], "over tls");

    let target = nodes[1].addr.to_string();
    // A member's certificate: served.
    let member = pool(Some(ca.tls("n99", &["127.0.0.9"])));
    let reply = vote(&member, &target, 2).await.unwrap();
    assert_eq!(reply.kind, FrameKind::Reply);
    // Another CA's certificate, with the right secret: refused.
    let other = TestCa::new(&root.path().join("other-ca"));
    let stranger = pool(Some(other.tls("n99", &["127.0.0.9"])));
    let err = vote(&stranger, &target, 2).await.unwrap_err();
    assert!(err.contains("TLS handshake failed"), "{err}");
    // No TLS at all, with the right secret: refused.
    let plain = pool(None);
    let err = vote(&plain, &target, 2).await.unwrap_err();
    assert!(err.contains("handshake"), "{err}");

    write(&nodes, 1, set("k2", "still"), LONG).await;
    wait_converged(&nodes, 1, LONG).await;
    for n in &mut nodes {
        n.stop().await;
    }
}

/// A relay on the path between a dialer and a node: forwards both ways, and on command
/// writes extra bytes toward the node. Returns its address, the command channel, what the
/// node sent back, and whether the node closed its side.
async fn relay(
    to: SocketAddr,
) -> (
    SocketAddr,
    mpsc::Sender<Vec<u8>>,
    Arc<Mutex<Vec<u8>>>,
    Arc<tokio::sync::Notify>,
) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.50:0".parse().unwrap()).unwrap();
    let listener: TcpListener = socket.listen(8).unwrap();
    let addr = listener.local_addr().unwrap();
    let (inject, mut injected) = mpsc::channel::<Vec<u8>>(1);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let closed = Arc::new(tokio::sync::Notify::new());
    let (seen2, closed2) = (seen.clone(), closed.clone());
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = TcpStream::connect(to).await.unwrap();
        let (mut client_r, mut client_w) = client.into_split();
        let (mut server_r, mut server_w) = server.into_split();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            loop {
                match server_r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        seen2.lock().unwrap().extend_from_slice(&buf[..n]);
                        if client_w.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            closed2.notify_one();
        });
        let mut buf = [0u8; 4096];
        loop {
            tokio::select! {
                read = client_r.read(&mut buf) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if server_w.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                },
                Some(bytes) = injected.recv() => {
                    if server_w.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    (addr, inject, seen, closed)
}

/// The frames in `bytes` (what a plaintext node sent), as far as they parse.
async fn frames(bytes: Vec<u8>) -> Vec<Frame> {
    let mut input = bytes.as_slice();
    let mut out = Vec::new();
    while let Ok(Some(frame)) = read_frame(&mut input, 1 << 20).await {
        out.push(frame);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_path_relay_cannot_inject_a_frame_into_a_tls_connection() {
    support::init_tracing();
    let root = tempfile::tempdir().unwrap();
    let ca = TestCa::new(&root.path().join("ca"));
    // The node's certificate names the relay's address too: the relay sits where the
    // dialer thinks the node is.
    for with_tls in [false, true] {
        let dir = root.path().join(if with_tls { "tls" } else { "plain" });
        let tls = with_tls.then(|| ca.tls("n2", &["127.0.0.2", "127.0.0.50"]));
        let node = TestNode::start_tls(&dir, 2, test_config(), tls).await;
        let group = lead_alone(&node).await;
        let (relay_addr, inject, seen, closed) = relay(node.addr).await;
        let dialer = pool(with_tls.then(|| ca.tls("n99", &["127.0.0.9"])));
        // A genuine request through the relay: the handshake is the dialer's own.
        let reply = vote(&dialer, &relay_addr.to_string(), 2).await.unwrap();
        assert_eq!(reply.kind, FrameKind::Reply);
        // Now the relay adds a request of its own.
        let forged = encode_frame(&Frame {
            group: 1,
            target: 2,
            incarnation: 0,
            kind: FrameKind::Vote,
            request_id: 777_777,
            payload: harmless_vote(),
        });
        inject.send(forged).await.unwrap();
        if with_tls {
            // The bytes are no TLS record of the session: the node closes the connection.
            tokio::time::timeout(LONG, closed.notified())
                .await
                .expect("the node closes the connection");
        } else {
            // Without TLS the node serves it: the relay reads the answer.
            support::wait_for("the forged request's answer", LONG, || {
                let bytes = seen.lock().unwrap().clone();
                let frames = run_ready(frames(bytes));
                frames
                    .iter()
                    .any(|f| f.request_id == 777_777 && f.kind == FrameKind::Reply)
                    .then_some(())
            })
            .await;
        }
        drop(group);
        let mut node = node;
        node.stop().await;
    }
}

/// Runs a future that does no I/O to completion (the frame parser over a byte slice).
fn run_ready<F: std::future::Future>(f: F) -> F::Output {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_replaced_without_a_restart() {
    // (Each test runs in its own process under nextest, so the recorder is this test's.)
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("no other recorder");
    support::init_tracing();
    let root = tempfile::tempdir().unwrap();
    let old_ca = TestCa::new(&root.path().join("old"));
    let new_ca = TestCa::new(&root.path().join("new"));
    // Node 2 reads its files from `live/`.
    let live = root.path().join("live");
    std::fs::create_dir_all(&live).unwrap();
    let install = |from: &linkrift_raft::transport::tls::TlsFiles| {
        for (src, name) in [
            (&from.ca, "ca.pem"),
            (&from.cert, "n2.pem"),
            (&from.key, "n2-key.pem"),
        ] {
            // Written aside and renamed into place, as an operator (or cert-manager) does.
            let tmp = live.join(format!("{name}.tmp"));
            std::fs::copy(src, &tmp).unwrap();
            std::fs::rename(&tmp, live.join(name)).unwrap();
        }
    };
    install(&old_ca.node("n2", &["127.0.0.2"]));
    let files = linkrift_raft::transport::tls::TlsFiles {
        ca: live.join("ca.pem"),
        cert: live.join("n2.pem"),
        key: live.join("n2-key.pem"),
    };
    let tls = Tls::load(files).unwrap();
    let node = TestNode::start_tls(root.path(), 2, test_config(), Some(tls)).await;
    let group = lead_alone(&node).await;
    let target = node.addr.to_string();
    // A fresh pool for each attempt: a new connection, so a new handshake.
    let attempt = |ca: &TestCa| pool(Some(ca.tls("n99", &["127.0.0.9"])));
    assert!(vote(&attempt(&old_ca), &target, 2).await.is_ok());
    assert!(vote(&attempt(&new_ca), &target, 2).await.is_err());

    // The new CA's files replace the old ones; the node picks them up by itself.
    install(&new_ca.node("n2", &["127.0.0.2"]));
    support::wait_for_async("the node to present the new certificate", LONG, || async {
        vote(&attempt(&new_ca), &target, 2)
            .await
            .is_ok()
            .then_some(())
    })
    .await;
    assert!(
        vote(&attempt(&old_ca), &target, 2).await.is_err(),
        "the old CA is gone"
    );

    // Files that do not load leave the last good ones in use (and are counted).
    std::fs::write(live.join("n2.pem"), "not a certificate").unwrap();
    std::fs::write(live.join("n2-key.pem"), "not a key").unwrap();
    support::wait_for_async("the node to try the bad files", LONG, || async {
        // Each attempt is a handshake, which is when the node looks at its files.
        let served = vote(&attempt(&new_ca), &target, 2).await.is_ok();
        assert!(served, "a handshake failed after bad files were written");
        (support::counter(&snapshotter, "tls_reload_errors_total", None) > 0).then_some(())
    })
    .await;
    assert!(vote(&attempt(&new_ca), &target, 2).await.is_ok());
    drop(group);
    let mut node = node;
    node.stop().await;
}
