//! The handshake that opens every peer connection: both sides prove they hold the cluster
//! secret by MAC-ing the other side's fresh random challenge, so the secret never crosses
//! the wire and a recorded handshake cannot be replayed.
//!
//! ```text
//! listener → dialer   Challenge  { listener nonce }
//! dialer   → listener Hello      { node id, dialer nonce, HMAC(secret, "hello" ‖ ln ‖ dn ‖ id) }
//! listener → dialer   Welcome    { HMAC(secret, "welcome" ‖ dn ‖ ln) }
//! ```

use bincode::{Decode, Encode};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite};

use super::frame::{read_frame, write_frame, Frame, FrameKind};
use crate::types::NodeId;

type HmacSha256 = Hmac<Sha256>;

const NONCE: usize = 32;
const MAX_HANDSHAKE_FRAME: u32 = 1024;

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The other side does not know the cluster secret.
    #[error("wrong cluster secret")]
    WrongSecret,
    /// The other side did not follow the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The socket failed or closed.
    #[error("connection failed during handshake: {0}")]
    Io(String),
}

#[derive(Encode, Decode)]
struct Hello {
    node_id: NodeId,
    nonce: Vec<u8>,
    mac: Vec<u8>,
}

fn mac(secret: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    for p in parts {
        m.update(p);
    }
    m
}

fn nonce() -> Vec<u8> {
    let mut n = vec![0u8; NONCE];
    rand::thread_rng().fill_bytes(&mut n);
    n
}

async fn expect<R: AsyncRead + Unpin>(r: &mut R, kind: FrameKind) -> Result<Frame, HandshakeError> {
    match read_frame(r, MAX_HANDSHAKE_FRAME).await {
        Ok(Some(f)) if f.kind == kind => Ok(f),
        Ok(Some(f)) => Err(HandshakeError::Protocol(format!(
            "expected {kind:?}, got {:?}",
            f.kind
        ))),
        Ok(None) => Err(HandshakeError::Io("closed by peer".into())),
        Err(e) => Err(HandshakeError::Protocol(e.to_string())),
    }
}

async fn send<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: FrameKind,
    payload: Vec<u8>,
) -> Result<(), HandshakeError> {
    let frame = Frame {
        group: 0,
        target: 0,
        incarnation: 0,
        kind,
        request_id: 0,
        payload,
    };
    write_frame(w, &frame)
        .await
        .map_err(|e| HandshakeError::Io(e.to_string()))
}

/// The listener's side. Returns the id the dialer proved it is.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    secret: &[u8],
) -> Result<NodeId, HandshakeError> {
    let ours = nonce();
    send(s, FrameKind::Challenge, ours.clone()).await?;
    let hello = expect(s, FrameKind::Hello).await?;
    let hello: Hello = crate::codec::decode_native(&hello.payload)
        .map_err(|e| HandshakeError::Protocol(format!("bad hello: {e}")))?;
    if hello.nonce.len() != NONCE {
        return Err(HandshakeError::Protocol("bad nonce length".into()));
    }
    mac(
        secret,
        &[b"hello", &ours, &hello.nonce, &hello.node_id.to_be_bytes()],
    )
    .verify_slice(&hello.mac)
    .map_err(|_| HandshakeError::WrongSecret)?;
    let proof = mac(secret, &[b"welcome", &hello.nonce, &ours])
        .finalize()
        .into_bytes()
        .to_vec();
    send(s, FrameKind::Welcome, proof).await?;
    Ok(hello.node_id)
}

/// The dialer's side: proves `node_id` holds the secret and checks the listener does too.
pub async fn dial<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    secret: &[u8],
    node_id: NodeId,
) -> Result<(), HandshakeError> {
    let challenge = expect(s, FrameKind::Challenge).await?;
    if challenge.payload.len() != NONCE {
        return Err(HandshakeError::Protocol("bad challenge length".into()));
    }
    let ours = nonce();
    let proof = mac(
        secret,
        &[b"hello", &challenge.payload, &ours, &node_id.to_be_bytes()],
    )
    .finalize()
    .into_bytes()
    .to_vec();
    let hello = Hello {
        node_id,
        nonce: ours.clone(),
        mac: proof,
    };
    let payload = bincode::encode_to_vec(&hello, bincode::config::standard())
        .expect("encoding into a Vec cannot fail");
    send(s, FrameKind::Hello, payload).await?;
    let welcome = expect(s, FrameKind::Welcome).await?;
    mac(secret, &[b"welcome", &ours, &challenge.payload])
        .verify_slice(&welcome.payload)
        .map_err(|_| HandshakeError::WrongSecret)
}
