//! The operator-facing documents: they name every configuration key the daemon reads, and
//! every alert has a runbook whose commands, SQL, settings, endpoints and dashboard panels
//! exist (its metrics are checked against a real scrape in `tests/metrics.rs`).
// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;

use primed::config::KEYS;
use support::pipeline::{TOKEN, daemon};
use support::runbooks::{self, Runbook, SECTIONS};
use support::{Daemon, NatsServer, SmtpStub, StubMode, TestDb};

#[test]
fn readme_and_env_example_list_every_configuration_key() {
    let root = env!("CARGO_MANIFEST_DIR");
    for doc in ["README.md", "deploy/primed.env.example"] {
        let text = std::fs::read_to_string(format!("{root}/{doc}")).unwrap();
        let missing: Vec<&str> = KEYS
            .iter()
            .map(|k| k.name)
            .filter(|name| !text.contains(name))
            .collect();
        assert!(missing.is_empty(), "{doc} does not mention {missing:?}");
    }
}

/// Environment variables the `primed` commands read besides the daemon's keys.
const CLI_ENV: [&str; 3] = ["PRIMED_URL", "PRIMED_ADMIN_TOKEN", "PRIMED_CONFIG"];

/// What a runbook says that can be checked without a running daemon: its sections, the
/// settings, `primed` commands, scripts and dashboard panels it names. Each problem as text.
fn static_problems(book: &Runbook) -> Vec<String> {
    let mut problems = Vec::new();
    let mut at = 0;
    for section in SECTIONS {
        match book.text[at..].find(section) {
            Some(i) => at += i + section.len(),
            None => problems.push(format!("no section {section:?} (in this order)")),
        }
    }
    let keys: BTreeSet<&str> = KEYS.iter().map(|k| k.name).chain(CLI_ENV).collect();
    let scripts = ops_script_settings();
    for setting in book.settings() {
        if !keys.contains(setting.as_str()) && !scripts.contains(&setting) {
            problems.push(format!("{setting} is not a setting primed reads"));
        }
    }
    let panels = dashboard_panels();
    for panel in book.panels() {
        if !panels.contains(&panel) {
            problems.push(format!("no dashboard panel {} › {}", panel.0, panel.1));
        }
    }
    let script = regex::Regex::new(r"scripts/[\w./-]+\.sh").unwrap();
    for path in script.find_iter(&book.text) {
        if !runbooks::root().join(path.as_str()).is_file() {
            problems.push(format!("no script {}", path.as_str()));
        }
    }
    for line in book.commands() {
        let Some(args) = line.strip_prefix("primed ") else {
            continue;
        };
        // Placeholders (`<id>`) stand for a value; `--help` checks the command and its
        // options without running it.
        let args: Vec<String> = shell_words(args)
            .into_iter()
            .map(|a| if a.starts_with('<') { "1".into() } else { a })
            .collect();
        let out = support::primed()
            .args(&args)
            .arg("--help")
            .output()
            .unwrap();
        if !out.status.success() {
            problems.push(format!(
                "`{line}` is not a primed command: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    problems
}

/// The environment variables the operations scripts (`scripts/ops/`) read: what their
/// headers and bodies name.
fn ops_script_settings() -> BTreeSet<String> {
    let dir = runbooks::root().join("scripts/ops");
    let word = regex::Regex::new(r"\b[A-Z][A-Z0-9]*_[A-Z0-9_]*[A-Z0-9]\b").unwrap();
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        out.extend(word.find_iter(&text).map(|m| m.as_str().to_string()));
    }
    out
}

/// Splits a command line on spaces, keeping quoted words whole (enough for runbooks).
fn shell_words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, ' ') => {
                if !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
            }
            _ => word.push(c),
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// Every (dashboard title, panel title) of the Grafana dashboards.
fn dashboard_panels() -> BTreeSet<(String, String)> {
    let dir = runbooks::root().join("monitoring/grafana/dashboards");
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap()).unwrap();
        let title = doc["title"].as_str().unwrap().to_string();
        for panel in doc["panels"].as_array().unwrap() {
            if let Some(p) = panel["title"].as_str() {
                out.insert((title.clone(), p.to_string()));
            }
        }
    }
    out
}

/// What needs the daemon: every `curl` of the runbook is sent to `d` (with the admin
/// token) and must reach a route (not 404 or 405); every SQL statement runs on `db`.
async fn live_problems(book: &Runbook, d: &Daemon, db: &TestDb) -> Vec<String> {
    let mut problems = Vec::new();
    let client = support::pipeline::client();
    let url = regex::Regex::new(r#"https?://[^/\s"']+(/[^\s"']*)"#).unwrap();
    for line in book.commands() {
        if !line.starts_with("curl ") {
            continue;
        }
        let Some(path) = url.captures(&line).map(|c| c[1].to_string()) else {
            problems.push(format!("`{line}` has no URL"));
            continue;
        };
        let words = shell_words(&line);
        let method = words
            .iter()
            .position(|w| w == "-X")
            .and_then(|i| words.get(i + 1))
            .map_or("GET", String::as_str);
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = client.request(method, d.url(&path)).bearer_auth(TOKEN);
        if let Some(i) = words.iter().position(|w| w == "-d" || w == "--data") {
            request = request
                .header("Content-Type", "application/json")
                .body(words.get(i + 1).cloned().unwrap_or_default());
        }
        let status = request.send().await.unwrap().status();
        if status == 404 || status == 405 || status == 401 {
            problems.push(format!("`{line}` answers {status}"));
        }
    }
    for statement in book.statements() {
        let out = support::client_at(support::db_port())
            .args(["-N", "-B", "-e"])
            .arg(format!("USE {}; {statement}", db.name))
            .output()
            .unwrap();
        if !out.status.success() {
            problems.push(format!(
                "SQL fails: {}: {}",
                statement.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    problems
}

#[test]
fn every_alert_has_a_runbook_and_the_runbook_names_only_what_exists() {
    let alerts = runbooks::alerts();
    let books = runbooks::all();
    let names: BTreeSet<&str> = alerts.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        books.iter().map(|b| b.alert.as_str()).collect(),
        "one runbook per alert, named after it"
    );
    for (name, annotations) in &alerts {
        assert_eq!(
            annotations["runbook_url"],
            format!("docs/runbooks/{name}.md"),
            "{name}"
        );
    }
    let index = std::fs::read_to_string(runbooks::root().join("docs/runbooks/README.md")).unwrap();
    for book in &books {
        assert!(
            index.contains(&format!("({}.md)", book.alert)),
            "the index links {}",
            book.alert
        );
        let problems = static_problems(book);
        assert!(
            problems.is_empty(),
            "{}: {problems:#?}",
            book.path.display()
        );
    }
}

/// The checker catches each kind of mistake it is named for.
#[test]
fn the_runbook_checker_catches_a_missing_section_setting_command_script_and_panel() {
    let book = Runbook {
        alert: "Made".into(),
        path: "made.md".into(),
        text: "# Made\n## What it means\n## Confirm\n\
               Raise `PRIMED_NO_SUCH_SETTING`; see **Error Analysis › No such panel**.\n\
               ```sh\nprimed dlq lists\nscripts/ops/no-such.sh\n```\n\
               ## When it is over\n## What the chaos harness measured\n"
            .into(),
    };
    let problems = static_problems(&book).join("\n");
    for caught in [
        "no section \"## What to do\"",
        "PRIMED_NO_SUCH_SETTING is not a setting",
        "no dashboard panel Error Analysis › No such panel",
        "no script scripts/ops/no-such.sh",
        "`primed dlq lists` is not a primed command",
    ] {
        assert!(
            problems.contains(caught),
            "{caught} not caught in:\n{problems}"
        );
    }
    // And lets the right ones through.
    let good = Runbook {
        alert: "Good".into(),
        path: "good.md".into(),
        text: format!(
            "{}\nSet `PRIMED_SMTP_CONCURRENCY`; see **Error Analysis › Dead letters by status**.\n\
             ```sh\nprimed dlq list --status pending\nscripts/ops/monitor.sh health\n```\n",
            SECTIONS.join("\n")
        ),
    };
    assert_eq!(static_problems(&good), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runbooks_endpoints_answer_and_their_sql_runs() {
    let db = TestDb::create();
    let nats = NatsServer::start();
    let stub = SmtpStub::start(StubMode::Accept).await;
    let d = daemon(&db, &nats, stub.port, &[]);
    for book in runbooks::all() {
        let problems = live_problems(&book, &d, &db).await;
        assert!(
            problems.is_empty(),
            "{}: {problems:#?}",
            book.path.display()
        );
    }
    // Crafted to fail: a route that does not exist and a table that does not.
    let bad = Runbook {
        alert: "Bad".into(),
        path: "bad.md".into(),
        text: "```sh\ncurl -s http://127.0.0.1:8080/admin/no-such-thing\n```\n\
               ```sql\nSELECT COUNT(*) FROM no_such_table;\n```\n"
            .into(),
    };
    let problems = live_problems(&bad, &d, &db).await.join("\n");
    assert!(
        problems.contains("/admin/no-such-thing` answers 404"),
        "{problems}"
    );
    assert!(problems.contains("no_such_table"), "{problems}");
}
