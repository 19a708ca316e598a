//! Short codes: the path segment a redirect is served at.

use std::fmt;
use std::sync::Arc;

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::Invalid;

/// Characters of generated codes (base62).
pub const CODE_ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Paths the service itself serves, or may serve; refused as codes in any letter case.
const RESERVED: &[&str] = &[
    "v1",
    "v2",
    "admin",
    "api",
    "metrics",
    "healthz",
    "readyz",
    "health",
    "ready",
    "static",
    "assets",
    "favicon.ico",
    "robots.txt",
    "openapi",
    "docs",
    "login",
    "logout",
];

/// A short code: 1–64 characters of `[A-Za-z0-9_-]`, not a reserved word. Shared, not
/// copied: a shard's table key and its ordered index hold the same allocation as the link.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ShortCode(Arc<str>);

impl ShortCode {
    /// Longest code accepted.
    pub const MAX_LEN: usize = 64;

    /// Checks `s` is a valid code.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(Invalid::new(
                "code",
                format!("must be 1 to {} characters long", Self::MAX_LEN),
            ));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(Invalid::new(
                "code",
                format!("may only contain A-Z, a-z, 0-9, '_' and '-', not {c:?}"),
            ));
        }
        if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(s)) {
            return Err(Invalid::new("code", format!("{s:?} is reserved")));
        }
        Ok(Self(Arc::from(s)))
    }

    /// A random base62 code of `len` characters (which is never reserved: reserved words
    /// that are pure base62 are refused, so retry).
    pub fn generate(rng: &mut impl Rng, len: usize) -> Self {
        loop {
            let s: String = (0..len.clamp(1, Self::MAX_LEN))
                .map(|_| CODE_ALPHABET[rng.gen_range(0..CODE_ALPHABET.len())] as char)
                .collect();
            if let Ok(code) = Self::parse(&s) {
                return code;
            }
        }
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared text, for keys that should not copy it.
    pub fn shared(&self) -> Arc<str> {
        self.0.clone()
    }
}

impl fmt::Display for ShortCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ShortCode {
    type Error = Invalid;
    fn try_from(s: String) -> Result<Self, Invalid> {
        Self::parse(&s)
    }
}

impl From<ShortCode> for String {
    fn from(c: ShortCode) -> String {
        c.0.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_alphabet_and_length_bounds() {
        assert!(ShortCode::parse("a").is_ok());
        assert!(ShortCode::parse("Ab_9-x").is_ok());
        assert!(ShortCode::parse(&"x".repeat(64)).is_ok());
    }

    #[test]
    fn refuses_bad_codes_with_a_reason() {
        for bad in ["", &"x".repeat(65), "a/b", "a b", "ü", "a.b", "%41"] {
            assert_eq!(
                ShortCode::parse(bad).unwrap_err().field,
                "code",
                "{bad:?} refused"
            );
        }
    }

    #[test]
    fn refuses_reserved_words_in_any_case() {
        for word in ["v1", "ADMIN", "Metrics", "healthz", "readyz", "api"] {
            assert!(
                ShortCode::parse(word)
                    .unwrap_err()
                    .message
                    .contains("reserved"),
                "{word}"
            );
        }
    }

    #[test]
    fn generated_codes_are_valid_base62_of_the_asked_length() {
        let mut rng = rand::thread_rng();
        for len in [1, 2, 7, 64] {
            let code = ShortCode::generate(&mut rng, len);
            assert_eq!(code.as_str().len(), len);
            assert!(code.as_str().bytes().all(|b| CODE_ALPHABET.contains(&b)));
        }
    }
}
