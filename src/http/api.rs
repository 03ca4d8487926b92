//! The public API: `POST /prime-check`, `GET /prime-check/{id}`, `GET /prime-check-list`.
//!
//! Handlers are thin: validate (see [`super::validate`]) → call the [`RequestStore`] port →
//! map to a response. A stored request and its outbox event are one transaction, so an
//! accepted (202) request is never lost; the relay is woken right after the commit.
//!
//! Who sees what: a request is kept with the `sub` of the user token it came with. The list
//! shows a user only their own requests and an admin token everything; an anonymous caller
//! gets no list. One request read by its id (an unguessable UUIDv7) is public, with the
//! address masked (`m…@example.com`) unless the caller is its owner or an admin.

use actors::model::{CreateOutcome, ListQuery, NewRequest, PrimeRequest, RequestStatus};
use actors::{RequestStore, StoreError};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::ratelimit::RateLimited;
use super::validate::{self, NumberError};

/// The body of `POST /prime-check`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    /// A non-negative decimal integer, as a string of digits.
    #[schema(example = "2305843009213693951")]
    pub number: String,
    /// Where the result is sent.
    #[schema(example = "user@example.com")]
    pub email: String,
}

/// The answer to an accepted request.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    /// The request's id.
    #[schema(example = "01936d6e-5f2a-7c3b-9d4e-123456789abc")]
    pub id: String,
    /// Always `pending` when accepted.
    pub status: Status,
}

/// Where a request is.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Accepted, not yet checked.
    Pending,
    /// Checked.
    Done,
    /// Could not be checked.
    Failed,
}

impl From<RequestStatus> for Status {
    fn from(s: RequestStatus) -> Self {
        match s {
            RequestStatus::Pending => Status::Pending,
            RequestStatus::Done => Status::Done,
            RequestStatus::Failed => Status::Failed,
        }
    }
}

/// A request and, once done, its result.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckView {
    /// The request's id.
    pub id: String,
    /// The number.
    pub number: String,
    /// Where the result goes.
    pub email: String,
    /// Where it is.
    pub status: Status,
    /// Whether the number is prime; null until done.
    pub is_prime: Option<bool>,
    /// The smallest factor found, when composite.
    pub factor: Option<String>,
    /// When it was accepted.
    pub created_at: DateTime<Utc>,
    /// When it was done or failed.
    pub completed_at: Option<DateTime<Utc>>,
    /// Why it failed.
    pub error: Option<String>,
}

impl From<PrimeRequest> for CheckView {
    fn from(r: PrimeRequest) -> Self {
        Self {
            id: r.id,
            number: r.number,
            email: r.email,
            status: r.status.into(),
            is_prime: r.is_prime,
            factor: r.factor,
            created_at: r.created_at,
            completed_at: r.completed_at,
            error: r.error,
        }
    }
}

/// A page of requests.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckList {
    /// Newest first.
    pub items: Vec<CheckView>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
    /// Why the list is empty for a caller without a token (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<&'static str>,
}

/// Filters and paging of `GET /prime-check-list`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only `pending`, `done` or `failed` requests.
    pub status: Option<String>,
    /// Page size, 1 to 100 (default 20).
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn store(state: &AppState) -> Result<&dyn RequestStore, ApiError> {
    state.requests.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "this daemon has no request store configured",
        )
    })
}

fn store_error(err: StoreError) -> ApiError {
    match err {
        StoreError::Unavailable(reason) => {
            tracing::warn!(error = %reason, "request store unavailable");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the database is unavailable; nothing was stored, try again shortly",
            )
            .retry_after(5)
        }
        StoreError::Rejected(reason) => {
            tracing::error!(error = %reason, "request store refused an operation");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "the request could not be stored; nothing was stored, try again or contact the operator",
            )
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `input` as a number the API accepts (at most `max_digits` digits), or the API's answer
/// to a bad one (the same for a new request and an edited dead letter).
pub(crate) fn checked_number(input: &str, max_digits: usize) -> Result<String, ApiError> {
    validate::number(input, max_digits).map_err(|e| match e {
        NumberError::NotDecimal => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_number",
            "number must be a non-negative decimal integer written as a string of digits, e.g. \"97\"",
        ),
        NumberError::TooLong { max, got } => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "number_too_long",
            format!("number has {got} digits; at most {max} are accepted"),
        ),
    })
}

/// `input` as an address the API accepts, or the API's answer to a bad one.
pub(crate) fn checked_email(input: &str) -> Result<String, ApiError> {
    validate::email(input).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_email",
            "email must be an address like user@example.com",
        )
    })
}

/// Accept a number for checking.
#[utoipa::path(
    post,
    path = "/prime-check",
    tag = "prime-check",
    request_body = CheckRequest,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Repeat a request safely: the same key returns the first answer and creates nothing."),
        ("X-Request-Id" = Option<String>, Header, description = "Correlation id carried through the pipeline."),
    ),
    responses(
        (status = 202, description = "Accepted; the result is emailed and readable at /prime-check/{id}", body = Accepted),
        (status = 400, description = "Malformed JSON or header", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid number or email, or an idempotency key reused for another request", body = ErrorBody),
        (status = 503, description = "Database unavailable; nothing stored", body = ErrorBody),
        (status = 401, description = "An invalid or expired bearer token, or an unknown X-Service-Key", body = ErrorBody),
        (status = 429, description = "Rate limited (see Retry-After and X-RateLimit-*)", body = RateLimited),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CheckRequest>,
) -> Result<Response, ApiError> {
    let number = checked_number(&body.number, state.max_digits)?;
    let email = checked_email(&body.email)?;
    let idempotency_key = match header(&headers, "idempotency-key") {
        None => None,
        Some(key) if validate::idempotency_key(key) => Some(key.to_string()),
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_idempotency_key",
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
            ));
        }
    };
    let request_id = header(&headers, "x-request-id")
        .filter(|id| !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_graphic()))
        .map(String::from)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    // The request's span (see `metrics::http_layer`) continues the caller's trace or starts
    // one; its context travels with the event.
    let span = tracing::Span::current();
    span.record("request_id", request_id.as_str());
    let traceparent = actors::trace::traceparent(&span).or_else(|| {
        header(&headers, "traceparent")
            .filter(|t| actors::trace::parse(t).is_some())
            .map(String::from)
    });

    let owner = match caller(&state, &headers)? {
        Caller::User(sub) => Some(sub),
        Caller::Admin | Caller::Anonymous => None,
    };
    let outcome = store(&state)?
        .create(NewRequest {
            id: uuid::Uuid::now_v7().to_string(),
            number,
            email,
            idempotency_key,
            request_id: Some(request_id),
            traceparent,
            event_id: uuid::Uuid::now_v7().to_string(),
            owner,
        })
        .await
        .map_err(store_error)?;
    let (request, replayed) = match outcome {
        CreateOutcome::Created(r) => {
            tracing::info!(id = %r.id, digits = r.number.len(), "request accepted");
            if let Some(wake) = &state.relay_wake {
                wake.new_event();
            }
            (r, false)
        }
        CreateOutcome::Existing(r) => (r, true),
        CreateOutcome::KeyConflict(_) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used for a different request; use a new key",
            ));
        }
    };
    let mut response = (
        StatusCode::ACCEPTED,
        Json(Accepted {
            id: request.id,
            status: Status::Pending,
        }),
    )
        .into_response();
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// One request and, when done, its result. Anyone with the id may read it; the address is
/// masked (`m…@example.com`) unless the caller owns the request (user token) or is an admin.
#[utoipa::path(
    get,
    path = "/prime-check/{id}",
    tag = "prime-check",
    params(("id" = String, Path, description = "The id returned by POST /prime-check")),
    responses(
        (status = 200, body = CheckView),
        (status = 400, description = "Not a request id", body = ErrorBody),
        (status = 404, description = "No such request", body = ErrorBody),
        (status = 401, description = "An invalid or expired bearer token, or an unknown X-Service-Key", body = ErrorBody),
        (status = 429, description = "Rate limited (see Retry-After and X-RateLimit-*)", body = RateLimited),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    )
)]
pub async fn get_one(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<CheckView>, ApiError> {
    let caller = caller(&state, &headers)?;
    if !validate::request_id(&id) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            "the id must be a request id as returned by POST /prime-check",
        ));
    }
    match store(&state)?.get(&id).await.map_err(store_error)? {
        Some(request) => {
            let own = caller.sees_address_of(&request);
            let mut view = CheckView::from(request);
            if !own {
                view.email = mask_email(&view.email);
            }
            Ok(Json(view))
        }
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "request_not_found",
            format!("no request with id {id}"),
        )),
    }
}

/// Requests, newest first, one page at a time: a user's own (bearer user token), everyone's
/// (admin token), or none for a caller without a token.
#[utoipa::path(
    get,
    path = "/prime-check-list",
    tag = "prime-check",
    params(ListParams),
    responses(
        (status = 200, body = CheckList),
        (status = 400, description = "Bad status, limit or cursor", body = ErrorBody),
        (status = 401, description = "An invalid or expired bearer token, or an unknown X-Service-Key", body = ErrorBody),
        (status = 429, description = "Rate limited (see Retry-After and X-RateLimit-*)", body = RateLimited),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<CheckList>, ApiError> {
    let caller = caller(&state, &headers)?;
    let status = match params.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(RequestStatus::parse(s).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_status",
                "status must be pending, done or failed",
            )
        })?),
    };
    let limit = params.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_limit",
            "limit must be between 1 and 100",
        ));
    }
    if let Some(cursor) = &params.cursor
        && !validate::request_id(cursor)
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_cursor",
            "cursor must be the next_cursor of a previous page",
        ));
    }
    let owner = match caller {
        Caller::Admin => None,
        Caller::User(sub) => Some(sub),
        Caller::Anonymous => {
            // Nothing is anyone's without a token: an empty page, and why.
            return Ok(Json(CheckList {
                items: Vec::new(),
                next_cursor: None,
                hint: Some(ANONYMOUS_LIST_HINT),
            }));
        }
    };
    let items = store(&state)?
        .list(ListQuery {
            status,
            limit,
            before: params.cursor,
            owner,
        })
        .await
        .map_err(store_error)?;
    let next_cursor = (items.len() == limit as usize)
        .then(|| items.last().map(|r| r.id.clone()))
        .flatten();
    Ok(Json(CheckList {
        items: items.into_iter().map(CheckView::from).collect(),
        next_cursor,
        hint: None,
    }))
}

/// What an anonymous caller's (empty) list says.
pub const ANONYMOUS_LIST_HINT: &str = "the list shows a user their own requests: send 'Authorization: Bearer <your user token>' (an admin token lists everyone's); one request can be read by its id without a token, its address masked";

/// Who is asking, for what they may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// An admin token: everything.
    Admin,
    /// A verified user token: their own requests.
    User(String),
    /// No credentials.
    Anonymous,
}

impl Caller {
    /// Whether this caller may see `request`'s address unmasked.
    pub fn sees_address_of(&self, request: &PrimeRequest) -> bool {
        match self {
            Caller::Admin => true,
            Caller::User(sub) => request.owner.as_deref() == Some(sub.as_str()),
            Caller::Anonymous => false,
        }
    }
}

/// Resolves the caller from its `Authorization` header: an admin token, a valid HS256 user
/// token (`JWT_SECRET`), or none. A token that is neither is a 401, never anonymous.
pub fn caller(state: &AppState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    use crate::ratelimit::identity::{Bearer, bearer};
    let now = chrono::Utc::now().timestamp();
    match bearer(headers, state.admin_keys(), state.jwt_secret.as_ref(), now) {
        Ok(Some(Bearer::Admin)) => Ok(Caller::Admin),
        Ok(Some(Bearer::User(sub))) => Ok(Caller::User(sub)),
        Ok(None) => Ok(Caller::Anonymous),
        Err(e) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            e.to_string(),
        )),
    }
}

/// `mary@example.com` → `m…@example.com`: enough for its owner to recognise, too little to
/// harvest.
pub fn mask_email(email: &str) -> String {
    match email.rsplit_once('@') {
        Some((local, domain)) => {
            let first = local.chars().next().map(String::from).unwrap_or_default();
            format!("{first}…@{domain}")
        }
        None => "…".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_masked_to_their_first_letter_and_domain() {
        assert_eq!(mask_email("mary@example.com"), "m…@example.com");
        assert_eq!(mask_email("m@example.com"), "m…@example.com");
        assert_eq!(mask_email("ürsula@b.example"), "ü…@b.example");
        assert_eq!(mask_email("a@b@c.example"), "a…@c.example");
    }
}
