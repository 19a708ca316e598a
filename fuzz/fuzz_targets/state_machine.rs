//! Commands as a group applies them: decoded from log entries, applied in order to the
//! meta group's or a shard's state. A panic here would stop the group on every replica.
#![no_main]

use libfuzzer_sys::fuzz_target;
use linkrift_actors::groups::{shard_group, Command, GroupState, META};
use linkrift_raft::StateMachine;

fuzz_target!(|data: &[u8]| {
    let Some((kind, mut rest)) = data.split_first() else {
        return;
    };
    let group = if kind % 2 == 0 { META } else { shard_group(0) };
    let mut state = GroupState::for_group(group);
    let mut index = 1;
    // Each command: a one-byte length, then that many bytes.
    while let Some((&len, tail)) = rest.split_first() {
        let len = (len as usize).min(tail.len());
        let (bytes, tail) = tail.split_at(len);
        rest = tail;
        if let Ok(command) = linkrift_raft::codec::decode::<Command>(bytes) {
            state.apply(index, command);
            state.advance(index);
            index += 1;
        }
    }
    let mut out = Vec::new();
    state.snapshot(&mut out).expect("a state snapshots");
    let mut again = GroupState::for_group(group);
    again.restore(&mut &out[..]).expect("a snapshot restores");
});
