//! Links and the changes that can be made to them.

use serde::{Deserialize, Serialize};

use super::{DestinationUrl, Invalid, ShortCode};

/// The HTTP status a link redirects with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u16", into = "u16")]
pub enum RedirectStatus {
    /// 301, cached by browsers indefinitely: edits may not reach people who followed it.
    MovedPermanently,
    /// 302, the default.
    #[default]
    Found,
    /// 307, like 302 but keeps the request method.
    TemporaryRedirect,
    /// 308, like 301 but keeps the request method.
    PermanentRedirect,
}

impl RedirectStatus {
    /// The status code.
    pub fn code(self) -> u16 {
        match self {
            Self::MovedPermanently => 301,
            Self::Found => 302,
            Self::TemporaryRedirect => 307,
            Self::PermanentRedirect => 308,
        }
    }
}

impl TryFrom<u16> for RedirectStatus {
    type Error = Invalid;
    fn try_from(code: u16) -> Result<Self, Invalid> {
        Ok(match code {
            301 => Self::MovedPermanently,
            302 => Self::Found,
            307 => Self::TemporaryRedirect,
            308 => Self::PermanentRedirect,
            other => {
                return Err(Invalid::new(
                    "redirect_status",
                    format!("must be 301, 302, 307 or 308, not {other}"),
                ))
            }
        })
    }
}

impl From<RedirectStatus> for u16 {
    fn from(s: RedirectStatus) -> u16 {
        s.code()
    }
}

/// A link's title: at most 512 characters, no control characters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Title(String);

impl Title {
    /// Checks a title.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.chars().count() > 512 {
            return Err(Invalid::new("title", "must be at most 512 characters"));
        }
        if s.chars().any(char::is_control) {
            return Err(Invalid::new("title", "must not contain control characters"));
        }
        Ok(Self(s.to_string()))
    }

    /// The title text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A tag: 1–64 characters of `[A-Za-z0-9_.:-]`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Tag(String);

impl Tag {
    /// Most tags on one link.
    pub const MAX_PER_LINK: usize = 20;

    /// Checks a tag.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
        if !ok {
            return Err(Invalid::new(
                "tags",
                format!("{s:?} is not 1-64 characters of A-Z a-z 0-9 _ - . :"),
            ));
        }
        Ok(Self(s.to_string()))
    }

    /// Checks a list of at most [`Self::MAX_PER_LINK`] tags (duplicates count: the API
    /// document's `maxItems` says so); duplicates are then dropped and the rest sorted.
    pub fn parse_all(tags: &[String]) -> Result<Vec<Tag>, Invalid> {
        if tags.len() > Self::MAX_PER_LINK {
            return Err(Invalid::new(
                "tags",
                format!("at most {} tags per link", Self::MAX_PER_LINK),
            ));
        }
        let mut out = tags
            .iter()
            .map(|t| Tag::parse(t))
            .collect::<Result<Vec<_>, _>>()?;
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The tag text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A link as stored and served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// Where it is served.
    pub code: ShortCode,
    /// Where it redirects.
    pub url: DestinationUrl,
    /// Optional title.
    pub title: Option<Title>,
    /// Tags, sorted, no duplicates.
    pub tags: Vec<Tag>,
    /// Creation time, Unix milliseconds (the leader's clock when proposed).
    pub created_at: i64,
    /// Last change, Unix milliseconds.
    pub updated_at: i64,
    /// From this time on the link answers 410, Unix milliseconds.
    pub expires_at: Option<i64>,
    /// Status used to redirect.
    pub redirect: RedirectStatus,
    /// An archived link answers 410 but keeps its code.
    pub archived: bool,
    /// Starts at 1, incremented by every change; used for `If-Match`.
    pub version: u64,
}

impl Link {
    /// A plain link at `code` to `https://example.com/`, for unit tests (here, and in the
    /// crates that enable the `testing` feature for theirs).
    #[cfg(any(test, feature = "testing"))]
    pub fn sample(code: &str) -> std::sync::Arc<Link> {
        std::sync::Arc::new(Link {
            code: ShortCode::parse(code).unwrap(),
            url: DestinationUrl::parse("https://example.com/", &super::UrlPolicy::default())
                .unwrap(),
            title: None,
            tags: vec![],
            created_at: 1,
            updated_at: 1,
            expires_at: None,
            redirect: RedirectStatus::default(),
            archived: false,
            version: 1,
        })
    }

    /// Whether the link redirects at `now_ms`, rather than answering 410.
    pub fn is_live(&self, now_ms: i64) -> bool {
        !self.archived && self.expires_at.is_none_or(|t| now_ms < t)
    }
}

/// A link to create, checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewLink {
    /// The code, custom or generated.
    pub code: ShortCode,
    /// Where it redirects.
    pub url: DestinationUrl,
    /// Optional title.
    pub title: Option<Title>,
    /// Tags.
    pub tags: Vec<Tag>,
    /// Optional expiry, Unix milliseconds.
    pub expires_at: Option<i64>,
    /// Redirect status.
    pub redirect: RedirectStatus,
}

/// Changes to a link; `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkPatch {
    /// New destination.
    pub url: Option<DestinationUrl>,
    /// New title, or `Some(None)` to clear it.
    pub title: Option<Option<Title>>,
    /// New tags.
    pub tags: Option<Vec<Tag>>,
    /// New expiry, or `Some(None)` to clear it.
    pub expires_at: Option<Option<i64>>,
    /// New redirect status.
    pub redirect: Option<RedirectStatus>,
    /// Archive or restore.
    pub archived: Option<bool>,
}

impl LinkPatch {
    /// Applies the patch to `link` (without touching version or times).
    pub fn apply_to(&self, link: &mut Link) {
        if let Some(url) = &self.url {
            link.url = url.clone();
        }
        if let Some(title) = &self.title {
            link.title = title.clone();
        }
        if let Some(tags) = &self.tags {
            link.tags = tags.clone();
        }
        if let Some(expires_at) = self.expires_at {
            link.expires_at = expires_at;
        }
        if let Some(redirect) = self.redirect {
            link.redirect = redirect;
        }
        if let Some(archived) = self.archived {
            link.archived = archived;
        }
    }
}
