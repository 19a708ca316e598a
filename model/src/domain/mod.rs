//! The link domain: values that are checked once, when they are made, and trusted after.

mod code;
mod key;
mod link;
mod url;

pub use code::{ShortCode, CODE_ALPHABET};
pub use key::{ApiKey, ApiKeyHash, ApiKeyRecord, Scope};
pub use link::{Link, LinkPatch, NewLink, RedirectStatus, Tag, Title};
pub use url::{canonical_host, redacted, DestinationUrl, UrlPolicy, DENIED_SCHEMES};

/// Input that breaks a domain rule. The message is meant for the API user.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    /// Which input field (as the API names it).
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl Invalid {
    /// `field` breaks a rule, as `message` says.
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}
