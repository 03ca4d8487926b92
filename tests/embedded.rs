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
        owner: None,
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
            owner: None,
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
        stats: Default::default(),
        background_settle: None,
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

#[tokio::test]
async fn with_its_queue_as_the_broker_the_store_queues_a_new_event_in_its_own_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("primed.db"), 3)
        .await
        .unwrap();
    let queue = EmbeddedQueue::new(&store);
    let pending = "SELECT COUNT(*) FROM outbox WHERE state = 'pending'";

    // Off: the event waits in the outbox for a relay.
    store.create(request("7", None)).await.unwrap();
    assert_eq!(queue.depth(SUBJECT_PRIMECHECK_REQUESTED).await.unwrap(), 0);
    assert_eq!(count(&store, pending).await, 1);

    // On: queued by the commit itself, its outbox row already published; no relay ran.
    store.enqueue_directly(true);
    let req = request("11", None);
    let event_id = req.event_id.clone();
    store.create(req).await.unwrap();
    assert_eq!(queue.depth(SUBJECT_PRIMECHECK_REQUESTED).await.unwrap(), 1);
    let queued: String = sqlx::query("SELECT event_id FROM queue_messages")
        .fetch_one(store.pool())
        .await
        .unwrap()
        .get(0);
    assert_eq!(queued, event_id);
    assert_eq!(count(&store, pending).await, 1, "only the first one");
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM outbox WHERE state = 'published' AND published_at IS NOT NULL"
        )
        .await,
        1
    );

    // One transaction: a queue that refuses the event rolls the request back with it.
    sqlx::query("CREATE TRIGGER fail_queue BEFORE INSERT ON queue_messages BEGIN SELECT RAISE(ABORT, 'injected fault'); END")
        .execute(store.pool())
        .await
        .unwrap();
    assert!(store.create(request("13", None)).await.is_err());
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM prime_check_requests").await,
        2
    );
    assert_eq!(count(&store, "SELECT COUNT(*) FROM outbox").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_accepted_together_share_a_transaction_and_each_gets_its_own_answer() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("primed.db"), 3)
        .await
        .unwrap();
    let queue = EmbeddedQueue::new(&store);
    store.enqueue_directly(true);
    // 200 at once, among them an idempotency key used three times (twice with the same
    // request, once with another number): that batch is written again one by one.
    let mut requests: Vec<NewRequest> = (0..200).map(|n| request(&n.to_string(), None)).collect();
    requests[50] = request("7", Some("same"));
    requests[120] = request("7", Some("same"));
    requests[121] = request("8", Some("same"));
    let answers = futures::future::join_all(requests.iter().map(|r| store.create(r.clone())))
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let created = answers
        .iter()
        .filter(|a| matches!(a, CreateOutcome::Created(_)))
        .count();
    assert_eq!(created, 198, "every request but two repeats of a key");
    assert!(
        matches!(&answers[120], CreateOutcome::Existing(first) if first.id == requests[50].id),
        "{:?}",
        answers[120]
    );
    assert!(matches!(&answers[121], CreateOutcome::KeyConflict(_)));
    for (req, answer) in requests.iter().zip(&answers) {
        if let CreateOutcome::Created(r) = answer {
            assert_eq!(r.id, req.id);
        }
    }
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM prime_check_requests").await,
        198
    );
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM outbox WHERE state = 'published'"
        )
        .await,
        198
    );
    assert_eq!(
        queue.depth(SUBJECT_PRIMECHECK_REQUESTED).await.unwrap(),
        198
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_results_are_recorded_once_per_event_with_their_queued_email_events() {
    use actors::WorkerStore;
    use actors::model::{EmailSend, PrimeResult, SUBJECT_EMAIL_SEND};

    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("primed.db"), 3)
        .await
        .unwrap();
    let queue = EmbeddedQueue::new(&store);
    store.enqueue_directly(true);
    let mut results = Vec::new();
    for n in ["7", "8", "9", "10"] {
        let req = request(n, None);
        let (id, event_id) = (req.id.clone(), req.event_id.clone());
        store.create(req).await.unwrap();
        results.push(PrimeResult {
            event_id,
            email_event_id: uuid::Uuid::now_v7().to_string(),
            email: EmailSend {
                request_id: id,
                number: n.into(),
                email: "a@b.co".into(),
                is_prime: n == "7",
                factor: (n != "7").then(|| "2".into()),
                digits: n.len(),
            },
            duration: Duration::from_micros(40),
            request_id: Some("req".into()),
            traceparent: None,
        });
    }
    // The first already recorded; then each of them twice at once (a redelivery racing the
    // first delivery), so that duplicates share batches with fresh results.
    assert!(store.record_result(results[0].clone()).await.unwrap());
    let again: Vec<PrimeResult> = results.iter().chain(&results).cloned().collect();
    let answers = futures::future::join_all(again.iter().map(|r| store.record_result(r.clone())))
        .await
        .into_iter()
        .collect::<Result<Vec<bool>, _>>()
        .unwrap();
    for (i, r) in results.iter().enumerate() {
        let fresh = again
            .iter()
            .zip(&answers)
            .filter(|(a, now)| a.event_id == r.event_id && **now)
            .count();
        assert_eq!(fresh, usize::from(i > 0), "{}: {answers:?}", r.email.number);
    }
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM prime_check_requests WHERE status = 'done' AND is_prime = (number = '7') AND digits = LENGTH(number) AND completed_at IS NOT NULL").await,
        4
    );
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM outbox WHERE subject = 'email.send' AND state = 'published'"
        )
        .await,
        4
    );
    assert_eq!(queue.depth(SUBJECT_EMAIL_SEND).await.unwrap(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_sent_records_and_acks_answer_each_caller_as_alone() {
    use actors::WorkerStore;
    use actors::model::SentEmail;
    use actors::ports::Source;
    use futures::StreamExt;

    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("primed.db"), 3)
        .await
        .unwrap();
    let sent = |event: &str| SentEmail {
        event_id: event.into(),
        request_id: "r".into(),
        recipient: "a@b.co".into(),
        message_id: format!("<{event}@primed>"),
    };
    store.record_email(sent("old")).await.unwrap();
    // Many at once, so that they share statements: each event is recorded once, and only
    // one caller of each hears "recorded now".
    let events: Vec<String> = (0..200)
        .map(|i| format!("e{}", i % 50))
        .chain(["old".to_string()])
        .collect();
    let answers = futures::future::join_all(events.iter().map(|e| store.record_email(sent(e))))
        .await
        .into_iter()
        .collect::<Result<Vec<bool>, _>>()
        .unwrap();
    let fresh: std::collections::HashMap<&str, usize> =
        events
            .iter()
            .zip(&answers)
            .fold(Default::default(), |mut m, (e, &now)| {
                *m.entry(e.as_str()).or_default() += usize::from(now);
                m
            });
    assert_eq!(fresh.len(), 51);
    assert!(
        fresh.iter().all(|(e, &n)| n == usize::from(*e != "old")),
        "{fresh:?}"
    );
    assert_eq!(count(&store, "SELECT COUNT(*) FROM sent_emails").await, 51);
    let checks =
        futures::future::join_all(["e0", "e49", "e50", "old"].map(|e| store.email_sent(e)))
            .await
            .into_iter()
            .collect::<Result<Vec<bool>, _>>()
            .unwrap();
    assert_eq!(checks, [true, true, false, true]);

    // Acknowledgements that arrive together remove every row they name, and only those.
    let queue = EmbeddedQueue::new(&store);
    let messages: Vec<actors::OutgoingMessage> = (0..300)
        .map(|i| {
            actors::OutgoingMessage::first(
                format!("q{i}"),
                SUBJECT_PRIMECHECK_REQUESTED,
                b"{}".to_vec(),
                None,
                None,
            )
        })
        .collect();
    assert!(
        actors::Broker::publish_batch(&queue, &messages)
            .await
            .iter()
            .all(Result::is_ok)
    );
    let source = primed::adapters::sqlite::EmbeddedSource::new(
        &queue,
        SUBJECT_PRIMECHECK_REQUESTED,
        Duration::from_secs(30),
        3,
    );
    let deliveries: Vec<_> = source
        .pull(250, Duration::from_millis(100))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(deliveries.len(), 250);
    futures::future::join_all(deliveries.iter().map(|d| d.ack()))
        .await
        .into_iter()
        .collect::<Result<Vec<()>, _>>()
        .unwrap();
    assert_eq!(queue.depth(SUBJECT_PRIMECHECK_REQUESTED).await.unwrap(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_configuration_a_request_is_checked_mailed_to_a_file_and_survives_a_restart() {
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
    let get = |id: String| {
        let http = http.clone();
        let url = d.url(&format!("/prime-check/{id}"));
        async move {
            http.get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    assert_eventually!(
        get(id.clone()).await["status"] == "done",
        "request {id} is checked"
    );
    let got = get(id.clone()).await;
    assert_eq!(
        (got["number"].as_str(), got["is_prime"].as_bool()),
        (Some("97"), Some(true))
    );

    // The result email is an .eml file in the data directory, named by its Message-ID.
    let mail = data.join("mail");
    let emails = || -> Vec<String> {
        std::fs::read_dir(&mail)
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
                    .map(|e| std::fs::read_to_string(e.path()).unwrap())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eventually!(emails().len() == 1, "one email file");
    let email = &emails()[0];
    assert!(email.contains("The number 97 is prime."), "{email}");
    assert!(email.contains("To: a@b.co"), "{email}");
    assert!(email.contains("@primed>"), "{email}");

    let db = sqlx::SqlitePool::connect(&format!("sqlite://{}", data.join("primed.db").display()))
        .await
        .unwrap();
    assert_eventually!(
        sqlx::query("SELECT COUNT(*) FROM queue_messages")
            .fetch_one(&db)
            .await
            .unwrap()
            .get::<i64, _>(0)
            == 0,
        "both messages were acknowledged"
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
    assert_eq!(got["status"], "done", "the result survived the restart");
    // Nothing is left that could send an email again: no message queued or in flight, no
    // outbox row due. (Evidence, not a pause to see whether one comes.)
    let db = sqlx::SqlitePool::connect(&format!("sqlite://{}", data.join("primed.db").display()))
        .await
        .unwrap();
    let left: i64 = sqlx::query(
        "SELECT (SELECT COUNT(*) FROM queue_messages) + \
                (SELECT COUNT(*) FROM outbox WHERE state = 'pending')",
    )
    .fetch_one(&db)
    .await
    .unwrap()
    .get(0);
    db.close().await;
    assert_eq!(left, 0, "nothing waits to be sent");
    assert_eq!(emails().len(), 1, "and no email was sent twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_dlq_takes_a_rejected_email_and_a_reprocess_resolves_it() {
    let stub = support::SmtpStub::start(support::StubMode::Reject).await;
    let mut env = support::smtp_env(stub.port);
    env.push(("ADMIN_API_KEYS".into(), "embedded-test-token".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let d = Daemon::start(&env);
    let http = reqwest::Client::new();
    let r = http
        .post(d.url("/prime-check"))
        .json(&json!({"number": "91", "email": "nobody@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let letters = || {
        let http = http.clone();
        let url = d.url("/api/dlq/messages");
        async move {
            http.get(url)
                .bearer_auth("embedded-test-token")
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()["items"]
                .as_array()
                .unwrap()
                .clone()
        }
    };
    assert_eventually!(
        letters().await.len() == 1,
        "the rejected email is dead-lettered"
    );
    let letter = &letters().await[0];
    assert_eq!(letter["error_type"], "permanent");
    assert_eq!(letter["dlq_subject"], "dlq.emailsend");

    stub.set_mode(support::StubMode::Accept);
    let r: Value = http
        .post(d.url("/api/dlq/reprocess"))
        .bearer_auth("embedded-test-token")
        .json(&json!({"message_ids": [letter["id"]], "operator": "dana"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["succeeded"], 1, "{r}");
    assert_eventually!(
        letters().await[0]["status"] == "resolved",
        "the reprocessed email went out"
    );
    assert_eq!(letters().await[0]["resolved_by"], "dana");
    assert_eq!(stub.accepted().len(), 1);
}

/// A broker that refuses every publish.
struct Refusing;

impl actors::Broker for Refusing {
    fn publish_batch<'a>(
        &'a self,
        messages: &'a [actors::OutgoingMessage],
    ) -> futures::future::BoxFuture<'a, Vec<Result<(), actors::BrokerError>>> {
        Box::pin(async move {
            messages
                .iter()
                .map(|_| Err(actors::BrokerError("no responders".into())))
                .collect()
        })
    }
}

#[tokio::test]
async fn an_event_the_embedded_relay_cannot_publish_fails_its_request_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    // No retries: the first failed publish dead-letters the event.
    let store = SqliteStore::open(&dir.path().join("primed.db"), 0)
        .await
        .unwrap();
    let CreateOutcome::Created(created) = store.create(request("7", None)).await.unwrap() else {
        panic!("not created")
    };
    let args = RelayArgs {
        store: Arc::new(store.clone()),
        broker: Arc::new(Refusing),
        batch_size: 10,
        parallel_rounds: 1,
        lease: Duration::from_secs(30),
        poll_interval: Duration::from_secs(1),
        retry: RetryPolicy::default(),
        retention: Duration::from_secs(3600),
        prune_interval: Duration::from_secs(3600),
        wake: RelayWake::new("unused"),
        stats: Default::default(),
        background_settle: None,
    };
    assert_eq!(round(&args).await.unwrap().dead, 1);
    let got = store.get(&created.id).await.unwrap().unwrap();
    assert_eq!(got.status, actors::model::RequestStatus::Failed);
    assert!(
        got.error
            .as_deref()
            .unwrap()
            .contains("its event could not be published: publish failed: no responders"),
        "{got:?}"
    );
    let letter = actors::DlqStore::list(
        &store.shared(),
        actors::model::DlqQuery {
            limit: 10,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(letter.len(), 1);
    assert_eq!(letter[0].request_id.as_deref(), Some(created.id.as_str()));
    assert_eq!(letter[0].dlq_subject, "dlq.outbox");
}
