//! Snapshot files as the disk returns them: the framing and checksum, and a body restored
//! into the meta group's or a shard's state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use linkrift_actors::groups::{shard_group, GroupState, META};
use linkrift_raft::StateMachine;

fuzz_target!(|data: &[u8]| {
    let _ = linkrift_raft::snapshot_file::check(data);
    let Some((kind, body)) = data.split_first() else {
        return;
    };
    let group = if kind % 2 == 0 { META } else { shard_group(0) };
    let mut state = GroupState::for_group(group);
    let _ = state.restore(&mut &body[..]);
});
