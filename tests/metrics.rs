//! `GET /metrics` fed by the real code paths: a daemon on MariaDB, a nats-server of the
//! test's own, Redis and an SMTP stub serves a request end to end, and the scrape shows
//! it; every metric that `monitoring/` queries is exported.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;

use serde_json::json;
use support::{Daemon, NatsServer, SmtpStub, StubMode, TestDb, smtp_env};

const TOKEN: &str = "metrics-test-token-0123";

async fn scrape(d: &Daemon) -> String {
    let r = reqwest::get(d.url("/metrics")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    r.text().await.unwrap()
}

/// The value of the sample `series` (name and labels exactly as exposed), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .filter(|rest| rest.starts_with(' '))
            .and_then(|rest| rest.trim().parse().ok())
    })
}

/// Every metric family name in a scrape.
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scrape_shows_what_the_pipeline_did() {
    let db = TestDb::create();
    let nats = NatsServer::start();
    let stub = SmtpStub::start(StubMode::Accept).await;
    let mut env: Vec<(String, String)> = vec![
        ("DATABASE_URL".into(), db.url.clone()),
        ("NATS_URL".into(), nats.url()),
        ("ADMIN_API_KEYS".into(), TOKEN.into()),
        ("REDIS_HOST".into(), "127.0.0.1".into()),
        (
            "RATE_LIMIT_KEY_PREFIX".into(),
            format!("metrics-test-{}", db.name),
        ),
        ("PRIMED_HEARTBEAT_INTERVAL_SECONDS".into(), "1".into()),
        ("PRIMED_METRICS_INTERVAL_SECONDS".into(), "1".into()),
        ("PRIMED_FAULT_INJECTION".into(), "true".into()),
        ("PRIMED_OUTBOX_POLL_INTERVAL_MS".into(), "100".into()),
    ];
    env.extend(smtp_env(stub.port));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let d = Daemon::start(&env);
    let http = reqwest::Client::new();

    let r = http
        .post(d.url("/prime-check"))
        .json(&json!({"number": "97", "email": "metrics@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let bad = http
        .post(d.url("/prime-check"))
        .json(&json!({"number": "-4", "email": "metrics@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    assert_eq!(
        http.get(d.url("/no/such/path"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let killed = http
        .post(d.url("/admin/actors/retry-timer/kill"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert!(killed.status().is_success());

    assert_eventually!(
        sample(&scrape(&d).await, r#"emails_sent_total{status="sent"}"#) == Some(1.0),
        "the email is counted"
    );
    // Gauges are read every second: wait for a reading after the email.
    assert_eventually!(
        {
            let m = scrape(&d).await;
            sample(&m, "outbox_pending") == Some(0.0)
                && sample(&m, r#"actor_restarts_total{actor="retry-timer"}"#) == Some(1.0)
                && sample(
                    &m,
                    r#"nats_consumer_pending_messages{consumer="email-worker",stream="PRIME"}"#,
                ) == Some(0.0)
        },
        "the gauges catch up"
    );
    let m = scrape(&d).await;
    for (series, want) in [
        (
            r#"http_requests_total{endpoint="/prime-check",method="POST",status="202"}"#,
            1.0,
        ),
        (
            r#"http_requests_total{endpoint="/prime-check",method="POST",status="422"}"#,
            1.0,
        ),
        (
            r#"http_requests_total{endpoint="unmatched",method="GET",status="404"}"#,
            1.0,
        ),
        (
            r#"http_request_duration_seconds_count{endpoint="/prime-check",method="POST"}"#,
            2.0,
        ),
        (
            r#"prime_check_requests_total{result="prime",status="success"}"#,
            1.0,
        ),
        (
            r#"prime_check_duration_seconds_count{number_length="1-10"}"#,
            1.0,
        ),
        (
            r#"messages_processed_total{outcome="success",subject="primecheck.requested"}"#,
            1.0,
        ),
        (
            r#"messages_processed_total{outcome="success",subject="email.send"}"#,
            1.0,
        ),
        (
            r#"database_query_duration_seconds_count{query_type="create_request"}"#,
            1.0,
        ),
        (
            r#"database_query_duration_seconds_count{query_type="record_email"}"#,
            1.0,
        ),
        (r#"email_unrecorded_window_seconds_count"#, 1.0),
        (r#"dlq_message_count{status="pending"}"#, 0.0),
        (r#"message_queue_length{queue_name="email.send"}"#, 0.0),
        (r#"actor_up{actor="http"}"#, 1.0),
        (r#"actor_up{actor="email-worker-2"}"#, 1.0),
        (
            r#"rate_limit_hits_total{endpoint="prime-check",policy="per-ip",result="allowed"}"#,
            2.0,
        ),
        (r#"rate_limit_fallback_active"#, 0.0),
    ] {
        assert_eq!(sample(&m, series), Some(want), "{series}");
    }
    assert!(sample(&m, "redis_connected_clients").unwrap() >= 1.0);
    // The process metrics of the Prometheus client libraries.
    assert!(sample(&m, "process_resident_memory_bytes").unwrap() > 1e6);
    assert!(sample(&m, "process_open_fds").unwrap() >= 3.0);
    assert!(sample(&m, "process_cpu_seconds_total").unwrap() > 0.0);
    assert!(sample(&m, "process_start_time_seconds").unwrap() > 1.7e9);
    assert!(sample(&m, r#"database_connections{state="idle"}"#).is_some());
    assert!(sample(&m, "outbox_relay_lag_seconds").unwrap() >= 0.0);
    // The accepted request was stored by a transaction of the group commit.
    assert!(sample(&m, "accept_transaction_requests_count").unwrap() >= 1.0);

    // Every metric that an alert rule, a dashboard or a runbook queries is exported.
    let exported = families(&m);
    let wanted = monitoring_metrics();
    // The extraction finds the names the rules use, and no label names.
    for name in [
        "dlq_message_count",
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "actor_restarts_total",
        "worker_heartbeat_age_seconds",
        "outbox_relay_lag_seconds",
        "rate_limit_fallback_active",
        // Named by a runbook only: in a `promql` block, and inline.
        "retention_pruned_rows_total",
        "process_resident_memory_bytes",
    ] {
        assert!(wanted.contains(name), "{name} not found in {wanted:?}");
    }
    for label in ["status", "endpoint", "le", "actor", "instance", "job"] {
        assert!(!wanted.contains(label), "label {label} taken for a metric");
    }
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|name| {
            // A histogram's series are its family name plus _bucket, _count or _sum.
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|f| exported.contains(*f));
            !exported.contains(*name) && family.is_none()
        })
        .collect();
    assert!(
        missing.is_empty(),
        "monitoring/ queries metrics the daemon does not export: {missing:?}"
    );
}

/// The metric names the files under `monitoring/` query (alert expressions and dashboard
/// targets) and the runbooks name (their `promql` blocks, and inline): identifiers outside
/// label matchers, minus PromQL's functions and keywords.
fn monitoring_metrics() -> BTreeSet<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring");
    let mut exprs = Vec::new();
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name.ends_with("_test.yml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            if name.ends_with(".yml") || name.ends_with(".yaml") {
                let doc: serde_json::Value = serde_json::to_value(
                    serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text).unwrap(),
                )
                .unwrap();
                collect_exprs(&doc, &mut exprs);
            } else if name.ends_with(".json") {
                let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
                collect_exprs(&doc, &mut exprs);
            }
        }
    }
    // The runbooks' PromQL, and the metrics they name inline.
    let mut inline = Vec::new();
    for book in support::runbooks::all() {
        exprs.extend(book.blocks("promql"));
        inline.extend(book.inline_metrics());
    }
    let not_metrics: BTreeSet<&str> = [
        "rate",
        "irate",
        "increase",
        "sum",
        "by",
        "without",
        "histogram_quantile",
        "avg",
        "max",
        "min",
        "count",
        "time",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "absent",
        "clamp_min",
        "clamp_max",
        "delta",
        "deriv",
        "abs",
        "vector",
        "scalar",
        "label_replace",
        "max_over_time",
        "min_over_time",
        "avg_over_time",
        "sum_over_time",
        "changes",
        "resets",
        "topk",
        "bottomk",
        "offset",
        "bool",
        "le",
    ]
    .into_iter()
    .collect();
    let ident = regex::Regex::new(r"[a-zA-Z_:][a-zA-Z0-9_:]*").unwrap();
    // Grouping labels, durations in range selectors ([5m]) and numbers are not names.
    let not_names = regex::Regex::new(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)|\[[^\]]*\]|\b\d+(\.\d+)?(e-?\d+)?[smhdwy]?\b",
    )
    .unwrap();
    let mut out = BTreeSet::new();
    for expr in exprs {
        // Drop label matchers and strings: only names outside braces and quotes count.
        let mut cleaned = String::new();
        let (mut depth, mut quoted) = (0, false);
        for c in expr.chars() {
            match c {
                '"' => quoted = !quoted,
                '{' if !quoted => depth += 1,
                '}' if !quoted => depth -= 1,
                _ if depth == 0 && !quoted => cleaned.push(c),
                _ => {}
            }
            if c == '{' || c == '}' || c == '"' {
                cleaned.push(' ');
            }
        }
        let cleaned = not_names.replace_all(&cleaned, " ");
        for m in ident.find_iter(&cleaned) {
            let name = m.as_str();
            if not_metrics.contains(name) {
                continue;
            }
            out.insert(name.to_string());
        }
    }
    out.extend(inline);
    // `up` is Prometheus's own; the exporters compose runs beside the daemon export these.
    out.remove("up");
    for name in EXPORTED_BY_EXPORTERS {
        out.remove(name);
    }
    out
}

/// What the alerts query from the exporters (mysqld-exporter, node-exporter), not from the
/// daemon.
const EXPORTED_BY_EXPORTERS: [&str; 5] = [
    "mysql_up",
    "node_memory_MemTotal_bytes",
    "node_memory_MemAvailable_bytes",
    "node_filesystem_size_bytes",
    "node_filesystem_avail_bytes",
];

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| collect_exprs(i, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_waiting_for_a_pooled_connection_are_counted() {
    use actors::DlqStore;
    let db = TestDb::create();
    // One connection, held here: every store call has to wait for it.
    let store = support::pipeline::migrated_store(&db, 1).await;
    let held = store.pool().acquire().await.unwrap();
    let shared = std::sync::Arc::new(store.shared());
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let shared = shared.clone();
            tokio::spawn(async move { shared.list(actors::model::DlqQuery::default()).await })
        })
        .collect();
    let wait = || {
        sample(
            &primed::metrics::render(),
            r#"database_connections{state="wait"}"#,
        )
    };
    assert_eventually!(wait() == Some(3.0), "{:?} waiting", wait());
    // Given back, the connection serves them in turn and nobody waits any more.
    drop(held);
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(wait(), Some(0.0));
}

async fn pushed_over_otlp(
    env: &[(&str, &str)],
    bodies: &std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
) {
    let d = Daemon::start(env);
    let r = reqwest::Client::new()
        .post(d.url("/prime-check"))
        .json(&json!({"number": "97", "email": "a@b.co"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // The same instruments as /metrics, by the same names, pushed every 200 ms.
    for name in [
        "http_requests_total",
        "prime_check_requests_total",
        "emails_sent_total",
        "outbox_pending",
    ] {
        assert_eventually!(
            support::otlp::received(bodies, name.as_bytes()),
            "{name} was not pushed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_are_pushed_over_otlp_http_too() {
    let bodies = std::sync::Arc::default();
    let collector =
        support::otlp::http_collector("/v1/metrics", std::sync::Arc::clone(&bodies)).await;
    let url = format!("{collector}/v1/metrics");
    pushed_over_otlp(
        &[
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", url.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
        ],
        &bodies,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_are_pushed_over_otlp_grpc_too() {
    let bodies = std::sync::Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    support::otlp::grpc_collector(listener, std::sync::Arc::clone(&bodies));
    pushed_over_otlp(
        &[
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", url.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
        ],
        &bodies,
    )
    .await;
}
