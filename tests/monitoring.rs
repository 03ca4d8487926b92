//! The files under `monitoring/` are valid, and the alert rules behave as their unit tests
//! say (`promtool test rules`). Which metrics they may use is checked against a real scrape
//! in `tests/metrics.rs`.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/setup.rs"]
mod setup;

use std::path::Path;
use std::process::Command;

fn promtool(args: &[&str]) -> String {
    setup::ensure();
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
    setup::ensure();
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
    // Critical alerts page through PagerDuty; warnings go to Slack (seed 000 §7.1.2).
    let config: serde_json::Value = serde_json::to_value(
        serde_yaml_ng::from_str::<serde_yaml_ng::Value>(
            &std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring/alertmanager.yml"),
            )
            .unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    let receiver = |name: &str| {
        config["receivers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()
            .clone()
    };
    assert!(receiver("critical")["pagerduty_configs"][0]["routing_key"].is_string());
    assert_eq!(
        receiver("warning")["slack_configs"][0]["channel"],
        "#alerts"
    );
    for (labels, receiver) in [
        (["severity=critical", "alertname=WorkerDown"], "critical"),
        (["severity=critical", "alertname=QueueBacklog"], "critical"),
        (["severity=critical", "alertname=DatabaseDown"], "critical"),
        (
            ["severity=warning", "alertname=ElevatedErrorRate"],
            "warning",
        ),
        (["severity=warning", "alertname=OutboxLag"], "warning"),
        (["severity=info", "alertname=Other"], "warning"),
    ] {
        let mut args = vec!["config", "routes", "test", "--config.file=alertmanager.yml"];
        args.extend(labels);
        assert_eq!(amtool(&args).trim(), receiver, "{labels:?}");
    }
}

#[test]
fn the_dashboards_are_provisioned_and_well_formed() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring/grafana");
    let datasource =
        std::fs::read_to_string(dir.join("provisioning/datasources/prometheus.yml")).unwrap();
    assert!(datasource.contains("uid: prometheus"));
    let mut titles = Vec::new();
    let mut uids = std::collections::BTreeSet::new();
    let mut exprs = Vec::new();
    for entry in std::fs::read_dir(dir.join("dashboards")).unwrap() {
        let path = entry.unwrap().path();
        let d: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let uid = d["uid"].as_str().unwrap().to_string();
        assert!(uids.insert(uid.clone()), "uid {uid} twice");
        titles.push(d["title"].as_str().unwrap().to_string());
        let panels = d["panels"].as_array().unwrap();
        assert!(!panels.is_empty(), "{uid} has no panels");
        let mut ids = std::collections::BTreeSet::new();
        for p in panels {
            assert!(
                ids.insert(p["id"].as_u64().unwrap()),
                "{uid}: panel id twice"
            );
            assert_eq!(
                p["datasource"]["uid"], "prometheus",
                "{uid}: {}",
                p["title"]
            );
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{uid}: {} has no query", p["title"]);
            for t in targets {
                let expr = t["expr"].as_str().unwrap();
                assert!(!expr.is_empty());
                exprs.push(expr.to_string());
            }
        }
    }
    // Every query parses as PromQL: checked as recording rules by promtool, with the
    // dashboard variable replaced by a regex.
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let expr = expr.replace("$instance", ".*");
        rules.push_str(&format!(
            "      - record: dashboard_query_{i}\n        expr: {}\n",
            serde_json::Value::String(expr)
        ));
    }
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("dashboards.yml");
    std::fs::write(&file, rules).unwrap();
    let out = promtool(&["check", "rules", file.to_str().unwrap()]);
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{out}"
    );

    titles.sort();
    // The seed's dashboards (§5.5) plus the supervision tree's.
    assert_eq!(
        titles,
        [
            "Actors and Supervision",
            "Database Performance",
            "Error Analysis",
            "Message Queue Monitor",
            "Prime Check Details",
            "Prime Check System Overview",
            "Redis Monitoring",
            "SLO Dashboard"
        ]
    );
}

#[test]
fn compose_runs_the_whole_stack_with_files_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("compose.yaml")).unwrap();
    let doc: serde_json::Value =
        serde_json::to_value(serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text).unwrap())
            .unwrap();
    let services = doc["services"].as_object().unwrap();
    let mut names: Vec<&str> = services.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "alertmanager",
            "grafana",
            "jaeger",
            "mailpit",
            "mysql",
            "mysqld-exporter",
            "nats",
            "node-exporter",
            "primed",
            "prometheus",
            "redis",
            "redis-exporter"
        ]
    );
    let volumes = doc["volumes"].as_object().unwrap();
    for (name, service) in services {
        for mount in service["volumes"].as_array().into_iter().flatten() {
            let source = mount.as_str().unwrap().split(':').next().unwrap();
            if let Some(path) = source.strip_prefix("./") {
                assert!(root.join(path).exists(), "{name} mounts missing {source}");
            } else if source.starts_with('/') {
                // The host's own file system (node-exporter reads it).
                assert_eq!(name, "node-exporter", "{name} mounts the host's {source}");
            } else {
                assert!(
                    volumes.contains_key(source),
                    "{name}: undeclared volume {source}"
                );
            }
        }
        for dep in service["depends_on"].as_object().into_iter().flatten() {
            assert!(
                services.contains_key(dep.0),
                "{name} depends on unknown {}",
                dep.0
            );
        }
    }
    // The daemon's configuration names are the ones it knows.
    let known: Vec<&str> = primed::config::KEYS.iter().map(|k| k.name).collect();
    for key in services["primed"]["environment"]
        .as_object()
        .unwrap()
        .keys()
    {
        assert!(known.contains(&key.as_str()), "primed does not know {key}");
    }
    // Grafana: no self-service accounts.
    assert_eq!(
        services["grafana"]["environment"]["GF_USERS_ALLOW_SIGN_UP"],
        "false"
    );
    // Every exporter compose runs is scraped, and every scraped target runs.
    let prometheus: serde_json::Value = serde_json::to_value(
        serde_yaml_ng::from_str::<serde_yaml_ng::Value>(
            &std::fs::read_to_string(root.join("monitoring/prometheus.yml")).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    let mut scraped: Vec<String> = prometheus["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|job| job["static_configs"].as_array().unwrap().clone())
        .flat_map(|c| c["targets"].as_array().unwrap().clone())
        .map(|t| t.as_str().unwrap().split(':').next().unwrap().to_string())
        .collect();
    scraped.sort();
    assert_eq!(
        scraped,
        [
            "mysqld-exporter",
            "node-exporter",
            "primed",
            "redis-exporter"
        ]
    );
    // Every secret placeholder of the Alertmanager config is replaced from the environment.
    let am = std::fs::read_to_string(root.join("monitoring/alertmanager.yml")).unwrap();
    let command = services["alertmanager"]["command"][0].as_str().unwrap();
    let placeholder = regex::Regex::new(r"[a-z:/-]*[a-z-]+\.invalid/?").unwrap();
    let placeholders: Vec<&str> = placeholder.find_iter(&am).map(|m| m.as_str()).collect();
    assert_eq!(placeholders.len(), 4, "{placeholders:?}");
    for p in placeholders {
        assert!(
            command.contains(&format!("s|{p}|")),
            "compose does not replace {p}"
        );
    }
    assert!(root.join("Dockerfile").exists());
    // Where the compose plugin is installed, it validates the file too.
    let plugin = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if plugin {
        let out = Command::new("docker")
            .args(["compose", "config", "--quiet"])
            .current_dir(root)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker compose config: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
