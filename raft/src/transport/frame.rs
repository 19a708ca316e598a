//! Frames on the peer port: a big-endian `u32` length, then a bincode-encoded [`Frame`].
//!
//! The length is checked against the configured maximum before anything is allocated, so a
//! peer announcing a huge frame is cut off without costing memory.

use bincode::{Decode, Encode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// One message on a peer connection.
#[derive(Debug, Clone, Encode, Decode)]
pub struct Frame {
    /// The Raft group the frame is for (0 during the handshake).
    pub group: u64,
    /// The node a request is for (0 in the handshake and in replies). A node serves only
    /// requests addressed to it: an address now used by another node (a replaced node, a
    /// reused pod name) must not take traffic meant for the old one.
    pub target: u64,
    /// In a request, the incarnation of the target's replica the sender has been talking
    /// to (0 before its first answer); in a reply, the incarnation of the replica that
    /// answered. A replica deleted and hosted again is a new incarnation: a sender whose
    /// view of it (what it has acknowledged) belongs to the earlier one must not go on.
    pub incarnation: u64,
    /// What the payload is.
    pub kind: FrameKind,
    /// Pairs a reply with its request; chosen by the requester.
    pub request_id: u64,
    /// Encoded body, depending on `kind`.
    pub payload: Vec<u8>,
}

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum FrameKind {
    /// Handshake, listener → dialer: a random challenge.
    Challenge,
    /// Handshake, dialer → listener: the dialer's id, its own challenge and its proof.
    Hello,
    /// Handshake, listener → dialer: the listener's proof.
    Welcome,
    /// An openraft `AppendEntriesRequest`.
    AppendEntries,
    /// An openraft `VoteRequest`.
    Vote,
    /// An openraft `InstallSnapshotRequest` (one chunk).
    InstallSnapshot,
    /// The group's answer: an encoded `Result` of the matching openraft call.
    Reply,
    /// The request could not be handed to a group; the payload is a UTF-8 reason.
    Failure,
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer announced a frame larger than we accept.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Announced length.
        len: u32,
        /// Configured maximum.
        max: u32,
    },
    /// The connection ended in the middle of a frame.
    #[error("connection closed in the middle of a frame")]
    Truncated,
    /// The bytes are not a frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The socket failed.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the next frame; `Ok(None)` when the peer closed the connection between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: u32,
) -> Result<Option<Frame>, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len);
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e),
    })?;
    let frame = crate::codec::decode_native(&body).map_err(|e| FrameError::Malformed(e.0))?;
    Ok(Some(frame))
}

/// Encodes a frame with its length prefix, ready to write.
pub fn encode_frame(frame: &Frame) -> Vec<u8> {
    let mut out = vec![0u8; 4];
    bincode::encode_into_std_write(frame, &mut out, bincode::config::standard())
        .expect("encoding into a Vec cannot fail");
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> std::io::Result<()> {
    w.write_all(&encode_frame(frame)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: Vec<u8>) -> Frame {
        Frame {
            target: 2,
            incarnation: 9,
            group: 7,
            kind: FrameKind::AppendEntries,
            request_id: 42,
            payload,
        }
    }

    #[tokio::test]
    async fn frames_round_trip_back_to_back() {
        let mut bytes = encode_frame(&frame(vec![1, 2, 3]));
        bytes.extend(encode_frame(&frame(vec![])));
        let mut input = bytes.as_slice();
        let a = read_frame(&mut input, 1024).await.unwrap().unwrap();
        let b = read_frame(&mut input, 1024).await.unwrap().unwrap();
        assert_eq!(
            (a.group, a.kind, a.request_id, a.payload),
            (7, FrameKind::AppendEntries, 42, vec![1, 2, 3])
        );
        assert!(b.payload.is_empty());
        assert!(
            read_frame(&mut input, 1024).await.unwrap().is_none(),
            "clean end between frames"
        );
    }

    #[tokio::test]
    async fn oversized_frame_is_refused_before_reading_it() {
        let bytes = encode_frame(&frame(vec![0; 100]));
        let err = read_frame(&mut bytes.as_slice(), 50).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { max: 50, .. }), "{err}");
    }

    #[tokio::test]
    async fn truncated_and_malformed_frames_are_errors() {
        let bytes = encode_frame(&frame(vec![9; 10]));
        let err = read_frame(&mut &bytes[..bytes.len() - 1], 1024)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::Truncated), "{err}");
        let mut garbage = 4u32.to_be_bytes().to_vec();
        garbage.extend([0xff; 4]);
        let err = read_frame(&mut garbage.as_slice(), 1024).await.unwrap_err();
        assert!(matches!(err, FrameError::Malformed(_)), "{err}");
    }
}
