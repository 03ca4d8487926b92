//! The public API over a real MariaDB store: acceptance, validation, idempotency,
//! transaction atomicity, paging, and the OpenAPI document against the routes.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use primed::adapters::mysql::{MysqlStore, PoolSettings};
use primed::config::Secret;
use primed::http::{AppState, openapi, router};
use serde_json::{Value, json};
use support::TestDb;
use tower::ServiceExt;

async fn store_for(url: &str) -> Arc<MysqlStore> {
    let store = MysqlStore::connect(
        &Secret::new(url),
        PoolSettings {
            max_connections: 5,
            acquire_timeout: Duration::from_secs(2),
            outbox_max_retries: 3,
        },
    )
    .unwrap();
    Arc::new(store)
}

/// The admin token of the test routers.
const ADMIN: &str = "api-test-admin-token-0123456789";

async fn app(db: &TestDb) -> Router {
    app_and_store(db).await.0
}

/// The router over a migrated store of `db`, and the store.
async fn app_and_store(db: &TestDb) -> (Router, Arc<MysqlStore>) {
    let store = store_for(&db.url).await;
    store.migrate().await.unwrap();
    let app = router(
        AppState::new("api-test-root", vec![Secret::new(ADMIN)]).with_requests(
            store.clone(),
            None,
            50,
        ),
    );
    (app, store)
}

/// The router over a migrated store of `db` with a pool of 2 (so one group-commit writer)
/// whose connections, and so queued requests, wait at most `wait`; and the store.
async fn one_writer_app(db: &TestDb, wait: Duration) -> (Router, Arc<MysqlStore>) {
    let store = Arc::new(
        MysqlStore::connect(
            &Secret::new(db.url.clone()),
            PoolSettings {
                max_connections: 2,
                acquire_timeout: wait,
                outbox_max_retries: 3,
            },
        )
        .unwrap(),
    );
    store.migrate().await.unwrap();
    let app =
        router(AppState::new("api-test-root", Vec::new()).with_requests(store.clone(), None, 50));
    (app, store)
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(body.map(Body::from).unwrap_or_else(Body::empty))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
    }
}

async fn post(app: &Router, body: Value, headers: &[(&str, &str)]) -> Reply {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    call(
        app,
        Method::POST,
        "/prime-check",
        &all,
        Some(body.to_string()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_request_is_stored_with_its_outbox_event_and_can_be_read() {
    let db = TestDb::create();
    let app = app(&db).await;
    let r = post(
        &app,
        json!({"number": "0097", "email": "Ann@Example.COM"}),
        &[("x-request-id", "req-123")],
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    assert_eq!(r.body["status"], "pending");
    let id = r.body["id"].as_str().unwrap().to_string();

    let payload =
        db.sql("SELECT CONCAT(subject, ' ', state, ' ', request_id, ' ', payload) FROM outbox");
    assert!(
        payload.starts_with("primecheck.requested pending req-123 "),
        "{payload}"
    );
    let event: Value = serde_json::from_str(payload.splitn(4, ' ').nth(3).unwrap().trim()).unwrap();
    assert_eq!(
        event,
        json!({"request_id": id, "number": "97", "email": "Ann@example.com"})
    );

    let got = call(&app, Method::GET, &format!("/prime-check/{id}"), &[], None).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body["id"], id.as_str());
    assert_eq!(got.body["number"], "97");
    assert_eq!(
        got.body["email"], "A…@example.com",
        "read without a token, the address is masked"
    );
    assert_eq!(got.body["status"], "pending");
    assert_eq!(got.body["is_prime"], Value::Null);
    assert_eq!(got.body["completed_at"], Value::Null);
    assert!(got.body["created_at"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_is_a_clear_4xx_and_stores_nothing() {
    let db = TestDb::create();
    let app = app(&db).await;
    let json = "application/json";
    let ok_id = "01936d6e-5f2a-7c3b-9d4e-123456789abc";
    // method, uri, content type, body, expected status, expected error code
    type Case<'a> = (
        Method,
        String,
        Option<&'a str>,
        Option<String>,
        u16,
        &'a str,
    );
    let cases: Vec<Case<'_>> = vec![
        (
            Method::POST,
            "/prime-check".into(),
            Some(json),
            Some("{\"number\": ".into()),
            400,
            "malformed_json",
        ),
        (
            Method::POST,
            "/prime-check".into(),
            Some(json),
            Some(r#"{"number":"7"}"#.into()),
            422,
            "invalid_request",
        ),
        (
            Method::POST,
            "/prime-check".into(),
            Some(json),
            Some(r#"{"email":"a@b.co"}"#.into()),
            422,
            "invalid_request",
        ),
        (
            Method::POST,
            "/prime-check".into(),
            Some(json),
            Some(r#"{"number":7,"email":"a@b.co"}"#.into()),
            422,
            "invalid_request",
        ),
        (
            Method::POST,
            "/prime-check".into(),
            Some(json),
            Some(r#"{"number":"7","email":"a@b.co","x":1}"#.into()),
            422,
            "invalid_request",
        ),
        (
            Method::POST,
            "/prime-check".into(),
            Some(json),
            Some(r#"[1,2]"#.into()),
            422,
            "invalid_request",
        ),
        (
            Method::POST,
            "/prime-check".into(),
            Some(json),
            Some(r#"{"number":"-5","email":"a@b.co"}"#.into()),
            422,
            "invalid_number",
        ),
        (
            Method::POST,
            "/prime-check".into(),
            Some(json),
            Some(r#"{"number":"12.5","email":"a@b.co"}"#.into()),
            422,
            "invalid_number",
        ),
        (
            Method::POST,
            "/prime-check".into(),
            Some(json),
            Some(r#"{"number":"","email":"a@b.co"}"#.into()),
            422,
            "invalid_number",
        ),
        (
            Method::POST,
            "/prime-check".into(),
            Some(json),
            Some(r#"{"number":" 7","email":"a@b.co"}"#.into()),
            422,
            "invalid_number",
        ),
        (
            Method::POST,
            "/prime-check".into(),
            Some(json),
            Some(format!(
                r#"{{"number":"{}","email":"a@b.co"}}"#,
                "9".repeat(51)
            )),
            422,
            "number_too_long",
        ),
        (
            Method::POST,
            "/prime-check".into(),
            Some(json),
            Some(r#"{"number":"7","email":"nope"}"#.into()),
            422,
            "invalid_email",
        ),
        (
            Method::POST,
            "/prime-check".into(),
            Some(json),
            Some(r#"{"number":"7","email":"a@b..co"}"#.into()),
            422,
            "invalid_email",
        ),
        (
            Method::POST,
            "/prime-check".into(),
            None,
            Some(r#"{"number":"7","email":"a@b.co"}"#.into()),
            415,
            "unsupported_media_type",
        ),
        (
            Method::POST,
            "/prime-check".into(),
            Some("text/plain"),
            Some(r#"{"number":"7","email":"a@b.co"}"#.into()),
            415,
            "unsupported_media_type",
        ),
        (
            Method::POST,
            "/prime-check".into(),
            Some(json),
            Some(format!(
                r#"{{"number":"{}","email":"a@b.co"}}"#,
                "1".repeat(1024 * 1024 + 10)
            )),
            413,
            "payload_too_large",
        ),
        (
            Method::GET,
            format!("/prime-check/{ok_id}"),
            None,
            None,
            404,
            "request_not_found",
        ),
        (
            Method::GET,
            "/prime-check/42".into(),
            None,
            None,
            400,
            "invalid_id",
        ),
        (
            Method::GET,
            "/prime-check-list?status=weird".into(),
            None,
            None,
            400,
            "invalid_status",
        ),
        (
            Method::GET,
            "/prime-check-list?limit=0".into(),
            None,
            None,
            400,
            "invalid_limit",
        ),
        (
            Method::GET,
            "/prime-check-list?limit=101".into(),
            None,
            None,
            400,
            "invalid_limit",
        ),
        (
            Method::GET,
            "/prime-check-list?limit=abc".into(),
            None,
            None,
            400,
            "invalid_query",
        ),
        (
            Method::GET,
            "/prime-check-list?cursor=x".into(),
            None,
            None,
            400,
            "invalid_cursor",
        ),
        (Method::GET, "/nowhere".into(), None, None, 404, "not_found"),
    ];
    for (method, uri, content_type, body, status, code) in cases {
        let headers: Vec<(&str, &str)> = content_type
            .map(|c| ("content-type", c))
            .into_iter()
            .collect();
        let r = call(&app, method.clone(), &uri, &headers, body).await;
        let case = format!("{method} {}", &uri[..uri.len().min(60)]);
        assert_eq!(r.status.as_u16(), status, "{case}: {}", r.body);
        assert_eq!(r.body["error"], code, "{case}");
        assert!(
            !r.body["message"].as_str().unwrap_or("").is_empty(),
            "{case}: no message"
        );
    }
    let r = post(
        &app,
        json!({"number": "7", "email": "a@b.co"}),
        &[("idempotency-key", "has space")],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["error"], "invalid_idempotency_key");

    assert_eq!(db.count("SELECT COUNT(*) FROM prime_check_requests"), 0);
    assert_eq!(db.count("SELECT COUNT(*) FROM outbox"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_a_503_with_retry_after() {
    let closed = support::free_addr();
    let store = store_for(&format!("mysql://root@{closed}/nothing")).await;
    let app = router(AppState::new("api-test-root", Vec::new()).with_requests(store, None, 50));
    let r = post(&app, json!({"number": "7", "email": "a@b.co"}), &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.body["error"], "store_unavailable");
    assert_eq!(r.headers["retry-after"], "5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_returns_the_first_answer_and_creates_nothing() {
    let db = TestDb::create();
    let app = app(&db).await;
    let body = json!({"number": "7", "email": "a@b.co"});
    let first = post(&app, body.clone(), &[("idempotency-key", "order-1")]).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    assert!(first.headers.get("idempotent-replayed").is_none());

    let again = post(&app, body.clone(), &[("idempotency-key", "order-1")]).await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(again.body, first.body);
    assert_eq!(again.headers["idempotent-replayed"], "true");

    // Concurrent repeats race on the unique key; every one gets the first answer.
    let racers: Vec<_> = (0..10)
        .map(|_| {
            let app = app.clone();
            let body = body.clone();
            tokio::spawn(async move { post(&app, body, &[("idempotency-key", "order-2")]).await })
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    for r in racers {
        let r = r.await.unwrap();
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
        ids.insert(r.body["id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 1, "one request for one key: {ids:?}");

    let other = post(
        &app,
        json!({"number": "8", "email": "a@b.co"}),
        &[("idempotency-key", "order-1")],
    )
    .await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.body["error"], "idempotency_key_reused");

    assert_eq!(db.count("SELECT COUNT(*) FROM prime_check_requests"), 2);
    assert_eq!(db.count("SELECT COUNT(*) FROM outbox"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_its_outbox_row_is_impossible() {
    let db = TestDb::create();
    let app = app(&db).await;
    // A fault between the two inserts: the outbox insert fails inside the transaction.
    db.sql(
        "CREATE TRIGGER fail_outbox BEFORE INSERT ON outbox FOR EACH ROW \
         SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'injected fault'",
    );
    let r = post(&app, json!({"number": "7", "email": "a@b.co"}), &[]).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.body);
    assert_eq!(r.body["error"], "internal_error");
    assert_eq!(
        db.count("SELECT COUNT(*) FROM prime_check_requests"),
        0,
        "the request row was rolled back"
    );

    db.sql("DROP TRIGGER fail_outbox");
    let r = post(&app, json!({"number": "7", "email": "a@b.co"}), &[]).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(db.count("SELECT COUNT(*) FROM prime_check_requests"), 1);
    assert_eq!(db.count("SELECT COUNT(*) FROM outbox"), 1);
}

/// Another session locks the request table and a request is posted: the writer that takes
/// it waits for the lock (returned once it does) in its insert. Returns the locking session
/// (`UNLOCK TABLES` on it lets the writer go on) and the request's reply to come.
async fn stall_the_writer(
    db: &TestDb,
    app: &Router,
) -> (sqlx::MySqlConnection, tokio::task::JoinHandle<Reply>) {
    use sqlx::Connection;
    let mut locker = sqlx::MySqlConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql("LOCK TABLES prime_check_requests WRITE")
        .execute(&mut locker)
        .await
        .unwrap();
    let first = {
        let app = app.clone();
        tokio::spawn(
            async move { post(&app, json!({"number": "7", "email": "a@b.co"}), &[]).await },
        )
    };
    let waiting = format!(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = '{}' \
         AND STATE = 'Waiting for table metadata lock'",
        db.name
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while db.count(&waiting) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer never reached the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (locker, first)
}

/// Posts every body at once, each from its own task; the replies in the same order.
async fn post_all(app: &Router, requests: Vec<(Value, Option<&'static str>)>) -> Vec<Reply> {
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|(body, key)| {
            let app = app.clone();
            tokio::spawn(async move {
                let headers: Vec<(&str, &str)> =
                    key.map(|k| ("idempotency-key", k)).into_iter().collect();
                post(&app, body, &headers).await
            })
        })
        .collect();
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.unwrap());
    }
    replies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_transactions_and_each_gets_its_own_answer() {
    let db = TestDb::create();
    let (app, store) = app_and_store(&db).await;
    let taken = post(
        &app,
        json!({"number": "5", "email": "a@b.co"}),
        &[("idempotency-key", "taken")],
    )
    .await;
    assert_eq!(taken.status, StatusCode::ACCEPTED);
    let before = store.accept_stats();

    // 300 new requests, and among them repeats of a stored key, a new key sent five times,
    // and a stored key reused for another number: each kind fails a shared transaction.
    let mut requests: Vec<(Value, Option<&'static str>)> = (0..300)
        .map(|n| {
            (
                json!({"number": (1000 + n).to_string(), "email": "a@b.co"}),
                None,
            )
        })
        .collect();
    for i in 0..5 {
        requests.insert(
            i * 60,
            (json!({"number": "5", "email": "a@b.co"}), Some("taken")),
        );
        requests.insert(
            i * 60 + 1,
            (json!({"number": "6", "email": "a@b.co"}), Some("fresh")),
        );
        requests.insert(
            i * 60 + 2,
            (json!({"number": "9", "email": "a@b.co"}), Some("taken")),
        );
    }
    let sent = requests.clone();
    let replies = post_all(&app, requests).await;

    let mut fresh_ids = std::collections::BTreeSet::new();
    let mut new_ids = std::collections::BTreeSet::new();
    for ((body, key), reply) in sent.iter().zip(&replies) {
        match (key, body["number"].as_str().unwrap()) {
            (Some("taken"), "5") => {
                assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
                assert_eq!(reply.body, taken.body, "the first answer");
                assert_eq!(reply.headers["idempotent-replayed"], "true");
            }
            (Some("taken"), _) => {
                assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
                assert_eq!(reply.body["error"], "idempotency_key_reused");
            }
            (Some(_), _) => {
                assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
                fresh_ids.insert(reply.body["id"].as_str().unwrap().to_string());
            }
            (None, _) => {
                assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
                assert!(reply.headers.get("idempotent-replayed").is_none());
                new_ids.insert(reply.body["id"].as_str().unwrap().to_string());
            }
        }
    }
    assert_eq!(fresh_ids.len(), 1, "one request for one key: {fresh_ids:?}");
    assert_eq!(new_ids.len(), 300);

    // Stored: the first request, 300 new ones and one for the new key; each with its event.
    assert_eq!(db.count("SELECT COUNT(*) FROM prime_check_requests"), 302);
    assert_eq!(db.count("SELECT COUNT(*) FROM outbox"), 302);
    assert_eq!(
        db.count(
            "SELECT COUNT(*) FROM prime_check_requests r JOIN outbox o \
             ON JSON_VALUE(o.payload, '$.request_id') = r.id \
             AND JSON_VALUE(o.payload, '$.number') = r.number"
        ),
        302,
        "every request has its own event"
    );
    for id in &new_ids {
        let got = call(&app, Method::GET, &format!("/prime-check/{id}"), &[], None).await;
        assert_eq!(
            got.status,
            StatusCode::OK,
            "{id} was answered 202 but is not stored"
        );
    }

    let after = store.accept_stats();
    let requests = after.requests - before.requests;
    let transactions = after.transactions - before.transactions;
    assert_eq!(requests, 315);
    assert!(
        transactions < requests / 2,
        "concurrent requests should share transactions: {transactions} for {requests}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_in_a_shared_transaction_fails_only_its_own_request() {
    let db = TestDb::create();
    let (app, store) = app_and_store(&db).await;
    // The outbox insert of one number fails, after its request row was written.
    db.sql(
        "CREATE TRIGGER fail_outbox BEFORE INSERT ON outbox FOR EACH ROW \
         SET NEW.subject = IF(JSON_VALUE(NEW.payload, '$.number') = '1013', NULL, NEW.subject)",
    );
    let requests = (0..100)
        .map(|n| {
            (
                json!({"number": (1000 + n).to_string(), "email": "a@b.co"}),
                None,
            )
        })
        .collect();
    let replies = post_all(&app, requests).await;
    for (n, reply) in (1000..).zip(&replies) {
        if n == 1013 {
            assert_eq!(
                reply.status,
                StatusCode::INTERNAL_SERVER_ERROR,
                "{}",
                reply.body
            );
        } else {
            assert_eq!(reply.status, StatusCode::ACCEPTED, "{n}: {}", reply.body);
        }
    }
    assert_eq!(db.count("SELECT COUNT(*) FROM prime_check_requests"), 99);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM prime_check_requests WHERE number = '1013'"),
        0,
        "the failed request was rolled back"
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM outbox"), 99);
    assert!(
        store.accept_stats().transactions < 100,
        "{:?}",
        store.accept_stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_queued_behind_a_stalled_database_give_up_and_store_nothing() {
    let db = TestDb::create();
    // One writer; queued requests wait 1 s.
    let (app, _store) = one_writer_app(&db, Duration::from_secs(1)).await;

    let (mut locker, first) = stall_the_writer(&db, &app).await;

    // Requests queued behind the stuck writer answer 503 after the pool's timeout, not when
    // the database comes back.
    let queued = (0..3)
        .map(|n| {
            (
                json!({"number": (100 + n).to_string(), "email": "a@b.co"}),
                None,
            )
        })
        .collect();
    let replies = tokio::time::timeout(Duration::from_secs(10), post_all(&app, queued))
        .await
        .expect("queued requests waited for the stalled database");
    for r in &replies {
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
        assert_eq!(r.body["error"], "store_unavailable");
    }

    sqlx::raw_sql("UNLOCK TABLES")
        .execute(&mut locker)
        .await
        .unwrap();
    let first = first.await.unwrap();
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    // Only the request the writer had taken is stored.
    assert_eq!(db.count("SELECT COUNT(*) FROM prime_check_requests"), 1);
    assert_eq!(db.count("SELECT COUNT(*) FROM outbox"), 1);
}

/// A client retrying with its idempotency key lands in a batch of others: the batch fails
/// on the taken key and is written again in halves, so the 63 others share a few
/// transactions instead of taking one each, and every request gets its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_key_in_a_batch_splits_it_in_halves_not_into_single_writes() {
    let db = TestDb::create();
    // One writer; queued requests may wait 30 s for it.
    let (app, store) = one_writer_app(&db, Duration::from_secs(30)).await;
    let body = json!({"number": "5", "email": "a@b.co"});
    let stored = post(&app, body.clone(), &[("idempotency-key", "retry-1")]).await;
    assert_eq!(stored.status, StatusCode::ACCEPTED, "{}", stored.body);

    // The writer is held on a locked table while 64 requests queue behind it.
    let (mut locker, first) = stall_the_writer(&db, &app).await;
    let queued: Vec<_> = (0..64)
        .map(|n| {
            if n == 40 {
                (body.clone(), Some("retry-1"))
            } else {
                (
                    json!({"number": (100 + n).to_string(), "email": "a@b.co"}),
                    None,
                )
            }
        })
        .collect();
    let replies = {
        let app = app.clone();
        tokio::spawn(async move { post_all(&app, queued).await })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.accept_stats().queued < 64 {
        assert!(
            std::time::Instant::now() < deadline,
            "requests did not queue: {:?}",
            store.accept_stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = store.accept_stats();
    sqlx::raw_sql("UNLOCK TABLES")
        .execute(&mut locker)
        .await
        .unwrap();
    assert_eq!(first.await.unwrap().status, StatusCode::ACCEPTED);
    let replies = replies.await.unwrap();

    for (n, r) in replies.iter().enumerate() {
        assert_eq!(r.status, StatusCode::ACCEPTED, "request {n}: {}", r.body);
        if n == 40 {
            assert_eq!(r.body, stored.body, "the retry gets the first answer");
        }
    }
    let after = store.accept_stats();
    assert_eq!(after.transactions - before.transactions, 1, "{after:?}");
    // 64 → 32 + 32, the failing 32 → 16 + 16, … → 1 + 1: two writes per halving.
    assert!(
        after.rewrites - before.rewrites <= 12,
        "a failed batch of 64 took {} writes again",
        after.rewrites - before.rewrites
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM prime_check_requests"), 65);
    assert_eq!(db.count("SELECT COUNT(*) FROM outbox"), 65);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_pages_newest_first_and_filters_by_status() {
    let db = TestDb::create();
    let app = app(&db).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let r = post(
            &app,
            json!({"number": n.to_string(), "email": "a@b.co"}),
            &[],
        )
        .await;
        ids.push(r.body["id"].as_str().unwrap().to_string());
    }
    ids.reverse(); // newest first
    // The admin token lists everyone's requests (tests/hardening.rs: who sees what).
    let admin = format!("Bearer {ADMIN}");
    let auth = [("authorization", admin.as_str())];
    let mut seen = Vec::new();
    let mut uri = "/prime-check-list?limit=2".to_string();
    loop {
        let page = call(&app, Method::GET, &uri, &auth, None).await;
        assert_eq!(page.status, StatusCode::OK);
        for item in page.body["items"].as_array().unwrap() {
            seen.push(item["id"].as_str().unwrap().to_string());
        }
        match page.body["next_cursor"].as_str() {
            Some(cursor) => uri = format!("/prime-check-list?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, ids);

    db.sql(&format!(
        "UPDATE prime_check_requests SET status = 'done', is_prime = 1 WHERE id = '{}'",
        ids[2]
    ));
    let done = call(
        &app,
        Method::GET,
        "/prime-check-list?status=done",
        &auth,
        None,
    )
    .await;
    let items = done.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], ids[2].as_str());
    assert_eq!(items[0]["is_prime"], true);
    let pending = call(
        &app,
        Method::GET,
        "/prime-check-list?status=pending",
        &auth,
        None,
    )
    .await;
    assert_eq!(pending.body["items"].as_array().unwrap().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_served_and_the_served_document_is_the_generated_one() {
    let doc = serde_json::to_value(openapi()).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for public in [
        "/prime-check",
        "/prime-check/{id}",
        "/prime-check-list",
        "/health",
        "/ready",
        "/admin/actors",
    ] {
        assert!(paths.contains_key(public), "{public} is not documented");
    }
    assert!(doc["components"]["schemas"]["CheckRequest"].is_object());
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());

    // Every documented operation is served (not the fallback, not 405).
    let app = router(AppState::new("openapi-test", Vec::new()));
    for (path, ops) in paths {
        let uri = path
            .replace("{id}", "01936d6e-5f2a-7c3b-9d4e-123456789abc")
            .replace("{name}", "someone");
        for method in ops.as_object().unwrap().keys() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = call(
                &app,
                method.clone(),
                &uri,
                &[("content-type", "application/json")],
                Some("{}".into()),
            )
            .await;
            assert_ne!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert_ne!(
                r.body["error"], "not_found",
                "{method} {path} is documented but not served"
            );
        }
    }
    let served = call(&app, Method::GET, "/openapi.json", &[], None).await;
    assert_eq!(served.body, doc);
}
