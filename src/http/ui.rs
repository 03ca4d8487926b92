//! The web pages the daemon serves itself, from assets embedded in the binary (nothing is
//! fetched from elsewhere at run time): `/`, the public page that submits a number and
//! follows the request to its result.
//!
//! Every answer of the daemon carries the security headers of [`security_headers`]: a
//! Content-Security-Policy that allows only the daemon's own scripts and styles (no inline
//! script), no framing, no MIME sniffing, no referrer.

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

const INDEX_HTML: &str = include_str!("ui/index.html");
const CHECK_JS: &str = include_str!("ui/check.js");
const STYLE_CSS: &str = include_str!("ui/style.css");
const LOGIN_HTML: &str = include_str!("ui/login.html");
const LOGIN_JS: &str = include_str!("ui/login.js");
const DLQ_HTML: &str = include_str!("ui/dlq.html");
const DLQ_JS: &str = include_str!("ui/dlq.js");
const ADMIN_HTML: &str = include_str!("ui/admin.html");
const ADMIN_JS: &str = include_str!("ui/admin.js");
const COMMON_JS: &str = include_str!("ui/common.js");

/// The policy of every answer.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Assets change with the binary; a short cache keeps upgrades visible.
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

fn page(body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /`: the public page.
pub async fn index() -> Response {
    page(INDEX_HTML)
}

/// `GET /login`: the operator login page.
pub async fn login_page() -> Response {
    page(LOGIN_HTML)
}

/// `GET /dlq/dashboard`: the DLQ dashboard (it sends visitors without a session to
/// `/login`; the data comes from the DLQ API).
pub async fn dlq_dashboard() -> Response {
    page(DLQ_HTML)
}

/// `GET /admin`: the live supervision tree, consumers, dependencies and worker health.
pub async fn admin_page() -> Response {
    page(ADMIN_HTML)
}

/// `GET /assets/common.js`: what the operator pages share.
pub async fn common_js() -> Response {
    asset("text/javascript; charset=utf-8", COMMON_JS)
}

/// `GET /assets/admin.js`
pub async fn admin_js() -> Response {
    asset("text/javascript; charset=utf-8", ADMIN_JS)
}

/// `GET /assets/login.js`
pub async fn login_js() -> Response {
    asset("text/javascript; charset=utf-8", LOGIN_JS)
}

/// `GET /assets/dlq.js`
pub async fn dlq_js() -> Response {
    asset("text/javascript; charset=utf-8", DLQ_JS)
}

/// `GET /assets/check.js`
pub async fn check_js() -> Response {
    asset("text/javascript; charset=utf-8", CHECK_JS)
}

/// `GET /assets/style.css`
pub async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

/// Adds the security headers to every answer.
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
    ] {
        headers
            .entry(name)
            .or_insert(HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_load_their_script_and_style_from_the_daemon_only() {
        for (html, scripts) in [
            (INDEX_HTML, &["check.js"][..]),
            (LOGIN_HTML, &["login.js"]),
            (DLQ_HTML, &["common.js", "dlq.js"]),
            (ADMIN_HTML, &["common.js", "admin.js"]),
        ] {
            let script = scripts[scripts.len() - 1];
            for s in scripts {
                assert!(html.contains(&format!(r#"<script src="/assets/{s}" defer></script>"#)));
            }
            assert!(html.contains(r#"href="/assets/style.css""#));
            // No inline script or style: the CSP would block them.
            assert_eq!(html.matches("<script").count(), scripts.len());
            assert!(!html.contains("<style"));
            assert!(!html.contains(" style=\""));
            let handler = html.split(" on").skip(1).any(|rest| {
                let name: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
                !name.is_empty() && rest[name.len()..].starts_with('=')
            });
            assert!(!handler, "no inline event handlers in {script}'s page");
            assert!(!html.contains("http://") && !html.contains("https://"));
        }
    }
}
