//! Operator sessions for the web pages: `POST /login` with an admin token and the
//! operator's name sets a session cookie (`HttpOnly`, `Secure`, `SameSite=Strict`); every
//! state-changing request made with that cookie must carry the session's CSRF token in
//! `X-CSRF-Token`. The admin and DLQ APIs accept either the cookie (pages) or
//! `Authorization: Bearer` (CLI, scripts; no CSRF, as no browser attaches it by itself).
//!
//! Sessions live in the daemon's memory: a restart logs everybody out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::ApiJson;

/// The session cookie's name.
pub const COOKIE: &str = "primed_session";
/// The header carrying the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts without a new login.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

/// One logged-in operator.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who.
    pub operator: String,
    /// The CSRF token of this session.
    pub csrf: String,
    expires: Instant,
}

/// The operator of a request authenticated by a session cookie (a request extension).
#[derive(Debug, Clone)]
pub struct Operator(pub String);

/// The live sessions.
#[derive(Clone, Default)]
pub struct Sessions(Arc<Mutex<HashMap<String, Session>>>);

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Sessions {
    fn create(&self, operator: &str) -> (String, Session) {
        let id = random_token();
        let session = Session {
            operator: operator.to_string(),
            csrf: random_token(),
            expires: Instant::now() + SESSION_TTL,
        };
        if let Ok(mut map) = self.0.lock() {
            let now = Instant::now();
            map.retain(|_, s| s.expires > now);
            map.insert(id.clone(), session.clone());
        }
        (id, session)
    }

    /// The session of the cookie in `headers`, if it is live.
    pub fn from_headers(&self, headers: &HeaderMap) -> Option<Session> {
        let id = cookie(headers, COOKIE)?;
        let map = self.0.lock().ok()?;
        map.get(&id).filter(|s| s.expires > Instant::now()).cloned()
    }

    fn remove(&self, headers: &HeaderMap) {
        if let (Some(id), Ok(mut map)) = (cookie(headers, COOKIE), self.0.lock()) {
            map.remove(&id);
        }
    }
}

/// The value of cookie `name` in `headers`.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Whether `headers` carry the session's CSRF token.
pub fn csrf_ok(session: &Session, headers: &HeaderMap) -> bool {
    headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| bool::from(t.as_bytes().ct_eq(session.csrf.as_bytes())))
}

/// `POST /login`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginBody {
    /// Who is logging in (recorded with every action).
    pub operator: String,
    /// An admin token (`ADMIN_API_KEYS`, or the data directory's `admin-token`).
    pub token: String,
}

/// A live session.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    /// Who is logged in.
    pub operator: String,
    /// Send it as `X-CSRF-Token` with every POST and DELETE.
    pub csrf_token: String,
}

fn session_cookie(id: &str, max_age: u64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{COOKIE}={id}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={max_age}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("primed_session=; Path=/; Max-Age=0"))
}

/// Logs an operator in with an admin token.
#[utoipa::path(post, path = "/login", tag = "admin", request_body = LoginBody, responses(
    (status = 200, description = "Logged in; the session cookie is set", body = SessionView),
    (status = 400, description = "No operator name", body = ErrorBody),
    (status = 401, description = "The token is not an admin token", body = ErrorBody),
))]
pub async fn login(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<Response, ApiError> {
    let operator = body.operator.trim();
    if operator.is_empty() || operator.len() > 100 || operator.chars().any(char::is_control) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_operator",
            "give your name (1 to 100 characters): it is recorded with every action",
        ));
    }
    if !crate::config::Secret::any_matches(state.admin_keys(), body.token.trim()) {
        // Logged by the failed-authentication guard, once a minute per address.
        tracing::debug!(target: "audit", operator, "login refused: not an admin token");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "that is not an admin token (ADMIN_API_KEYS, or the admin-token file in the data directory)",
        ));
    }
    let (id, session) = state.sessions.create(operator);
    tracing::info!(target: "audit", operator, action = "login", "admin action");
    let mut response = Json(SessionView {
        operator: session.operator,
        csrf_token: session.csrf,
    })
    .into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie(&id, SESSION_TTL.as_secs()),
    );
    // It carries the CSRF token: no cache may keep it.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Ends the session of the cookie.
#[utoipa::path(post, path = "/logout", tag = "admin", responses(
    (status = 204, description = "Logged out; the cookie is cleared"),
))]
pub async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(session) = state.sessions.from_headers(&headers) {
        tracing::info!(target: "audit", operator = %session.operator, action = "logout", "admin action");
    }
    state.sessions.remove(&headers);
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session_cookie("", 0));
    response
}

/// The session of the cookie: who is logged in and the CSRF token.
#[utoipa::path(get, path = "/api/session", tag = "admin", responses(
    (status = 200, description = "Logged in", body = SessionView),
    (status = 401, description = "No live session", body = ErrorBody),
))]
pub async fn current(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let session = state.sessions.from_headers(&headers).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "no_session",
            "not logged in: POST /login with your name and an admin token",
        )
    })?;
    let no_store = [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))];
    Ok((
        no_store,
        Json(SessionView {
            operator: session.operator,
            csrf_token: session.csrf,
        }),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; primed_session=abc; b=2"),
        );
        assert_eq!(cookie(&h, COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
    }

    #[test]
    fn a_session_needs_its_csrf_token() {
        let sessions = Sessions::default();
        let (id, session) = sessions.create("alice");
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("{COOKIE}={id}")).unwrap(),
        );
        assert_eq!(sessions.from_headers(&h).unwrap().operator, "alice");
        assert!(!csrf_ok(&session, &h));
        h.insert(CSRF_HEADER, HeaderValue::from_str(&session.csrf).unwrap());
        assert!(csrf_ok(&session, &h));
        sessions.remove(&h);
        assert!(sessions.from_headers(&h).is_none());
    }
}
