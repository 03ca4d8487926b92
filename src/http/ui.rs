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

/// `GET /`: the public page.
pub async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX_HTML,
    )
        .into_response()
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
    fn the_page_loads_its_script_and_style_from_the_daemon_only() {
        assert!(INDEX_HTML.contains(r#"<script src="/assets/check.js" defer></script>"#));
        assert!(INDEX_HTML.contains(r#"href="/assets/style.css""#));
        // No inline script or style: the CSP would block them.
        assert_eq!(INDEX_HTML.matches("<script").count(), 1);
        assert!(!INDEX_HTML.contains("<style"));
        assert!(!INDEX_HTML.contains(" style=\""));
        assert!(!INDEX_HTML.contains("onclick"));
        assert!(!INDEX_HTML.contains("http://") && !INDEX_HTML.contains("https://"));
    }
}
