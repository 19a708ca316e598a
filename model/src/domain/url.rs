//! Destination URLs: where a short code redirects to.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::Invalid;

/// Schemes no destination may have, whatever the configuration allows: a browser runs
/// what they hold (`javascript:`, `vbscript:`, `data:` documents) or reads local files.
pub const DENIED_SCHEMES: [&str; 4] = ["javascript", "vbscript", "data", "file"];

/// What destinations this service accepts, from its configuration.
#[derive(Clone, Debug, Default)]
pub struct UrlPolicy {
    /// Schemes accepted besides `http` and `https` (e.g. `mailto`), lower case. Never one
    /// of [`DENIED_SCHEMES`].
    pub extra_schemes: Vec<String>,
    /// The service's own hosts (its public URL's, its listener's): links pointing back at
    /// them would loop. Compared in canonical form (see [`canonical_host`]).
    pub own_hosts: Vec<String>,
}

/// A host as URLs compare it: what the `url` crate makes of it (lower case, punycode, IP
/// addresses in one spelling: `0x7f.1` is `127.0.0.1`), without a trailing dot (which
/// names the same host). `None` if it is no host.
pub fn canonical_host(host: &str) -> Option<String> {
    let url = url::Url::parse(&format!("http://{host}/")).ok()?;
    let host = url.host_str()?;
    Some(host.strip_suffix('.').unwrap_or(host).to_string())
}

/// `url` as it may be shown in a log line or an error: its password (of `user:password@`)
/// replaced by `***`. Text that is no URL is not shown at all.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.into()
        }
        Err(_) => "(a value that is not a URL)".into(),
    }
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
        if DENIED_SCHEMES.contains(&scheme) {
            return Err(invalid(format!(
                "scheme {scheme:?} is never allowed; use http or https"
            )));
        }
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
            // A name must be one DNS could resolve: letters, digits, '-' and '_' in dotted
            // labels (the parser has made international names punycode); the parser
            // alone lets through names such as `a*` or `a!b`.
            if let Some(url::Host::Domain(name)) = url.host() {
                if let Some(c) = name
                    .chars()
                    .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
                {
                    return Err(invalid(format!(
                        "host {host:?} has {c:?}, which no host name has"
                    )));
                }
                // (One trailing dot is the root: `example.com.` is a name.)
                let labels = name.strip_suffix('.').unwrap_or(name);
                if labels.split('.').any(str::is_empty) {
                    return Err(invalid(format!("host {host:?} has an empty label")));
                }
            }
            let canonical = canonical_host(host).unwrap_or_default();
            if policy.own_hosts.contains(&canonical) {
                return Err(invalid(format!(
                    "points at this service ({host}), which would loop"
                )));
            }
        }
        // The limit is on the URL as sent (the API document's `maxLength`); normalising
        // can only percent-encode (at most triple) it and add a `/`.
        if url.as_str().len() > 3 * Self::MAX_LEN + 1 {
            return Err(invalid(format!(
                "is longer than {} bytes once normalised",
                3 * Self::MAX_LEN + 1
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
                own_hosts: ["sho.rt", "127.0.0.1", "[::1]"]
                    .iter()
                    .filter_map(|h| canonical_host(h))
                    .collect(),
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
        // International names (as punycode), underscores, the root's trailing dot.
        assert_eq!(
            parse("https://bücher.example/").unwrap().as_str(),
            "https://xn--bcher-kva.example/"
        );
        assert!(parse("https://a_b.example./").is_ok());
        // As sent, at most MAX_LEN bytes, even if normalising makes it longer.
        let full = format!("http://A#{}", "0".repeat(DestinationUrl::MAX_LEN - 9));
        assert_eq!(full.len(), DestinationUrl::MAX_LEN);
        assert_eq!(
            parse(&full).unwrap().as_str().len(),
            DestinationUrl::MAX_LEN + 1
        );
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
            ("https://sho.rt./abc", "loop"),
            ("http://0x7f.1:8080/abc", "loop"),
            ("http://127.000.000.001/abc", "loop"),
            ("http://[0:0::1]/abc", "loop"),
            ("https://a*/", "no host name has"),
            ("https://a!b.example/", "no host name has"),
            ("https://a..b/", "empty label"),
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
    fn passwords_in_urls_are_not_shown() {
        assert_eq!(
            redacted("http://linkrift:hunter2@ch.internal:8123/"),
            "http://linkrift:***@ch.internal:8123/"
        );
        assert_eq!(
            redacted("http://ch.internal:8123"),
            "http://ch.internal:8123/"
        );
        assert!(!redacted("not a url hunter2").contains("hunter2"));
    }

    #[test]
    fn allow_listed_schemes_pass() {
        let policy = UrlPolicy {
            extra_schemes: vec!["mailto".into(), "javascript".into(), "data".into()],
            own_hosts: vec![],
        };
        assert!(DestinationUrl::parse("mailto:a@example.com", &policy).is_ok());
        for denied in [
            "javascript:x",
            "JavaScript:x",
            "data:text/html,x",
            "file:///etc/passwd",
            "vbscript:x",
        ] {
            let e = DestinationUrl::parse(denied, &policy).unwrap_err();
            assert!(e.message.contains("never allowed"), "{denied}: {e}");
        }
    }
}
