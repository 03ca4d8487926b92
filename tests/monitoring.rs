//! The files under `monitoring/` are valid, and the alert rules behave as their unit tests
//! say (`promtool test rules`). Which metrics they may use is checked against a real scrape
//! in `tests/metrics.rs`.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

fn promtool(args: &[&str]) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring");
    let out = Command::new("promtool")
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("promtool must be installed: Debian's prometheus package (scripts/ensure-services.sh installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn the_prometheus_config_and_its_rules_are_valid() {
    let out = promtool(&["check", "config", "prometheus.yml"]);
    assert!(out.contains("SUCCESS: 1 rule files found"), "{out}");
}

#[test]
fn the_alert_rules_pass_their_unit_tests() {
    let out = promtool(&["test", "rules", "tests/alerts_test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

fn amtool(args: &[&str]) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring");
    let out = Command::new("amtool")
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("amtool must be installed: Debian's prometheus-alertmanager package (scripts/ensure-services.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "amtool {args:?}:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn alertmanager_routes_alerts_by_severity() {
    let out = amtool(&["check-config", "alertmanager.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    for (labels, receiver) in [
        (["severity=critical", "alertname=WorkerDown"], "critical"),
        (["severity=warning", "alertname=OutboxLag"], "warning"),
        (["severity=info", "alertname=Other"], "warning"),
    ] {
        let mut args = vec!["config", "routes", "test", "--config.file=alertmanager.yml"];
        args.extend(labels);
        assert_eq!(amtool(&args).trim(), receiver, "{labels:?}");
    }
}
