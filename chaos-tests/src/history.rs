//! The workload's record: every operation with the moment it was invoked and, unless its
//! outcome is unknown, the moment it completed.
//!
//! Values are numbers: a create or update of value `v` writes `https://chaos.example/v`,
//! and no value is written twice, so a value read names the one write that produced it.

use serde::{Deserialize, Serialize};

/// What a client asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Call {
    /// `POST /v1/links` with a custom code: create if absent.
    Create(u64),
    /// `PATCH /v1/links/{code}` with a new URL.
    Update(u64),
    /// The same with `If-Match`: the new URL, and the version the client last saw.
    UpdateIf(u64, u64),
    /// `DELETE /v1/links/{code}`.
    Delete,
    /// `GET /v1/links/{code}` (or, with `redirect`, `GET /{code}`): any caught-up replica.
    Read,
    /// `GET /v1/links/{code}?consistent=true`: linearizable, through the shard's leader.
    ReadConsistent,
}

impl Call {
    /// Whether it only reads.
    pub fn is_read(self) -> bool {
        matches!(self, Call::Read | Call::ReadConsistent)
    }
}

/// What it was answered. `Unknown`: a timeout or a cut connection after the request was
/// sent; it may or may not have taken effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ret {
    /// 201.
    Created,
    /// 409: the code is taken.
    Exists,
    /// 200 to a PATCH.
    Updated,
    /// 204 to a DELETE.
    Deleted,
    /// 404 to a PATCH or DELETE.
    NotFound,
    /// 412 to a PATCH with `If-Match`: the link is at another version.
    Mismatch,
    /// A read's answer: the value served, or none (404).
    Read(Option<u64>),
    /// No answer that says what happened.
    Unknown,
}

/// One operation of the history.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Op {
    /// The client (a new one after each unknown outcome, as it may still be pending).
    pub process: u64,
    /// The node asked (1-based index of the harness's node).
    pub node: usize,
    pub code: String,
    pub call: Call,
    pub ret: Ret,
    /// Whether it was a redirect (`GET /{code}`) rather than an API read.
    pub redirect: bool,
    /// Microseconds since the run began.
    pub invoke: u64,
    /// `None` when the outcome is unknown.
    pub complete: Option<u64>,
    /// The link's version the answer carried (a read, create or update answered with the
    /// link), which the model checks; `None` for redirects and answers without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// How many times it was sent (with the same `Idempotency-Key`): a write whose outcome
    /// was unknown is sent again, to any node, and the last answer is its outcome.
    #[serde(default)]
    pub attempts: u32,
    /// A redirect's tag, unique in the run, sent as its referer
    /// (`https://tag.chaos.example/{tag}`): the click it counted carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<u64>,
}

impl Op {
    /// Whether a completed write changed the link (not a 404 or 409), or may have.
    pub fn may_change(&self) -> bool {
        match (self.call, self.ret) {
            (Call::Read | Call::ReadConsistent, _) => false,
            (_, Ret::Unknown) => true,
            (_, Ret::Created | Ret::Updated | Ret::Deleted) => true,
            _ => false,
        }
    }

    /// The state a completed, acknowledged change left: the value, or none.
    pub fn effect(&self) -> Option<Option<u64>> {
        match (self.call, self.ret) {
            (Call::Create(v), Ret::Created)
            | (Call::Update(v) | Call::UpdateIf(v, _), Ret::Updated) => Some(Some(v)),
            (Call::Delete, Ret::Deleted) => Some(None),
            _ => None,
        }
    }

    /// The moment after which it cannot take effect (never, for an unknown outcome).
    pub fn end(&self) -> u64 {
        self.complete.unwrap_or(u64::MAX)
    }
}

/// A fault the nemesis scheduled, and what became of it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FaultRecord {
    pub name: String,
    /// Microseconds since the run began.
    pub start: u64,
    pub end: u64,
    /// Whether it demonstrably happened (a process killed, a rule in place, a failpoint
    /// hit, a skewed clock seen), with what showed it.
    pub fired: bool,
    pub detail: String,
    /// Whether, once it was undone, every node was ready and every group led again within
    /// the deadline.
    pub settled: bool,
    /// If not, what was still waiting at the deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsettled: Option<String>,
    /// Members found not running once the fault was over, which the fault had not
    /// stopped for good (every fault restarts what it stops): each an unplanned exit, with
    /// its status.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unplanned_exits: Vec<String>,
    /// Nodes killed abruptly (SIGKILL or abort) and when: clicks they had queued are lost.
    pub crashes: Vec<(usize, u64)>,
}
