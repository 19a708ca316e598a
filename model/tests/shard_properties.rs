//! Property tests of the shard state machine against a plain model: any sequence of
//! creates, updates and deletes (with retried request ids mixed in) gives the model's
//! outcomes, a snapshot restores the same state, and a retry never acts twice.
//!
//! Two kinds of retry: a node proposing the same command again (after a timeout or a
//! failover: the same request id and time), and a client submitting the request again (its
//! `Idempotency-Key`: the same request id, a new proposal time).

use std::collections::BTreeMap;

use linkrift_model::domain::{
    DestinationUrl, LinkPatch, NewLink, RedirectStatus, ShortCode, UrlPolicy,
};
use linkrift_model::shard::{RequestId, ShardCommand, ShardOutcome, ShardState, DEDUPE_WINDOW_MS};
use proptest::prelude::*;

fn url(n: u8) -> DestinationUrl {
    DestinationUrl::parse(&format!("https://example.com/{n}"), &UrlPolicy::default()).unwrap()
}

fn code(n: u8) -> ShortCode {
    ShortCode::parse(&format!("c{n}")).unwrap()
}

#[derive(Clone, Debug)]
enum Op {
    Create {
        code: u8,
        url: u8,
    },
    Update {
        code: u8,
        url: u8,
        expect: Option<u64>,
    },
    Delete {
        code: u8,
        expect: Option<u64>,
    },
    /// Submit the request at this position of the history again, as a new proposal (a
    /// client's retry with the same `Idempotency-Key`).
    Retry(usize),
    /// Propose the command at this position of the history again, unchanged (a node's
    /// retry).
    Resend(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..6u8, any::<u8>()).prop_map(|(code, url)| Op::Create { code, url }),
        (0..6u8, any::<u8>(), proptest::option::of(1..4u64))
            .prop_map(|(code, url, expect)| Op::Update { code, url, expect }),
        (0..6u8, proptest::option::of(1..4u64))
            .prop_map(|(code, expect)| Op::Delete { code, expect }),
        any::<usize>().prop_map(Op::Retry),
        any::<usize>().prop_map(Op::Resend),
    ]
}

/// The model: code -> (url, version).
#[derive(Default)]
struct Model {
    links: BTreeMap<u8, (u8, u64)>,
}

fn summary(outcome: &ShardOutcome) -> String {
    match outcome {
        ShardOutcome::Created(l) => format!("created {} {} v{}", l.code, l.url, l.version),
        ShardOutcome::Updated(l) => format!("updated {} {} v{}", l.code, l.url, l.version),
        ShardOutcome::Deleted(l) => format!("deleted {} v{}", l.code, l.version),
        ShardOutcome::CodeTaken => "taken".into(),
        ShardOutcome::NotFound => "not found".into(),
        ShardOutcome::VersionMismatch { current } => format!("mismatch v{current}"),
        ShardOutcome::DeletedSince(l) => format!("deleted since {}", l.code),
        ShardOutcome::Ticked => "ticked".into(),
    }
}

impl Model {
    /// What a client's retry of `op`, first answered `first`, answers now: the same, unless
    /// it was a create whose link has been deleted since. (A node's resend of the same
    /// proposal always answers `first`: that proposal did what it says.)
    fn retried(&self, op: &Op, first: &str) -> String {
        match *op {
            Op::Create { code: c, .. }
                if first.starts_with("created") && !self.links.contains_key(&c) =>
            {
                format!("deleted since {}", code(c))
            }
            _ => first.to_string(),
        }
    }

    fn expect(&mut self, op: &Op) -> String {
        let out = match *op {
            Op::Create { code: c, url: u } => {
                if let std::collections::btree_map::Entry::Vacant(e) = self.links.entry(c) {
                    e.insert((u, 1));
                    format!("created {} {} v1", code(c), url(u))
                } else {
                    "taken".to_string()
                }
            }
            Op::Update {
                code: c,
                url: u,
                expect,
            } => match self.links.get_mut(&c) {
                None => "not found".into(),
                Some((_, v)) if expect.is_some_and(|e| e != *v) => format!("mismatch v{v}"),
                Some(entry) => {
                    *entry = (u, entry.1 + 1);
                    format!("updated {} {} v{}", code(c), url(u), entry.1)
                }
            },
            Op::Delete { code: c, expect } => match self.links.get(&c).copied() {
                None => "not found".into(),
                Some((_, v)) if expect.is_some_and(|e| e != v) => format!("mismatch v{v}"),
                Some((_, v)) => {
                    self.links.remove(&c);
                    format!("deleted {} v{v}", code(c))
                }
            },
            Op::Retry(_) | Op::Resend(_) => unreachable!("retries are resolved before"),
        };
        out
    }
}

fn command(request: RequestId, at: i64, op: &Op) -> ShardCommand {
    match *op {
        Op::Create { code: c, url: u } => ShardCommand::Create {
            request,
            at,
            link: NewLink {
                code: code(c),
                url: url(u),
                title: None,
                tags: vec![],
                expires_at: None,
                redirect: RedirectStatus::Found,
            },
        },
        Op::Update {
            code: c,
            url: u,
            expect,
        } => ShardCommand::Update {
            request,
            at,
            code: code(c),
            expected_version: expect,
            patch: LinkPatch {
                url: Some(url(u)),
                ..LinkPatch::default()
            },
        },
        Op::Delete { code: c, expect } => ShardCommand::Delete {
            request,
            at,
            code: code(c),
            expected_version: expect,
        },
        Op::Retry(_) | Op::Resend(_) => unreachable!(),
    }
}

fn state_of(shard: &ShardState) -> Vec<(String, String, u64)> {
    shard
        .reader()
        .page(None, None, usize::MAX)
        .iter()
        .map(|l| (l.code.to_string(), l.url.to_string(), l.version))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn shard_matches_the_model_and_retries_never_act_twice(ops in proptest::collection::vec(op(), 1..80)) {
        let mut shard = ShardState::default();
        let mut model = Model::default();
        // (request id, time of its first proposal, operation, first outcome)
        let mut history: Vec<(RequestId, i64, Op, String)> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let now = 1_000 + i as i64;
            let (request, at, op, expected) = match op {
                Op::Retry(n) | Op::Resend(n) if !history.is_empty() => {
                    let (request, first_at, op, first) = history[n % history.len()].clone();
                    match ops[i] {
                        Op::Resend(_) => (request, first_at, op, first),
                        _ => {
                            let expected = model.retried(&op, &first);
                            (request, now, op, expected)
                        }
                    }
                }
                Op::Retry(_) | Op::Resend(_) => continue,
                op => {
                    let request = i as RequestId + 1;
                    let expected = model.expect(op);
                    (request, now, op.clone(), expected)
                }
            };
            let outcome = shard.apply(command(request, at, &op));
            prop_assert_eq!(summary(&outcome), expected.clone(), "op {} {:?}", i, ops[i]);
            // (A retry is remembered as the first outcome it repeats, at the first time.)
            let (first_at, first) = match &ops[i] {
                Op::Retry(n) | Op::Resend(n) => {
                    let (_, a, _, f) = &history[n % history.len()];
                    (*a, f.clone())
                }
                _ => (at, expected),
            };
            history.push((request, first_at, op, first));
        }
        let expected: Vec<_> = model
            .links
            .iter()
            .map(|(c, (u, v))| (code(*c).to_string(), url(*u).to_string(), *v))
            .collect();
        prop_assert_eq!(state_of(&shard), expected.clone());

        // A snapshot restores the same links and the same memory of requests.
        let mut bytes = Vec::new();
        shard.write_snapshot(&mut bytes).unwrap();
        let mut restored = ShardState::default();
        restored.restore(&mut bytes.as_slice()).unwrap();
        prop_assert_eq!(state_of(&restored), expected);
        for (request, first_at, op, first) in &history {
            let resent = restored.apply(command(*request, *first_at, op));
            prop_assert_eq!(&summary(&resent), first, "resend of request {} after restore", request);
            let again = restored.apply(command(*request, 2_000, op));
            prop_assert_eq!(summary(&again), model.retried(op, first), "retry of request {} after restore", request);
        }
    }
}

#[test]
fn outcomes_are_forgotten_after_the_window_of_the_shards_own_clock() {
    let mut shard = ShardState::default();
    let create = |request, at| command(request, at, &Op::Create { code: 1, url: 1 });
    let tick = |ms: u64| ShardCommand::Tick { elapsed_ms: ms };
    assert!(matches!(
        shard.apply(create(7, 0)),
        ShardOutcome::Created(_)
    ));
    // A proposer whose wall clock is an hour fast forgets nothing.
    let fast = 60 * 60 * 1000;
    assert_eq!(
        summary(&shard.apply(command(8, fast, &Op::Create { code: 2, url: 2 }))),
        "created c2 https://example.com/2 v1"
    );
    assert!(
        matches!(shard.apply(create(7, 0)), ShardOutcome::Created(_)),
        "retry after a skewed proposer's command"
    );
    // Ticks short of the window keep it; a tick longer than TICK_MAX_MS counts that much.
    assert_eq!(shard.apply(tick(u64::MAX)), ShardOutcome::Ticked);
    for _ in 0..(DEDUPE_WINDOW_MS as u64 / 10_000 - 7) {
        shard.apply(tick(10_000));
    }
    assert!(
        matches!(shard.apply(create(7, 10)), ShardOutcome::Created(_)),
        "retry inside the window (9 min 50 s of ticks)"
    );
    // A snapshot keeps the clock and the memory.
    let mut bytes = Vec::new();
    shard.write_snapshot(&mut bytes).unwrap();
    let mut shard = ShardState::default();
    shard.restore(&mut bytes.as_slice()).unwrap();
    assert!(matches!(
        shard.apply(create(7, 10)),
        ShardOutcome::Created(_)
    ));
    // Past the window on the shard's clock, the same id is a new request: the code is
    // now taken.
    shard.apply(tick(20_000));
    assert_eq!(shard.apply(create(7, 20)), ShardOutcome::CodeTaken);
}

#[test]
fn no_count_cuts_the_window_short() {
    let mut shard = ShardState::default();
    let n = 150_000u128;
    for request in 0..n {
        shard.apply(command(
            request,
            0,
            &Op::Delete {
                code: 1,
                expect: None,
            },
        ));
    }
    // The first request's outcome is still remembered: a create of the same id answers
    // what the delete did, not a create.
    assert_eq!(
        summary(&shard.apply(command(0, 5, &Op::Create { code: 1, url: 1 }))),
        "not found"
    );
}
