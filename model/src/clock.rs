//! The one wall clock: everything that stamps a time (links, keys, clicks, deduplication)
//! reads it here.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, as Unix milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
