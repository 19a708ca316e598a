//! A click event: what a redirect saw, described for analytics.
//!
//! The redirect only copies the request's headers into a [`RawClick`] (no parsing, no
//! allocation beyond the copies) and hands it over without waiting; describing it, user
//! agent parsing included, happens off the hot path in [`ClickEvent::describe`].

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What a redirect saw, copied as is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawClick {
    /// The code redirected.
    pub code: String,
    /// Its shard.
    pub shard: u32,
    /// When, Unix milliseconds.
    pub at_ms: i64,
    /// The client's address.
    pub ip: Option<IpAddr>,
    /// `User-Agent`.
    pub user_agent: Option<String>,
    /// `Referer`.
    pub referer: Option<String>,
    /// `Accept-Language`.
    pub accept_language: Option<String>,
    /// The country a trusted proxy put in a header (e.g. `CF-IPCountry`), if configured.
    pub country: Option<String>,
}

/// How much of the client's address is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpPolicy {
    /// Leading bits of an IPv4 address kept (24 by default: the last octet is zeroed).
    pub v4_bits: u8,
    /// Leading bits of an IPv6 address kept (48 by default).
    pub v6_bits: u8,
}

impl Default for IpPolicy {
    fn default() -> Self {
        Self {
            v4_bits: 24,
            v6_bits: 48,
        }
    }
}

/// Device classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// A desktop or laptop browser.
    Desktop,
    /// A phone.
    Mobile,
    /// A game console, TV or other appliance.
    Appliance,
    /// A crawler or script.
    Bot,
    /// Not recognised.
    Unknown,
}

impl Device {
    /// The name stored and reported.
    pub fn name(self) -> &'static str {
        match self {
            Self::Desktop => "desktop",
            Self::Mobile => "mobile",
            Self::Appliance => "appliance",
            Self::Bot => "bot",
            Self::Unknown => "unknown",
        }
    }
}

/// One click, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClickEvent {
    /// A UUIDv7 (time-ordered): replays of the same event are recognised by it.
    pub id: Uuid,
    /// The code redirected.
    pub code: String,
    /// Its shard.
    pub shard: u32,
    /// When, Unix milliseconds.
    pub at_ms: i64,
    /// The client's address, truncated ([`IpPolicy`]); empty when unknown.
    pub ip: String,
    /// `User-Agent`, at most 512 bytes.
    pub user_agent: String,
    /// `Referer`, at most 1,024 bytes.
    pub referer: String,
    /// The referer's host, lower case; empty when none.
    pub referer_host: String,
    /// ISO 3166 alpha-2 country, upper case; empty when unknown.
    pub country: String,
    /// Device class.
    pub device: Device,
    /// Browser name (`Chrome`, `Firefox`, ...; `UNKNOWN`).
    pub browser: String,
    /// Operating system (`Windows 10`, `iPhone`, `Android`, ...; `UNKNOWN`).
    pub os: String,
    /// A crawler, script or client without a user agent.
    pub bot: bool,
    /// The first language the client accepts (`en`, `pt-br`); empty when none.
    pub language: String,
}

/// Substrings (lower case) of user agents that are scripts or crawlers woothee does not
/// list.
const BOT_MARKERS: &[&str] = &[
    "bot",
    "crawl",
    "spider",
    "slurp",
    "curl/",
    "wget/",
    "python-requests",
    "python-urllib",
    "go-http-client",
    "headlesschrome",
    "httpclient",
    "java/",
    "libwww",
    "okhttp",
    "scrapy",
    "facebookexternalhit",
    "preview",
];

fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The address with only its leading bits kept.
pub fn truncate_ip(ip: IpAddr, policy: IpPolicy) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(policy.v4_bits.min(32));
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let bits = u32::from(policy.v6_bits.min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    }
}

/// The first language of an `Accept-Language` header, lower case (`en-US,en;q=0.9` → `en-us`).
fn first_language(header: &str) -> String {
    let first = header.split(',').next().unwrap_or_default();
    let tag = first.split(';').next().unwrap_or_default().trim();
    let valid = !tag.is_empty()
        && tag != "*"
        && tag.len() <= 35
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if valid {
        tag.to_ascii_lowercase()
    } else {
        String::new()
    }
}

/// What a user agent says about the client.
#[derive(Clone, Debug)]
struct Agent {
    device: Device,
    browser: String,
    os: String,
    bot: bool,
}

/// User-agent parsing, with the answers for the agents seen recently: the same few
/// thousand agents make most clicks, and parsing one costs far more than looking it up.
pub struct Agents {
    parser: woothee::parser::Parser,
    seen: std::collections::HashMap<String, Agent>,
}

/// Agents remembered at most (the memory is cleared when full).
const AGENTS_KEPT: usize = 10_000;

impl Default for Agents {
    fn default() -> Self {
        Self {
            parser: woothee::parser::Parser::new(),
            seen: std::collections::HashMap::new(),
        }
    }
}

impl Agents {
    fn describe(&mut self, ua: &str) -> Agent {
        if let Some(known) = self.seen.get(ua) {
            return known.clone();
        }
        let parsed = self.parser.parse(ua);
        let category = parsed.as_ref().map_or("UNKNOWN", |p| p.category);
        let lower = ua.to_ascii_lowercase();
        let bot =
            ua.is_empty() || category == "crawler" || BOT_MARKERS.iter().any(|m| lower.contains(m));
        let device = match category {
            _ if bot => Device::Bot,
            "pc" => Device::Desktop,
            "smartphone" | "mobilephone" => Device::Mobile,
            "appliance" => Device::Appliance,
            _ => Device::Unknown,
        };
        let agent = Agent {
            device,
            browser: parsed.as_ref().map_or("UNKNOWN", |p| p.name).to_string(),
            os: parsed.as_ref().map_or("UNKNOWN", |p| p.os).to_string(),
            bot,
        };
        if self.seen.len() >= AGENTS_KEPT {
            self.seen.clear();
        }
        self.seen.insert(ua.to_string(), agent.clone());
        agent
    }
}

impl ClickEvent {
    /// Who clicked, as far as can be told without keeping it: a hash of the truncated
    /// address and the user agent. Both stores count distinct visitors by it.
    pub fn visitor(&self) -> u64 {
        let mut key = Vec::with_capacity(self.ip.len() + 1 + self.user_agent.len());
        key.extend_from_slice(self.ip.as_bytes());
        key.push(0);
        key.extend_from_slice(self.user_agent.as_bytes());
        xxhash_rust::xxh3::xxh3_64(&key)
    }

    /// Describes a click: parses its user agent, truncates its address, and so on.
    pub fn describe(raw: RawClick, agents: &mut Agents, ip: IpPolicy) -> Self {
        let ua = clip(raw.user_agent.as_deref().unwrap_or_default().trim(), 512);
        let Agent {
            device,
            browser,
            os,
            bot,
        } = agents.describe(&ua);
        let referer = raw.referer.as_deref().unwrap_or_default();
        let referer_host = url::Url::parse(referer)
            .ok()
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
            .unwrap_or_default();
        let country = raw
            .country
            .as_deref()
            .map(str::trim)
            .filter(|c| c.len() == 2 && c.chars().all(|ch| ch.is_ascii_alphabetic()))
            .map(str::to_ascii_uppercase)
            .unwrap_or_default();
        Self {
            id: Uuid::new_v7(uuid::Timestamp::from_unix(
                uuid::NoContext,
                (raw.at_ms / 1000) as u64,
                ((raw.at_ms % 1000) * 1_000_000) as u32,
            )),
            code: raw.code,
            shard: raw.shard,
            at_ms: raw.at_ms,
            ip: raw
                .ip
                .map(|a| truncate_ip(a, ip).to_string())
                .unwrap_or_default(),
            user_agent: ua,
            referer: clip(referer, 1024),
            referer_host,
            country,
            device,
            browser,
            os,
            bot,
            language: raw
                .accept_language
                .as_deref()
                .map(first_language)
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME_WIN: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
    const SAFARI_IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1";
    const GOOGLEBOT: &str =
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";

    fn describe(ua: Option<&str>) -> ClickEvent {
        let raw = RawClick {
            code: "abc".into(),
            shard: 3,
            at_ms: 1_764_115_200_123,
            ip: Some("203.0.113.77".parse().unwrap()),
            user_agent: ua.map(str::to_string),
            referer: Some("https://News.Example.com/story?id=1".into()),
            accept_language: Some("pt-BR,pt;q=0.9,en;q=0.8".into()),
            country: Some("br".into()),
        };
        ClickEvent::describe(raw, &mut Agents::default(), IpPolicy::default())
    }

    #[test]
    fn a_browser_click_is_described() {
        let e = describe(Some(CHROME_WIN));
        assert_eq!(
            (e.device, e.browser.as_str(), e.bot),
            (Device::Desktop, "Chrome", false)
        );
        assert!(e.os.starts_with("Windows"), "{}", e.os);
        assert_eq!(e.ip, "203.0.113.0");
        assert_eq!(e.referer_host, "news.example.com");
        assert_eq!((e.language.as_str(), e.country.as_str()), ("pt-br", "BR"));
        assert_eq!(e.id.get_version_num(), 7);
        let (secs, nanos) = e.id.get_timestamp().unwrap().to_unix();
        assert_eq!(
            secs * 1000 + u64::from(nanos / 1_000_000),
            1_764_115_200_123
        );
        assert_eq!(describe(Some(SAFARI_IPHONE)).device, Device::Mobile);
    }

    #[test]
    fn crawlers_scripts_and_missing_user_agents_are_bots() {
        for ua in [
            Some(GOOGLEBOT),
            Some("curl/8.5.0"),
            Some("python-requests/2.31.0"),
            Some("Mozilla/5.0 (X11; Linux x86_64) HeadlessChrome/120.0.0.0 Safari/537.36"),
            Some(""),
            None,
        ] {
            let e = describe(ua);
            assert!(e.bot, "{ua:?}");
            assert_eq!(e.device, Device::Bot, "{ua:?}");
        }
    }

    #[test]
    fn addresses_keep_only_their_leading_bits() {
        let p = IpPolicy::default();
        let v6: IpAddr = "2001:db8:abcd:12:34::1".parse().unwrap();
        assert_eq!(truncate_ip(v6, p).to_string(), "2001:db8:abcd::");
        let none = IpPolicy {
            v4_bits: 0,
            v6_bits: 0,
        };
        assert_eq!(
            truncate_ip("198.51.100.9".parse().unwrap(), none).to_string(),
            "0.0.0.0"
        );
        let all = IpPolicy {
            v4_bits: 32,
            v6_bits: 128,
        };
        assert_eq!(truncate_ip(v6, all), v6);
    }

    #[test]
    fn bad_headers_give_empty_fields_not_errors() {
        let raw = RawClick {
            referer: Some("not a url".into()),
            accept_language: Some("*;q=0.5, <script>".into()),
            country: Some("Narnia".into()),
            user_agent: Some("x".repeat(5000)),
            ..RawClick::default()
        };
        let e = ClickEvent::describe(raw, &mut Agents::default(), IpPolicy::default());
        assert_eq!(e.referer_host, "");
        assert_eq!(e.language, "");
        assert_eq!(e.country, "");
        assert_eq!(e.ip, "");
        assert_eq!(e.user_agent.len(), 512);
    }
}
