//! The rate-limit middleware on the public API: identifies the client, asks the limiter
//! (`crate::ratelimit`, which knows nothing of HTTP), and answers with `X-RateLimit-*`
//! headers (and the IETF draft's `RateLimit` and `RateLimit-Policy`), a 429 with `Retry-After`, or a 401 for a credential that is not valid. Its state
//! is the limiter alone.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::ApiError;
use crate::config::policy::Policy;
use crate::metrics::metrics;
use crate::ratelimit::bucket::Verdict;
use crate::ratelimit::identity::Identity;
use crate::ratelimit::{Outcome, RateLimiter};

/// The body of a 429.
#[derive(Debug, Serialize, ToSchema)]
pub struct RateLimited {
    /// Always `rate_limited`.
    pub error: &'static str,
    /// What happened and when to try again.
    pub message: String,
    /// The policy that refused: `per-ip`, `per-user` or `global`.
    pub policy: &'static str,
    /// Seconds until a request could pass (also in `Retry-After`).
    pub retry_after_seconds: u64,
}

/// The endpoint name of a route, as used in policies, keys and metrics.
pub fn endpoint_name(method: &Method, path: &str) -> String {
    match (method.as_str(), path) {
        ("POST", "/prime-check") => "prime-check".into(),
        ("GET", "/prime-check/{id}") => "prime-check-status".into(),
        ("GET", "/prime-check-list") => "prime-check-list".into(),
        (_, other) => other
            .trim_start_matches('/')
            .replace(['/', '{', '}'], "-")
            .trim_end_matches('-')
            .to_string(),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The policy as `RateLimit-Policy` names it (draft-ietf-httpapi-ratelimit-headers):
/// `"<name>";q=<burst>;w=<seconds>`, the quota a full bucket holds and the seconds the
/// sustained rate takes to grant that many.
fn policy_field(policy: &Policy) -> String {
    let per = policy.per.as_secs_f64();
    let window = (f64::from(policy.burst) * per / f64::from(policy.limit.max(1))).ceil();
    format!(
        "\"{}\";q={};w={}",
        policy.scope.policy_name(),
        policy.burst,
        (window as u64).max(1)
    )
}

/// The `X-RateLimit-*` headers of seed §4.2.3, and the same numbers in the IETF draft's
/// `RateLimit-Policy` and `RateLimit` (`r`: remaining; `t`: seconds until the bucket is
/// full, the `X-RateLimit-Reset` instant as a delay).
fn set_headers(headers: &mut HeaderMap, policy: &Policy, verdict: &Verdict) {
    let reset_in = verdict.reset_after_ms.div_ceil(1000);
    headers.insert("x-ratelimit-limit", HeaderValue::from(policy.burst));
    headers.insert(
        "x-ratelimit-remaining",
        HeaderValue::from(verdict.remaining),
    );
    headers.insert(
        "x-ratelimit-reset",
        HeaderValue::from(unix_now() + reset_in),
    );
    headers.insert(
        "x-ratelimit-policy",
        HeaderValue::from_static(policy.scope.policy_name()),
    );
    if let Ok(v) = HeaderValue::from_str(&policy_field(policy)) {
        headers.insert("ratelimit-policy", v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!(
        "\"{}\";r={};t={reset_in}",
        policy.scope.policy_name(),
        verdict.remaining
    )) {
        headers.insert("ratelimit", v);
    }
}

/// Limits one request (a `route_layer` on the public routes); no limiter: unlimited.
pub async fn limit(
    State(limiter): State<Option<Arc<RateLimiter>>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(limiter) = limiter else {
        return next.run(request).await;
    };
    let t0 = Instant::now();
    let path = request.extensions().get::<MatchedPath>().map_or_else(
        || request.uri().path().to_string(),
        |p| p.as_str().to_string(),
    );
    let endpoint = endpoint_name(request.method(), &path);
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    let m = metrics();
    let hit = |result: &str, policy: &str| {
        m.rate_limit_hits
            .with_label_values(&[endpoint.as_str(), result, policy])
            .inc();
    };
    let identity = limiter
        .identity
        .resolve(peer, request.headers(), unix_now() as i64);
    let outcome = match identity {
        Err(e) => {
            hit("rejected", "credentials");
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                e.to_string(),
            )
            .into_response();
        }
        Ok(Identity::Bypass(bypass)) => {
            hit("bypass", bypass.name());
            return next.run(request).await;
        }
        Ok(Identity::Client { ip, user }) => limiter.check(&endpoint, ip, user.as_deref()).await,
    };
    m.rate_limit_check_duration
        .with_label_values(&[endpoint.as_str()])
        .observe(t0.elapsed().as_secs_f64());
    match outcome {
        Outcome::Unlimited => next.run(request).await,
        Outcome::Unavailable { policy } => {
            hit("unavailable", policy.scope.policy_name());
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "rate_limiter_unavailable",
                format!(
                    "the {} limit of {endpoint} is kept in Redis, which does not answer, and it is configured to refuse requests meanwhile; try again shortly",
                    policy.scope.policy_name()
                ),
            )
            .retry_after(1)
            .into_response()
        }
        Outcome::Decided {
            policy, verdict, ..
        } if verdict.allowed => {
            hit("allowed", policy.scope.policy_name());
            let mut response = next.run(request).await;
            set_headers(response.headers_mut(), &policy, &verdict);
            response
        }
        Outcome::Decided {
            policy, verdict, ..
        } => {
            hit("limited", policy.scope.policy_name());
            let retry_after = verdict.retry_after_ms.div_ceil(1000).max(1);
            let body = RateLimited {
                error: "rate_limited",
                message: format!(
                    "too many requests to {endpoint}: the {} limit ({policy}) is used up; retry in {retry_after} s",
                    policy.scope.policy_name(),
                ),
                policy: policy.scope.policy_name(),
                retry_after_seconds: retry_after,
            };
            let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
            let headers = response.headers_mut();
            set_headers(headers, &policy, &verdict);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_names() {
        assert_eq!(endpoint_name(&Method::POST, "/prime-check"), "prime-check");
        assert_eq!(
            endpoint_name(&Method::GET, "/prime-check/{id}"),
            "prime-check-status"
        );
        assert_eq!(
            endpoint_name(&Method::GET, "/prime-check-list"),
            "prime-check-list"
        );
        assert_eq!(endpoint_name(&Method::GET, "/things/{id}"), "things--id");
    }

    #[test]
    fn the_ietf_policy_is_the_burst_and_the_time_the_rate_takes_to_grant_it() {
        use std::time::Duration;

        use crate::config::policy::Scope;
        let p = Policy::new(Scope::Ip, 60, Duration::from_secs(60));
        assert_eq!(policy_field(&p), "\"per-ip\";q=60;w=60");
        let p = Policy {
            burst: 3,
            ..Policy::new(Scope::User, 2, Duration::from_secs(1))
        };
        assert_eq!(policy_field(&p), "\"per-user\";q=3;w=2");
    }
}
