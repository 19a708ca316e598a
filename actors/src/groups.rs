//! The state machine every Raft group on a node runs: the meta group (group 0) or a shard
//! (group `1 + shard`). One type, so all groups share one `RaftNode`.

use std::io::{Read, Write};

use linkrift_raft::{GroupId, StateMachine};
use serde::{Deserialize, Serialize};

use crate::meta::{MetaCommand, MetaOutcome, MetaState};
use crate::shard::{ShardCommand, ShardOutcome, ShardState};

/// The meta group's id.
pub const META: GroupId = GroupId(0);

/// The group of shard `shard`.
pub fn shard_group(shard: u32) -> GroupId {
    GroupId(1 + shard as u64)
}

/// A group's state.
pub enum GroupState {
    /// The meta group.
    Meta(MetaState),
    /// A shard.
    Shard(ShardState),
}

impl GroupState {
    /// The initial state of `group`.
    pub fn for_group(group: GroupId) -> Self {
        if group == META {
            Self::Meta(MetaState::default())
        } else {
            Self::Shard(ShardState::default())
        }
    }
}

/// A command for either kind of group.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Command {
    /// For the meta group.
    Meta(MetaCommand),
    /// For a shard.
    Shard(ShardCommand),
}

/// What a command did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Outcome {
    /// A meta outcome.
    Meta(MetaOutcome),
    /// A shard outcome.
    Shard(ShardOutcome),
    /// The command was sent to the wrong kind of group, and ignored.
    WrongGroup,
}

impl StateMachine for GroupState {
    type Command = Command;
    type Response = Outcome;

    fn apply(&mut self, index: u64, command: Command) -> Outcome {
        match (self, command) {
            (Self::Meta(m), Command::Meta(c)) => Outcome::Meta(m.apply(c)),
            (Self::Shard(s), Command::Shard(c)) => Outcome::Shard(s.apply_at(index, c)),
            _ => Outcome::WrongGroup,
        }
    }

    fn advance(&mut self, index: u64) {
        if let Self::Shard(s) = self {
            s.advance(index);
        }
    }

    fn snapshot(&self, out: &mut dyn Write) -> std::io::Result<()> {
        match self {
            Self::Meta(m) => m.write_snapshot(out),
            Self::Shard(s) => s.write_snapshot(out),
        }
    }

    fn restore(&mut self, input: &mut dyn Read) -> std::io::Result<()> {
        match self {
            Self::Meta(m) => m.restore(input),
            Self::Shard(s) => s.restore(input),
        }
    }
}
