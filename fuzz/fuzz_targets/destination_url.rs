//! Destination URLs as clients send them, under a policy with an own host and an extra
//! scheme; what is accepted is never a denied scheme and parses again to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use linkrift_actors::domain::{canonical_host, DestinationUrl, UrlPolicy, DENIED_SCHEMES};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let policy = UrlPolicy {
        extra_schemes: vec!["mailto".into()],
        own_hosts: canonical_host("sho.rt").into_iter().collect(),
    };
    if let Ok(url) = DestinationUrl::parse(text, &policy) {
        let scheme = url.as_str().split(':').next().unwrap_or_default();
        assert!(!DENIED_SCHEMES.contains(&scheme), "{url}");
        assert_eq!(DestinationUrl::parse(url.as_str(), &policy).unwrap(), url);
    }
});
