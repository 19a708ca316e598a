//! What a peer's frame carries and what the log store reads back from disk: openraft's
//! requests, entries, votes and log ids, decoded by the node's codec.
#![no_main]

use libfuzzer_sys::fuzz_target;
use linkrift_raft::codec::decode;
use linkrift_raft::openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use linkrift_raft::openraft::{Entry, LogId, Vote};
use linkrift_raft::{NodeId, TypeConfig};

fuzz_target!(|data: &[u8]| {
    let Some((kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 6 {
        0 => drop(decode::<AppendEntriesRequest<TypeConfig>>(bytes)),
        1 => drop(decode::<VoteRequest<NodeId>>(bytes)),
        2 => drop(decode::<InstallSnapshotRequest<TypeConfig>>(bytes)),
        3 => drop(decode::<Entry<TypeConfig>>(bytes)),
        4 => drop(decode::<Vote<NodeId>>(bytes)),
        _ => drop(decode::<Option<LogId<NodeId>>>(bytes)),
    }
});
