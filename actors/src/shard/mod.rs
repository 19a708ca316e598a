//! A shard: its actor here; its links, the commands that change them, the read handle
//! redirects use and `shard_of` are the model's (`linkrift_model::shard`).

mod actor;

pub use actor::{ShardActor, ShardMsg};
pub use linkrift_model::shard::{
    feed, jump_consistent_hash, shard_of, RequestId, ShardCommand, ShardOutcome, ShardReader,
    ShardState, DEDUPE_WINDOW_MS,
};
