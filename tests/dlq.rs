//! The DLQ's operator tools end to end (issue 20): error fingerprints and groups, group
//! discard, edit and retry, the audit trail, safe replay jobs (canary, ramp, auto-abort,
//! restart, pause/resume/cancel), replay when the SMTP breaker heals, crash-loop quarantine
//! and the reconciler for lost max-deliveries advisories — over the API and the `primed dlq`
//! CLI, against MariaDB, NATS and a scripted SMTP server, and in embedded mode.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use actors::WorkerStore;
use actors::model::{ErrorClass, NewDeadLetter};
use serde_json::{Value, json};
use support::pipeline::{
    TOKEN, admin_get, admin_send, client, daemon, dead_letters, dlq_cli as cli, migrated_store,
    pull_and_drop, request, submit,
};
use support::{Daemon, NatsServer, SmtpStub, StubMode, TestDb};

/// A dead letter of an email that failed with `error`, as a worker writes it.
fn email_failure(message_id: &str, class: ErrorClass, error: &str) -> NewDeadLetter {
    NewDeadLetter {
        original_subject: "email.send".into(),
        original_message_id: Some(message_id.into()),
        payload: json!({"request_id": message_id, "number": "7", "email": "a@example.com",
                        "is_prime": true, "factor": null, "digits": 1})
        .to_string()
        .into_bytes(),
        error: error.into(),
        error_type: class,
        retry_count: 1,
        original_created_at: chrono::Utc::now(),
        request_id: None,
        dlq_id: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_that_failed_the_same_way_form_a_group_that_is_discarded_at_once() {
    let db = TestDb::create();
    let nats = NatsServer::start();
    let store = migrated_store(&db, 2).await;
    let rejected = |id: &str, error: &str| email_failure(id, ErrorClass::Permanent, error);
    store
        .dead_letter(rejected(
            "m1",
            "550 5.1.1 <alice@example.com>: recipient rejected",
        ))
        .await
        .unwrap();
    store
        .dead_letter(rejected(
            "m2",
            "551 5.1.2 <bob@mail.example.org>: recipient rejected",
        ))
        .await
        .unwrap();
    // A row written before fingerprints existed: it joins its group when groups are read.
    db.sql(
        "INSERT INTO dead_letter_messages (original_subject, original_message_id, dlq_subject, \
         payload, error_message, error_type, retry_count, original_created_at, dlq_created_at) \
         VALUES ('email.send', 'm3', 'dlq.emailsend', '{}', \
         '550 5.1.1 <carol@example.net>: recipient rejected', 'permanent', 1, NOW(6), NOW(6))",
    );
    store
        .dead_letter(email_failure(
            "m4",
            ErrorClass::Transient,
            "connection to smtp.example.com:25 timed out after 30s",
        ))
        .await
        .unwrap();
    let stub = SmtpStub::start(StubMode::Accept).await;
    let d = daemon(&db, &nats, stub.port, &[]);

    let groups = admin_get(&d, "/api/dlq/groups").await["groups"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(groups.len(), 2, "{groups:?}");
    let rejections = &groups[0];
    assert_eq!(
        rejections["count"], 3,
        "the largest group first: {groups:?}"
    );
    assert_eq!(rejections["error_type"], "permanent");
    assert_eq!(rejections["original_subject"], "email.send");
    assert_eq!(
        rejections["signature"],
        "<n> <n> <<email>>: recipient rejected"
    );
    assert!(
        rejections["example_error"]
            .as_str()
            .unwrap()
            .contains("carol@example.net"),
        "the newest letter is the example: {rejections}"
    );
    assert_eq!(groups[1]["count"], 1);
    assert_eq!(
        groups[1]["signature"],
        "connection to <host> timed out after <n>s"
    );
    let recent = admin_get(&d, "/api/dlq/groups?sort=recent").await;
    assert_eq!(
        recent["groups"][0]["fingerprint"], groups[1]["fingerprint"],
        "the most recent group first: {recent}"
    );
    let fp = rejections["fingerprint"].as_str().unwrap().to_string();
    assert_eq!(
        dead_letters(&d, &format!("fingerprint={fp}")).await.len(),
        3,
        "the group's letters are listed by its fingerprint"
    );

    // Bad input is refused with a clear message; no token, no groups.
    let (status, body) = admin_send(
        &d,
        reqwest::Method::POST,
        "/api/dlq/groups/not-a-group/discard",
        &json!({"operator": "erin"}),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_fingerprint"))
    );
    let r = client()
        .get(d.url("/api/dlq/groups?sort=size"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = client().get(d.url("/api/dlq/groups")).send().await.unwrap();
    assert_eq!(r.status(), 401);

    // The CLI lists the groups and discards one at once.
    let (code, out, err) = cli(&d, &["groups"]);
    assert_eq!(code, Some(0), "{err}");
    let line = out.lines().find(|l| l.contains(&fp)).unwrap_or_default();
    assert!(line.trim_start().starts_with('3'), "{out}");
    assert!(line.contains("recipient rejected"), "{out}");
    let (code, out, err) = cli(
        &d,
        &[
            "discard",
            "--group",
            &fp,
            "--operator",
            "erin",
            "--reason",
            "typo campaign",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("discarded 3"), "{out}");
    assert_eq!(
        db.count(&format!(
            "SELECT COUNT(*) FROM dead_letter_messages WHERE fingerprint = '{fp}' \
             AND status = 'discarded' AND resolved_by = 'erin'"
        )),
        3
    );
    let groups = admin_get(&d, "/api/dlq/groups").await;
    assert_eq!(groups["groups"].as_array().unwrap().len(), 1, "{groups}");
    let all = admin_get(&d, "/api/dlq/groups?status=discarded").await;
    assert_eq!(all["groups"][0]["count"], 3, "{all}");

    // The audit trail has it: who, why, what.
    let audit = admin_get(&d, "/api/dlq/audit").await;
    let entry = &audit["items"][0];
    assert_eq!(entry["action"], "discard_group", "{audit}");
    assert_eq!(entry["operator"], "erin");
    assert_eq!(entry["reason"], "typo campaign");
    assert_eq!(entry["fingerprint"], fp.as_str());
    assert_eq!(entry["detail"]["discarded"], 3);
    let (code, out, _) = cli(&d, &["audit"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("discard_group") && out.contains("erin"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_dead_letter_is_validated_shown_as_a_diff_replayed_once_and_audited() {
    let db = TestDb::create();
    let nats = NatsServer::start();
    let stub = SmtpStub::start(StubMode::Reject).await;
    let d = daemon(&db, &nats, stub.port, &[]);
    let request_id = submit(&d, "97", "bob@exmaple.com").await;
    assert_eventually!(
        dead_letters(&d, "").await.len() == 1,
        "the mistyped address is rejected and dead-lettered"
    );
    let id = dead_letters(&d, "").await[0]["id"].as_i64().unwrap();
    let path = format!("/api/dlq/messages/{id}/edit");
    let edit = |body: Value| {
        let path = path.clone();
        let d = &d;
        async move { admin_send(d, reqwest::Method::POST, &path, &body).await }
    };
    stub.set_mode(StubMode::Accept);

    // Refused, each with its reason, and nothing sent.
    for (set, code) in [
        (json!({"colour": "red"}), "unknown_field"),
        (json!({"email": "not an address"}), "invalid_email"),
        (json!({"request_id": "x"}), "field_not_editable"),
        (json!({"email": "bob@exmaple.com"}), "edit_changes_nothing"),
    ] {
        let (status, body) = edit(json!({"set": set, "operator": "frank"})).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (422, Some(code)),
            "{body}"
        );
    }
    // A dry run shows the diff and changes nothing.
    let (status, body) = edit(json!({"set": {"email": "bob@example.com"}, "dry_run": true,
                                     "operator": "frank"}))
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["dry_run"], true);
    assert_eq!(
        body["diff"],
        json!([{"field": "email", "before": "bob@exmaple.com", "after": "bob@example.com"}])
    );
    assert_eq!(body["event_id"], Value::Null);
    let (code, out, err) = cli(
        &d,
        &[
            "edit",
            &id.to_string(),
            "--set",
            "email=bob@example.com",
            "--dry-run",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("bob@exmaple.com") && out.contains("dry run"),
        "{out}"
    );
    assert_eq!(
        db.count(&format!("SELECT COUNT(*) FROM outbox WHERE dlq_id = {id}")),
        0
    );
    assert_eq!(
        dead_letters(&d, "").await[0]["payload"]["email"],
        "bob@exmaple.com"
    );
    assert!(stub.accepted().is_empty());

    // The edit, from the CLI: stored, replayed as one message, resolved.
    let (code, out, err) = cli(
        &d,
        &[
            "edit",
            &id.to_string(),
            "--set",
            "email=bob@example.com",
            "--operator",
            "frank",
            "--reason",
            "typo in the domain",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("edited and replayed as event"), "{out}");
    assert_eventually!(
        dead_letters(&d, "").await[0]["status"] == "resolved",
        "the edited message went through"
    );
    assert_eq!(stub.accepted().len(), 1, "one email");
    assert_eq!(
        db.sql(&format!(
            "SELECT recipient FROM sent_emails WHERE request_id = '{request_id}'"
        ))
        .trim(),
        "bob@example.com"
    );
    assert_eq!(request(&d, &request_id).await["status"], "done");

    // Kept in the audit trail, before and after, and shown with the letter.
    let letter = admin_get(&d, &format!("/api/dlq/messages/{id}")).await;
    let entry = &letter["audit"][0];
    assert_eq!(entry["action"], "edit", "{letter}");
    assert_eq!(entry["operator"], "frank");
    assert_eq!(entry["reason"], "typo in the domain");
    assert_eq!(entry["detail"]["before"]["email"], "bob@exmaple.com");
    assert_eq!(entry["detail"]["after"]["email"], "bob@example.com");
    assert_eq!(letter["payload"]["email"], "bob@example.com");

    // A resolved letter is not edited again.
    let (status, body) =
        edit(json!({"set": {"email": "carol@example.com"}, "operator": "frank"})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("dead_letter_not_editable"))
    );
    let (status, _) = admin_send(
        &d,
        reqwest::Method::POST,
        "/api/dlq/messages/999999/edit",
        &json!({"set": {"email": "a@example.com"}, "operator": "frank"}),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_dlq_groups_edits_and_audits_too() {
    let stub = SmtpStub::start(StubMode::Reject).await;
    let mut env = support::smtp_env(stub.port);
    env.push(("ADMIN_API_KEYS".into(), TOKEN.into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let d = Daemon::start(&env);
    for email in ["ann@exmaple.com", "ben@exmaple.com"] {
        submit(&d, "91", email).await;
    }
    assert_eventually!(
        dead_letters(&d, "").await.len() == 2,
        "both rejected emails are dead-lettered"
    );
    let groups = admin_get(&d, "/api/dlq/groups").await;
    assert_eq!(groups["groups"].as_array().unwrap().len(), 1, "{groups}");
    assert_eq!(groups["groups"][0]["count"], 2);

    stub.set_mode(StubMode::Accept);
    let letters = dead_letters(&d, "").await;
    let id = letters[0]["id"].as_i64().unwrap();
    let (status, body) = admin_send(
        &d,
        reqwest::Method::POST,
        &format!("/api/dlq/messages/{id}/edit"),
        &json!({"set": {"email": "ben@example.com"}, "operator": "gus", "reason": "typo"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["event_id"].is_string());
    assert_eventually!(
        admin_get(&d, &format!("/api/dlq/messages/{id}")).await["status"] == "resolved",
        "the edited email went out"
    );
    assert_eq!(stub.accepted().len(), 1);
    let fp = letters[1]["fingerprint"].as_str().unwrap().to_string();
    let (status, body) = admin_send(
        &d,
        reqwest::Method::POST,
        &format!("/api/dlq/groups/{fp}/discard"),
        &json!({"operator": "gus"}),
    )
    .await;
    assert_eq!(
        (status, body["discarded"].as_u64()),
        (200, Some(1)),
        "{body}"
    );
    let audit = admin_get(&d, "/api/dlq/audit").await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["discard_group", "edit"], "{audit}");
}

/// What a daemon whose handler panics on 666 (the test-only fault hook) does with it: two
/// crashes, then a `poison` dead letter with the panic's message; the other requests are
/// checked and emailed throughout, and the crashes and the quarantine are counted.
async fn a_crashing_message_is_quarantined(d: &Daemon, stub: &SmtpStub) {
    let pill = submit(d, "666", "pill@example.com").await;
    let others = [
        submit(d, "97", "a@example.com").await,
        submit(d, "89", "b@example.com").await,
    ];
    assert_eventually!(
        dead_letters(d, "error_type=poison").await.len() == 1,
        "the message that crashes its handler is quarantined"
    );
    let letter = &dead_letters(d, "error_type=poison").await[0];
    let reason = letter["error_message"].as_str().unwrap();
    assert!(
        reason.starts_with("crashed the worker 2 times")
            && reason.contains("PRIMED_FAULT_PANIC_NUMBER is 666"),
        "{letter}"
    );
    assert_eq!(letter["original_subject"], "primecheck.requested");
    assert_eq!(letter["request_id"], pill.as_str());
    assert_eq!(request(d, &pill).await["status"], "failed");
    for id in &others {
        assert_eventually!(
            request(d, id).await["status"] == "done",
            "{id} is checked although another message crashed the worker"
        );
    }
    assert_eventually!(stub.accepted().len() == 2, "and both are emailed");
    let metrics = support::scrape(d).await;
    assert_eq!(
        support::sample(
            &metrics,
            "worker_crashes_total{subject=\"primecheck.requested\"}"
        ),
        2.0
    );
    assert_eq!(
        support::sample(
            &metrics,
            "messages_quarantined_total{subject=\"primecheck.requested\"}"
        ),
        1.0
    );
    // Never delivered again unless an operator insists.
    let (status, body) = admin_send(
        d,
        reqwest::Method::POST,
        "/api/dlq/reprocess",
        &json!({"message_ids": [letter["id"]], "operator": "hana"}),
    )
    .await;
    assert_eq!(
        (status, body["succeeded"].as_u64()),
        (200, Some(0)),
        "{body}"
    );
    assert!(
        body["results"][0]["error"]
            .as_str()
            .unwrap()
            .contains("poison"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_crashes_its_worker_twice_is_quarantined_and_the_rest_is_served() {
    let db = TestDb::create();
    let nats = NatsServer::start();
    let stub = SmtpStub::start(StubMode::Accept).await;
    let d = daemon(
        &db,
        &nats,
        stub.port,
        &[
            ("PRIMED_FAULT_INJECTION", "true"),
            ("PRIMED_FAULT_PANIC_NUMBER", "666"),
            ("PRIMED_PRIMECHECK_WORKERS", "1"),
        ],
    );
    a_crashing_message_is_quarantined(&d, &stub).await;
    assert_eq!(
        db.count("SELECT crashes FROM message_crashes"),
        2,
        "the crashes are kept per message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_workers_quarantine_a_crashing_message_too() {
    let stub = SmtpStub::start(StubMode::Accept).await;
    let mut env = support::smtp_env(stub.port);
    env.extend([
        ("ADMIN_API_KEYS".to_string(), TOKEN.to_string()),
        ("PRIMED_FAULT_INJECTION".into(), "true".into()),
        ("PRIMED_FAULT_PANIC_NUMBER".into(), "666".into()),
        ("PRIMED_RETRY_BACKOFF".into(), "300ms".into()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let d = Daemon::start(&env);
    a_crashing_message_is_quarantined(&d, &stub).await;
}

/// `n` requests whose emails the stub rejects, dead-lettered: their letters' ids.
async fn rejected_letters(d: &Daemon, n: usize) -> Vec<i64> {
    for i in 0..n {
        submit(d, &(101 + 2 * i).to_string(), &format!("r{i}@example.com")).await;
    }
    assert_eventually!(
        dead_letters(d, "status=pending&limit=500").await.len() == n,
        "{n} rejected emails are dead-lettered"
    );
    dead_letters(d, "limit=500")
        .await
        .iter()
        .map(|l| l["id"].as_i64().unwrap())
        .collect()
}

/// `POST /api/dlq/replays` with `body` (and the operator): status and answer.
async fn replay(d: &Daemon, mut body: Value) -> (u16, Value) {
    body["operator"] = json!("ivy");
    admin_send(d, reqwest::Method::POST, "/api/dlq/replays", &body).await
}

/// Waits for replay job `id` to end; the job.
async fn ended(d: &Daemon, id: i64) -> Value {
    let path = format!("/api/dlq/replays/{id}");
    assert_eventually!(
        ["done", "aborted", "cancelled"]
            .contains(&admin_get(d, &path).await["state"].as_str().unwrap()),
        "replay job {id} ends"
    );
    admin_get(d, &path).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_into_a_sick_dependency_stops_after_its_canary_and_a_healed_one_replays_all_once()
{
    let db = TestDb::create();
    let nats = NatsServer::start();
    let stub = SmtpStub::start(StubMode::Reject).await;
    let d = daemon(&db, &nats, stub.port, &[]);
    let ids = rejected_letters(&d, 12).await;
    let fp = dead_letters(&d, "").await[0]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();

    // A dry run says what would go, and sends nothing.
    let (status, preview) = replay(&d, json!({"fingerprint": fp, "dry_run": true})).await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["letters"], 12);
    assert_eq!(preview["ids"].as_array().unwrap().len(), 12);
    assert_eq!(
        db.count("SELECT COUNT(*) FROM outbox WHERE dlq_id IS NOT NULL"),
        0
    );
    // Bad input is refused with the reason.
    let (status, body) = replay(&d, json!({"fingerprint": fp, "canary": 0})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_canary"))
    );
    let (status, body) = replay(&d, json!({"subject": "no.such.subject"})).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("nothing_to_replay"))
    );

    // The server still rejects: the canary of 2 fails and the job stops by itself.
    let (status, job) = replay(
        &d,
        json!({"fingerprint": fp, "canary": 2, "ramp": 5, "rate_per_second": 100,
               "max_failure_ratio": 0.5, "reason": "is it fixed?"}),
    )
    .await;
    assert_eq!(status, 201, "{job}");
    assert_eq!(job["total"], 12);
    let job = ended(&d, job["id"].as_i64().unwrap()).await;
    assert_eq!(job["state"], "aborted", "{job}");
    assert!(
        job["stop_reason"]
            .as_str()
            .unwrap()
            .starts_with("2 of 2 replayed letters failed again"),
        "{job}"
    );
    assert_eq!(
        (job["failed"].as_u64(), job["queued"].as_u64()),
        (Some(2), Some(10))
    );
    assert_eq!(
        db.count("SELECT SUM(reprocess_count) FROM dead_letter_messages"),
        2,
        "only the canary was replayed"
    );
    assert_eq!(stub.attempt_times().len(), 12 + 2);

    // Fixed: the CLI replays the whole group, canary first, and follows it to its end.
    stub.set_mode(StubMode::Accept);
    let (code, out, err) = cli(
        &d,
        &[
            "replay",
            "--group",
            &fp,
            "--canary",
            "2",
            "--rate",
            "50",
            "--operator",
            "ivy",
        ],
    );
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("started: 12 letters"), "{out}");
    assert!(
        out.contains("done 12/12 done (12 ok, 0 failed, 0 skipped)"),
        "{out}"
    );
    assert_eq!(stub.accepted().len(), 12, "each request emailed once");
    for id in ids {
        let letter = admin_get(&d, &format!("/api/dlq/messages/{id}")).await;
        assert_eq!(letter["status"], "resolved", "{letter}");
    }
    let actions: Vec<String> = admin_get(&d, "/api/dlq/audit?limit=500").await["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap().to_string())
        .collect();
    for action in ["replay_start", "replay_abort", "replay_done"] {
        assert!(actions.iter().any(|a| a == action), "{action}: {actions:?}");
    }
    let metrics = support::scrape(&d).await;
    assert_eq!(
        support::sample(&metrics, "dlq_replay_jobs_ended_total{state=\"aborted\"}"),
        1.0
    );
    assert_eq!(
        support::sample(&metrics, "dlq_replay_jobs_ended_total{state=\"done\"}"),
        1.0
    );
    assert_eq!(
        support::sample(&metrics, "dlq_replay_messages_total{outcome=\"sent\"}"),
        14.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_job_survives_a_daemon_killed_mid_way_and_sends_each_letter_once() {
    let db = TestDb::create();
    let nats = NatsServer::start();
    let stub = SmtpStub::start(StubMode::Reject).await;
    let instance = [("PRIMED_INSTANCE", "replay-node")];
    let mut d = daemon(&db, &nats, stub.port, &instance);
    rejected_letters(&d, 6).await;
    stub.set_mode(StubMode::Accept);
    // Slow: one letter every two seconds.
    let (status, job) = replay(&d, json!({"canary": 1, "ramp": 2, "rate_per_second": 0.5})).await;
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_i64().unwrap();
    let path = format!("/api/dlq/replays/{id}");
    assert_eventually!(
        admin_get(&d, &path).await["succeeded"] == 1,
        "the canary goes through"
    );
    // Paused, then resumed, with the reason recorded; a paused job cannot be paused again.
    let (status, paused) = admin_send(
        &d,
        reqwest::Method::POST,
        &format!("{path}/pause"),
        &json!({"operator": "ivy", "reason": "lunch"}),
    )
    .await;
    assert_eq!((status, paused["state"].as_str()), (200, Some("paused")));
    let (status, body) = admin_send(
        &d,
        reqwest::Method::POST,
        &format!("{path}/pause"),
        &json!({"operator": "ivy"}),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("replay_state_conflict"))
    );
    let (code, out, _) = cli(&d, &["job", &id.to_string(), "--resume"]);
    assert_eq!(code, Some(0));
    assert!(out.contains(&format!("replay {id}: running")), "{out}");

    d.signal(nix::sys::signal::Signal::SIGKILL);
    d.wait_exit();
    let d = daemon(&db, &nats, stub.port, &instance);
    let job = ended(&d, id).await;
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["succeeded"], 6, "{job}");
    assert_eq!(
        db.count("SELECT MAX(reprocess_count) FROM dead_letter_messages"),
        1,
        "no letter was replayed twice"
    );
    assert_eq!(stub.accepted().len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_dlq_runs_replay_jobs_and_a_cancelled_one_leaves_the_rest_pending() {
    let stub = SmtpStub::start(StubMode::Reject).await;
    let mut env = support::smtp_env(stub.port);
    env.push(("ADMIN_API_KEYS".into(), TOKEN.into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let d = Daemon::start(&env);
    rejected_letters(&d, 4).await;
    stub.set_mode(StubMode::Accept);
    let (status, job) = replay(&d, json!({"canary": 1, "rate_per_second": 0.1})).await;
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_i64().unwrap();
    let path = format!("/api/dlq/replays/{id}");
    assert_eventually!(
        admin_get(&d, &path).await["succeeded"] == 1,
        "the canary goes through"
    );
    let (status, job) = admin_send(
        &d,
        reqwest::Method::POST,
        &format!("{path}/cancel"),
        &json!({"operator": "ivy", "reason": "enough for today"}),
    )
    .await;
    assert_eq!(
        (status, job["state"].as_str()),
        (200, Some("cancelled")),
        "{job}"
    );
    assert_eq!(job["stop_reason"], "cancelled by ivy: enough for today");
    assert_eq!(dead_letters(&d, "status=pending").await.len(), 3);
    let (status, _) = admin_send(
        &d,
        reqwest::Method::POST,
        &format!("{path}/resume"),
        &json!({"operator": "ivy"}),
    )
    .await;
    assert_eq!(status, 409, "a cancelled job stays cancelled");

    let (status, job) = replay(&d, json!({"rate_per_second": 100})).await;
    assert_eq!(status, 201, "{job}");
    let job = ended(&d, job["id"].as_i64().unwrap()).await;
    assert_eq!(
        (job["state"].as_str(), job["succeeded"].as_u64()),
        (Some("done"), Some(3))
    );
    assert_eq!(stub.accepted().len(), 4);
    let jobs = admin_get(&d, "/api/dlq/replays").await;
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letters_an_smtp_outage_caused_are_replayed_when_it_heals_and_nothing_else() {
    let db = TestDb::create();
    let nats = NatsServer::start();
    // Dead letters from before the outage, transient and permanent: not the outage's.
    let store = migrated_store(&db, 2).await;
    store
        .dead_letter(email_failure(
            "older-transient",
            ErrorClass::Transient,
            "connection reset by peer",
        ))
        .await
        .unwrap();
    store
        .dead_letter(email_failure(
            "older-permanent",
            ErrorClass::Permanent,
            "550 5.1.1 <x@example.com>: no such user",
        ))
        .await
        .unwrap();
    // The server defers everything: the breaker opens, probes fail, and each email is
    // dead-lettered once its two deliveries are spent.
    let stub = SmtpStub::start(StubMode::Defer).await;
    let d = daemon(
        &db,
        &nats,
        stub.port,
        &[
            ("PRIMED_MAX_DELIVER", "2"),
            ("PRIMED_RETRY_BACKOFF", "200ms"),
            ("PRIMED_SMTP_BREAKER_THRESHOLD", "2"),
            ("PRIMED_SMTP_BREAKER_COOLDOWN_SECONDS", "1"),
        ],
    );
    let mut requests = Vec::new();
    for (n, email) in [
        ("3", "a@example.com"),
        ("5", "b@example.com"),
        ("7", "c@example.com"),
    ] {
        requests.push(submit(&d, n, email).await);
    }
    assert_eventually!(
        dead_letters(&d, "q=mailbox busy&status=pending")
            .await
            .len()
            == 3,
        "the outage dead-letters the three emails"
    );
    assert!(stub.accepted().is_empty());

    // Healed: the next email closes the breaker, and the outage's letters are replayed
    // without an operator, canary first.
    stub.set_mode(StubMode::Accept);
    requests.push(submit(&d, "11", "d@example.com").await);
    assert_eventually!(
        admin_get(&d, "/api/dlq/replays").await["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["trigger"] == "smtp_healed" && j["state"] == "done"),
        "a replay job started by the healing ends"
    );
    let jobs = admin_get(&d, "/api/dlq/replays").await;
    let job = &jobs["jobs"][0];
    assert_eq!(job["operator"], "auto:smtp-healed", "{jobs}");
    assert_eq!(
        (job["total"].as_u64(), job["succeeded"].as_u64()),
        (Some(3), Some(3)),
        "{job}"
    );
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 1, "one job: {jobs}");
    for id in &requests {
        assert_eventually!(
            db.count(&format!(
                "SELECT COUNT(*) FROM sent_emails WHERE request_id = '{id}'"
            )) == 1,
            "{id} is emailed"
        );
    }
    assert_eq!(stub.accepted().len(), 4, "each request emailed once");
    // Nothing else was replayed.
    assert_eq!(
        db.count(
            "SELECT COUNT(*) FROM dead_letter_messages WHERE original_message_id LIKE 'older-%' \
             AND status = 'pending' AND reprocess_count = 0"
        ),
        2
    );
    let audit = admin_get(&d, "/api/dlq/audit?limit=100").await;
    assert!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "replay_start" && a["operator"] == "auto:smtp-healed"),
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_max_deliveries_advisory_was_lost_is_dead_lettered_by_the_reconciler() {
    use primed::adapters::nats::{JetStreamBroker, JetStreamSettings};
    let db = TestDb::create();
    let nats = NatsServer::start();
    let mut settings = JetStreamSettings::new("PRIME");
    settings.max_deliver = 2;
    settings.backoff = vec![Duration::from_millis(500)];
    let (broker, client) = JetStreamBroker::connect(&nats.url(), &settings)
        .await
        .unwrap();
    broker.ensure_topology(&settings).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "lost-event");
    let payload = json!({"request_id": "lost-request", "number": "7", "email": "x@example.com"});
    js.publish_with_headers(
        "primecheck.requested",
        headers,
        payload.to_string().into_bytes().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    // No daemon runs: two workers die holding it; the next pull makes JetStream give up on
    // it and publish its advisory, which is then lost.
    assert_eq!(
        pull_and_drop(&js, Duration::from_secs(5)).await.as_deref(),
        Some("lost-event")
    );
    assert_eq!(
        pull_and_drop(&js, Duration::from_secs(5)).await.as_deref(),
        Some("lost-event")
    );
    assert_eventually!(
        {
            pull_and_drop(&js, Duration::from_millis(300)).await;
            support::stream_messages(&nats.url(), "PRIME_ADVISORIES").await == 1
        },
        "JetStream gives up on the message"
    );
    js.get_stream("PRIME_ADVISORIES")
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();

    let stub = SmtpStub::start(StubMode::Accept).await;
    let d = daemon(
        &db,
        &nats,
        stub.port,
        &[
            ("PRIMED_MAX_DELIVER", "2"),
            ("PRIMED_RETRY_BACKOFF", "500ms"),
            ("PRIMED_DLQ_RECONCILE_INTERVAL_SECONDS", "1"),
            ("PRIMED_DLQ_RECONCILE_AFTER_SECONDS", "1"),
        ],
    );
    // Work that goes through meanwhile is left alone.
    let fine = submit(&d, "97", "fine@example.com").await;
    assert_eventually!(
        dead_letters(&d, "").await.len() == 1,
        "the reconciler dead-letters the message that fell through"
    );
    let letter = &dead_letters(&d, "").await[0];
    assert_eq!(letter["original_message_id"], "lost-event");
    assert_eq!(letter["error_type"], "transient");
    assert_eq!(letter["payload"]["number"], "7");
    assert!(
        letter["error_message"]
            .as_str()
            .unwrap()
            .starts_with("advisory missed: primecheck-worker stopped delivering it"),
        "{letter}"
    );
    assert_eventually!(
        request(&d, &fine).await["status"] == "done" && stub.accepted().len() == 1,
        "the other request is checked and emailed"
    );
    assert_eq!(
        support::sample(&support::scrape(&d).await, "dlq_reconciled_total"),
        1.0
    );
    assert_eq!(dead_letters(&d, "").await.len(), 1, "nothing else");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_daemon_replays_an_smtp_outages_dead_letters_when_it_heals_too() {
    let stub = SmtpStub::start(StubMode::Defer).await;
    let mut env = support::smtp_env(stub.port);
    env.extend([
        ("ADMIN_API_KEYS".to_string(), TOKEN.to_string()),
        ("PRIMED_MAX_DELIVER".into(), "2".into()),
        ("PRIMED_RETRY_BACKOFF".into(), "200ms".into()),
        ("PRIMED_SMTP_BREAKER_THRESHOLD".into(), "2".into()),
        ("PRIMED_SMTP_BREAKER_COOLDOWN_SECONDS".into(), "1".into()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let d = Daemon::start(&env);
    for (n, email) in [("3", "a@example.com"), ("5", "b@example.com")] {
        submit(&d, n, email).await;
    }
    assert_eventually!(
        dead_letters(&d, "q=mailbox busy&status=pending")
            .await
            .len()
            == 2,
        "the outage dead-letters both emails"
    );
    stub.set_mode(StubMode::Accept);
    submit(&d, "7", "c@example.com").await;
    assert_eventually!(
        admin_get(&d, "/api/dlq/replays").await["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["trigger"] == "smtp_healed" && j["state"] == "done" && j["succeeded"] == 2),
        "the healing replays both"
    );
    assert_eventually!(stub.accepted().len() == 3, "each request emailed once");
    assert!(dead_letters(&d, "status=pending").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_daemons_sharing_a_database_one_runs_a_replay_job() {
    let db = TestDb::create();
    let nats = NatsServer::start();
    let stub = SmtpStub::start(StubMode::Reject).await;
    let a = daemon(&db, &nats, stub.port, &[("PRIMED_INSTANCE", "node-a")]);
    let b = daemon(&db, &nats, stub.port, &[("PRIMED_INSTANCE", "node-b")]);
    rejected_letters(&a, 5).await;
    stub.set_mode(StubMode::Accept);
    let (status, job) = replay(&a, json!({"canary": 1, "ramp": 2, "rate_per_second": 2})).await;
    assert_eq!(status, 201, "{job}");
    let path = format!("/api/dlq/replays/{}", job["id"]);
    // Both daemons' replayers look at the job four times a second; the one holding the
    // lease renews it, the other leaves the job alone, so its owner never changes.
    let mut owners = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + support::WAIT;
    loop {
        assert!(std::time::Instant::now() < deadline, "the job ends in time");
        let job = admin_get(&b, &path).await;
        if let Some(owner) = job["owner"].as_str() {
            owners.insert(owner.to_string());
        }
        if job["state"] == "done" {
            assert_eq!(job["succeeded"], 5, "{job}");
            break;
        }
        assert!(
            ["running", "done"].contains(&job["state"].as_str().unwrap()),
            "{job}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(owners.len(), 1, "one daemon ran it: {owners:?}");
    assert_eq!(
        db.count("SELECT MAX(reprocess_count) FROM dead_letter_messages"),
        1
    );
    assert_eq!(stub.accepted().len(), 5);
}
