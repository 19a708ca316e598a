//! One encoding for everything Linkrift writes to disk or to the wire: bincode 2 with its
//! standard configuration, through serde for openraft's own types.
//!
//! Every decode is bounded. bincode allocates a byte string or string from the length it
//! reads, before reading it, and its standard configuration sets no limit: a length of
//! 2^50 from a peer, or from a flipped byte on disk, aborted the process. Bytes that decode
//! validly never hold more byte strings and strings than their own length (each is in
//! them), and serde preallocates at most 1 MiB for any other sequence, so a decode of `n`
//! bytes runs with a limit of the smallest of 64 KiB, 1 MiB, 16 MiB, 256 MiB, 4 GiB and
//! 64 GiB that is at least `n`: what hostile bytes can make it reserve is at most 16 times
//! their own size (64 KiB for small ones), and is refused above that.

use serde::{de::DeserializeOwned, Serialize};

/// Encodes a value; encoding into memory only fails on a type serde cannot describe, which
/// is a programming error.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .expect("bincode encoding into memory cannot fail for serde types")
}

/// Calls `$decode` with the standard configuration limited for `$bytes` (see the module).
macro_rules! with_limit_for {
    ($bytes:expr, $decode:ident) => {{
        let bytes: &[u8] = $bytes;
        let standard = bincode::config::standard();
        match bytes.len() as u64 {
            0..=0x1_0000 => $decode(bytes, standard.with_limit::<0x1_0000>()),
            0..=0x10_0000 => $decode(bytes, standard.with_limit::<0x10_0000>()),
            0..=0x100_0000 => $decode(bytes, standard.with_limit::<0x100_0000>()),
            0..=0x1000_0000 => $decode(bytes, standard.with_limit::<0x1000_0000>()),
            0..=0x1_0000_0000 => $decode(bytes, standard.with_limit::<0x1_0000_0000>()),
            _ => $decode(bytes, standard.with_limit::<0x10_0000_0000>()),
        }
    }};
}

/// Decodes a value (through serde) that must fill `bytes` exactly.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    use bincode::serde::decode_from_slice;
    let (value, used) = with_limit_for!(bytes, decode_from_slice).map_err(DecodeError::from)?;
    exactly(bytes, used)?;
    Ok(value)
}

/// Decodes a value of a type with bincode's own `Decode` that must fill `bytes` exactly.
pub fn decode_native<T: bincode::Decode<()>>(bytes: &[u8]) -> Result<T, DecodeError> {
    use bincode::decode_from_slice;
    let (value, used) = with_limit_for!(bytes, decode_from_slice).map_err(DecodeError::from)?;
    exactly(bytes, used)?;
    Ok(value)
}

fn exactly(bytes: &[u8], used: usize) -> Result<(), DecodeError> {
    if used != bytes.len() {
        return Err(DecodeError(format!(
            "{} trailing bytes after the value",
            bytes.len() - used
        )));
    }
    Ok(())
}

/// Bytes that do not decode as the expected type.
#[derive(Debug, thiserror::Error)]
#[error("undecodable bytes: {0}")]
pub struct DecodeError(pub String);

impl From<bincode::error::DecodeError> for DecodeError {
    fn from(e: bincode::error::DecodeError) -> Self {
        match e {
            bincode::error::DecodeError::LimitExceeded => {
                DecodeError("a length in it exceeds what the bytes can hold".into())
            }
            other => DecodeError(other.to_string()),
        }
    }
}

impl From<DecodeError> for std::io::Error {
    fn from(e: DecodeError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        let value = (
            7u64,
            "seven".to_string(),
            vec![7u8; 70_000],
            Some(vec![1u32, 2]),
        );
        let bytes = encode(&value);
        assert_eq!(
            decode::<(u64, String, Vec<u8>, Option<Vec<u32>>)>(&bytes).unwrap(),
            value
        );
    }

    /// A byte string announcing `len` bytes, followed by `tail` bytes.
    fn announcing(len: u64, tail: usize) -> Vec<u8> {
        let mut bytes = vec![0xfd]; // bincode's varint: a u64 follows
        bytes.extend(len.to_le_bytes());
        bytes.extend(vec![0; tail]);
        bytes
    }

    #[test]
    fn a_huge_length_is_refused_before_anything_is_allocated() {
        // Without the limit this allocates a petabyte and aborts the test binary.
        for len in [1u64 << 50, u64::MAX, 1 << 33] {
            let bytes = announcing(len, 16);
            let err = decode::<serde_bytes::ByteBuf>(&bytes).unwrap_err();
            assert!(err.0.contains("exceeds"), "{err}");
            let err = decode::<String>(&bytes).unwrap_err();
            assert!(err.0.contains("exceeds"), "{err}");
            let err = decode_native::<Vec<u8>>(&bytes).unwrap_err();
            assert!(err.0.contains("exceeds"), "{err}");
        }
    }

    #[test]
    fn a_length_beyond_the_bytes_is_refused_within_the_limit() {
        // 1 MiB announced in 100 bytes: within the 64 KiB tier's bound it is not, and in
        // any case it is cut short.
        let err = decode::<serde_bytes::ByteBuf>(&announcing(1 << 20, 100)).unwrap_err();
        assert!(err.0.contains("exceeds"), "{err}");
        let err = decode::<serde_bytes::ByteBuf>(&announcing(1000, 100)).unwrap_err();
        assert!(!err.0.contains("exceeds"), "{err}");
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode(&5u32);
        bytes.push(0);
        assert!(decode::<u32>(&bytes).unwrap_err().0.contains("trailing"));
    }
}
