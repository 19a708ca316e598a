//! What the click store reads back from disk: spooled batches and roll-up hours.
#![no_main]

use libfuzzer_sys::fuzz_target;
use linkrift_actors::clicks::{rollup, spool};

fuzz_target!(|data: &[u8]| {
    let _ = spool::decodes(data);
    let _ = rollup::decodes(data);
});
