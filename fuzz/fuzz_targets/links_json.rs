//! The JSON bodies of the links API (create, update, bulk), parsed and checked as the
//! handlers do.
#![no_main]

use libfuzzer_sys::fuzz_target;
use linkrift_actors::domain::UrlPolicy;
use linkrift_api::links::{BulkBody, CreateBody, UpdateBody};

fuzz_target!(|data: &[u8]| {
    let Some((kind, body)) = data.split_first() else {
        return;
    };
    let policy = UrlPolicy::default();
    match kind % 3 {
        0 => {
            if let Ok(create) = serde_json::from_slice::<CreateBody>(body) {
                let _ = create.check(&policy);
            }
        }
        1 => {
            if let Ok(update) = serde_json::from_slice::<UpdateBody>(body) {
                let _ = update.check(&policy);
            }
        }
        _ => {
            // As the bulk handler does: the body, then each item on its own.
            if serde_json::from_slice::<BulkBody>(body).is_ok() {
                let value: serde_json::Value = serde_json::from_slice(body).unwrap();
                for item in value["links"].as_array().into_iter().flatten() {
                    if let Ok(create) = serde_json::from_value::<CreateBody>(item.clone()) {
                        let _ = create.check(&policy);
                    }
                }
            }
        }
    }
});
