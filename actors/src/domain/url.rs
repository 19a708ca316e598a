//! Destination URLs: where a short code redirects to.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::Invalid;

/// What destinations this service accepts, from its configuration.
#[derive(Clone, Debug, Default)]
pub struct UrlPolicy {
    /// Schemes accepted besides `http` and `https` (e.g. `mailto`), lower case.
    pub extra_schemes: Vec<String>,
    /// The service's own public host: links pointing back at it would loop.
    pub public_host: Option<String>,
}

/// A checked destination URL, in the normalised form the `url` crate gives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationUrl(String);

impl DestinationUrl {
    /// Longest URL accepted, in bytes.
    pub const MAX_LEN: usize = 2048;

    /// Checks `s` against the rules and `policy`.
    pub fn parse(s: &str, policy: &UrlPolicy) -> Result<Self, Invalid> {
        let invalid = |m: String| Invalid::new("url", m);
        if s.len() > Self::MAX_LEN {
            return Err(invalid(format!(
                "is {} bytes long; the limit is {}",
                s.len(),
                Self::MAX_LEN
            )));
        }
        let url = url::Url::parse(s.trim())
            .map_err(|e| invalid(format!("is not a valid absolute URL ({e})")))?;
        let scheme = url.scheme();
        let web = scheme == "http" || scheme == "https";
        if !web
            && !policy
                .extra_schemes
                .iter()
                .any(|x| x.eq_ignore_ascii_case(scheme))
        {
            return Err(invalid(format!(
                "scheme {scheme:?} is not allowed; use http or https"
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid(
                "must not contain credentials (user:password@)".into(),
            ));
        }
        if web {
            let host = url.host_str().unwrap_or_default();
            if host.is_empty() {
                return Err(invalid("has no host".into()));
            }
            if policy
                .public_host
                .as_deref()
                .is_some_and(|own| own.eq_ignore_ascii_case(host))
            {
                return Err(invalid(format!(
                    "points at this service ({host}), which would loop"
                )));
            }
        }
        if url.as_str().len() > Self::MAX_LEN {
            return Err(invalid(format!(
                "is longer than {} bytes once normalised",
                Self::MAX_LEN
            )));
        }
        Ok(Self(url.into()))
    }

    /// The URL as text, ready for a `Location` header.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DestinationUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<DestinationUrl, Invalid> {
        DestinationUrl::parse(
            s,
            &UrlPolicy {
                extra_schemes: vec![],
                public_host: Some("sho.rt".into()),
            },
        )
    }

    #[test]
    fn accepts_web_urls_and_normalises_them() {
        assert_eq!(
            parse("https://example.com").unwrap().as_str(),
            "https://example.com/"
        );
        assert!(parse("http://example.com/a?b=c#d").is_ok());
    }

    #[test]
    fn refuses_other_schemes_credentials_loops_and_huge_urls() {
        for (bad, why) in [
            ("javascript:alert(1)", "scheme"),
            ("data:text/html,hi", "scheme"),
            ("ftp://example.com/", "scheme"),
            ("https://user:pw@example.com/", "credentials"),
            ("https://user@example.com/", "credentials"),
            ("https://SHO.RT/abc", "loop"),
            ("not a url", "valid absolute URL"),
            ("/relative", "valid absolute URL"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.message.contains(why), "{bad}: {e}");
        }
        let long = format!("https://example.com/{}", "a".repeat(2100));
        assert!(parse(&long).unwrap_err().message.contains("limit"));
    }

    #[test]
    fn allow_listed_schemes_pass() {
        let policy = UrlPolicy {
            extra_schemes: vec!["mailto".into()],
            public_host: None,
        };
        assert!(DestinationUrl::parse("mailto:a@example.com", &policy).is_ok());
        assert!(DestinationUrl::parse("javascript:x", &policy).is_err());
    }
}
