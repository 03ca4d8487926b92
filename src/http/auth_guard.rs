//! Failed authentication, limited per client address: a layer on the whole router.
//!
//! A request that presents credentials (a bearer token, an `X-Service-Key`, or a
//! `POST /login`) and is answered 401 costs its client address one token of a
//! bucket ([`AuthFailures`]: `PRIMED_AUTH_FAILURES_PER_MINUTE`, as many at once). With the
//! bucket empty, every request of that address that presents credentials is answered 429
//! with `Retry-After` before they are checked, so guessing an admin token or a session costs
//! a minute per handful of guesses. Requests without credentials are never held up.
//!
//! Failures are logged once per address per minute, with their count, instead of once each
//! (which made the log a flooding vector too), and counted in `auth_failures_total`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use crate::metrics::metrics;

/// Addresses tracked at most; past it, addresses whose bucket has refilled are forgotten.
const MAX_TRACKED: usize = 10_000;

/// How often one address's failures are logged.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Failed authentications per client address: a token bucket of `per_minute` tokens,
/// refilled at `per_minute` a minute.
#[derive(Debug)]
pub struct AuthFailures {
    per_minute: u32,
    clients: Mutex<HashMap<IpAddr, Client>>,
}

#[derive(Debug)]
struct Client {
    tokens: f64,
    at: Instant,
    unlogged: u64,
    logged_at: Option<Instant>,
}

impl AuthFailures {
    /// A limiter allowing `per_minute` failures a minute (and as many at once) per address.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute: per_minute.max(1),
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn refill(&self, c: &mut Client, now: Instant) {
        let per_second = f64::from(self.per_minute) / 60.0;
        let earned = now.saturating_duration_since(c.at).as_secs_f64() * per_second;
        c.tokens = (c.tokens + earned).min(f64::from(self.per_minute));
        c.at = now;
    }

    /// `None` if `ip` may try to authenticate now; else how long until it may.
    pub fn blocked_for(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let c = clients.get_mut(&ip)?;
        self.refill(c, now);
        if c.tokens >= 1.0 {
            return None;
        }
        let per_second = f64::from(self.per_minute) / 60.0;
        Some(Duration::from_secs_f64((1.0 - c.tokens) / per_second))
    }

    /// Records a failure of `ip`; returns the failures to log now (with this one), if it is
    /// time to log this address again.
    pub fn failed(&self, ip: IpAddr, now: Instant) -> Option<u64> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if clients.len() >= MAX_TRACKED && !clients.contains_key(&ip) {
            let full = f64::from(self.per_minute);
            let per_second = full / 60.0;
            clients.retain(|_, c| {
                let earned = now.saturating_duration_since(c.at).as_secs_f64() * per_second;
                c.tokens + earned < full
            });
        }
        let per_minute = f64::from(self.per_minute);
        let c = clients.entry(ip).or_insert(Client {
            tokens: per_minute,
            at: now,
            unlogged: 0,
            logged_at: None,
        });
        self.refill(c, now);
        c.tokens = (c.tokens - 1.0).max(0.0);
        c.unlogged += 1;
        let due = c
            .logged_at
            .is_none_or(|at| now.saturating_duration_since(at) >= LOG_EVERY);
        if due {
            c.logged_at = Some(now);
            Some(std::mem::take(&mut c.unlogged))
        } else {
            None
        }
    }
}

/// Whether the request presents credentials a guess could send: a bearer token, a service
/// key, or a login. Session cookies are not counted: a session id is 256 random bits, and
/// every open page of an operator whose session ended (a restart forgets sessions) polls
/// with its old cookie, which would lock that operator out of logging in again.
fn presents_credentials(request: &Request) -> bool {
    let h = request.headers();
    h.contains_key(header::AUTHORIZATION)
        || h.contains_key(crate::ratelimit::identity::SERVICE_KEY_HEADER)
        || (request.method() == Method::POST && request.uri().path() == "/login")
}

/// What the layer needs (a small state: the layer runs on every request).
#[derive(Clone)]
pub struct Guard {
    failures: Arc<AuthFailures>,
    trusted_proxies: Arc<Vec<ipnet::IpNet>>,
}

impl Guard {
    /// The guard of `state`'s failures, believing `X-Forwarded-For` from the rate limiter's
    /// trusted proxies.
    pub fn of(state: &AppState) -> Self {
        Self {
            failures: state.auth_failures.clone(),
            trusted_proxies: Arc::new(
                state
                    .limiter
                    .as_ref()
                    .map(|l| l.identity.trusted_proxies.clone())
                    .unwrap_or_default(),
            ),
        }
    }

    /// The client address: the peer, or what trusted proxies say it is.
    fn client_ip(&self, request: &Request) -> IpAddr {
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
        crate::ratelimit::identity::client_ip(peer, request.headers(), &self.trusted_proxies)
    }
}

/// The layer (see the module documentation).
pub async fn guard(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    if !presents_credentials(&request) {
        return next.run(request).await;
    }
    let failures = guard.failures.clone();
    let ip = guard.client_ip(&request);
    if let Some(wait) = failures.blocked_for(ip, Instant::now()) {
        metrics()
            .auth_failures
            .with_label_values(&["limited"])
            .inc();
        let seconds = u32::try_from(wait.as_secs().max(1)).unwrap_or(u32::MAX);
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_failed_authentications",
            format!(
                "too many failed authentications from this address; try again in {seconds} s with the right credentials"
            ),
        )
        .retry_after(seconds)
        .into_response();
    }
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    if response.status() == StatusCode::UNAUTHORIZED {
        metrics()
            .auth_failures
            .with_label_values(&["refused"])
            .inc();
        if let Some(count) = failures.failed(ip, Instant::now()) {
            tracing::warn!(
                target: "audit",
                ip = %ip,
                failures = count,
                last_path = %path,
                "failed authentication (counted once a minute per address; more than PRIMED_AUTH_FAILURES_PER_MINUTE a minute are refused with 429)"
            );
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_failures_blocks_the_address_until_it_refills() {
        let f = AuthFailures::new(6);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!(f.blocked_for(ip, t0), None, "unknown addresses may try");
        assert_eq!(f.failed(ip, t0), Some(1), "the first failure is logged");
        for _ in 0..5 {
            assert_eq!(f.failed(ip, t0), None, "the next are counted, not logged");
        }
        let wait = f.blocked_for(ip, t0).map(|d| d.as_secs_f64());
        assert!(wait.is_some_and(|w| (9.0..=10.0).contains(&w)), "{wait:?}");
        assert_eq!(
            f.blocked_for(other, t0),
            None,
            "other addresses are not held up"
        );
        assert_eq!(f.blocked_for(ip, t0 + Duration::from_secs(10)), None);
        assert_eq!(
            f.failed(ip, t0 + Duration::from_secs(61)),
            Some(6),
            "a minute later the count since the last line is logged"
        );
    }

    #[test]
    fn the_table_of_addresses_is_bounded() {
        let f = AuthFailures::new(10);
        let t0 = Instant::now();
        for i in 0..MAX_TRACKED as u32 {
            f.failed(IpAddr::V4(Ipv4Addr::from(i)), t0);
        }
        let later = t0 + Duration::from_secs(120);
        f.failed(IpAddr::V4(Ipv4Addr::from(u32::MAX)), later);
        let n = f.clients.lock().unwrap().len();
        assert_eq!(n, 1, "refilled addresses are forgotten");
    }
}
