//! The chaos harness end to end (DESIGN §11–§12): `primed-chaos` runs two daemons against
//! MariaDB, NATS, Redis and maildev of its own, behind fault-injecting proxies, injects
//! every fault class from a seeded schedule under load, and checks the promises. These are
//! the short profiles CI runs; the long one is in the README. Set `CHAOS_SEED` to replay a
//! schedule (the default seeds are fixed so that CI runs the same schedule every time).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../tests/support/setup.rs"]
mod setup;

use std::process::Command;
use std::sync::Mutex;

/// The two runs share two cores; one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Every fault class of the schedule.
const CLASSES: [&str; 13] = [
    "daemon_kill",
    "daemon_pause",
    "nats_restart",
    "mariadb_restart",
    "mariadb_kill_connections",
    "redis_stop",
    "smtp_down",
    "smtp_4xx",
    "link_latency",
    "link_partition",
    "link_reset",
    "link_bandwidth",
    "actor_crash",
];

/// The daemon's binary: built beside the harness's by `cargo test --workspace` (the
/// daemon's own integration tests need it), or by `cargo build --workspace --bins`.
fn primed() -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_BIN_EXE_primed-chaos")).with_file_name("primed");
    assert!(
        path.is_file(),
        "no primed binary at {}: build it first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// Runs the harness and returns its JSON report.
fn chaos(default_seed: u64, extra: &[&str]) -> serde_json::Value {
    setup::ensure();
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let seed = std::env::var("CHAOS_SEED").unwrap_or_else(|_| default_seed.to_string());
    let status = Command::new(env!("CARGO_BIN_EXE_primed-chaos"))
        .args(["--profile", "short", "--seed", &seed, "--primed"])
        .arg(primed())
        .arg("--work-dir")
        .arg(dir.path().join("run"))
        .arg("--report")
        .arg(&report)
        .args(extra)
        .status()
        .expect("run primed-chaos");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap_or_else(|e| {
            panic!("no report from primed-chaos (exit {status}): {e}; its output is above")
        }))
        .unwrap();
    assert!(
        status.success(),
        "primed-chaos exit {status}; violations: {:#}",
        json["violations"]
    );
    json
}

/// What every run must show: nothing lost or doubled, every bad input refused, every
/// fault healed, the outbox empty and the workers healthy.
fn assert_promises_held(r: &serde_json::Value) {
    assert_eq!(r["ok"], true, "{:#}", r["violations"]);
    assert_eq!(r["lost"], 0);
    assert_eq!(r["duplicates"], 0);
    assert_eq!(r["requests"]["unanswered"], 0);
    assert_eq!(r["requests"]["bad_input_not_rejected"], 0);
    assert_eq!(r["unpublished_outbox"], 0);
    assert_eq!(r["unhealthy_workers"].as_array().unwrap().len(), 0);
    let accepted = r["requests"]["accepted"].as_u64().unwrap();
    assert!(accepted > 100, "a steady load ran: {accepted} accepted");
    assert!(
        r["requests"]["rejected"].as_u64().unwrap() > 0,
        "bad inputs were sent"
    );
    assert!(
        r["dlq_entries"].as_u64().unwrap() > 0,
        "permanent failures reached the DLQ"
    );
    assert_eq!(
        r["emailed"].as_u64().unwrap() + r["dlq_entries"].as_u64().unwrap(),
        accepted,
        "every accepted request has one email or one DLQ entry"
    );
    let faults = r["faults"].as_array().unwrap();
    assert!(faults.len() >= CLASSES.len());
    for f in faults {
        assert!(f["recovered_ms"].is_number(), "fault not healed: {f}");
        // From the injection: at least the hold, and never less than from the end — but a
        // cluster node loss heals while the node is still down (that heal is its time from
        // the injection; the cluster test checks it).
        let from_injection = f["recovered_from_injection_ms"].as_f64().unwrap();
        assert!(
            !f["node_loss"].is_null()
                || (from_injection >= f["held_ms"].as_f64().unwrap()
                    && from_injection >= f["recovered_ms"].as_f64().unwrap()),
            "{f}"
        );
    }
    for class in CLASSES {
        assert!(
            faults.iter().any(|f| f["class"] == class),
            "the schedule covers {class}"
        );
        assert!(
            r["mttr"].as_array().unwrap().iter().any(|m| {
                let spread = |s: &serde_json::Value| {
                    let v = |k: &str| s[k].as_f64().unwrap();
                    v("min_ms") <= v("median_ms") && v("median_ms") <= v("max_ms")
                };
                m["class"] == class && spread(m) && spread(&m["from_injection"])
            }),
            "the report has the time to heal of {class}, from the end and the injection"
        );
    }
}

#[test]
fn the_short_profile_loses_and_doubles_nothing_across_every_fault_class() {
    let r = chaos(20261201, &[]);
    assert_promises_held(&r);
    assert_eq!(r["cluster"], false);
    // Redis loss costs no failed request: the limiter falls back in-process.
    let redis = r["mttr"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["class"] == "redis_stop")
        .unwrap();
    assert_eq!(redis["failed_attempts"], 0, "{redis}");
}

#[test]
fn the_cluster_profile_survives_a_nats_node_killed_under_load() {
    // Seed 19's schedule kills a follower and, later, the node leading the stream.
    let r = chaos(19, &["--cluster"]);
    assert_promises_held(&r);
    assert_eq!(r["cluster"], true);
    let node_kills: Vec<_> = r["faults"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["class"] == "nats_restart")
        .collect();
    assert!(!node_kills.is_empty());
    assert!(
        node_kills
            .iter()
            .all(|f| f["held_ms"].as_u64().unwrap() >= 1000)
    );
    // Each node loss is measured without the node: the pipeline healed while it was down,
    // and where it led the stream or a consumer, the servers reported the new leaders.
    for f in &node_kills {
        let loss = &f["node_loss"];
        assert!(
            loss["healed_ms"].is_number(),
            "healed with the node down: {f}"
        );
        assert_eq!(
            f["recovered_from_injection_ms"], loss["healed_ms"],
            "from the injection is the heal without the node: {f}"
        );
        if !loss["led"].as_array().unwrap().is_empty() {
            assert!(loss["election_ms"].is_number(), "elections reported: {f}");
        }
    }
    assert!(
        node_kills.iter().any(|f| f["node_loss"]["led"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l == "stream PRIME")),
        "the stream's leader was killed: {node_kills:#?}"
    );
}
