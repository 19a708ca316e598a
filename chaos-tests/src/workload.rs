//! The recorded workload: writers doing create-if-absent, update, delete and read on a
//! bounded set of codes, and redirect clients, each against a random node.
//!
//! A code is retired (its slot takes a fresh one) after 300 operations or 6 unknown
//! outcomes, which keeps each code's history small enough to search exhaustively.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::cluster::ADMIN_KEY;
use crate::history::{Call, Op, Ret};

const SLOTS: usize = 12;
const OPS_PER_CODE: u32 = 300;
const UNKNOWNS_PER_CODE: u32 = 6;
const URL_PREFIX: &str = "https://chaos.example/";

/// A slot's current code and how used it is.
struct Slot {
    generation: u32,
    ops: u32,
    unknowns: u32,
}

/// The codes in use.
struct Codes(Mutex<Vec<Slot>>);

impl Codes {
    fn code(slot: usize, generation: u32) -> String {
        format!("k{slot}g{generation}")
    }

    /// The slot's code for one more operation.
    fn take(&self, slot: usize) -> String {
        let mut slots = self.0.lock().unwrap();
        let s = &mut slots[slot];
        if s.ops >= OPS_PER_CODE || s.unknowns >= UNKNOWNS_PER_CODE {
            (s.generation, s.ops, s.unknowns) = (s.generation + 1, 0, 0);
        }
        s.ops += 1;
        Self::code(slot, s.generation)
    }

    /// A code for a redirect: the slot's current one.
    fn peek(&self, slot: usize) -> String {
        Self::code(slot, self.0.lock().unwrap()[slot].generation)
    }

    fn unknown(&self, code: &str, slot: usize) {
        let mut slots = self.0.lock().unwrap();
        if Self::code(slot, slots[slot].generation) == code {
            slots[slot].unknowns += 1;
        }
    }
}

/// A running workload.
pub struct Workload {
    stop: Arc<AtomicBool>,
    /// Answered writes sent once more with their `Idempotency-Key`.
    resent: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Op>>>,
}

/// Microseconds since `t0`.
pub fn micros(t0: Instant) -> u64 {
    t0.elapsed().as_micros() as u64
}

/// The value a URL of the workload carries.
pub fn value_of(url: &str) -> Option<u64> {
    url.strip_prefix(URL_PREFIX)?.parse().ok()
}

enum Outcome {
    Known(Ret),
    /// Refused before the request was sent, or a read that failed: no effect, not recorded.
    Nothing,
    Unknown,
    /// An answer the API should never give to this workload.
    Unexpected(String),
}

impl Outcome {
    /// What to record, completed now (or never, when unknown); nothing for an operation
    /// that had no effect, or for an off-contract answer, which is kept in `unexpected`.
    fn settle(
        self,
        t0: Instant,
        node: usize,
        unexpected: &Mutex<Vec<String>>,
    ) -> Option<(Ret, Option<u64>)> {
        match self {
            Outcome::Known(ret) => Some((ret, Some(micros(t0)))),
            Outcome::Unknown => Some((Ret::Unknown, None)),
            Outcome::Nothing => None,
            Outcome::Unexpected(what) => {
                unexpected
                    .lock()
                    .unwrap()
                    .push(format!("node {node}: {what}"));
                None
            }
        }
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        // Past the node's own write timeout (10 s), so it answers first when it can.
        .timeout(Duration::from_secs(12))
        .build()
        .unwrap()
}

/// An answer: what it says happened, and the link's version when it carried the link.
struct Answer {
    outcome: Outcome,
    version: Option<u64>,
}

impl From<Outcome> for Answer {
    fn from(outcome: Outcome) -> Self {
        Answer {
            outcome,
            version: None,
        }
    }
}

/// Sends `call` on `code` to `base`; a write carries `idempotency_key`, so that sending it
/// again (after an unknown outcome) cannot apply it twice.
async fn send(
    http: &reqwest::Client,
    base: &str,
    code: &str,
    call: Call,
    idempotency_key: &str,
) -> Answer {
    let request = match call {
        Call::Create(v) => http
            .post(format!("{base}/v1/links"))
            .json(&json!({ "url": format!("{URL_PREFIX}{v}"), "code": code })),
        Call::Update(v) => http
            .patch(format!("{base}/v1/links/{code}"))
            .json(&json!({ "url": format!("{URL_PREFIX}{v}") })),
        Call::UpdateIf(v, version) => http
            .patch(format!("{base}/v1/links/{code}"))
            .header("if-match", format!("\"{version}\""))
            .json(&json!({ "url": format!("{URL_PREFIX}{v}") })),
        Call::Delete => http.delete(format!("{base}/v1/links/{code}")),
        Call::Read => http.get(format!("{base}/v1/links/{code}")),
        Call::ReadConsistent => http.get(format!("{base}/v1/links/{code}?consistent=true")),
    };
    let request = if call.is_read() {
        request
    } else {
        request.header("idempotency-key", idempotency_key)
    };
    let response = match request.bearer_auth(ADMIN_KEY).send().await {
        Ok(r) => r,
        Err(e) if e.is_connect() => return Outcome::Nothing.into(),
        Err(_) if call.is_read() => return Outcome::Nothing.into(),
        Err(_) => return Outcome::Unknown.into(),
    };
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let value = || body["url"].as_str().and_then(value_of);
    let outcome = match (call, status) {
        (Call::Create(_), 201) => Outcome::Known(Ret::Created),
        // Sent again after the link this request created was deleted: it did create it.
        (Call::Create(_), 409) if body["error"]["code"] == "refused" => {
            Outcome::Known(Ret::Created)
        }
        (Call::Create(_), 409) => Outcome::Known(Ret::Exists),
        (Call::Update(_) | Call::UpdateIf(..), 200) => Outcome::Known(Ret::Updated),
        (Call::UpdateIf(..), 412) => Outcome::Known(Ret::Mismatch),
        (Call::Delete, 204) => Outcome::Known(Ret::Deleted),
        (Call::Update(_) | Call::UpdateIf(..) | Call::Delete, 404) => Outcome::Known(Ret::NotFound),
        (Call::Read | Call::ReadConsistent, 200) => match value() {
            Some(v) => Outcome::Known(Ret::Read(Some(v))),
            None => Outcome::Unexpected(format!("GET {code} answered 200 with {body}")),
        },
        (Call::Read | Call::ReadConsistent, 404) => Outcome::Known(Ret::Read(None)),
        (Call::Read | Call::ReadConsistent, _) => Outcome::Nothing,
        // Overloaded or unavailable: the write may still commit.
        (_, 429 | 500..=599) => Outcome::Unknown,
        (_, _) => Outcome::Unexpected(format!("{call:?} {code} answered {status} {body}")),
    };
    let version = match status {
        200 | 201 => body["version"].as_u64(),
        _ => None,
    };
    Answer { outcome, version }
}

/// One answered write in this many is sent once more with its `Idempotency-Key`.
const RESEND_ONE_IN: u32 = 20;

/// How an answer to a write sent again differs from the first answer (`ret`, carrying
/// `version`), if it does: de-duplication must give the first outcome again (a create of a
/// link deleted since is answered 409 `refused`, which reads as `Created`). An answer that
/// says nothing (unavailable, timed out) is no evidence either way.
fn differs(ret: Ret, version: Option<u64>, again: &Answer) -> Option<String> {
    match &again.outcome {
        Outcome::Known(r) if *r != ret => Some(format!("{r:?}")),
        Outcome::Known(r) => match (version, again.version) {
            (Some(a), Some(b)) if a != b => Some(format!("{r:?} (version {b})")),
            _ => None,
        },
        Outcome::Unexpected(what) => Some(what.clone()),
        Outcome::Nothing | Outcome::Unknown => None,
    }
}

/// Times a write whose outcome is unknown is sent again with its `Idempotency-Key`.
const RETRIES: u32 = 2;

/// The referer a tagged redirect sends.
pub const TAG_PREFIX: &str = "https://tag.chaos.example/";

/// A redirect tagged `tag`: the value its Location carries, 404, or nothing known.
async fn redirect(http: &reqwest::Client, base: &str, code: &str, tag: u64) -> Outcome {
    let request = http
        .get(format!("{base}/{code}"))
        .header("referer", format!("{TAG_PREFIX}{tag}"));
    match request.send().await {
        Ok(r) if r.status().is_redirection() => {
            let location = r.headers().get("location").and_then(|l| l.to_str().ok());
            match location.and_then(value_of) {
                Some(v) => Outcome::Known(Ret::Read(Some(v))),
                None => Outcome::Unexpected(format!("redirect {code} to {location:?}")),
            }
        }
        Ok(r) if r.status() == 404 => Outcome::Known(Ret::Read(None)),
        Ok(_) => Outcome::Nothing,
        Err(e) if e.is_connect() => Outcome::Nothing,
        // Sent, unanswered: a click may have been counted.
        Err(_) => Outcome::Unknown,
    }
}

impl Workload {
    /// Starts `writers` writers and `redirecters` redirect clients against `urls`; stops by
    /// itself at `hard_stop` if never told to.
    pub fn start(
        urls: Vec<String>,
        seed: u64,
        t0: Instant,
        writers: usize,
        redirecters: usize,
        hard_stop: Instant,
        unexpected: Arc<Mutex<Vec<String>>>,
    ) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let codes = Arc::new(Codes(Mutex::new(
            (0..SLOTS)
                .map(|_| Slot {
                    generation: 0,
                    ops: 0,
                    unknowns: 0,
                })
                .collect(),
        )));
        let values = Arc::new(AtomicU64::new(1));
        let resent = Arc::new(AtomicU64::new(0));
        let urls = Arc::new(urls);
        let mut tasks = Vec::new();
        for w in 0..writers as u64 {
            let (stop, codes, values, urls, unexpected, resent) = (
                stop.clone(),
                codes.clone(),
                values.clone(),
                urls.clone(),
                unexpected.clone(),
                resent.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed ^ (w + 1).wrapping_mul(0x9e37_79b9));
                let http = client();
                let mut process = (w + 1) * 1_000_000;
                let mut ops = Vec::new();
                // The version this client last saw of each code: what its If-Match sends.
                let mut seen: HashMap<String, u64> = HashMap::new();
                let mut sent = 0u64;
                let running = || !stop.load(Ordering::Relaxed) && Instant::now() < hard_stop;
                while running() {
                    let slot = rng.gen_range(0..SLOTS);
                    let code = codes.take(slot);
                    let node = rng.gen_range(0..urls.len());
                    let next = || values.fetch_add(1, Ordering::Relaxed);
                    let call = match rng.gen_range(0..100) {
                        0..30 => Call::Create(next()),
                        30..45 => Call::Update(next()),
                        45..60 => Call::UpdateIf(next(), seen.get(&code).copied().unwrap_or(1)),
                        60..72 => Call::Delete,
                        72..86 => Call::Read,
                        _ => Call::ReadConsistent,
                    };
                    sent += 1;
                    let key = format!("chaos-w{w}-{sent}");
                    let invoke = micros(t0);
                    let mut answer = send(&http, &urls[node], &code, call, &key).await;
                    let mut attempts = 1;
                    while matches!(answer.outcome, Outcome::Unknown)
                        && attempts <= RETRIES
                        && running()
                    {
                        // The same request again, to any node, after the cluster has had a
                        // moment: if the first one took effect, de-duplication answers what
                        // it did; if not, this one does it.
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        let again = rng.gen_range(0..urls.len());
                        answer = send(&http, &urls[again], &code, call, &key).await;
                        attempts += 1;
                        if matches!(answer.outcome, Outcome::Nothing) {
                            // Not sent (the node is down): the first is still unknown.
                            answer = Outcome::Unknown.into();
                        }
                    }
                    let version = answer.version;
                    let Some((ret, complete)) = answer.outcome.settle(t0, node + 1, &unexpected)
                    else {
                        continue;
                    };
                    if complete.is_some() && !call.is_read() && rng.gen_ratio(1, RESEND_ONE_IN) {
                        // Sent once more with its Idempotency-Key, to any node: whatever
                        // happened since, it must be answered as it was the first time.
                        let again = rng.gen_range(0..urls.len());
                        let second = send(&http, &urls[again], &code, call, &key).await;
                        resent.fetch_add(1, Ordering::Relaxed);
                        if let Some(wrong) = differs(ret, version, &second) {
                            unexpected.lock().unwrap().push(format!(
                                "{call:?} {code} (Idempotency-Key {key}) answered {ret:?} \
                                 (version {version:?}) by node {}, then {wrong} by node {} \
                                 when sent again",
                                node + 1,
                                again + 1
                            ));
                        }
                    }
                    match (version, ret) {
                        (Some(v), _) => {
                            seen.insert(code.clone(), v);
                        }
                        (None, Ret::Read(None) | Ret::NotFound | Ret::Deleted) => {
                            seen.remove(&code);
                        }
                        _ => {}
                    }
                    ops.push(Op {
                        process,
                        node: node + 1,
                        code: code.clone(),
                        call,
                        ret,
                        redirect: false,
                        invoke,
                        complete,
                        version,
                        attempts,
                        tag: None,
                    });
                    if complete.is_none() {
                        // The operation may still be pending: this client goes on as another.
                        process += 1;
                        codes.unknown(&code, slot);
                    }
                }
                ops
            }));
        }
        // Each redirect's tag: unique across the clients.
        let tags = Arc::new(AtomicU64::new(1));
        for r in 0..redirecters as u64 {
            let (stop, codes, urls, unexpected, tags) = (
                stop.clone(),
                codes.clone(),
                urls.clone(),
                unexpected.clone(),
                tags.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed ^ (r + 101).wrapping_mul(0x85eb_ca6b));
                let http = client();
                let process = 900_000_000 + r;
                let mut ops = Vec::new();
                while !stop.load(Ordering::Relaxed) && Instant::now() < hard_stop {
                    let code = codes.peek(rng.gen_range(0..SLOTS));
                    let node = rng.gen_range(0..urls.len());
                    let invoke = micros(t0);
                    let tag = tags.fetch_add(1, Ordering::Relaxed);
                    let outcome = redirect(&http, &urls[node], &code, tag).await;
                    let Some((ret, complete)) = outcome.settle(t0, node + 1, &unexpected) else {
                        continue;
                    };
                    ops.push(Op {
                        process,
                        node: node + 1,
                        code,
                        call: Call::Read,
                        ret,
                        redirect: true,
                        invoke,
                        complete,
                        version: None,
                        attempts: 1,
                        tag: Some(tag),
                    });
                    // Paced: a few hundred redirects a second per client is plenty of
                    // clicks to count, and leaves the CPU to the nodes.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                ops
            }));
        }
        Workload {
            stop,
            resent,
            tasks,
        }
    }

    /// Stops the clients; the whole history, and how many answered writes were sent once
    /// more with their `Idempotency-Key`.
    pub async fn finish(self) -> (Vec<Op>, u64) {
        let resent = self.resent.load(Ordering::Relaxed);
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.unwrap_or_default());
        }
        all.sort_by_key(|o| o.invoke);
        (all, resent)
    }
}
