//! JSON errors with a stable `error` code and a message that says what to do.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
    retry_after: Option<u32>,
}

/// The JSON body of every error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable, machine-readable code, e.g. `invalid_number`.
    pub error: &'static str,
    /// What went wrong and what to do.
    pub message: String,
}

impl ApiError {
    /// An error with a status, code and message.
    pub fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                error,
                message: message.into(),
            },
            retry_after: None,
        }
    }

    /// Adds `Retry-After: seconds`.
    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The error code.
    pub fn code(&self) -> &'static str {
        self.body.error
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Makes every error answer the documented JSON: an error status whose body is not JSON
/// (axum's own 405 with an empty body, a plain-text rejection of a layer) is answered as
/// [`ApiError`] with the same status and headers (`Allow`, `Retry-After`), keeping a short
/// plain-text explanation as the message.
pub async fn json_errors(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = crate::metrics::method_label(request.method());
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| {
            String::from_utf8_lossy(&b)
                .trim()
                .chars()
                .take(300)
                .collect::<String>()
        })
        .unwrap_or_default();
    let (code, message) = match status {
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            format!(
                "this endpoint does not accept {method}; the Allow header lists what it accepts (see /openapi.json)"
            ),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "payload_too_large",
            "the body is larger than 1 MiB".to_string(),
        ),
        _ if !text.is_empty() => ("http_error", text),
        _ => (
            "http_error",
            format!(
                "{}; see /openapi.json for the API",
                status.canonical_reason().unwrap_or("the request failed")
            ),
        ),
    };
    let mut answer = ApiError::new(status, code, message).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            answer.headers_mut().append(name.clone(), value.clone());
        }
    }
    answer
}

/// Answer for routes that do not exist.
pub async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see /openapi.json for the API",
    )
}
