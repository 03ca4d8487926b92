//! The consumers, the retry policy and the DLQ end to end: a daemon against MariaDB, a
//! nats-server of each test's own, and maildev or a scripted SMTP stub.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Daemon, MailDev, NatsServer, SmtpStub, StubMode, TestDb};

use support::pipeline::{
    TOKEN, admin_get, admin_send, client, daemon, daemon_env, dead_letters, dlq_cli,
    migrated_store, pull_and_drop, reprocess, request, submit,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_checked_and_its_result_emailed_once() {
    let db = TestDb::create();
    let nats = NatsServer::start();
    let mail = MailDev::start();
    let d = daemon(&db, &nats, mail.smtp_port, &[]);

    let cases = [
        ("2", true, None),
        ("91", false, Some("7")),
        ("18446744073709551557", true, None),
        // 2^89 − 1, a Mersenne prime beyond 64 bits (Baillie–PSW path).
        ("618970019642690137449562111", true, None),
        ("1000000016000000063", false, None), // 1000000007 × 1000000009
    ];
    let mut ids = Vec::new();
    for (number, _, _) in &cases {
        ids.push(submit(&d, number, "someone@example.com").await);
    }
    for (id, (number, prime, factor)) in ids.iter().zip(&cases) {
        assert_eventually!(
            request(&d, id).await["status"] == "done",
            "request {id} for {number} is done"
        );
        let r = request(&d, id).await;
        assert_eq!(r["is_prime"], json!(prime), "{number}");
        assert_eq!(r["factor"].as_str(), *factor, "{number}");
    }
    assert_eventually!(
        mail.emails().await.len() == cases.len(),
        "one email per request"
    );
    let emails = mail.emails().await;
    for e in &emails {
        let subject = e["subject"].as_str().unwrap();
        assert!(subject.starts_with("Prime check result: "), "{subject}");
        assert_eq!(e["to"][0]["address"], "someone@example.com");
        let message_id = e["messageId"].as_str().unwrap_or_default();
        assert!(
            message_id.ends_with("@primed>") || message_id.ends_with("@primed"),
            "{e}"
        );
    }
    assert!(
        emails
            .iter()
            .any(|e| e["subject"] == "Prime check result: 91 is not prime")
    );

    // Every effect and every attempt was recorded once per event.
    assert_eq!(db.count("SELECT COUNT(*) FROM processed_events"), 5);
    assert_eq!(db.count("SELECT COUNT(*) FROM sent_emails"), 5);
    // Attempt logs are written when a pull ends.
    assert_eventually!(
        db.count("SELECT COUNT(*) FROM message_processing_logs WHERE status = 'success'") == 10,
        "one success log per event and consumer"
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM dead_letter_messages"), 0);
    // Nothing more can arrive (no duplicate email): no message waits or is in flight.
    assert_eventually!(
        support::consumers_idle(&nats.url()).await,
        "the consumers hold nothing"
    );
    assert_eq!(mail.emails().await.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_address_is_a_permanent_dead_letter_with_its_stream_copy_and_statistics() {
    let db = TestDb::create();
    let nats = NatsServer::start();
    let stub = SmtpStub::start(StubMode::Reject).await;
    let d = daemon(&db, &nats, stub.port, &[]);
    let id = submit(&d, "97", "nobody@example.com").await;

    assert_eventually!(
        dead_letters(&d, "subject=dlq.emailsend").await.len() == 1,
        "the email is dead-lettered"
    );
    let letter = &dead_letters(&d, "").await[0];
    assert_eq!(letter["error_type"], "permanent");
    assert_eq!(letter["original_subject"], "email.send");
    assert_eq!(letter["status"], "pending");
    assert_eq!(letter["retry_count"], 1, "no retry for a permanent failure");
    assert_eq!(letter["request_id"], id.as_str());
    assert!(
        letter["error_message"].as_str().unwrap().contains("550"),
        "{letter}"
    );
    assert_eq!(letter["payload"]["number"], "97");
    assert_eq!(stub.attempt_times().len(), 1);

    // The result itself stands: only its email failed.
    assert_eq!(request(&d, &id).await["status"], "done");
    assert_eventually!(
        support::stream_messages(&nats.url(), "DEAD_LETTER_QUEUE").await == 1,
        "the dead letter is copied to dlq.emailsend"
    );
    let stats = admin_get(&d, "/api/dlq/stats").await;
    assert_eq!(stats["by_error_type"]["permanent"], 1);
    assert_eq!(stats["by_subject"]["dlq.emailsend"], 1);
    assert_eq!(stats["hourly"][0]["count"], 1);
    // Attempt logs are written when the worker's pull ends (up to a second later).
    assert_eventually!(
        db.count("SELECT COUNT(*) FROM message_processing_logs WHERE status = 'failed'") == 1,
        "the failed attempt is logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_email_is_retried_with_backoff_then_dead_lettered_and_reprocessed() {
    let db = TestDb::create();
    let nats = NatsServer::start();
    let stub = SmtpStub::start(StubMode::Defer).await;
    // The breaker must not open here: three deferrals in a row. The email subject's own
    // policy (3 deliveries) wins over the global one (5).
    let d = daemon(
        &db,
        &nats,
        stub.port,
        &[
            ("PRIMED_SMTP_BREAKER_THRESHOLD", "10"),
            ("PRIMED_MAX_DELIVER", "5"),
            ("PRIMED_EMAIL_MAX_DELIVER", "3"),
        ],
    );
    let id = submit(&d, "101", "busy@example.com").await;
    assert_eventually!(
        dead_letters(&d, "error_type=transient").await.len() == 1,
        "dead-lettered after its deliveries"
    );
    // Three deliveries (MaxDeliver 3), spaced by the NAK delays 300 ms and 600 ms.
    let times = stub.attempt_times();
    assert_eq!(times.len(), 3, "{times:?}");
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1].0 - w[0].0).collect();
    assert!(gaps[0] >= Duration::from_millis(300), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(600), "{gaps:?}");
    let logs = || {
        db.sql(
            "SELECT status FROM message_processing_logs WHERE subject = 'email.send' ORDER BY id",
        )
        .split_whitespace()
        .map(str::to_string)
        .collect::<Vec<_>>()
    };
    assert_eventually!(logs().len() == 3, "three attempts logged");
    assert_eq!(logs(), vec!["retry", "retry", "failed"]);
    let letter = &dead_letters(&d, "").await[0];
    assert_eq!(letter["retry_count"], 3);
    assert!(
        letter["error_message"].as_str().unwrap().contains("451"),
        "{letter}"
    );
    // Past its deliveries: the row, its stream copy and its hourly count.
    assert_eventually!(
        support::subject_messages(&nats.url(), "DEAD_LETTER_QUEUE", "dlq.emailsend").await == 1,
        "the dead letter is copied to dlq.emailsend"
    );
    let stats = admin_get(&d, "/api/dlq/stats").await;
    assert_eq!(stats["by_error_type"]["transient"], 1, "{stats}");
    assert_eq!(stats["hourly"][0]["subject"], "dlq.emailsend");

    // The mailbox recovers; an operator reprocesses the letter.
    stub.set_mode(StubMode::Accept);
    let dlq_id = letter["id"].as_i64().unwrap();
    let (_, r) = reprocess(
        &d,
        json!({"message_ids": [dlq_id.to_string()], "operator": "alice", "reason": "mailbox fixed"}),
    )
    .await;
    assert_eq!(r["succeeded"], 1, "{r}");
    assert_eventually!(
        admin_get(&d, &format!("/api/dlq/messages/{dlq_id}")).await["status"] == "resolved",
        "the reprocessed letter is resolved"
    );
    let letter = admin_get(&d, &format!("/api/dlq/messages/{dlq_id}")).await;
    assert_eq!(letter["resolved_by"], "alice");
    assert_eq!(letter["reason"], "mailbox fixed");
    assert!(letter["resolved_at"].is_string());
    assert_eq!(stub.accepted().len(), 1, "the email went out once");
    assert_eq!(request(&d, &id).await["status"], "done");

    // A second reprocess of a resolved letter is refused without force.
    let (_, r) = reprocess(&d, json!({"message_ids": [dlq_id], "operator": "alice"})).await;
    assert_eq!(r["failed"], 1, "{r}");
    assert!(
        r["results"][0]["error"]
            .as_str()
            .unwrap()
            .contains("resolved")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reprocess_that_fails_again_returns_to_pending_and_discard_closes_it() {
    let db = TestDb::create();
    let nats = NatsServer::start();
    let stub = SmtpStub::start(StubMode::Reject).await;
    let d = daemon(&db, &nats, stub.port, &[]);
    submit(&d, "13", "gone@example.com").await;
    assert_eventually!(dead_letters(&d, "").await.len() == 1, "dead-lettered");
    let dlq_id = dead_letters(&d, "").await[0]["id"].as_i64().unwrap();

    let (status, _) = reprocess(
        &d,
        json!({"message_ids": [dlq_id], "operator": "bob", "override_delay": "200ms"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eventually!(
        {
            let l = admin_get(&d, &format!("/api/dlq/messages/{dlq_id}")).await;
            l["status"] == "pending" && l["reprocess_count"] == 1
        },
        "the failed reprocess is pending again"
    );
    assert_eq!(stub.attempt_times().len(), 2);
    assert_eq!(
        dead_letters(&d, "").await.len(),
        1,
        "the same row, not a new one"
    );

    let (_, r) = admin_send(
        &d,
        reqwest::Method::DELETE,
        "/api/dlq/discard",
        &json!({"message_ids": [dlq_id], "operator": "bob", "reason": "address is gone"}),
    )
    .await;
    assert_eq!(r["succeeded"], 1, "{r}");
    let l = admin_get(&d, &format!("/api/dlq/messages/{dlq_id}")).await;
    assert_eq!(l["status"], "discarded");
    assert_eq!(l["resolved_by"], "bob");
    assert_eq!(dead_letters(&d, "status=discarded").await.len(), 1);
    assert_eq!(dead_letters(&d, "status=pending").await.len(), 0);

    // Bad input is a clear 4xx; no token is a 401.
    for (body, code) in [
        (json!({"message_ids": [], "operator": "x"}), "invalid_ids"),
        (
            json!({"message_ids": ["abc"], "operator": "x"}),
            "invalid_ids",
        ),
        (
            json!({"message_ids": [1], "operator": ""}),
            "invalid_operator",
        ),
        (
            json!({"message_ids": [1], "operator": "x", "override_delay": "soon"}),
            "invalid_delay",
        ),
    ] {
        let (status, r) = reprocess(&d, body.clone()).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(r["error"], code);
    }
    let r = client()
        .get(d.url("/api/dlq/messages"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .get(d.url("/api/dlq/messages?status=lost"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_smtp_is_down_the_breaker_holds_mail_and_nothing_reaches_the_dlq() {
    let db = TestDb::create();
    let nats = NatsServer::start();
    // Nothing listens on this port yet: connection refused.
    let port = support::free_addr().port();
    let d = daemon(
        &db,
        &nats,
        port,
        &[
            ("PRIMED_SMTP_BREAKER_THRESHOLD", "2"),
            ("PRIMED_SMTP_BREAKER_COOLDOWN_SECONDS", "1"),
            ("PRIMED_ACK_WAIT_SECONDS", "3"),
        ],
    );
    let mut ids = Vec::new();
    for n in ["3", "4", "5", "6", "7", "8"] {
        ids.push(submit(&d, n, "patient@example.com").await);
    }
    for id in &ids {
        assert_eventually!(request(&d, id).await["status"] == "done", "{id} checked");
    }
    let mut d = d;
    d.wait_for_log("SMTP circuit breaker opened");
    // Four more failed probes, a cool-down (1 s) apart: longer than the ack wait (3 s) and
    // the retry budget; a naive consumer would have burned every delivery by now.
    assert_eventually!(
        d.log_so_far()
            .matches("SMTP circuit breaker opened")
            .count()
            >= 5,
        "the breaker probed and opened again four times"
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM dead_letter_messages"), 0);

    let mail = MailDev::start_on(port);
    assert_eventually!(
        mail.emails().await.len() == ids.len(),
        "every email is sent; daemon log:\n{}",
        d.log_so_far()
    );
    assert_eventually!(
        support::consumers_idle(&nats.url()).await,
        "the consumers hold nothing"
    );
    assert_eq!(mail.emails().await.len(), ids.len(), "each once");
    assert_eq!(
        db.count("SELECT COUNT(*) FROM sent_emails"),
        ids.len() as i64
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM dead_letter_messages"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_answering_421_holds_mail_like_an_outage_and_spends_no_deliveries() {
    let db = TestDb::create();
    let nats = NatsServer::start();
    // 421 is the server turning everyone away, not a verdict on this email (451 is).
    let stub = SmtpStub::start(StubMode::Unavailable).await;
    let mut d = daemon(
        &db,
        &nats,
        stub.port,
        &[
            ("PRIMED_SMTP_BREAKER_THRESHOLD", "2"),
            ("PRIMED_SMTP_BREAKER_COOLDOWN_SECONDS", "1"),
            ("PRIMED_EMAIL_MAX_DELIVER", "2"),
        ],
    );
    let id = submit(&d, "13", "later@example.com").await;
    // More attempts than deliveries: a 421 that spent a delivery would have dead-lettered
    // the email after the second and never tried a third time.
    assert_eventually!(
        stub.attempt_times().len() >= 4,
        "the held email is tried again while the server answers 421; daemon log:\n{}",
        d.log_so_far()
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM dead_letter_messages"), 0);
    assert!(request(&d, &id).await["status"] == "done");

    stub.set_mode(StubMode::Accept);
    assert_eventually!(
        stub.accepted().len() == 1,
        "the email is sent once the server is back"
    );
    assert_eventually!(
        support::consumers_idle(&nats.url()).await,
        "the consumers hold nothing"
    );
    assert_eq!(stub.accepted().len(), 1, "once");
    assert_eq!(db.count("SELECT COUNT(*) FROM sent_emails"), 1);
    assert_eq!(db.count("SELECT COUNT(*) FROM dead_letter_messages"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_and_over_limit_messages_are_dead_lettered_at_once() {
    let db = TestDb::create();
    let nats = NatsServer::start();
    let mail = MailDev::start();
    let d = daemon(
        &db,
        &nats,
        mail.smtp_port,
        &[("PRIMED_PRIME_TIMEOUT_MS", "1")],
    );

    // Something that is not a prime-check request lands on the subject.
    let client_nats = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client_nats);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "poison-1");
    js.publish_with_headers("primecheck.requested", headers, "{not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eventually!(
        dead_letters(&d, "error_type=poison").await.len() == 1,
        "the poison message is dead-lettered"
    );
    let letter = &dead_letters(&d, "error_type=poison").await[0];
    assert_eq!(letter["original_message_id"], "poison-1");
    assert_eq!(letter["retry_count"], 1);
    assert_eq!(letter["payload"]["undecodable"], "{not json");

    // The Mersenne prime 2^2203 − 1 (664 digits; no small factor ends its test early, as one
    // of 2^1999 − 1, which is composite, could) cannot be tested within 1 ms: a permanent
    // error with its reason, and no answer.
    let big = (actors::primality::UBig::ONE << 2203) - actors::primality::UBig::ONE;
    assert!(
        actors::primality::is_prime_big(&big),
        "the test's number is prime"
    );
    let id = submit(&d, &big.to_string(), "patient@example.com").await;
    assert_eventually!(request(&d, &id).await["status"] == "failed", "{id} failed");
    let r = request(&d, &id).await;
    assert!(r["error"].as_str().unwrap().contains("time limit"), "{r}");
    assert_eq!(r["is_prime"], Value::Null, "no answer was given: {r}");
    let letter = &dead_letters(&d, "error_type=permanent").await[0];
    assert_eq!(letter["dlq_subject"], "dlq.primecheck");
    assert_eq!(letter["request_id"], id.as_str());

    // Auto rules never touch poison.
    assert_eq!(mail.emails().await.len(), 0);
}

fn prime_request_payload(request_id: &str, number: &str) -> bytes::Bytes {
    serde_json::to_vec(
        &json!({"request_id": request_id, "number": number, "email": "x@example.com"}),
    )
    .unwrap()
    .into()
}

/// Pulls one message from the prime-check consumer and drops it without an ack: a worker
/// that died mid-message.
async fn pull_and_die(js: &async_nats::jetstream::Context) -> String {
    pull_and_drop(js, Duration::from_secs(5))
        .await
        .expect("a message")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_worker_died_is_redelivered_and_after_its_last_delivery_dead_lettered() {
    use primed::adapters::nats::{JetStreamBroker, JetStreamSettings};
    let db = TestDb::create();
    let nats = NatsServer::start();
    let mail = MailDev::start();
    // The daemon's settings: 2 deliveries, redelivery 500 ms after an unacknowledged one.
    let mut settings = JetStreamSettings::new("PRIME");
    settings.max_deliver = 2;
    settings.backoff = vec![Duration::from_millis(500)];
    let (broker, client) = JetStreamBroker::connect(&nats.url(), &settings)
        .await
        .unwrap();
    broker.ensure_topology(&settings).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let publish = |id: &'static str, number: &'static str| {
        let js = js.clone();
        async move {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", id);
            js.publish_with_headers(
                "primecheck.requested",
                headers,
                prime_request_payload(id, number),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
    };

    // "lost": two workers in a row die holding it; JetStream gives up on it and says so in a
    // max-deliveries advisory (when it next tries to deliver, i.e. once a worker pulls).
    publish("lost-event", "7").await;
    assert_eq!(pull_and_die(&js).await, "lost-event");
    assert_eq!(pull_and_die(&js).await, "lost-event");
    // "survivor": one worker dies holding it; a live one gets it after the ack deadline.
    publish("survivor-event", "11").await;
    assert_eq!(pull_and_die(&js).await, "survivor-event");

    let d = daemon(
        &db,
        &nats,
        mail.smtp_port,
        &[
            ("PRIMED_MAX_DELIVER", "2"),
            ("PRIMED_RETRY_BACKOFF", "500ms"),
        ],
    );
    assert_eventually!(
        db.count("SELECT COUNT(*) FROM processed_events WHERE event_id = 'survivor-event'") == 1,
        "the survivor is processed on its second delivery"
    );
    assert_eventually!(mail.emails().await.len() == 1, "and its email sent");
    assert_eventually!(
        dead_letters(&d, "").await.len() == 1,
        "the lost message is dead-lettered from the advisory"
    );
    let letter = &dead_letters(&d, "").await[0];
    assert_eq!(letter["original_message_id"], "lost-event");
    assert_eq!(letter["error_type"], "transient");
    assert_eq!(letter["retry_count"], 2);
    assert_eq!(letter["payload"]["number"], "7");
    assert!(
        letter["error_message"]
            .as_str()
            .unwrap()
            .contains("without an acknowledgement"),
        "{letter}"
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM processed_events WHERE event_id = 'lost-event'"),
        0
    );
    assert_eq!(
        support::stream_messages(&nats.url(), "PRIME_ADVISORIES").await,
        1,
        "the advisory was kept in its stream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_automatic_rule_republishes_matching_dead_letters_up_to_its_budget() {
    let db = TestDb::create();
    let nats = NatsServer::start();
    let stub = SmtpStub::start(StubMode::Defer).await;
    let d = daemon(
        &db,
        &nats,
        stub.port,
        &[
            ("PRIMED_SMTP_BREAKER_THRESHOLD", "100"),
            (
                "PRIMED_DLQ_RULES",
                "deferred-mail:1s:1:email.send:(?i)deferred",
            ),
            ("PRIMED_DLQ_RULE_INTERVAL_SECONDS", "1"),
        ],
    );
    submit(&d, "29", "later@example.com").await;
    assert_eventually!(dead_letters(&d, "").await.len() == 1, "dead-lettered");
    let dlq_id = dead_letters(&d, "").await[0]["id"].as_i64().unwrap();
    // The rule republishes it once: three more deliveries, then pending again.
    assert_eventually!(
        {
            let l = admin_get(&d, &format!("/api/dlq/messages/{dlq_id}")).await;
            l["auto_retry_count"] == 1 && l["status"] == "pending"
        },
        "the rule retried it once"
    );
    let l = admin_get(&d, &format!("/api/dlq/messages/{dlq_id}")).await;
    assert_eq!(l["operator"], "rule:deferred-mail");
    assert_eq!(stub.attempt_times().len(), 6);
    // Its budget is spent: two more rounds of the rule republish nothing.
    let rounds = support::sample(&support::scrape(&d).await, "dlq_rule_rounds_total");
    assert_eventually!(
        support::sample(&support::scrape(&d).await, "dlq_rule_rounds_total") >= rounds + 2.0,
        "the rule ran twice more"
    );
    assert_eq!(stub.attempt_times().len(), 6);
    let l = admin_get(&d, &format!("/api/dlq/messages/{dlq_id}")).await;
    assert_eq!(
        (l["auto_retry_count"].as_i64(), l["status"].as_str()),
        (Some(1), Some("pending"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn effects_are_recorded_once_per_event() {
    use actors::WorkerStore;
    use actors::model::{EmailSend, PrimeResult, SentEmail};
    let db = TestDb::create();
    let store = migrated_store(&db, 4).await;
    let result = |email_event: &str| PrimeResult {
        event_id: "event-1".into(),
        email_event_id: email_event.into(),
        email: EmailSend {
            request_id: "r-1".into(),
            number: "5".into(),
            email: "a@example.com".into(),
            is_prime: true,
            factor: None,
            digits: 1,
        },
        duration: Duration::from_micros(3),
        request_id: None,
        traceparent: None,
    };
    assert!(store.record_result(result("email-1")).await.unwrap());
    assert!(
        !store.record_result(result("email-2")).await.unwrap(),
        "a redelivery changes nothing"
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM outbox WHERE subject = 'email.send'"),
        1
    );

    let sent = SentEmail {
        event_id: "email-1".into(),
        request_id: "r-1".into(),
        recipient: "a@example.com".into(),
        message_id: "<email-1@primed>".into(),
    };
    assert!(!store.email_sent("email-1").await.unwrap());
    assert!(store.record_email(sent.clone()).await.unwrap());
    assert!(!store.record_email(sent).await.unwrap());
    assert!(store.email_sent("email-1").await.unwrap());

    let letter = email_letter("email-9");
    assert!(store.dead_letter(letter.clone()).await.unwrap().is_some());
    assert_eq!(
        store.dead_letter(letter).await.unwrap(),
        None,
        "not twice while pending"
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM dead_letter_messages"), 1);
    assert_eq!(db.count("SELECT SUM(count) FROM dlq_statistics"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dlq_cli_lists_reprocesses_in_batches_with_progress_and_discards() {
    let db = TestDb::create();
    let nats = NatsServer::start();
    let stub = SmtpStub::start(StubMode::Reject).await;
    let d = daemon(&db, &nats, stub.port, &[]);
    for n in ["2", "3", "5"] {
        submit(&d, n, "nobody@example.com").await;
    }
    assert_eventually!(dead_letters(&d, "").await.len() == 3, "three dead letters");
    let base = d.url("");
    let cli = |args: &[&str]| dlq_cli(&d, args);
    let (code, list, _) = cli(&["list", "--status", "pending"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        list.lines().filter(|l| l.contains("email.send")).count(),
        3,
        "{list}"
    );
    assert!(list.contains("permanent"), "{list}");

    let (code, out, err) = cli(&[
        "reprocess",
        "--batch",
        "2",
        "--operator",
        "carol",
        "--force",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("republished 3 of 3"), "{out}");
    assert!(
        err.contains("reprocess: 2/3") && err.contains("reprocess: 3/3"),
        "{err}"
    );
    assert_eventually!(
        db.count("SELECT SUM(reprocess_count) FROM dead_letter_messages WHERE operator = 'carol'")
            == 3,
        "every letter was reprocessed once by carol"
    );
    // They fail again (the stub still rejects) and are pending again.
    assert_eventually!(
        dead_letters(&d, "status=pending").await.len() == 3,
        "pending again after failing"
    );
    let first = dead_letters(&d, "").await[0]["id"]
        .as_i64()
        .unwrap()
        .to_string();
    let (code, out, _) = cli(&["discard", &first, "--operator", "carol", "--reason", "test"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("discarded 1"), "{out}");
    let (code, stats, _) = cli(&["stats", "--json"]);
    assert_eq!(code, Some(0));
    let stats: Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["by_status"]["discarded"], 1);
    assert_eq!(stats["by_status"]["pending"], 2);

    // A wrong token is refused with a clear message and a non-zero exit.
    let out = support::primed()
        .args([
            "dlq",
            "--url",
            base.trim_end_matches('/'),
            "--token",
            "wrong",
            "list",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthorized"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_effects_are_written_together_and_each_gets_its_own_answer() {
    use actors::WorkerStore;
    use actors::model::{EmailSend, PrimeResult, SentEmail};
    use primed::adapters::mysql::{MysqlStore, PoolSettings};
    let db = TestDb::create();
    let store = MysqlStore::connect(
        &primed::config::Secret::new(db.url.clone()),
        PoolSettings {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(5),
            outbox_max_retries: 3,
        },
    )
    .unwrap();
    store.migrate().await.unwrap();
    const N: usize = 60;
    let rows: Vec<String> = (0..N)
        .map(|i| format!("('r-{i}', '{i}', 'a{i}@example.com')"))
        .collect();
    db.sql(&format!(
        "INSERT INTO prime_check_requests (id, number, email) VALUES {}",
        rows.join(", ")
    ));
    let result = |i: usize| PrimeResult {
        event_id: format!("e-{i}"),
        email_event_id: format!("m-{i}"),
        email: EmailSend {
            request_id: format!("r-{i}"),
            number: i.to_string(),
            email: format!("a{i}@example.com"),
            is_prime: i.is_multiple_of(2),
            factor: (i % 2 == 1).then(|| format!("f{i}")),
            digits: i,
        },
        duration: Duration::from_micros(i as u64),
        request_id: None,
        traceparent: None,
    };
    // Event 7 was handled before: in whatever batch it lands, it alone answers false.
    assert!(store.record_result(result(7)).await.unwrap());
    let answers = futures::future::join_all((0..N).map(|i| {
        let store = store.clone();
        let r = result(i);
        async move { store.record_result(r).await.unwrap() }
    }))
    .await;
    for (i, fresh) in answers.iter().enumerate() {
        assert_eq!(*fresh, i != 7, "result {i}");
    }
    assert_eq!(
        db.count("SELECT COUNT(*) FROM outbox WHERE subject = 'email.send'"),
        N as i64
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM processed_events"), N as i64);
    // Each request got its own values (the batch updates all of them in one statement).
    let stored = db.sql(
        "SELECT id, status, is_prime, COALESCE(factor, '-'), digits, duration_us FROM prime_check_requests ORDER BY id",
    );
    let mut seen = 0;
    for line in stored.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let i: usize = f[0].trim_start_matches("r-").parse().unwrap();
        let factor = if i % 2 == 1 {
            format!("f{i}")
        } else {
            "-".into()
        };
        assert_eq!(
            &f[1..],
            &[
                "done",
                if i.is_multiple_of(2) { "1" } else { "0" },
                factor.as_str(),
                i.to_string().as_str(),
                i.to_string().as_str()
            ],
            "request r-{i}"
        );
        seen += 1;
    }
    assert_eq!(seen, N);

    // Sent emails: recorded together, one known before; checks read together.
    let sent = |i: usize| SentEmail {
        event_id: format!("m-{i}"),
        request_id: format!("r-{i}"),
        recipient: format!("a{i}@example.com"),
        message_id: format!("<m-{i}@primed>"),
    };
    assert!(store.record_email(sent(3)).await.unwrap());
    let answers = futures::future::join_all((0..N).map(|i| {
        let store = store.clone();
        async move { store.record_email(sent(i)).await.unwrap() }
    }))
    .await;
    for (i, fresh) in answers.iter().enumerate() {
        assert_eq!(*fresh, i != 3, "sent email {i}");
    }
    assert_eq!(db.count("SELECT COUNT(*) FROM sent_emails"), N as i64);
    let checks = futures::future::join_all((0..N + 10).map(|i| {
        let store = store.clone();
        async move { store.email_sent(&format!("m-{i}")).await.unwrap() }
    }))
    .await;
    for (i, was) in checks.iter().enumerate() {
        assert_eq!(*was, i < N, "check {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_filters_past_2038_still_match() {
    use actors::model::DlqQuery;
    use actors::{DlqStore, WorkerStore};
    let db = TestDb::create();
    let store = migrated_store(&db, 2).await;
    store.dead_letter(email_letter("email-2038")).await.unwrap();
    let at = |rfc3339: &str| {
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .with_timezone(&chrono::Utc)
    };
    let count = |since: Option<&str>, until: Option<&str>| {
        let query = DlqQuery {
            since: since.map(at),
            until: until.map(at),
            limit: 10,
            ..Default::default()
        };
        let dlq = store.shared();
        async move { dlq.list(query).await.unwrap().len() }
    };
    assert_eq!(
        count(None, Some("2099-01-01T00:00:00Z")).await,
        1,
        "until 2099"
    );
    assert_eq!(
        count(Some("1900-01-01T00:00:00Z"), None).await,
        1,
        "since 1900"
    );
    assert_eq!(
        count(Some("1900-01-01T00:00:00Z"), Some("2999-12-31T00:00:00Z")).await,
        1
    );
    assert_eq!(
        count(Some("2099-01-01T00:00:00Z"), None).await,
        0,
        "since 2099"
    );
    assert_eq!(
        count(None, Some("1960-01-01T00:00:00Z")).await,
        0,
        "until 1960"
    );
}

/// A transient dead letter of the email `message_id`, as an email worker writes it.
fn email_letter(message_id: &str) -> actors::model::NewDeadLetter {
    actors::model::NewDeadLetter {
        original_subject: "email.send".into(),
        original_message_id: Some(message_id.into()),
        payload: b"{}".to_vec(),
        error: "boom".into(),
        error_type: actors::model::ErrorClass::Transient,
        retry_count: 3,
        original_created_at: chrono::Utc::now(),
        request_id: None,
        dlq_id: None,
    }
}

/// The duplicate window: a daemon killed after the SMTP server accepted an email and before
/// the email's record committed. Its send journal, read when it starts again, records the
/// email before any message is taken, so the redelivery does not send it a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_between_the_servers_acceptance_and_the_record_does_not_send_again() {
    use sqlx::Connection;
    let db = TestDb::create();
    let nats = NatsServer::start();
    let stub = SmtpStub::start(StubMode::Accept).await;
    let (_tmp, data_dir) = support::temp_path("data");
    let env = daemon_env(&db, &nats, stub.port, &[]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut d = Daemon::start_in(&data_dir, &env);

    stub.hold_replies();
    let id = submit(&d, "97", "window@example.com").await;
    stub.held().await;
    // The server has the email. Keep its record from committing, then let the 250 go.
    let mut locker = sqlx::MySqlConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql("LOCK TABLES sent_emails WRITE")
        .execute(&mut locker)
        .await
        .unwrap();
    stub.release();
    assert_eventually!(
        db.count(
            "SELECT COUNT(*) FROM information_schema.processlist \
             WHERE info LIKE 'INSERT INTO sent_emails%'"
        ) == 1,
        "the daemon heard the 250 and waits to record the email"
    );
    d.signal(nix::sys::signal::Signal::SIGKILL);
    d.wait_exit();
    // The server would still run the statement of the dead client once the lock is gone;
    // end it, as if the kill had come before it was sent.
    let waiting = db.sql(
        "SELECT id FROM information_schema.processlist WHERE info LIKE 'INSERT INTO sent_emails%'",
    );
    db.sql(&format!("KILL {}", waiting.trim()));
    sqlx::raw_sql("UNLOCK TABLES")
        .execute(&mut locker)
        .await
        .unwrap();
    assert_eq!(db.count("SELECT COUNT(*) FROM sent_emails"), 0, "no record");
    assert_eq!(stub.accepted().len(), 1);

    // Started again on its data directory: the message comes back to it.
    let mut d = Daemon::start_in(&data_dir, &env);
    d.wait_for_log("the send journal of the previous run is recorded");
    assert_eventually!(
        support::consumers_idle(&nats.url()).await,
        "the redelivered message is handled"
    );
    let event = db.sql(&format!(
        "SELECT event_id FROM sent_emails WHERE request_id = '{id}'"
    ));
    assert_eq!(
        stub.accepted(),
        vec![format!("<{}@primed>", event.trim())],
        "one email, recorded once"
    );
    assert_eq!(request(&d, &id).await["status"], "done");
}

/// An email sent whose record failed every time is retried; the retry records it from the
/// daemon's send journal instead of sending it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_sent_but_not_recorded_is_recorded_on_its_retry_not_sent_again() {
    let db = TestDb::create();
    let nats = NatsServer::start();
    let stub = SmtpStub::start(StubMode::Accept).await;
    let mut d = daemon(&db, &nats, stub.port, &[]);

    stub.hold_replies();
    let id = submit(&d, "89", "record@example.com").await;
    stub.held().await;
    // Every attempt to record it fails while the table is away.
    db.sql("RENAME TABLE sent_emails TO sent_emails_away");
    stub.release();
    let line = d.wait_for_log("transient failure; retrying");
    assert!(
        line.contains("could not record") || line.contains("refused the write"),
        "{line}"
    );
    db.sql("RENAME TABLE sent_emails_away TO sent_emails");

    assert_eventually!(
        db.count("SELECT COUNT(*) FROM sent_emails") == 1,
        "the retry records the email"
    );
    assert_eventually!(
        support::consumers_idle(&nats.url()).await,
        "the retried message is handled"
    );
    assert_eq!(stub.accepted().len(), 1, "sent once: {:?}", stub.accepted());
    assert_eq!(request(&d, &id).await["status"], "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smtp_concurrency_limit_holds_under_load() {
    let db = TestDb::create();
    let nats = NatsServer::start();
    let stub = SmtpStub::start(StubMode::Accept).await;
    // A slow server and more work than the limit: 4 email workers pulling 16 each could
    // send 64 at once; the limit says 3.
    stub.slow_replies(Duration::from_millis(40));
    let d = daemon(
        &db,
        &nats,
        stub.port,
        &[
            ("PRIMED_SMTP_CONCURRENCY", "3"),
            ("PRIMED_EMAIL_WORKERS", "4"),
        ],
    );
    let mut ids = Vec::new();
    for i in 0..60 {
        ids.push(submit(&d, &(1000 + i).to_string(), &format!("load{i}@example.com")).await);
    }
    assert_eventually!(
        stub.accepted().len() == 60,
        "{} of 60 emails accepted",
        stub.accepted().len()
    );
    // The limit was reached (the load was there) and never passed.
    assert_eq!(stub.most_in_flight(), 3, "sends in flight at once");
    for id in &ids {
        assert_eq!(request(&d, id).await["status"], "done");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_under_load_loses_and_doubles_nothing() {
    use nix::sys::signal::Signal;
    let db = TestDb::create();
    let nats = NatsServer::start();
    let stub = SmtpStub::start(StubMode::Accept).await;
    // A slow SMTP server (8 sends at once, 50 ms each): emails are being sent and more wait
    // in the stream when the stop comes.
    stub.slow_replies(Duration::from_millis(50));
    let env = daemon_env(&db, &nats, stub.port, &[]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut first = Daemon::start(&env);
    let url = first.url("/prime-check");

    // Four clients submit without pause; each remembers what was accepted (202).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (url, stop) = (url.clone(), stop.clone());
            tokio::spawn(async move {
                let http = client();
                let mut accepted = Vec::new();
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    i += 1;
                    let email = format!("c{c}-{i}@example.com");
                    let sent = http
                        .post(&url)
                        .json(&json!({"number": (1_000_003 + i).to_string(), "email": email}))
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status() == 202 => {
                            let id = r.json::<Value>().await.unwrap()["id"]
                                .as_str()
                                .unwrap()
                                .to_string();
                            accepted.push((id, email));
                        }
                        // Refused while stopping (503), or nobody listening any more.
                        _ => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
                accepted
            })
        })
        .collect();

    // Stop in the middle of it: requests arriving, messages handled, emails being sent.
    assert_eventually!(stub.accepted().len() >= 20, "the pipeline is not busy yet");
    first.signal(Signal::SIGTERM);
    assert_eq!(first.wait_exit().code(), Some(0), "a clean stop");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut accepted = Vec::new();
    for c in clients {
        accepted.extend(c.await.unwrap());
    }
    assert!(accepted.len() >= 10, "{} accepted", accepted.len());
    let emailed_before = stub.recipients().len();
    eprintln!(
        "accepted {}, emailed before the restart {emailed_before}",
        accepted.len()
    );

    // Started again on the same database, stream and data directory, it finishes the rest.
    let second = Daemon::start_in(&first.data_dir, &env);
    assert_eventually!(
        stub.recipients().len() >= accepted.len(),
        "{} of {} accepted requests emailed",
        stub.recipients().len(),
        accepted.len()
    );
    for (id, _) in &accepted {
        assert_eventually!(
            request(&second, id).await["status"] == "done",
            "{id}: {}",
            request(&second, id).await
        );
    }
    let mut sent = std::collections::HashMap::<String, usize>::new();
    for to in stub.recipients() {
        *sent.entry(to).or_default() += 1;
    }
    let doubled: Vec<_> = sent.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "emailed twice: {doubled:?}");
    let lost: Vec<_> = accepted
        .iter()
        .filter(|(_, email)| !sent.contains_key(email))
        .collect();
    assert!(lost.is_empty(), "accepted but never emailed: {lost:?}");
    assert!(
        emailed_before < accepted.len(),
        "the stop left work for the restart ({emailed_before} of {} emailed before it)",
        accepted.len()
    );
}
