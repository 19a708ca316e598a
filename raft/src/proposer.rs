//! Batches a group's proposals into Raft entries.
//!
//! openraft makes each log write durable before it takes the next, so a group commits
//! one flush at a time. Proposing every command as its own entry would make each flush
//! cover only the few commands that happened to arrive together. Instead, one proposer
//! task per group keeps one entry in flight and puts every command that arrived meanwhile
//! into the next entry: a lone writer waits for nothing extra, and under load each flush
//! covers as many commands as arrived during the previous commit.
//!
//! An entry's payload is an encoded [`Batch`] of encoded commands; the state machine
//! answers with a `Batch` of encoded responses, one per command, in order.

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::codec;
use crate::node::GroupError;
use crate::types::Payload;
use crate::Raft;

/// Commands of one entry, or their responses, each still encoded.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Batch(pub Vec<Payload>);

/// Most commands in one entry.
const MAX_COMMANDS: usize = 1024;
/// Most command bytes in one entry; a single larger command still goes alone.
const MAX_BYTES: usize = 1024 * 1024;
/// Proposals waiting for a batch; writers wait for room beyond it.
const QUEUE: usize = 8192;

/// One command waiting to be proposed, and where its outcome goes.
pub(crate) struct Proposal {
    command: Payload,
    done: oneshot::Sender<Result<Payload, GroupError>>,
}

/// The sending side of a group's proposer.
#[derive(Clone)]
pub(crate) struct Proposer {
    tx: mpsc::Sender<Proposal>,
}

impl Proposer {
    /// Starts the proposer task of `raft`; it ends on `shutdown` or when every handle
    /// is dropped.
    pub(crate) fn start(
        raft: Raft,
        shutdown: CancellationToken,
        tasks: &tokio_util::task::TaskTracker,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<Proposal>(QUEUE);
        tasks.spawn(async move {
            loop {
                let first = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    p = rx.recv() => match p { Some(p) => p, None => return },
                };
                let mut bytes = first.command.0.len();
                let mut batch = vec![first];
                while batch.len() < MAX_COMMANDS && bytes < MAX_BYTES {
                    match rx.try_recv() {
                        Ok(p) => {
                            bytes += p.command.0.len();
                            batch.push(p);
                        }
                        Err(_) => break,
                    }
                }
                propose(&raft, batch).await;
            }
        });
        Self { tx }
    }

    /// Proposes `command` and waits for its encoded response.
    pub(crate) async fn propose(&self, command: Payload) -> Result<Payload, GroupError> {
        let (done, rx) = oneshot::channel();
        let stopped = || GroupError::Unavailable("the group is shutting down".into());
        self.tx
            .send(Proposal { command, done })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

async fn propose(raft: &Raft, batch: Vec<Proposal>) {
    let (commands, waiters): (Vec<_>, Vec<_>) =
        batch.into_iter().map(|p| (p.command, p.done)).unzip();
    let entry = Payload(codec::encode(&Batch(commands)));
    let started = std::time::Instant::now();
    let written = raft.client_write(entry).await;
    // From proposing to committed and applied on the leader (a quorum's flushes included).
    metrics::histogram!("raft_commit_duration_seconds").record(started.elapsed());
    let outcome = match written {
        Ok(response) => codec::decode::<Batch>(&response.data.0)
            .map_err(|e| GroupError::BadResponse(e.to_string()))
            .and_then(|Batch(responses)| {
                if responses.len() == waiters.len() {
                    Ok(responses)
                } else {
                    Err(GroupError::BadResponse(format!(
                        "{} responses for {} commands",
                        responses.len(),
                        waiters.len()
                    )))
                }
            }),
        Err(e) => Err(GroupError::from(e)),
    };
    match outcome {
        Ok(responses) => {
            for (done, response) in waiters.into_iter().zip(responses) {
                let _ = done.send(Ok(response));
            }
        }
        Err(e) => {
            for done in waiters {
                let _ = done.send(Err(e.clone()));
            }
        }
    }
}
