//! The request metrics, kept per thread and added up when `/metrics` is scraped.
//!
//! The recorder's counters and histograms are one atomic location each, shared by every
//! worker: each request's five updates (two counters, two duration samples, the status
//! count) moved those cache lines between cores. Here each thread counts into its own
//! stripe, under a lock only the scrape also takes (every few seconds, briefly), and
//! histograms are bucket counts, so a stripe's size is bounded by the routes and statuses
//! it has seen, however many requests it counts. The families written here are
//! `cache_requests_total`, `cache_hits_total`, `redirect_duration_seconds`,
//! `http_requests_total{route,status}` and `http_request_duration_seconds{route}`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Upper bounds of `redirect_duration_seconds`' buckets: fine below a millisecond, where
/// redirects live.
pub const REDIRECT_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
];

/// Upper bounds of `http_request_duration_seconds`' buckets: every route, from redirects to
/// bulk writes and stats that wait for other nodes.
pub const REQUEST_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A histogram's counts: per bucket (not cumulative; above the last bound only in
/// `count`), their sum and their number.
#[derive(Clone, Debug, Default, PartialEq)]
struct Histogram {
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn record(&mut self, bounds: &[f64], seconds: f64) {
        if self.buckets.len() != bounds.len() {
            self.buckets.resize(bounds.len(), 0);
        }
        let at = bounds.partition_point(|&b| b < seconds);
        if let Some(bucket) = self.buckets.get_mut(at) {
            *bucket += 1;
        }
        self.sum += seconds;
        self.count += 1;
    }

    fn add(&mut self, other: &Histogram) {
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
        self.sum += other.sum;
        self.count += other.count;
    }
}

/// One route's counts.
#[derive(Clone, Debug, Default, PartialEq)]
struct Route {
    duration: Histogram,
    /// By status; a handful per route.
    statuses: Vec<(u16, u64)>,
}

/// What one thread has counted, or (added up) all of them.
#[derive(Clone, Debug, Default, PartialEq)]
struct Tally {
    cache_requests: u64,
    cache_hits: u64,
    redirect: Histogram,
    /// By route template (bounded by the router's templates, and "unmatched").
    routes: HashMap<Box<str>, Route, foldhash::fast::RandomState>,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.cache_requests += other.cache_requests;
        self.cache_hits += other.cache_hits;
        self.redirect.add(&other.redirect);
        for (name, theirs) in &other.routes {
            let mine = self.routes.entry(name.clone()).or_default();
            mine.duration.add(&theirs.duration);
            for &(status, n) in &theirs.statuses {
                match mine.statuses.iter_mut().find(|(s, _)| *s == status) {
                    Some((_, count)) => *count += n,
                    None => mine.statuses.push((status, n)),
                }
            }
        }
    }
}

/// One thread's tally, on cache lines of its own.
#[repr(align(128))]
#[derive(Default)]
struct Stripe(Mutex<Tally>);

/// Every thread's stripe, for the scrape. Locked when a thread counts its first request
/// and at each scrape; a stripe outlives its thread, so no count is lost when the runtime
/// retires one.
static STRIPES: Mutex<Vec<Arc<Stripe>>> = Mutex::new(Vec::new());

thread_local! {
    static MINE: Arc<Stripe> = {
        let stripe = Arc::new(Stripe::default());
        STRIPES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(stripe.clone());
        stripe
    };
}

fn with_mine(count: impl FnOnce(&mut Tally)) {
    MINE.with(|stripe| count(&mut stripe.0.lock().unwrap_or_else(PoisonError::into_inner)));
}

/// Counts one redirect that looked its code up: answered from this node's memory (`hit`),
/// or after asking another node; and how long it took.
pub fn redirect(hit: bool, elapsed: Duration) {
    with_mine(|tally| {
        tally.cache_requests += 1;
        tally.cache_hits += u64::from(hit);
        tally
            .redirect
            .record(REDIRECT_BUCKETS, elapsed.as_secs_f64());
    });
}

/// Counts one request of `route` (its template) answered with `status`.
pub fn request(route: &str, status: u16, elapsed: Duration) {
    with_mine(|tally| {
        let entry = match tally.routes.get_mut(route) {
            Some(entry) => entry,
            None => tally.routes.entry(route.into()).or_default(),
        };
        entry
            .duration
            .record(REQUEST_BUCKETS, elapsed.as_secs_f64());
        match entry.statuses.iter_mut().find(|(s, _)| *s == status) {
            Some((_, n)) => *n += 1,
            None => entry.statuses.push((status, 1)),
        }
    });
}

/// Every stripe added up.
fn total() -> Tally {
    let stripes: Vec<Arc<Stripe>> = STRIPES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let mut total = Tally::default();
    for stripe in stripes {
        let mine = stripe
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        total.add(&mine);
    }
    total
}

/// Appends the families this module keeps to `out`, in the Prometheus text format.
pub fn render(out: &mut String) {
    write_tally(out, &total());
}

fn write_tally(out: &mut String, tally: &Tally) {
    family(
        out,
        "cache_requests_total",
        "counter",
        "Redirects that looked their code up (this node's replica, the near cache, or another node).",
    );
    let _ = writeln!(out, "cache_requests_total {}", tally.cache_requests);
    family(
        out,
        "cache_hits_total",
        "counter",
        "Redirects answered from this node's memory: its replica or the near cache.",
    );
    let _ = writeln!(out, "cache_hits_total {}", tally.cache_hits);
    family(
        out,
        "redirect_duration_seconds",
        "histogram",
        "Time to answer a redirect, in the handler.",
    );
    write_histogram(
        out,
        "redirect_duration_seconds",
        "",
        REDIRECT_BUCKETS,
        &tally.redirect,
    );

    let mut routes: Vec<(&str, &Route)> = tally.routes.iter().map(|(k, v)| (&**k, v)).collect();
    routes.sort_unstable_by_key(|(name, _)| *name);
    family(
        out,
        "http_requests_total",
        "counter",
        "HTTP requests answered, by route template and status.",
    );
    for (name, route) in &routes {
        let mut statuses = route.statuses.clone();
        statuses.sort_unstable();
        for (status, n) in statuses {
            let _ = writeln!(
                out,
                "http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                escaped(name)
            );
        }
    }
    family(
        out,
        "http_request_duration_seconds",
        "histogram",
        "Time to answer an HTTP request, by route template.",
    );
    for (name, route) in &routes {
        let label = format!("route=\"{}\"", escaped(name));
        write_histogram(
            out,
            "http_request_duration_seconds",
            &label,
            REQUEST_BUCKETS,
            &route.duration,
        );
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// `histogram`'s lines, with `labels` (`a="b",...`, or empty) before `le`.
fn write_histogram(out: &mut String, name: &str, labels: &str, bounds: &[f64], h: &Histogram) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut cumulative = 0;
    for (i, bound) in bounds.iter().enumerate() {
        cumulative += h.buckets.get(i).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
        );
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", h.count);
    let braces = |s: &str| {
        if s.is_empty() {
            String::new()
        } else {
            format!("{{{s}}}")
        }
    };
    let _ = writeln!(out, "{name}_sum{} {}", braces(labels), h.sum);
    let _ = writeln!(out, "{name}_count{} {}", braces(labels), h.count);
}

/// A label value as the text format needs it.
fn escaped(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines()
            .find(|l| l.starts_with(prefix) && l[prefix.len()..].starts_with(' '))
            .map(|l| &l[prefix.len() + 1..])
    }

    #[test]
    fn a_sample_lands_in_the_first_bucket_that_holds_it() {
        let mut h = Histogram::default();
        for seconds in [0.00001, 0.00005, 0.00006, 2.0] {
            h.record(REDIRECT_BUCKETS, seconds);
        }
        // 0.00001 and 0.00005 (bounds are inclusive) in the first, 0.00006 in the second,
        // 2 s above every bound: only in the count.
        assert_eq!(&h.buckets[..3], &[2, 1, 0]);
        assert_eq!(h.buckets.iter().sum::<u64>(), 3);
        assert_eq!(h.count, 4);
        let mut out = String::new();
        write_histogram(&mut out, "d", "", REDIRECT_BUCKETS, &h);
        assert_eq!(line(&out, r#"d_bucket{le="0.00005"}"#), Some("2"));
        assert_eq!(line(&out, r#"d_bucket{le="0.0001"}"#), Some("3"));
        assert_eq!(line(&out, r#"d_bucket{le="1"}"#), Some("3"));
        assert_eq!(line(&out, r#"d_bucket{le="+Inf"}"#), Some("4"));
        assert_eq!(line(&out, "d_count"), Some("4"));
    }

    #[test]
    fn the_scrape_adds_up_every_threads_stripe() {
        // Other tests in this binary may count too: compare before and after.
        let before = total();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                std::thread::spawn(move || {
                    for i in 0..1000u64 {
                        redirect(i % 2 == 0, Duration::from_micros(100 * t + 1));
                        request(
                            "/{code}",
                            if i % 10 == 0 { 404 } else { 302 },
                            Duration::ZERO,
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // The threads have ended; their stripes still count.
        let after = total();
        assert_eq!(after.cache_requests - before.cache_requests, 4000);
        assert_eq!(after.cache_hits - before.cache_hits, 2000);
        assert_eq!(after.redirect.count - before.redirect.count, 4000);
        let status = |t: &Tally, s: u16| {
            t.routes.get("/{code}").map_or(0, |r| {
                r.statuses
                    .iter()
                    .find(|(x, _)| *x == s)
                    .map_or(0, |(_, n)| *n)
            })
        };
        assert_eq!(status(&after, 302) - status(&before, 302), 3600);
        assert_eq!(status(&after, 404) - status(&before, 404), 400);
        let mut out = String::new();
        render(&mut out);
        let count: u64 = line(&out, r#"http_requests_total{route="/{code}",status="302"}"#)
            .unwrap()
            .parse()
            .unwrap();
        assert!(count >= 3600, "{out}");
        assert!(out.contains("# TYPE redirect_duration_seconds histogram"));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut tally = Tally::default();
        tally.routes.insert(
            "a\"b\\c\n".into(),
            Route {
                duration: Histogram::default(),
                statuses: vec![(200, 1)],
            },
        );
        let mut out = String::new();
        write_tally(&mut out, &tally);
        assert!(
            out.contains(r#"http_requests_total{route="a\"b\\c\n",status="200"} 1"#),
            "{out}"
        );
    }
}
