//! Rate limits on the API (`/v1/...` and `/admin/...`), with governor's GCRA limiters:
//! per API key for requests that present a known key, per client address for the rest.
//! Redirects are limited per client address only when configured (`redirect_rate_per_ip`:
//! a limiter's map is shared between cores, which the redirect path otherwise avoids);
//! health, readiness and metrics never.
//!
//! A request over its limit is answered 429 with `Retry-After`; every limited response
//! carries the IETF draft's `RateLimit-Policy` and `RateLimit` headers
//! (draft-ietf-httpapi-ratelimit-headers): the policy's quota `q` over its window `w`
//! seconds, and what remains `r` with the seconds `t` until the quota is whole again.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::error::ApiError;
use crate::AppState;

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock, StateInformationMiddleware>;

/// How many requests per second, with bursts of `burst_seconds` seconds' worth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Requests per second, on average.
    pub per_second: u32,
    /// A client may send this many seconds' worth at once.
    pub burst_seconds: u32,
}

/// The API's limits; `None` turns one off.
#[derive(Clone, Debug, Default)]
pub struct RateConfig {
    /// For requests with a known API key, per key.
    pub per_key: Option<Rate>,
    /// For requests without one (or with an unknown one), per client address.
    pub per_ip: Option<Rate>,
    /// Redirects per client address; `None` (the default) leaves redirects unlimited.
    pub redirects_per_ip: Option<Rate>,
}

/// One limiter and the policy it announces.
struct Limit<K: std::hash::Hash + Eq + Clone> {
    name: &'static str,
    rate: Rate,
    limiter: Keyed<K>,
    checks: AtomicU64,
}

/// Addresses (or keys) kept before idle ones are forgotten: a client that has been idle
/// for a whole burst is as good as new, so forgetting it changes nothing.
const KEEP: usize = 10_000;

impl<K: std::hash::Hash + Eq + Clone> Limit<K> {
    fn new(name: &'static str, rate: Rate) -> Option<Self> {
        let per_second = NonZeroU32::new(rate.per_second)?;
        let burst = NonZeroU32::new(rate.per_second.saturating_mul(rate.burst_seconds.max(1)))?;
        Some(Self {
            name,
            rate,
            limiter: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst))
                .with_middleware::<StateInformationMiddleware>(),
            checks: AtomicU64::new(0),
        })
    }

    fn burst(&self) -> u32 {
        self.rate
            .per_second
            .saturating_mul(self.rate.burst_seconds.max(1))
    }

    /// `RateLimit-Policy`: the quota over its window.
    fn policy(&self) -> HeaderValue {
        let value = format!(
            "\"{}\";q={};w={}",
            self.name,
            self.burst(),
            self.rate.burst_seconds.max(1)
        );
        HeaderValue::from_str(&value).expect("ASCII")
    }

    /// `RateLimit`: what remains, and the seconds until the quota is whole.
    fn state(&self, remaining: u32) -> HeaderValue {
        let used = self.burst().saturating_sub(remaining);
        let reset = used.div_ceil(self.rate.per_second.max(1));
        HeaderValue::from_str(&format!("\"{}\";r={remaining};t={reset}", self.name)).expect("ASCII")
    }

    /// Counts a request of `key`: the remaining burst, or how long to wait.
    fn check(&self, key: &K) -> Result<u32, Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % 4096 == 0 && self.limiter.len() > KEEP {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        match self.limiter.check_key(key) {
            Ok(snapshot) => Ok(snapshot.remaining_burst_capacity()),
            Err(not_until) => Err(not_until.wait_time_from(DefaultClock::default().now())),
        }
    }
}

/// The limiters of one node's API.
pub struct RateLimits {
    per_key: Option<Limit<String>>,
    per_ip: Option<Limit<IpAddr>>,
    redirects_per_ip: Option<Limit<IpAddr>>,
}

impl RateLimits {
    /// Limiters for `config`.
    pub fn new(config: &RateConfig) -> Self {
        Self {
            per_key: config.per_key.and_then(|r| Limit::new("per-key", r)),
            per_ip: config.per_ip.and_then(|r| Limit::new("per-address", r)),
            redirects_per_ip: config
                .redirects_per_ip
                .and_then(|r| Limit::new("redirects-per-address", r)),
        }
    }
}

const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// A request the limits let through, with the headers its response carries.
pub struct Allowed {
    policy: HeaderValue,
    state: HeaderValue,
}

impl Allowed {
    /// Adds `RateLimit-Policy` and `RateLimit` to `response`.
    pub fn annotate(self, response: &mut Response) {
        let headers = response.headers_mut();
        headers.insert(RATELIMIT_POLICY, self.policy);
        headers.insert(RATELIMIT, self.state);
    }
}

/// What the limits say of a request.
pub enum Verdict {
    /// No limit applies.
    Unlimited,
    /// Within its limit: the response carries these headers.
    Allowed(Allowed),
    /// Over it: answer this 429.
    Refused(Response),
}

/// Counts a request against its key's or its address's limit.
pub fn check(state: &AppState, request: &Request) -> Verdict {
    let path = request.uri().path();
    let limits = &state.limits;
    if !(path.starts_with("/v1/") || path.starts_with("/admin/")) {
        // A redirect (any other path but health, readiness and metrics), limited only if
        // the operator asked for it.
        let ops = matches!(path, "/healthz" | "/readyz" | "/metrics");
        return match &limits.redirects_per_ip {
            Some(limit) if !ops => verdict(limit.check(&client_ip(request)), limit, "address"),
            _ => Verdict::Unlimited,
        };
    }
    let key = crate::auth::bearer(request.headers())
        .and_then(|k| state.service.authenticate(k))
        .map(|record| record.id);
    if let Some(id) = key {
        return match &limits.per_key {
            Some(limit) => verdict(limit.check(&id), limit, "key"),
            None => Verdict::Unlimited,
        };
    }
    match &limits.per_ip {
        Some(limit) => verdict(limit.check(&client_ip(request)), limit, "address"),
        None => Verdict::Unlimited,
    }
}

/// The address the request came from.
fn client_ip(request: &Request) -> IpAddr {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip())
}

fn verdict<K: std::hash::Hash + Eq + Clone>(
    checked: Result<u32, Duration>,
    limit: &Limit<K>,
    by: &'static str,
) -> Verdict {
    match checked {
        Ok(remaining) => Verdict::Allowed(Allowed {
            policy: limit.policy(),
            state: limit.state(remaining),
        }),
        Err(wait) => {
            metrics::counter!("http_rate_limited_total", "by" => by).increment(1);
            let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
            let mut response = ApiError::too_many_requests(format!(
                "too many requests for this {by}: at most {} per second, in bursts of {}; retry in {seconds} s",
                limit.rate.per_second,
                limit.burst()
            ))
            .into_response();
            let headers = response.headers_mut();
            headers.insert(axum::http::header::RETRY_AFTER, HeaderValue::from(seconds));
            headers.insert(RATELIMIT_POLICY, limit.policy());
            headers.insert(
                RATELIMIT,
                HeaderValue::from_str(&format!("\"{}\";r=0;t={seconds}", limit.name))
                    .expect("ASCII"),
            );
            Verdict::Refused(response)
        }
    }
}
