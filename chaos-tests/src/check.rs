//! Checkers over a recorded history. Each returns the anomalies it found, as sentences.
//!
//! Linearizability is checked per code (codes are independent registers) with the
//! Wing-Gong-Lowe search: take, in invocation order, an operation that may go next, apply
//! it to the model, and backtrack when an operation's completion is passed before it has
//! been placed; each (placed set, state) pair is explored once. Operations with unknown
//! outcomes never complete, so they may be placed anywhere after their invocation, or
//! after everything (as if they never happened). stateright's `LinearizabilityTester`
//! explores without that memo and has no such open-ended operations, so it is not used.

use std::collections::{BTreeMap, HashSet};

use crate::history::{Call, Op, Ret};

/// The model's state: the link absent, or holding a value at a version.
type State = Option<(u64, u64)>;

/// The model: one link, absent or holding a value at a version (1 when created, one more
/// with each update). The state after `op`, if `op` may have answered what it did from
/// `state`. An answer that carried a version must carry the state's.
fn step(state: State, op: &Op) -> Option<State> {
    let carries = |version: u64| op.version.is_none_or(|v| v == version);
    match (op.call, op.ret, state) {
        (Call::Create(v), Ret::Created, None) if carries(1) => Some(Some((v, 1))),
        (Call::Create(_), Ret::Exists, Some(s)) => Some(Some(s)),
        (Call::Create(v), Ret::Unknown, None) => Some(Some((v, 1))),
        (Call::Create(_), Ret::Unknown, Some(s)) => Some(Some(s)),
        (Call::Update(v), Ret::Updated | Ret::Unknown, Some((_, n))) if carries(n + 1) => {
            Some(Some((v, n + 1)))
        }
        (Call::UpdateIf(v, seen), Ret::Updated | Ret::Unknown, Some((_, n)))
            if seen == n && carries(n + 1) =>
        {
            Some(Some((v, n + 1)))
        }
        (Call::UpdateIf(_, seen), Ret::Mismatch | Ret::Unknown, Some(s)) if seen != s.1 => {
            Some(Some(s))
        }
        (Call::Update(_) | Call::UpdateIf(..), Ret::NotFound | Ret::Unknown, None) => Some(None),
        (Call::Delete, Ret::Deleted, Some(_)) => Some(None),
        (Call::Delete, Ret::Unknown, _) | (Call::Delete, Ret::NotFound, None) => Some(None),
        (c, Ret::Read(v), s) if c.is_read() && v == s.map(|s| s.0) => {
            s.is_none_or(|(_, n)| carries(n)).then_some(s)
        }
        (c, Ret::Unknown, s) if c.is_read() => Some(s),
        _ => None,
    }
}

/// Steps the search may take for one code before the code is reported undecided. A history
/// that is linearizable is found in about as many steps as it has operations; one that is
/// not must be refuted over every order of its concurrent operations, which grows with
/// each operation left without an outcome (as after a power cut of every node).
const SEARCH_STEPS: u64 = 2_000_000;

/// Whether `ops` (one code's) are linearizable from an absent link.
#[cfg(test)]
pub fn linearizable(ops: &[&Op]) -> bool {
    search(ops, u64::MAX) == Some(true)
}

/// Whether `ops` are linearizable, if the search decides it within `budget` steps.
fn search(ops: &[&Op], mut budget: u64) -> Option<bool> {
    // Events: (time, is_return, op). Invocations sort before completions at equal times,
    // so operations that touch are taken as concurrent.
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.invoke, false, i));
        events.push((op.end(), true, i));
    }
    events.sort();
    // A doubly linked list of the events not yet placed, from `head` to `end`.
    let n = events.len();
    let (head, end) = (n, n + 1);
    let mut next = vec![end; n + 1];
    let mut prev = vec![head; n + 1];
    for i in 0..n {
        next[i] = if i + 1 < n { i + 1 } else { end };
        prev[i] = if i == 0 { head } else { i - 1 };
    }
    next[head] = if n > 0 { 0 } else { end };
    let mut call_at = vec![0usize; ops.len()];
    let mut ret_at = vec![0usize; ops.len()];
    for (at, &(_, is_ret, op)) in events.iter().enumerate() {
        if is_ret {
            ret_at[op] = at;
        } else {
            call_at[op] = at;
        }
    }
    let words = ops.len().div_ceil(64);
    let mut placed = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state: State = None;
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, at: usize| {
        let (p, x) = (prev[at], next[at]);
        next[p] = x;
        if x != end {
            prev[x] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, at: usize| {
        let (p, x) = (prev[at], next[at]);
        next[p] = at;
        if x != end {
            prev[x] = at;
        }
    };
    let mut at = next[head];
    while next[head] != end {
        budget = budget.checked_sub(1)?;
        if at == end {
            return Some(false);
        }
        let (_, is_ret, op) = events[at];
        if !is_ret {
            if let Some(after) = step(state, ops[op]) {
                let mut with = placed.clone();
                with[op / 64] |= 1 << (op % 64);
                if seen.insert((with.clone(), after)) {
                    stack.push((op, state));
                    placed = with;
                    state = after;
                    unlink(&mut next, &mut prev, call_at[op]);
                    unlink(&mut next, &mut prev, ret_at[op]);
                    at = next[head];
                    continue;
                }
            }
            at = next[at];
        } else {
            // A completion reached before its operation was placed: undo the last choice.
            let Some((op, before)) = stack.pop() else {
                return Some(false);
            };
            state = before;
            placed[op / 64] &= !(1 << (op % 64));
            relink(&mut next, &mut prev, ret_at[op]);
            relink(&mut next, &mut prev, call_at[op]);
            at = next[call_at[op]];
        }
    }
    Some(true)
}

/// Splits the linearizable part of the history (API writes, and reads marked final) by code.
pub fn by_code(ops: &[Op], with: impl Fn(&Op) -> bool) -> BTreeMap<&str, Vec<&Op>> {
    let mut codes: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops.iter().filter(|o| with(o)) {
        codes.entry(op.code.as_str()).or_default().push(op);
    }
    codes
}

/// Writes, consistent reads and `final_reads` per code: the codes whose history is not
/// linearizable. (Other reads may lag by design; `check_stale` bounds them.)
pub fn check_linearizable(ops: &[Op], final_reads: &[Op]) -> Vec<String> {
    let mut all: Vec<Op> = ops
        .iter()
        .filter(|o| o.call != Call::Read)
        .cloned()
        .collect();
    all.extend(final_reads.iter().cloned());
    let mut anomalies = Vec::new();
    for (code, ops) in by_code(&all, |_| true) {
        let verdict = match search(&ops, SEARCH_STEPS) {
            Some(true) => continue,
            Some(false) => "not linearizable",
            None => "not shown linearizable (search gave up after 2,000,000 steps)",
        };
        let shown: Vec<String> = ops.iter().map(|o| describe(o)).collect();
        anomalies.push(format!(
            "code {code}: {verdict} ({} operations): {}",
            ops.len(),
            shown.join("; ")
        ));
    }
    anomalies
}

fn describe(o: &Op) -> String {
    let end = o.complete.map_or("?".to_string(), |c| c.to_string());
    format!(
        "p{} n{} {:?}->{:?} [{}..{}]",
        o.process, o.node, o.call, o.ret, o.invoke, end
    )
}

/// Acknowledged changes the final state does not show: for each code, the last
/// acknowledged change that every other change (acknowledged or unknown) precedes in real
/// time must be what the final read sees.
pub fn check_lost(ops: &[Op], finals: &BTreeMap<String, Option<u64>>) -> Vec<String> {
    let mut anomalies = Vec::new();
    for (code, ops) in by_code(ops, |o| o.may_change()) {
        let Some(last) = ops
            .iter()
            .filter(|o| o.effect().is_some())
            .max_by_key(|o| o.end())
        else {
            continue;
        };
        let alone = ops
            .iter()
            .all(|o| std::ptr::eq(*o, *last) || o.end() < last.invoke);
        if !alone {
            continue;
        }
        let want = last.effect().unwrap();
        match finals.get(code) {
            Some(got) if *got == want => {}
            got => anomalies.push(format!(
                "code {code}: acknowledged {} but the final state is {got:?}",
                describe(last)
            )),
        }
    }
    anomalies
}

/// Values read (by reads and redirects) that no create or update of that code may have
/// written: one refused (409, 404, 412) wrote nothing.
pub fn check_phantoms(ops: &[Op]) -> Vec<String> {
    let mut written: HashSet<(&str, u64)> = HashSet::new();
    for o in ops.iter().filter(|o| o.may_change()) {
        if let Call::Create(v) | Call::Update(v) | Call::UpdateIf(v, _) = o.call {
            written.insert((o.code.as_str(), v));
        }
    }
    let mut anomalies = Vec::new();
    for o in ops {
        let value = match o.ret {
            Ret::Read(Some(v)) => v,
            _ => continue,
        };
        if !written.contains(&(o.code.as_str(), value)) {
            anomalies.push(format!(
                "code {}: {} returned value {value}, which nobody wrote",
                o.code,
                describe(o)
            ));
        }
    }
    anomalies
}

/// Reads and redirects that served a state older than `bound` allows: the state read was
/// made by writes that all completed before another acknowledged change began, and the
/// read began more than `bound` after both that change's acknowledgement and the end of
/// every fault in between (`calm(a, b)`: the later of `a` and the end of the last fault
/// in force between `a` and `b`). A fault may delay a replica's catching up (a restart, a
/// healed partition), but by no more than the bound once it is over.
///
/// Also returns how many reads the bound applied to (an acknowledged change older than the
/// bound, and the faults since it over for longer), so that a run shows the check was not
/// vacuous.
pub fn check_stale(ops: &[Op], bound: u64, calm: impl Fn(u64, u64) -> u64) -> (Vec<String>, usize) {
    let mut anomalies = Vec::new();
    let mut held = 0;
    let changes = by_code(ops, |o| o.may_change());
    for read in ops.iter().filter(|o| o.call.is_read()) {
        let Ret::Read(value) = read.ret else {
            continue;
        };
        let empty = Vec::new();
        let writes = changes.get(read.code.as_str()).unwrap_or(&empty);
        // The writes that could have made what was read (none: the link as it began).
        let makers: Vec<&&Op> = writes
            .iter()
            .filter(|w| match (value, w.call) {
                (Some(v), Call::Create(x) | Call::Update(x) | Call::UpdateIf(x, _)) => v == x,
                (None, Call::Delete) => true,
                _ => false,
            })
            .collect();
        let superseded = |began: Option<u64>| {
            writes.iter().any(|w| {
                w.effect().is_some()
                    && began.is_none_or(|b| b < w.invoke)
                    && calm(w.end(), read.invoke).saturating_add(bound) < read.invoke
                    && match (value, w.effect()) {
                        (v, Some(e)) => e != v || began.is_some(),
                        _ => false,
                    }
            })
        };
        if writes.iter().any(|w| {
            w.effect().is_some() && calm(w.end(), read.invoke).saturating_add(bound) < read.invoke
        }) {
            held += 1;
        }
        let fresh_maker = makers
            .iter()
            .any(|m| !superseded(m.complete.or(Some(u64::MAX))));
        let initial_ok = value.is_none() && !superseded(None);
        if !fresh_maker && !initial_ok {
            anomalies.push(format!(
                "code {}: {} served a state superseded more than {} ms earlier",
                read.code,
                describe(read),
                bound / 1000
            ));
        }
    }
    (anomalies, held)
}

/// Clicks recorded for the workload's tagged redirects: tag → (short code, count).
pub type Clicks = BTreeMap<u64, (String, u64)>;

/// What the click accounting found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ClickAccount {
    /// Acknowledged redirects (3xx) in the history.
    pub acknowledged: usize,
    /// Of them, without a click but answered by a node within `window` before it crashed:
    /// allowed.
    pub lost_to_crashes: usize,
    /// Acknowledged redirects without a click and no crash to explain it.
    pub missing: Vec<u64>,
    /// The anomalies that waiting cannot mend: a tag counted twice, a click for a redirect
    /// that was not answered with one (404, or not in the history), a click counted for
    /// another code.
    pub wrong: Vec<String>,
}

/// Accounts for each tagged redirect: an acknowledged one must have exactly one click (of
/// its code), unless it was answered by a node that crashed within `window` after; a 404
/// or an unrecorded tag (a refused or unsent request) none; an unknown outcome one or none.
pub fn account_clicks(
    ops: &[Op],
    clicks: &Clicks,
    crashes: &[(usize, u64)],
    window: u64,
) -> ClickAccount {
    let mut account = ClickAccount::default();
    let mut tagged = BTreeMap::new();
    for o in ops.iter().filter(|o| o.redirect) {
        let Some(tag) = o.tag else { continue };
        tagged.insert(tag, o);
        let clicked = clicks.get(&tag).map_or(0, |&(_, n)| n);
        if !matches!(o.ret, Ret::Read(Some(_))) {
            continue;
        }
        account.acknowledged += 1;
        if clicked > 0 {
            continue;
        }
        // Answered by the node before it died: sent before the crash (the answer may
        // reach the client just after it), and answered at most `window` before it.
        let crashed = crashes
            .iter()
            .any(|&(n, at)| o.node == n && o.invoke <= at && o.end() + window >= at);
        if crashed {
            account.lost_to_crashes += 1;
        } else {
            account.missing.push(tag);
        }
    }
    for (tag, (code, count)) in clicks {
        match tagged.get(tag) {
            None => account.wrong.push(format!(
                "a click for tag {tag} ({code}), a redirect not answered with a redirect"
            )),
            Some(o) if o.ret == Ret::Read(None) => account.wrong.push(format!(
                "a click for tag {tag}, a redirect of {} answered 404 by node {}",
                o.code, o.node
            )),
            Some(o) if o.code != *code => account.wrong.push(format!(
                "tag {tag}, a redirect of {}, counted as a click of {code}",
                o.code
            )),
            Some(o) if *count > 1 => account.wrong.push(format!(
                "tag {tag} ({}, node {}) counted {count} times",
                o.code, o.node
            )),
            Some(_) => {}
        }
    }
    account
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(process: u64, call: Call, ret: Ret, invoke: u64, complete: Option<u64>) -> Op {
        Op {
            process,
            node: 1,
            code: "c".into(),
            call,
            ret,
            redirect: false,
            invoke,
            complete,
            version: None,
            attempts: 1,
            tag: None,
        }
    }

    fn lin(ops: &[Op]) -> bool {
        linearizable(&ops.iter().collect::<Vec<_>>())
    }

    #[test]
    fn sequential_histories() {
        let good = [
            op(1, Call::Create(1), Ret::Created, 0, Some(1)),
            op(1, Call::Create(2), Ret::Exists, 2, Some(3)),
            op(1, Call::Update(3), Ret::Updated, 4, Some(5)),
            op(1, Call::Read, Ret::Read(Some(3)), 6, Some(7)),
            op(1, Call::Delete, Ret::Deleted, 8, Some(9)),
            op(1, Call::Read, Ret::Read(None), 10, Some(11)),
        ];
        assert!(lin(&good));
        // A read of the overwritten value after the update completed: stale.
        let mut stale = good.to_vec();
        stale[3].ret = Ret::Read(Some(1));
        assert!(!lin(&stale));
        // A delete of a link that was never there.
        let mut wrong = good.to_vec();
        wrong.insert(0, op(2, Call::Delete, Ret::Deleted, 0, Some(0)));
        assert!(!lin(&wrong));
        // A create that succeeds on a taken code.
        let mut twice = good.to_vec();
        twice[1].ret = Ret::Created;
        assert!(!lin(&twice));
        // An acknowledged create, then "no such link".
        let lost = [
            op(1, Call::Create(1), Ret::Created, 0, Some(1)),
            op(2, Call::Read, Ret::Read(None), 2, Some(3)),
        ];
        assert!(!lin(&lost));
    }

    #[test]
    fn concurrent_operations_may_take_either_order() {
        let ops = [
            op(1, Call::Create(1), Ret::Created, 0, Some(10)),
            op(2, Call::Create(2), Ret::Exists, 1, Some(9)),
            op(3, Call::Read, Ret::Read(None), 2, Some(3)),
            op(3, Call::Read, Ret::Read(Some(1)), 4, Some(5)),
        ];
        assert!(lin(&ops));
        // Once a read saw the value, a later read (in real time) may not miss it.
        let mut flicker = ops.to_vec();
        flicker.push(op(3, Call::Read, Ret::Read(None), 11, Some(12)));
        assert!(!lin(&flicker));
    }

    #[test]
    fn unknown_outcomes_may_or_may_not_happen() {
        let happened = [
            op(1, Call::Create(1), Ret::Unknown, 0, None),
            op(2, Call::Read, Ret::Read(Some(1)), 5, Some(6)),
        ];
        assert!(lin(&happened));
        let never = [
            op(1, Call::Create(1), Ret::Unknown, 0, None),
            op(2, Call::Read, Ret::Read(None), 5, Some(6)),
            op(2, Call::Create(2), Ret::Created, 7, Some(8)),
        ];
        assert!(lin(&never));
        // An unknown create cannot explain a value it did not write.
        let other = [
            op(1, Call::Create(1), Ret::Unknown, 0, None),
            op(2, Call::Read, Ret::Read(Some(2)), 5, Some(6)),
        ];
        assert!(!lin(&other));
        // Nor can it take effect before it was invoked.
        let early = [
            op(2, Call::Read, Ret::Read(Some(1)), 0, Some(1)),
            op(1, Call::Create(1), Ret::Unknown, 2, None),
        ];
        assert!(!lin(&early));
    }

    #[test]
    fn a_dozen_concurrent_unknowns_are_searched_through() {
        // The workload retires a code after a few unknown outcomes: each one doubles what a
        // refutation has to search.
        let mut ops = vec![op(0, Call::Create(0), Ret::Created, 0, Some(1))];
        for i in 1..13u64 {
            ops.push(op(i, Call::Update(i), Ret::Unknown, 2 + i, None));
        }
        ops.push(op(99, Call::Read, Ret::Read(Some(11)), 100, Some(101)));
        ops.push(op(99, Call::Read, Ret::Read(Some(3)), 102, Some(103)));
        assert!(lin(&ops));
        ops.push(op(99, Call::Read, Ret::Read(Some(0)), 104, Some(105)));
        assert!(
            !lin(&ops),
            "the first value came back after it was overwritten"
        );
    }

    fn versioned(mut o: Op, version: u64) -> Op {
        o.version = Some(version);
        o
    }

    #[test]
    fn versions_and_conditional_updates_follow_the_model() {
        let good = [
            versioned(op(1, Call::Create(1), Ret::Created, 0, Some(1)), 1),
            versioned(op(1, Call::UpdateIf(2, 1), Ret::Updated, 2, Some(3)), 2),
            op(1, Call::UpdateIf(3, 1), Ret::Mismatch, 4, Some(5)),
            versioned(
                op(1, Call::ReadConsistent, Ret::Read(Some(2)), 6, Some(7)),
                2,
            ),
            versioned(op(1, Call::Update(4), Ret::Updated, 8, Some(9)), 3),
        ];
        assert!(lin(&good));
        // An update applied twice (a retry that de-duplication missed) skips a version.
        let mut twice = good.to_vec();
        twice[4].version = Some(4);
        assert!(!lin(&twice));
        // A read that names a version the value never had.
        let mut wrong = good.to_vec();
        wrong[3].version = Some(1);
        assert!(!lin(&wrong));
        // If-Match of the current version must not be refused, nor a stale one applied.
        let refused = [
            versioned(op(1, Call::Create(1), Ret::Created, 0, Some(1)), 1),
            op(1, Call::UpdateIf(2, 1), Ret::Mismatch, 2, Some(3)),
            versioned(
                op(1, Call::ReadConsistent, Ret::Read(Some(1)), 4, Some(5)),
                1,
            ),
        ];
        assert!(!lin(&refused));
        let applied = [
            versioned(op(1, Call::Create(1), Ret::Created, 0, Some(1)), 1),
            versioned(op(1, Call::Update(2), Ret::Updated, 2, Some(3)), 2),
            versioned(op(1, Call::UpdateIf(3, 1), Ret::Updated, 4, Some(5)), 3),
            versioned(
                op(1, Call::ReadConsistent, Ret::Read(Some(3)), 6, Some(7)),
                3,
            ),
        ];
        assert!(!lin(&applied));
        let mut unconditional = applied.to_vec();
        unconditional[2].call = Call::Update(3);
        assert!(lin(&unconditional));
        // An unknown conditional update may have applied (when its version matched) or not.
        let open = [
            versioned(op(1, Call::Create(1), Ret::Created, 0, Some(1)), 1),
            op(2, Call::UpdateIf(2, 1), Ret::Unknown, 2, None),
            versioned(
                op(1, Call::ReadConsistent, Ret::Read(Some(2)), 6, Some(7)),
                2,
            ),
        ];
        assert!(lin(&open));
        let mut stale_if = open.to_vec();
        stale_if[1].call = Call::UpdateIf(2, 5);
        assert!(!lin(&stale_if));
    }

    #[test]
    fn a_consistent_read_of_an_overwritten_value_is_not_linearizable() {
        let ops = [
            op(1, Call::Create(1), Ret::Created, 0, Some(1)),
            op(1, Call::Update(2), Ret::Updated, 2, Some(3)),
            op(2, Call::ReadConsistent, Ret::Read(Some(1)), 4, Some(5)),
        ];
        assert_eq!(check_linearizable(&ops, &[]).len(), 1);
        // The same answer from a local read is left to the staleness bound.
        let mut local = ops.to_vec();
        local[2].call = Call::Read;
        assert!(check_linearizable(&local, &[]).is_empty());
    }

    #[test]
    fn lost_writes_are_flagged() {
        let ops = [
            op(1, Call::Create(1), Ret::Created, 0, Some(1)),
            op(1, Call::Update(2), Ret::Updated, 2, Some(3)),
        ];
        let mut finals = BTreeMap::new();
        finals.insert("c".to_string(), Some(2));
        assert!(check_lost(&ops, &finals).is_empty());
        finals.insert("c".to_string(), Some(1));
        assert_eq!(check_lost(&ops, &finals).len(), 1);
        finals.insert("c".to_string(), None);
        assert_eq!(check_lost(&ops, &finals).len(), 1);
        // With a concurrent unknown change, either state may be final.
        let mut open = ops.to_vec();
        open.push(op(2, Call::Delete, Ret::Unknown, 2, None));
        assert!(check_lost(&open, &finals).is_empty());
    }

    #[test]
    fn phantom_values_are_flagged() {
        let mut ops = vec![
            op(1, Call::Create(1), Ret::Created, 0, Some(1)),
            op(2, Call::Read, Ret::Read(Some(1)), 2, Some(3)),
        ];
        assert!(check_phantoms(&ops).is_empty());
        ops.push(op(2, Call::Read, Ret::Read(Some(7)), 4, Some(5)));
        assert_eq!(check_phantoms(&ops).len(), 1);
        // A refused write wrote nothing: a value only it carried is a phantom too.
        ops.push(op(1, Call::Create(7), Ret::Exists, 0, Some(1)));
        ops.push(op(1, Call::UpdateIf(7, 9), Ret::Mismatch, 0, Some(1)));
        assert_eq!(check_phantoms(&ops).len(), 1);
        ops.push(op(1, Call::Update(7), Ret::Unknown, 0, None));
        assert!(check_phantoms(&ops).is_empty());
    }

    #[test]
    fn reads_past_the_staleness_bound_are_flagged() {
        let quiet = |a: u64, _: u64| a;
        let mut ops = vec![
            op(1, Call::Create(1), Ret::Created, 0, Some(10)),
            op(1, Call::Delete, Ret::Deleted, 20, Some(30)),
            // Within the bound (100) of the delete: the old value may still be served.
            op(2, Call::Read, Ret::Read(Some(1)), 50, Some(51)),
            op(2, Call::Read, Ret::Read(None), 200, Some(201)),
        ];
        assert_eq!(check_stale(&ops, 100, quiet), (vec![], 1));
        // Served 170 after the delete completed: too late.
        ops.push(op(2, Call::Read, Ret::Read(Some(1)), 200, Some(201)));
        assert_eq!(check_stale(&ops, 100, quiet).0.len(), 1);
        // Unless a fault was in force meanwhile, and ended within the bound of the read...
        let fault_until =
            |end: u64| move |a: u64, b: u64| if a <= end && b >= 40 { end.max(a) } else { a };
        assert_eq!(check_stale(&ops, 100, fault_until(150)), (vec![], 0));
        // ...but not one that ended more than the bound before it.
        assert_eq!(check_stale(&ops, 100, fault_until(60)).0.len(), 1);
        // "No such link" long after the create was acknowledged.
        let missing = [
            op(1, Call::Create(1), Ret::Created, 0, Some(10)),
            op(2, Call::Read, Ret::Read(None), 500, Some(501)),
        ];
        assert_eq!(check_stale(&missing, 100, quiet).0.len(), 1);
    }

    fn redirect(tag: u64, node: usize, ret: Ret, complete: Option<u64>) -> Op {
        let mut o = op(900, Call::Read, ret, 0, complete);
        (o.redirect, o.tag, o.node) = (true, Some(tag), node);
        o
    }

    #[test]
    fn every_acknowledged_redirect_has_its_click() {
        let ops = [
            redirect(1, 1, Ret::Read(Some(5)), Some(100)),
            redirect(2, 2, Ret::Read(Some(5)), Some(100)),
            redirect(3, 1, Ret::Read(None), Some(100)),
            redirect(4, 2, Ret::Unknown, None),
            redirect(5, 1, Ret::Read(Some(5)), Some(5_000)),
        ];
        let clicks = |tags: &[(u64, u64)]| -> Clicks {
            tags.iter()
                .map(|&(t, n)| (t, ("c".to_string(), n)))
                .collect()
        };
        let all = clicks(&[(1, 1), (2, 1), (5, 1)]);
        let good = account_clicks(&ops, &all, &[], 1000);
        assert_eq!((good.acknowledged, good.missing.len()), (3, 0));
        assert!(good.wrong.is_empty());
        // An unknown outcome may have counted.
        let with_unknown = clicks(&[(1, 1), (2, 1), (4, 1), (5, 1)]);
        assert!(account_clicks(&ops, &with_unknown, &[], 1000)
            .wrong
            .is_empty());
        // Tag 2 lost: node 2 crashed 500 after answering it (within the window), or not.
        let lost = clicks(&[(1, 1), (5, 1)]);
        let crash = account_clicks(&ops, &lost, &[(2, 600)], 1000);
        assert_eq!((crash.lost_to_crashes, crash.missing.len()), (1, 0));
        assert_eq!(
            account_clicks(&ops, &lost, &[(2, 5_000)], 1000).missing,
            [2]
        );
        assert_eq!(account_clicks(&ops, &lost, &[(1, 600)], 1000).missing, [2]);
        // The answer reached the client just after the crash was recorded: it was sent
        // before.
        assert_eq!(
            account_clicks(&ops, &lost, &[(2, 50)], 1000).lost_to_crashes,
            1
        );
        let mut later = ops.to_vec();
        later[1].invoke = 60;
        assert_eq!(account_clicks(&later, &lost, &[(2, 50)], 1000).missing, [2]);
        // Counted twice, counted for a 404, for a tag never answered, for another code.
        for wrong in [
            clicks(&[(1, 2), (2, 1), (5, 1)]),
            clicks(&[(1, 1), (2, 1), (3, 1), (5, 1)]),
            clicks(&[(1, 1), (2, 1), (5, 1), (77, 1)]),
        ] {
            assert_eq!(account_clicks(&ops, &wrong, &[], 1000).wrong.len(), 1);
        }
        let mut other = all.clone();
        other.insert(1, ("d".to_string(), 1));
        assert_eq!(account_clicks(&ops, &other, &[], 1000).wrong.len(), 1);
    }
}
