//! Messages on the cluster (actor) port, once a session is up: requests, notices and
//! replies between nodes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use linkrift_actors::cluster::wire::{Notice, Reply, Request};
use linkrift_raft::codec::decode;

fuzz_target!(|data: &[u8]| {
    let Some((kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 3 {
        0 => drop(decode::<Request>(bytes)),
        1 => drop(decode::<Notice>(bytes)),
        _ => drop(decode::<Reply>(bytes)),
    }
});
