//! Two deployments on one NATS account: with its own `NATS_SUBJECT_PREFIX` each runs its
//! whole pipeline — its requests emailed, its dead letters copied to its own DLQ stream —
//! without seeing the other's messages; without one, the second is refused at start with
//! the stream that holds the subjects and the setting to change.
// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::pipeline::{daemon, daemon_env, dead_letters, request, submit};
use support::{NatsServer, SmtpStub, StubMode, TestDb, subject_messages};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_with_their_own_prefix_share_a_nats_account() {
    let nats = NatsServer::start();
    let (prod_db, staging_db) = (TestDb::create(), TestDb::create());
    let accept = SmtpStub::start(StubMode::Accept).await;
    let reject = SmtpStub::start(StubMode::Reject).await;
    let prod = daemon(&prod_db, &nats, accept.port, &[]);
    let staging = daemon(
        &staging_db,
        &nats,
        reject.port,
        &[
            ("NATS_STREAM", "STAGING"),
            ("NATS_SUBJECT_PREFIX", "staging"),
        ],
    );

    let done = submit(&prod, "97", "prod@example.com").await;
    let failed = submit(&staging, "89", "nobody@example.com").await;
    assert_eventually!(
        request(&prod, &done).await["status"] == "done" && !accept.accepted().is_empty(),
        "{}",
        request(&prod, &done).await
    );
    // The staging email is refused (550): its dead letter is staging's alone, under the
    // pipeline's own subject, copied to staging's DLQ stream.
    assert_eventually!(
        dead_letters(&staging, "status=pending").await.len() == 1,
        "no dead letter in staging"
    );
    let letter = &dead_letters(&staging, "status=pending").await[0];
    assert_eq!(letter["original_subject"], "email.send");
    assert_eq!(letter["request_id"], failed.as_str());
    assert!(dead_letters(&prod, "status=pending").await.is_empty());
    assert_eventually!(
        subject_messages(
            &nats.url(),
            "STAGING_DEAD_LETTER_QUEUE",
            "staging.dlq.emailsend"
        )
        .await
            == 1,
        "no copy in STAGING_DEAD_LETTER_QUEUE"
    );
    // Each stream holds its own deployment's messages only.
    assert_eq!(
        subject_messages(&nats.url(), "PRIME", "primecheck.requested").await,
        1
    );
    assert_eq!(
        subject_messages(&nats.url(), "STAGING", "staging.primecheck.requested").await,
        1
    );
    assert_eq!(
        subject_messages(&nats.url(), "DEAD_LETTER_QUEUE", "dlq.>").await,
        0
    );
    assert_eq!(accept.accepted().len(), 1, "prod's email only");

    // A third deployment with its own stream but no prefix: refused at once, saying why.
    let third_db = TestDb::create();
    let env = daemon_env(&third_db, &nats, accept.port, &[("NATS_STREAM", "OTHER")]);
    let out = support::primed()
        .arg("run")
        .env("PRIMED_HTTP_ADDR", "127.0.0.1:0")
        .env("PRIMED_DATA_DIR", tempfile::tempdir().unwrap().path())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("stream OTHER cannot take the subjects primecheck.*, email.*")
            && err.contains("stream PRIME already holds")
            && err.contains("NATS_SUBJECT_PREFIX")
            && err.contains("NATS_STREAM=PRIME"),
        "{err}"
    );
}

/// The tests' own servers: when the free port picked for one is taken by another test's
/// server before it binds (two picks can meet), it is not mistaken for that server and
/// moves to another port.
#[test]
fn a_test_server_whose_port_was_taken_moves_to_another() {
    let first = NatsServer::start();
    let second = NatsServer::start_on(first.port);
    assert_ne!(second.port, first.port);
    let first_redis = support::RedisServer::start();
    let second_redis = support::RedisServer::start_on(first_redis.port);
    assert_ne!(second_redis.port, first_redis.port);
    second_redis.cli(&["SET", "mine", "1"]).unwrap();
    assert_eq!(first_redis.cli(&["GET", "mine"]).as_deref(), Some(""));
}
