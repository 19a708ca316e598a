//! The shard actor: the one place a shard's writes enter its Raft group on this node.
//!
//! It receives proposals as messages and hands each to the group's proposer in a task of
//! its own, so proposals from many callers pipeline into shared Raft entries instead of
//! queueing behind one another in the mailbox. Reads never come here: redirects read the
//! shard's table directly through its [`super::ShardReader`]. Across a cluster this actor
//! is also what other nodes address to forward a write to the shard's leader.

use linkrift_raft::{Group, GroupError};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinSet;

use super::{ShardCommand, ShardOutcome};
use crate::groups::{Command, GroupState, Outcome};

/// Messages a shard actor takes.
pub enum ShardMsg {
    /// Propose a command; the outcome (or why there is none) goes to the reply port.
    Propose(ShardCommand, RpcReplyPort<Result<ShardOutcome, GroupError>>),
}

// Local only: it never crosses the cluster (writes from other nodes arrive as requests to
// the peer actor, which proposes here).
impl ractor::Message for ShardMsg {}

/// The actor; its state is the shard's group handle and its in-flight proposals.
pub struct ShardActor;

/// A running shard actor's state.
pub struct ShardActorState {
    group: Group<GroupState>,
    in_flight: JoinSet<()>,
}

impl Actor for ShardActor {
    type Msg = ShardMsg;
    type State = ShardActorState;
    type Arguments = Group<GroupState>;

    async fn pre_start(
        &self,
        _me: ActorRef<ShardMsg>,
        group: Group<GroupState>,
    ) -> Result<ShardActorState, ActorProcessingErr> {
        Ok(ShardActorState {
            group,
            in_flight: JoinSet::new(),
        })
    }

    async fn handle(
        &self,
        _me: ActorRef<ShardMsg>,
        msg: ShardMsg,
        state: &mut ShardActorState,
    ) -> Result<(), ActorProcessingErr> {
        while state.in_flight.try_join_next().is_some() {}
        match msg {
            ShardMsg::Propose(command, reply) => {
                let group = state.group.clone();
                state.in_flight.spawn(async move {
                    let outcome = match group.write(Command::Shard(command)).await {
                        Ok(Outcome::Shard(o)) => Ok(o),
                        Ok(other) => Err(GroupError::BadResponse(format!(
                            "a shard answered {other:?}"
                        ))),
                        Err(e) => Err(e),
                    };
                    // The caller may have given up waiting; nothing to do then.
                    let _ = reply.send(outcome);
                });
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _me: ActorRef<ShardMsg>,
        state: &mut ShardActorState,
    ) -> Result<(), ActorProcessingErr> {
        // Proposals already handed to Raft finish; their callers get their answers.
        while state.in_flight.join_next().await.is_some() {}
        Ok(())
    }
}
