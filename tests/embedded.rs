//! Embedded mode: the store and the queue on one SQLite file, with no configuration.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use actors::model::{CreateOutcome, ListQuery, NewRequest, SUBJECT_PRIMECHECK_REQUESTED};
use actors::outbox_relay::round;
use actors::{RelayArgs, RelayWake, RequestStore, RetryPolicy};
use nix::sys::signal::Signal;
use primed::adapters::sqlite::{EmbeddedQueue, SqliteStore};
use serde_json::{Value, json};
use sqlx::Row;
use support::Daemon;

fn request(n: &str, key: Option<&str>) -> NewRequest {
    NewRequest {
        id: uuid::Uuid::now_v7().to_string(),
        number: n.into(),
        email: "a@b.co".into(),
        idempotency_key: key.map(String::from),
        request_id: Some("req".into()),
        traceparent: None,
        event_id: uuid::Uuid::now_v7().to_string(),
    }
}

async fn count(store: &SqliteStore, sql: &str) -> i64 {
    sqlx::query(sql)
        .fetch_one(store.pool())
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn the_embedded_store_keeps_the_outbox_promises() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("primed.db"), 3)
        .await
        .unwrap();

    let CreateOutcome::Created(first) = store.create(request("7", Some("k1"))).await.unwrap()
    else {
        panic!("not created")
    };
    assert!(
        matches!(store.create(request("7", Some("k1"))).await.unwrap(), CreateOutcome::Existing(r) if r.id == first.id)
    );
    assert!(matches!(
        store.create(request("8", Some("k1"))).await.unwrap(),
        CreateOutcome::KeyConflict(_)
    ));
    assert_eq!(store.get(&first.id).await.unwrap().unwrap().number, "7");

    // A fault between the two inserts rolls the request back.
    sqlx::query("CREATE TRIGGER fail_outbox BEFORE INSERT ON outbox BEGIN SELECT RAISE(ABORT, 'injected fault'); END")
        .execute(store.pool())
        .await
        .unwrap();
    assert!(store.create(request("9", None)).await.is_err());
    sqlx::query("DROP TRIGGER fail_outbox")
        .execute(store.pool())
        .await
        .unwrap();
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM prime_check_requests").await,
        1
    );
    assert_eq!(count(&store, "SELECT COUNT(*) FROM outbox").await, 1);

    for n in 0..4 {
        store.create(request(&n.to_string(), None)).await.unwrap();
    }
    let page = store
        .list(ListQuery {
            status: None,
            limit: 3,
            before: None,
        })
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|r| r.number.as_str()).collect::<Vec<_>>(),
        ["3", "2", "1"]
    );

    // The relay moves the outbox into the embedded queue, each event once.
    let queue = EmbeddedQueue::new(&store);
    let args = RelayArgs {
        store: Arc::new(store.clone()),
        broker: Arc::new(queue.clone()),
        batch_size: 2,
        parallel_rounds: 1,
        lease: Duration::from_secs(30),
        poll_interval: Duration::from_secs(1),
        retry: RetryPolicy::default(),
        retention: Duration::from_secs(3600),
        prune_interval: Duration::from_secs(3600),
        wake: RelayWake::new("unused"),
    };
    while round(&args).await.unwrap().claimed > 0 {}
    assert_eq!(queue.depth(SUBJECT_PRIMECHECK_REQUESTED).await.unwrap(), 5);
    let replayed = actors::OutboxStore::replay_since(&store, chrono::DateTime::UNIX_EPOCH)
        .await
        .unwrap();
    assert_eq!(replayed, 5);
    while round(&args).await.unwrap().claimed > 0 {}
    assert_eq!(
        queue.depth(SUBJECT_PRIMECHECK_REQUESTED).await.unwrap(),
        5,
        "a replay is stored once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_configuration_a_request_goes_through_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let http = reqwest::Client::new();
    let mut d = Daemon::start_in(&data, &[]);
    let r = http
        .post(d.url("/prime-check"))
        .json(&json!({"number": "97", "email": "a@b.co"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let got: Value = http
        .get(d.url(&format!("/prime-check/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["status"], "pending");
    assert_eq!(got["number"], "97");

    let db = sqlx::SqlitePool::connect(&format!("sqlite://{}", data.join("primed.db").display()))
        .await
        .unwrap();
    assert_eventually!(
        sqlx::query("SELECT COUNT(*) FROM queue_messages WHERE subject = 'primecheck.requested'")
            .fetch_one(&db)
            .await
            .unwrap()
            .get::<i64, _>(0)
            == 1,
        "the relay did not move the event into the embedded queue"
    );
    db.close().await;

    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit().code(), Some(0));
    let d = Daemon::start_in(&data, &[]);
    let got: Value = http
        .get(d.url(&format!("/prime-check/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["id"], id.as_str(), "the request survived the restart");
}
