//! API keys. A key is shown once, when it is made; only its SHA-256 hash is stored.

use std::fmt;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Invalid;

/// What a key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// Everything, including managing keys and the cluster.
    #[serde(rename = "admin")]
    Admin,
    /// Create, change and delete links (and read them).
    #[serde(rename = "links:write")]
    LinksWrite,
    /// Read links.
    #[serde(rename = "links:read")]
    LinksRead,
}

impl Scope {
    /// Parses a scope name as the API spells it.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        match s {
            "admin" => Ok(Self::Admin),
            "links:write" => Ok(Self::LinksWrite),
            "links:read" => Ok(Self::LinksRead),
            other => Err(Invalid::new(
                "scopes",
                format!("unknown scope {other:?}; use admin, links:write or links:read"),
            )),
        }
    }

    /// Whether holding `self` grants `wanted`.
    pub fn grants(self, wanted: Scope) -> bool {
        self == wanted
            || self == Scope::Admin
            || (self == Scope::LinksWrite && wanted == Scope::LinksRead)
    }
}

/// A key in clear text, as the user presents it: `lr_` and 32 random bytes in hex.
pub struct ApiKey(String);

impl ApiKey {
    /// A fresh key with 256 random bits.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(format!("lr_{}", hex::encode(bytes)))
    }

    /// A key the operator chose (for the first admin key); at least 32 characters.
    pub fn from_operator(s: &str) -> Result<Self, Invalid> {
        if s.len() < 32 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Invalid::new(
                "admin_key",
                "must be at least 32 characters without spaces",
            ));
        }
        Ok(Self(s.to_string()))
    }

    /// The clear text, to show once.
    pub fn reveal(&self) -> &str {
        &self.0
    }

    /// What is stored.
    pub fn hash(&self) -> ApiKeyHash {
        ApiKeyHash::of(&self.0)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(..)")
    }
}

/// SHA-256 of a key's clear text, hex-encoded.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ApiKeyHash(String);

impl ApiKeyHash {
    /// Hashes a presented key.
    pub fn of(clear: &str) -> Self {
        Self(hex::encode(Sha256::digest(clear.as_bytes())))
    }

    /// The hex digest.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A digest stored elsewhere (the Postgres mirror): 64 lowercase hex digits.
    pub fn from_hex(hex: &str) -> Result<Self, Invalid> {
        let ok = hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ok {
            Ok(Self(hex.to_string()))
        } else {
            Err(Invalid::new(
                "hash",
                "must be a SHA-256 digest in lowercase hex",
            ))
        }
    }
}

/// A stored key: everything but the key itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// Public identifier, used to list and revoke.
    pub id: String,
    /// The operator's label.
    pub name: String,
    /// Hash of the key.
    pub hash: ApiKeyHash,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// Creation time, Unix milliseconds.
    pub created_at: i64,
    /// Revocation time, if revoked.
    pub revoked_at: Option<i64>,
}

impl ApiKeyRecord {
    /// Whether this key grants `wanted`.
    pub fn grants(&self, wanted: Scope) -> bool {
        self.revoked_at.is_none() && self.scopes.iter().any(|s| s.grants(wanted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_only_their_hash_matches() {
        let (a, b) = (ApiKey::generate(), ApiKey::generate());
        assert_ne!(a.reveal(), b.reveal());
        assert_eq!(a.reveal().len(), 3 + 64);
        assert_eq!(a.hash(), ApiKeyHash::of(a.reveal()));
        assert_ne!(a.hash(), b.hash());
        assert!(!a.hash().as_str().contains(&a.reveal()[3..]));
    }

    #[test]
    fn scopes_grant_what_they_should() {
        assert!(Scope::Admin.grants(Scope::LinksWrite));
        assert!(Scope::LinksWrite.grants(Scope::LinksRead));
        assert!(!Scope::LinksRead.grants(Scope::LinksWrite));
        assert!(!Scope::LinksWrite.grants(Scope::Admin));
    }
}
