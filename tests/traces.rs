//! One trace follows a request from HTTP through the outbox, NATS and both workers to the
//! SMTP send: the JSON log lines of every hop carry the same `trace_id`, and with an OTLP
//! endpoint the spans are exported there. Against MariaDB, a nats-server of the test's own
//! and an SMTP stub.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use support::{Daemon, NatsServer, SmtpStub, StubMode, TestDb, smtp_env};

fn daemon(db: &TestDb, nats: &NatsServer, smtp_port: u16, extra: &[(&str, &str)]) -> Daemon {
    let mut env: Vec<(String, String)> = vec![
        ("DATABASE_URL".into(), db.url.clone()),
        ("NATS_URL".into(), nats.url()),
        ("PRIMED_OUTBOX_POLL_INTERVAL_MS".into(), "100".into()),
    ];
    env.extend(smtp_env(smtp_port));
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Daemon::start(&env)
}

async fn submit(d: &Daemon, number: &str, traceparent: Option<&str>) -> String {
    let mut r = reqwest::Client::new()
        .post(d.url("/prime-check"))
        .json(&json!({"number": number, "email": "trace@example.com"}));
    if let Some(tp) = traceparent {
        r = r.header("traceparent", tp);
    }
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), 202);
    r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The log lines with `message`, as JSON.
fn lines(d: &mut Daemon, message: &str) -> Vec<Value> {
    d.log_so_far()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == message)
        .collect()
}

/// The `span` object of the one line with `message` whose span has `request_id`.
fn hop(d: &mut Daemon, message: &str, request_id: &str) -> Option<Value> {
    lines(d, message)
        .into_iter()
        .map(|v| v["span"].clone())
        .find(|s| s["request_id"] == request_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hop_of_a_request_logs_the_same_trace_id() {
    let db = TestDb::create();
    let nats = NatsServer::start();
    let stub = SmtpStub::start(StubMode::Accept).await;
    let mut d = daemon(&db, &nats, stub.port, &[]);

    // A caller's trace is continued; without one, the request starts its own.
    let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for traceparent in [Some(given), None] {
        let id = submit(&d, "1000003", traceparent).await;
        // The daemon's stdout arrives through a reader thread: wait for the line.
        let accepted_line = |d: &mut Daemon| {
            lines(d, "request accepted")
                .into_iter()
                .find(|v| v["id"] == id.as_str())
        };
        assert_eventually!(accepted_line(&mut d).is_some(), "{id} is logged");
        let accepted = accepted_line(&mut d).unwrap();
        let http = accepted["span"].clone();
        let request_id = http["request_id"].as_str().unwrap().to_string();
        let trace_id = http["trace_id"].as_str().unwrap().to_string();
        assert_eq!(trace_id.len(), 32, "{http}");
        assert_ne!(trace_id, "0".repeat(32));
        if traceparent.is_some() {
            assert_eq!(trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_ne!(http["span_id"], "00f067aa0ba902b7", "a span of its own");
        }
        assert_eventually!(
            hop(&mut d, "email sent", &request_id).is_some(),
            "the email of {request_id} is sent"
        );
        let check = hop(&mut d, "prime check done", &request_id).unwrap();
        let email = hop(&mut d, "email sent", &request_id).unwrap();
        assert_eq!(check["subject"], "primecheck.requested");
        assert_eq!(check["trace_id"], trace_id.as_str(), "{check}");
        assert_eq!(email["trace_id"], trace_id.as_str(), "{email}");
        // The access log line is in the same span.
        let access_line = |d: &mut Daemon| {
            lines(d, "http request")
                .into_iter()
                .find(|v| v["span"]["request_id"] == request_id.as_str())
        };
        assert_eventually!(access_line(&mut d).is_some(), "the access line");
        let access = access_line(&mut d).unwrap();
        assert_eq!(access["status"], 202);
        assert_eq!(access["ip"], "127.0.0.1");
        assert_eq!(access["span"]["route"], "/prime-check");
        assert!(access["duration_ms"].as_f64().unwrap() > 0.0);
        let spans = [&http["span_id"], &check["span_id"], &email["span_id"]];
        assert!(
            spans[0] != spans[1] && spans[1] != spans[2] && spans[0] != spans[2],
            "each hop is a span of its own: {spans:?}"
        );
    }
}

/// Runs a request through a daemon exporting to `collector` with `env`, stops it (which
/// flushes the batch exporter) and checks what `bodies` received: the request's trace id and
/// every hop's span. Returns the daemon's start-up line about the export.
async fn exported(env: &[(&str, &str)], log: &str, bodies: &Arc<Mutex<Vec<Vec<u8>>>>) -> Value {
    let db = TestDb::create();
    let nats = NatsServer::start();
    let stub = SmtpStub::start(StubMode::Accept).await;
    let mut d = daemon(&db, &nats, stub.port, env);
    let line: Value = serde_json::from_str(&d.wait_for_log(log)).unwrap();
    let given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    submit(&d, "97", Some(given)).await;
    assert_eventually!(stub.accepted().len() == 1, "the email is sent");
    // Stopping flushes what the batch exporter still holds.
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit().code(), Some(0));

    let all: Vec<u8> = bodies.lock().unwrap().concat();
    let contains = |needle: &[u8]| all.windows(needle.len()).any(|w| w == needle);
    let trace_id: Vec<u8> = (0..16)
        .map(|i| {
            u8::from_str_radix(&"0af7651916cd43dd8448eb211c80319c"[2 * i..2 * i + 2], 16).unwrap()
        })
        .collect();
    assert!(
        contains(&trace_id),
        "the exported spans carry the request's trace id"
    );
    for name in [
        "POST /prime-check",
        "process primecheck.requested",
        "process email.send",
        "smtp.send",
        "primed",
    ] {
        assert!(contains(name.as_bytes()), "no {name:?} in the export");
    }
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_http() {
    // A stand-in collector: it keeps the bodies of the OTLP/HTTP exports.
    let bodies: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let collector = support::otlp::http_collector("/v1/traces", bodies.clone()).await;
    let line = exported(
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ],
        "exporting traces over OTLP",
        &bodies,
    )
    .await;
    assert_eq!(line["protocol"], "http/protobuf");
    assert_eq!(line["url"], format!("{collector}/v1/traces"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_grpc() {
    let bodies: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    support::otlp::grpc_collector(listener, bodies.clone());
    // The seed's way: JAEGER_HOST and JAEGER_PORT, the protocol given explicitly.
    let line = exported(
        &[
            ("JAEGER_HOST", "127.0.0.1"),
            ("JAEGER_PORT", port.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
        "exporting traces over OTLP",
        &bodies,
    )
    .await;
    assert_eq!(line["protocol"], "grpc");
    assert_eq!(line["url"], format!("http://127.0.0.1:{port}"));
}
