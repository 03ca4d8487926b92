//! The rate-limit middleware on the public API: identifies the client, asks the limiter
//! (`crate::ratelimit`, which knows nothing of HTTP), and answers with `X-RateLimit-*`
//! headers, a 429 with `Retry-After`, or a 401 for a credential that is not valid. Its state
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

fn set_headers(headers: &mut HeaderMap, policy: &Policy, verdict: &Verdict) {
    let reset = unix_now() + verdict.reset_after_ms.div_ceil(1000);
    headers.insert("x-ratelimit-limit", HeaderValue::from(policy.burst));
    headers.insert(
        "x-ratelimit-remaining",
        HeaderValue::from(verdict.remaining),
    );
    headers.insert("x-ratelimit-reset", HeaderValue::from(reset));
    headers.insert(
        "x-ratelimit-policy",
        HeaderValue::from_static(policy.scope.policy_name()),
    );
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
}
