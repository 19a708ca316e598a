//! Short codes as clients send them (custom aliases, paths of redirects).
#![no_main]

use libfuzzer_sys::fuzz_target;
use linkrift_actors::domain::ShortCode;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(code) = ShortCode::parse(text) {
        // What is accepted parses again to the same code.
        assert_eq!(ShortCode::parse(code.as_str()).unwrap(), code);
    }
});
