//! One encoding for everything Linkrift writes to disk or to the wire: bincode 2 with its
//! standard configuration, through serde for openraft's own types.
//!
//! Every decode is bounded. bincode allocates a byte string or string from the length it
//! reads, before reading it, and its standard configuration sets no limit: a length of
//! 2^50 from a peer, or from a flipped byte on disk, aborted the process. With a limit,
//! bincode counts against it every string's length and every value's size in memory (8
//! bytes for a `u64` that took 1 byte to encode, 16 for a `u128`), so valid bytes claim at
//! most 16 times their own length. A decode of `n` bytes runs with the smallest of 64 KiB,
//! 256 KiB, 1 MiB, ... (powers of 4) up to 1 TiB that is at least `16 n`: what hostile
//! bytes can make it reserve is at most 64 times their own size (64 KiB for small ones),
//! and is refused above that.
//!
//! (A first version took the smallest power of 16 at least `n`, counting only strings: a
//! click batch of many small numbers claimed more than that, and was refused as damaged.)

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
        // Valid bytes claim at most 16 times their length (a u128 in one byte).
        match (bytes.len() as u64).saturating_mul(16) {
            0..=0x10000 => $decode(bytes, standard.with_limit::<0x10000>()),
            0..=0x40000 => $decode(bytes, standard.with_limit::<0x40000>()),
            0..=0x100000 => $decode(bytes, standard.with_limit::<0x100000>()),
            0..=0x400000 => $decode(bytes, standard.with_limit::<0x400000>()),
            0..=0x1000000 => $decode(bytes, standard.with_limit::<0x1000000>()),
            0..=0x4000000 => $decode(bytes, standard.with_limit::<0x4000000>()),
            0..=0x10000000 => $decode(bytes, standard.with_limit::<0x10000000>()),
            0..=0x40000000 => $decode(bytes, standard.with_limit::<0x40000000>()),
            0..=0x100000000 => $decode(bytes, standard.with_limit::<0x100000000>()),
            0..=0x400000000 => $decode(bytes, standard.with_limit::<0x400000000>()),
            0..=0x1000000000 => $decode(bytes, standard.with_limit::<0x1000000000>()),
            0..=0x4000000000 => $decode(bytes, standard.with_limit::<0x4000000000>()),
            _ => $decode(bytes, standard.with_limit::<0x10000000000>()),
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
    fn many_small_numbers_decode_though_they_claim_more_than_their_bytes() {
        // As a click batch: thousands of records of small integers, each 1 byte encoded
        // and 8 or 16 in memory (this was refused as "a length in it exceeds ...").
        for n in [1usize, 100, 4_000, 30_000, 200_000] {
            let value: Vec<(u64, u128, u16, u8, String)> = (0..n)
                .map(|i| (i as u64 % 100, 7, 3, 1, String::new()))
                .collect();
            let bytes = encode(&value);
            let back: Vec<(u64, u128, u16, u8, String)> = decode(&bytes).unwrap();
            assert_eq!(back, value, "{n} records in {} bytes", bytes.len());
        }
    }

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
