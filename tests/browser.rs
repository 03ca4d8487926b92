//! The web pages in a real headless Chromium (Debian's `chromium`, driven by playwright-core
//! from npm; `scripts/ensure-services.sh` installs both). Screenshots go to
//! `target/test-artifacts/`.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::Daemon;

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn node_script(script: &str, args: &[&str]) -> serde_json::Value {
    support::setup::ensure();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let playwright =
        std::env::var("PLAYWRIGHT_PREFIX").unwrap_or_else(|_| "/opt/playwright".into());
    let out = Command::new("node")
        .arg(root.join("tests/browser").join(script))
        .args(args)
        .env("NODE_PATH", Path::new(&playwright).join("node_modules"))
        .output()
        .expect("node must be installed (scripts/ensure-services.sh installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("{script} printed no report:\n{stdout}\n{stderr}"));
    assert!(
        out.status.success() && report["ok"] == true,
        "{script}: {report}\n{stderr}"
    );
    report
}

/// Waits (bounded) for the audit line of `action` by `operator`: the daemon's stdout is read
/// by a thread, so the newest lines may still be on their way.
fn assert_audited(d: &mut Daemon, action: &str, operator: &str) {
    let deadline = std::time::Instant::now() + support::WAIT;
    loop {
        let found = d.log_so_far().lines().any(|l| {
            l.contains("\"target\":\"audit\"")
                && l.contains(&format!("\"action\":\"{action}\""))
                && l.contains(&format!("\"operator\":\"{operator}\""))
        });
        if found {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no audit line for {action} by {operator}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn the_public_page_submits_a_number_and_shows_its_result() {
    let d = Daemon::start(&[]);
    let shots = artifacts();
    let report = node_script("public_page.mjs", &[&d.url("/"), shots.to_str().unwrap()]);
    assert_eq!(report["result"], "2305843009213693951 is prime.");
    for shot in ["public-page-error.png", "public-page-result.png"] {
        let png = std::fs::read(shots.join(shot)).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{shot} is not a PNG");
    }
}

const TOKEN: &str = "browser-admin-token-0123";

async fn dead_letters(d: &Daemon) -> Vec<serde_json::Value> {
    let r: serde_json::Value = reqwest::Client::new()
        .get(d.url("/api/dlq/messages?limit=100"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["items"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_log_in_and_work_the_dlq_dashboard() {
    use support::{SmtpStub, StubMode, smtp_env};

    // Three emails the SMTP server refuses, and a prime check that runs out of time.
    let stub = SmtpStub::start(StubMode::Reject).await;
    let mut env: Vec<(String, String)> = vec![
        ("ADMIN_API_KEYS".into(), TOKEN.into()),
        ("PRIMED_PRIME_TIMEOUT_MS".into(), "20".into()),
        ("PRIMED_DLQ_RULES".into(), String::new()),
    ];
    env.extend(smtp_env(stub.port));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut d = Daemon::start(&env);
    let http = reqwest::Client::new();
    // The Mersenne prime 2^2203 - 1 (664 digits): no small factor ends its test early.
    let big = ((actors::primality::UBig::ONE << 2203) - actors::primality::UBig::ONE).to_string();
    for number in ["97", "89", "83", big.as_str()] {
        let r = http
            .post(d.url("/prime-check"))
            .json(&serde_json::json!({"number": number, "email": "dlq-ui@example.com"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    assert_eventually!(dead_letters(&d).await.len() == 4, "four dead letters");
    stub.set_mode(StubMode::Accept);

    // CSRF: a session cookie alone cannot change anything.
    let login = http
        .post(d.url("/login"))
        .json(&serde_json::json!({"operator": "Mallory", "token": TOKEN}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let set_cookie = login.headers()["set-cookie"].to_str().unwrap().to_string();
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let csrf = login.json::<serde_json::Value>().await.unwrap()["csrf_token"]
        .as_str()
        .unwrap()
        .to_string();
    let forged = http
        .delete(d.url("/api/dlq/discard"))
        .header("cookie", &cookie)
        .json(&serde_json::json!({"message_ids": [1], "operator": "Mallory"}))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert_eq!(
        forged.json::<serde_json::Value>().await.unwrap()["error"],
        "csrf_failed"
    );
    let read = http
        .get(d.url("/api/dlq/stats"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200, "reading needs no CSRF token");
    assert!(!csrf.is_empty());

    let shots = artifacts();
    let report = node_script(
        "dlq_dashboard.mjs",
        &[&d.url(""), TOKEN, shots.to_str().unwrap()],
    );

    // The API agrees, with the operator of the session.
    let letters = dead_letters(&d).await;
    for id in report["reprocessed"].as_array().unwrap() {
        let id: i64 = id.as_str().unwrap().parse().unwrap();
        let l = letters.iter().find(|l| l["id"] == id).unwrap();
        assert_eq!(l["status"], "resolved", "{l}");
        assert_eq!(l["resolved_by"], "Ada", "{l}");
    }
    let discarded: i64 = report["discarded"].as_str().unwrap().parse().unwrap();
    let l = letters.iter().find(|l| l["id"] == discarded).unwrap();
    assert_eq!(l["status"], "discarded");
    assert_eq!(l["operator"], "Ada");
    // Every action is in the audit log with its operator.
    for action in ["login", "dlq_reprocess", "dlq_discard"] {
        assert_audited(&mut d, action, "Ada");
    }
    for shot in ["dlq-dashboard.png", "dlq-detail.png", "dlq-reprocessed.png"] {
        assert!(
            std::fs::read(shots.join(shot))
                .unwrap()
                .starts_with(b"\x89PNG")
        );
    }
}

#[test]
fn the_admin_page_shows_the_live_tree_and_pauses_consumers() {
    let mut d = Daemon::start(&[
        ("ADMIN_API_KEYS", TOKEN),
        ("PRIMED_HEARTBEAT_INTERVAL_SECONDS", "1"),
    ]);
    let shots = artifacts();
    node_script(
        "admin_page.mjs",
        &[&d.url(""), TOKEN, shots.to_str().unwrap()],
    );
    for action in ["restart", "pause", "resume"] {
        assert_audited(&mut d, action, "Grace");
    }
    for shot in ["admin-page.png", "admin-paused.png"] {
        assert!(
            std::fs::read(shots.join(shot))
                .unwrap()
                .starts_with(b"\x89PNG")
        );
    }
}

#[test]
fn login_never_sends_the_operator_to_another_site() {
    let d = Daemon::start(&[("ADMIN_API_KEYS", TOKEN)]);
    let report = node_script("login_redirect.mjs", &[&d.url(""), TOKEN]);
    assert!(report["landed"].is_object(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_work_the_dlq_by_groups_and_edit_a_letter_with_a_diff() {
    use support::{SmtpStub, StubMode, smtp_env};

    // Two emails to a mistyped domain that the SMTP server refuses (one group), and a prime
    // check that runs out of time (another).
    let stub = SmtpStub::start(StubMode::Reject).await;
    let mut env: Vec<(String, String)> = vec![
        ("ADMIN_API_KEYS".into(), TOKEN.into()),
        ("PRIMED_PRIME_TIMEOUT_MS".into(), "20".into()),
        ("PRIMED_DLQ_RULES".into(), String::new()),
    ];
    env.extend(smtp_env(stub.port));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let d = Daemon::start(&env);
    let http = reqwest::Client::new();
    let big = ((actors::primality::UBig::ONE << 2203) - actors::primality::UBig::ONE).to_string();
    for number in ["97", "89", big.as_str()] {
        let r = http
            .post(d.url("/prime-check"))
            .json(&serde_json::json!({"number": number, "email": "typo@exmaple.com"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    assert_eventually!(dead_letters(&d).await.len() == 3, "three dead letters");
    stub.set_mode(StubMode::Accept);

    let shots = artifacts();
    let report = node_script(
        "dlq_groups_edit.mjs",
        &[&d.url(""), TOKEN, shots.to_str().unwrap()],
    );

    // The API agrees: the edited letter resolved, its one email went out, and both actions
    // are in the audit trail under the session's operator.
    let edited: i64 = report["edited"].as_str().unwrap().parse().unwrap();
    let letters = dead_letters(&d).await;
    let l = letters.iter().find(|l| l["id"] == edited).unwrap();
    assert_eq!(l["status"], "resolved", "{l}");
    assert_eq!(l["payload"]["email"], "typo@example.com");
    assert_eq!(
        stub.accepted().len(),
        2,
        "the edited letter and the replayed one"
    );
    let audit: serde_json::Value = http
        .get(d.url("/api/dlq/audit"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let actions: Vec<(String, String)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["action"].as_str().unwrap().to_string(),
                a["operator"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (action, operator) in [
        ("discard_group", "Ada"),
        ("edit", "Ada"),
        ("replay_start", "Ada"),
        ("replay_done", "replay-job"),
    ] {
        assert!(
            actions.contains(&(action.to_string(), operator.to_string())),
            "{action} by {operator}: {audit}"
        );
    }
    assert_eq!(audit["items"][0]["fingerprint"], report["discarded_group"]);
    for shot in [
        "dlq-groups.png",
        "dlq-edit-diff.png",
        "dlq-group-discarded.png",
    ] {
        assert!(
            std::fs::read(shots.join(shot))
                .unwrap()
                .starts_with(b"\x89PNG")
        );
    }
}
