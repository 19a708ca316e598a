//! Bad input on the peer port closes that one connection with a logged reason; the node
//! keeps serving its real peers.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use linkrift_raft::transport::auth;
use linkrift_raft::transport::frame::{encode_frame, Frame, FrameKind};
use support::{cluster, set, test_config, wait_converged, write, TestNode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LONG: Duration = Duration::from_secs(30);

/// Everything the nodes log, for the test to search.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Waits until the server closes `stream` (EOF or reset), discarding what it sends.
async fn closed_by_server(stream: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(LONG, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the server closes the connection");
}

async fn authenticated(nodes: &[TestNode]) -> TcpStream {
    let mut stream = TcpStream::connect(nodes[1].addr).await.unwrap();
    auth::dial(&mut stream, support::SECRET, 99)
        .await
        .expect("right secret is accepted");
    stream
}

/// Checks the cluster still replicates through node 2 and returns once it has.
async fn still_serving(nodes: &[TestNode], key: &str) {
    write(nodes, 1, set(key, "ok"), LONG).await;
    let map = wait_converged(nodes, 1, LONG).await;
    assert_eq!(map.get(key).map(String::as_str), Some("ok"));
}

async fn wait_logged(logs: &Captured, needle: &str) {
    support::wait_for(&format!("a log line containing {needle:?}"), LONG, || {
        logs.text().contains(needle).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_peer_input_closes_only_that_connection() {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_env_filter("linkrift_raft=debug")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(root.path(), 3, 1, test_config()).await;

    // Garbage instead of a handshake.
    let mut s = TcpStream::connect(nodes[1].addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    closed_by_server(&mut s).await;
    wait_logged(&logs, "handshake failed").await;
    still_serving(&nodes, "after-garbage").await;

    // Before authenticating, a frame whose payload announces 2^50 bytes: bincode allocated
    // that much from the length it read, and the process aborted. First the bytes that
    // did it to the frame layout of then ({group, kind, request_id, payload}), then the
    // same for the layout of now ({group, target, incarnation, kind, request_id, payload}).
    for fields in [&[0x00, 0x01, 0x00][..], &[0x00, 0x00, 0x00, 0x01, 0x00][..]] {
        let mut body = fields.to_vec();
        body.push(0xfd);
        body.extend((1u64 << 50).to_le_bytes());
        let mut s = TcpStream::connect(nodes[1].addr).await.unwrap();
        let mut challenge = vec![0u8; 4];
        s.read_exact(&mut challenge).await.unwrap();
        let len = u32::from_be_bytes(challenge[..4].try_into().unwrap());
        let mut rest = vec![0u8; len as usize];
        s.read_exact(&mut rest).await.unwrap();
        s.write_all(&(body.len() as u32).to_be_bytes())
            .await
            .unwrap();
        s.write_all(&body).await.unwrap();
        closed_by_server(&mut s).await;
        still_serving(&nodes, &format!("after-huge-length-{}", fields.len())).await;
    }
    wait_logged(&logs, "exceeds what the bytes can hold").await;

    // The wrong cluster secret.
    let mut s = TcpStream::connect(nodes[1].addr).await.unwrap();
    assert!(
        auth::dial(&mut s, b"not the secret", 99).await.is_err(),
        "wrong secret refused"
    );
    closed_by_server(&mut s).await;
    wait_logged(&logs, "wrong cluster secret").await;
    still_serving(&nodes, "after-wrong-secret").await;

    // An authenticated peer announcing a frame over the limit.
    let mut s = authenticated(&nodes).await;
    s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    closed_by_server(&mut s).await;
    wait_logged(&logs, "exceeds the").await;
    still_serving(&nodes, "after-oversized").await;

    // A frame cut off half way.
    let mut s = authenticated(&nodes).await;
    let frame = encode_frame(&Frame {
        group: 1,
        target: 2,
        incarnation: 0,
        kind: FrameKind::Vote,
        request_id: 1,
        payload: vec![7; 64],
    });
    s.write_all(&frame[..frame.len() / 2]).await.unwrap();
    s.shutdown().await.unwrap();
    closed_by_server(&mut s).await;
    wait_logged(&logs, "in the middle of a frame").await;
    still_serving(&nodes, "after-half-frame").await;

    // A well-sized frame whose body is not a frame.
    let mut s = authenticated(&nodes).await;
    s.write_all(&8u32.to_be_bytes()).await.unwrap();
    s.write_all(&[0xff; 8]).await.unwrap();
    closed_by_server(&mut s).await;
    wait_logged(&logs, "malformed frame").await;

    // A valid frame with an undecodable request is refused, and the connection lives on.
    let mut s = authenticated(&nodes).await;
    let bad = Frame {
        group: 1,
        target: 2,
        incarnation: 0,
        kind: FrameKind::Vote,
        request_id: 5,
        payload: vec![0xff; 3],
    };
    s.write_all(&encode_frame(&bad)).await.unwrap();
    let frame = linkrift_raft::transport::frame::read_frame(&mut s, 1 << 20)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((frame.kind, frame.request_id), (FrameKind::Failure, 5));
    let incarnation = frame.incarnation;
    assert_ne!(
        incarnation, 0,
        "a hosted replica answers with its incarnation"
    );

    // A request for an earlier incarnation of a hosted replica is refused, not served.
    let stale = Frame {
        group: 1,
        target: 2,
        incarnation: incarnation ^ 1,
        kind: FrameKind::Vote,
        request_id: 8,
        payload: codec_vote(),
    };
    s.write_all(&encode_frame(&stale)).await.unwrap();
    let frame = linkrift_raft::transport::frame::read_frame(&mut s, 1 << 20)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((frame.kind, frame.request_id), (FrameKind::Failure, 8));
    assert!(
        String::from_utf8_lossy(&frame.payload).contains("deleted and created again"),
        "{}",
        String::from_utf8_lossy(&frame.payload)
    );
    // The same request for the incarnation it has is served.
    let current = Frame {
        incarnation,
        request_id: 9,
        ..stale
    };
    s.write_all(&encode_frame(&current)).await.unwrap();
    let frame = linkrift_raft::transport::frame::read_frame(&mut s, 1 << 20)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (frame.kind, frame.request_id, frame.incarnation),
        (FrameKind::Reply, 9, incarnation),
        "{}",
        String::from_utf8_lossy(&frame.payload)
    );
    let unknown = Frame {
        group: 42,
        target: 2,
        incarnation: 0,
        kind: FrameKind::Vote,
        request_id: 6,
        payload: vec![],
    };
    s.write_all(&encode_frame(&unknown)).await.unwrap();
    let frame = linkrift_raft::transport::frame::read_frame(&mut s, 1 << 20)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((frame.kind, frame.request_id), (FrameKind::Failure, 6));
    assert!(String::from_utf8_lossy(&frame.payload).contains("not hosted"));

    // A request for another node id (the address was reused) is refused, not served.
    let misaddressed = Frame {
        group: 1,
        target: 7,
        incarnation: 0,
        kind: FrameKind::Vote,
        request_id: 7,
        payload: vec![],
    };
    s.write_all(&encode_frame(&misaddressed)).await.unwrap();
    let frame = linkrift_raft::transport::frame::read_frame(&mut s, 1 << 20)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((frame.kind, frame.request_id), (FrameKind::Failure, 7));
    assert!(
        String::from_utf8_lossy(&frame.payload).contains("this is node 2, not node 7"),
        "{}",
        String::from_utf8_lossy(&frame.payload)
    );

    // One address holding eight connections in their handshake (each has its challenge
    // and answers nothing) gets no ninth: it is closed before any challenge is sent. The
    // real peers, on other addresses, go on replicating meanwhile.
    let dial_from = |ip: &str| {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
        socket.connect(nodes[1].addr)
    };
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut s = dial_from("127.0.0.99").await.unwrap();
        let len = s.read_u32().await.unwrap();
        s.read_exact(&mut vec![0u8; len as usize]).await.unwrap();
        held.push(s);
    }
    let mut ninth = dial_from("127.0.0.99").await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(LONG, ninth.read_to_end(&mut got)).await;
    assert!(
        got.is_empty(),
        "the ninth connection was sent a challenge: {got:?}"
    );
    wait_logged(&logs, "too many connections in their handshake").await;
    still_serving(&nodes, "with-eight-held").await;
    // Another address still gets its challenge.
    let mut other = dial_from("127.0.0.98").await.unwrap();
    assert!(other.read_u32().await.unwrap() > 0);
    drop((held, other));

    still_serving(&nodes, "after-everything").await;
    for n in &mut nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_connections_come_from_the_nodes_own_address() {
    use linkrift_raft::transport::client::{Lane, PeerPool, Replica};
    // A bare listener on 127.0.0.6 sees where a dial from "node" 127.0.0.5 comes from.
    // Unbound, the kernel would pick 127.0.0.1 for any loopback destination.
    let listener = tokio::net::TcpListener::bind("127.0.0.6:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let pool = PeerPool::new(
        5,
        "127.0.0.5".parse().unwrap(),
        linkrift_raft::transport::PeerSecurity::plaintext(support::SECRET),
        &test_config(),
        shutdown.clone(),
        tokio_util::task::TaskTracker::new(),
    );
    let peer = pool.peer(&addr);
    let call = tokio::spawn(async move {
        peer.call(
            Replica {
                group: 1,
                node: 6,
                incarnation: 0,
            },
            FrameKind::Vote,
            vec![],
            Lane::Control,
            Duration::from_secs(1),
        )
        .await
    });
    let (_stream, remote) = tokio::time::timeout(LONG, listener.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(remote.ip().to_string(), "127.0.0.5");
    // The bare listener never answers the handshake, so the call fails rather than hangs.
    assert!(call.await.unwrap().is_err());
    shutdown.cancel();
}

/// An encoded vote request no replica grants (term 0), so serving it changes nothing.
fn codec_vote() -> Vec<u8> {
    linkrift_raft::codec::encode(&openraft::raft::VoteRequest::<linkrift_raft::NodeId> {
        vote: openraft::Vote::new(0, 9),
        last_log_id: None,
    })
}
