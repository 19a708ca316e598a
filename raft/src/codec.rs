//! One encoding for everything this crate writes to disk or to the wire: bincode 2 with its
//! standard configuration, through serde for openraft's own types.

use serde::{de::DeserializeOwned, Serialize};

/// Encodes a value; encoding into memory only fails on a type serde cannot describe, which
/// is a programming error.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .expect("bincode encoding into memory cannot fail for serde types")
}

/// Decodes a value that must fill `bytes` exactly.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map_err(|e| DecodeError(e.to_string()))?;
    if used != bytes.len() {
        return Err(DecodeError(format!(
            "{} trailing bytes after the value",
            bytes.len() - used
        )));
    }
    Ok(value)
}

/// Bytes that do not decode as the expected type.
#[derive(Debug, thiserror::Error)]
#[error("undecodable bytes: {0}")]
pub struct DecodeError(pub String);

impl From<DecodeError> for std::io::Error {
    fn from(e: DecodeError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}
