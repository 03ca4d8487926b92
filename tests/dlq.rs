//! The DLQ's operator tools end to end (issue 20): error fingerprints and groups, group
//! discard, edit and retry, and the audit trail — over the API and the `primed dlq` CLI,
//! against MariaDB, NATS and a scripted SMTP server, and in embedded mode.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use actors::WorkerStore;
use actors::model::{ErrorClass, NewDeadLetter};
use serde_json::{Value, json};
use support::pipeline::{
    TOKEN, admin_get, admin_send, client, daemon, dead_letters, dlq_cli as cli, migrated_store,
    request, submit,
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
