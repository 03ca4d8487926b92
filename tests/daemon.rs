//! The `primed` binary as an operator runs it: no configuration, signals, exit codes,
//! the admin endpoint, and systemd's notify protocol.
// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use support::{Daemon, free_addr, port_is_free, primed, temp_path};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// An admin request with the daemon's token: status code and JSON body.
async fn admin(d: &Daemon, method: reqwest::Method, path: &str) -> (u16, Value) {
    let resp = client()
        .request(method, d.url(path))
        .bearer_auth(d.admin_token())
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn admin_tree(d: &Daemon) -> Value {
    let (status, tree) = admin(d, reqwest::Method::GET, "/admin/actors").await;
    assert_eq!(status, 200, "{tree}");
    tree
}

#[tokio::test]
async fn with_no_configuration_it_serves_the_admin_tree_and_exits_0_on_sigterm() {
    let mut d = Daemon::start(&[]);
    let http = client();

    let ready = http.get(d.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    let anonymous = http.get(d.url("/admin/actors")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let body: Value = anonymous.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");

    let wrong = http
        .get(d.url("/admin/actors"))
        .bearer_auth("0".repeat(64))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    let tree = admin_tree(&d).await;
    assert_eq!(tree["name"], "primed");
    assert_eq!(tree["strategy"], "one_for_one");
    let names: Vec<&str> = tree["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "heartbeat",
            "metrics-collector",
            "retention",
            "rate-limit-monitor",
            "outbox-relay",
            "dlq",
            "retry-timer",
            "dlq-replayer",
            "primecheck-workers",
            "email-workers",
            "http"
        ]
    );
    for c in tree["children"].as_array().unwrap() {
        assert_eq!(c["state"], "running");
    }
    // The worker pools are supervisors of their own, two workers each by default.
    let pool = tree["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "primecheck-workers")
        .unwrap();
    let workers: Vec<&str> = pool["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(workers, ["primecheck-worker-1", "primecheck-worker-2"]);

    let health = http.get(d.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let health: Value = health.json().await.unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["checks"]["supervision_tree"]["status"], "ok");
    assert_eq!(health["checks"]["database"]["status"], "ok");

    let missing = http.get(d.url("/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.json::<Value>().await.unwrap()["error"], "not_found");

    d.signal(Signal::SIGTERM);
    let status = d.wait_exit();
    assert_eq!(status.code(), Some(0), "log:\n{}", d.log.join("\n"));
    assert!(d.log.iter().any(|l| l.contains("primed stopped")));
    assert!(port_is_free(d.addr), "the port must be released");
}

#[tokio::test]
async fn sigint_shuts_down_gracefully_too() {
    let mut d = Daemon::start(&[]);
    d.signal(Signal::SIGINT);
    assert_eq!(d.wait_exit().code(), Some(0));
    assert!(d.log.iter().any(|l| l.contains("\"signal\":\"SIGINT\"")));
}

#[tokio::test]
async fn configured_admin_keys_replace_the_generated_token() {
    let key = "an-admin-key-of-32-characters-xx";
    let d = Daemon::start(&[("ADMIN_API_KEYS", &format!("other-key-0123456789,{key}"))]);
    assert!(!d.data_path("admin-token").exists());
    let ok = client()
        .get(d.url("/admin/actors"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn an_operator_can_restart_an_actor_through_the_admin_api() {
    use reqwest::Method;
    let d = Daemon::start(&[]);

    let (status, _) = admin(&d, Method::POST, "/admin/actors/heartbeat/restart").await;
    assert_eq!(status, 200);
    let tree = admin_tree(&d).await;
    assert_eq!(tree["children"][0]["name"], "heartbeat");
    assert_eq!(tree["children"][0]["restart_count"], 1);
    assert_eq!(tree["children"][0]["state"], "running");

    let (status, body) = admin(&d, Method::POST, "/admin/actors/nobody/restart").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "unknown_actor");

    let anonymous = client()
        .post(d.url("/admin/actors/heartbeat/restart"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[test]
fn invalid_configuration_exits_64_naming_the_key_before_binding_anything() {
    let addr = free_addr();
    let (_dir, data_dir) = temp_path("data");
    let out = primed()
        .arg("run")
        .env("PRIMED_HTTP_ADDR", addr.to_string())
        .env("PRIMED_DATA_DIR", &data_dir)
        .env("MYSQL_HOST", "127.0.0.1")
        .env("MYSQL_PORT", "abc")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(r#"MYSQL_PORT must be a number between 1 and 65535, got "abc""#),
        "{stderr}"
    );
    assert!(port_is_free(addr));
    assert!(
        !data_dir.exists(),
        "nothing may be created before the configuration is valid"
    );

    let check = primed()
        .args(["config", "check"])
        .env("RATE_LIMIT_WINDOW_SECONDS", "0")
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&check.stderr).contains("RATE_LIMIT_WINDOW_SECONDS must be"));
}

#[test]
fn config_check_prints_the_effective_configuration_with_secrets_redacted() {
    let (_dir, file) = temp_path("primed.toml");
    std::fs::write(
        &file,
        "nats_host = \"127.0.0.1\"\nsmtp_password = \"mail-secret\"\n",
    )
    .unwrap();
    let out = primed()
        .args(["config", "check", "--config"])
        .arg(&file)
        .env("MYSQL_HOST", "127.0.0.1")
        .env("MYSQL_PASSWORD", "hunter2hunter2")
        .env("ADMIN_API_KEYS", "0123456789abcdef0123")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("# mode: production"), "{stdout}");
    assert!(stdout.contains("NATS_HOST"), "{stdout}");
    assert!(stdout.contains("# config file"), "{stdout}");
    for secret in ["hunter2hunter2", "0123456789abcdef0123", "mail-secret"] {
        assert!(!stdout.contains(secret), "{secret} leaked:\n{stdout}");
    }
    assert!(stdout.contains("# configuration is valid"));
}

#[test]
fn version_and_help_answer() {
    let out = primed().arg("version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("primed "));
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["config", "check", "--help"],
        &["version", "--help"],
    ] {
        let out = primed().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(!out.stdout.is_empty());
    }
}

#[test]
fn a_port_in_use_is_a_clear_start_up_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (_dir, data_dir) = temp_path("data");
    let out = primed()
        .arg("run")
        .env("PRIMED_HTTP_ADDR", addr.to_string())
        .env("PRIMED_DATA_DIR", &data_dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    assert!(stderr.contains("PRIMED_HTTP_ADDR"), "{stderr}");
}

/// Reads notify datagrams until one contains `needle` (bounded).
fn expect_notify(sock: &UnixDatagram, seen: &mut Vec<String>, needle: &str) {
    let deadline = std::time::Instant::now() + support::WAIT;
    while !seen.iter().any(|m| m.contains(needle)) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle} in {seen:?}"
        );
        let mut buf = [0u8; 4096];
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

#[tokio::test]
async fn it_speaks_the_systemd_notify_protocol() {
    let (_dir, path) = temp_path("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let path = path.to_string_lossy().into_owned();
    let mut d = Daemon::start(&[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "1000000")]);
    let mut seen = Vec::new();

    expect_notify(&sock, &mut seen, "READY=1");
    // Watchdog pets come from the heartbeat at least twice per second here.
    let pets_before = seen.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    expect_notify(&sock, &mut seen, "WATCHDOG=1");
    let deadline = std::time::Instant::now() + support::WAIT;
    while seen.iter().filter(|m| m.contains("WATCHDOG=1")).count() < pets_before + 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no two more watchdog pets within {:?}: {seen:?}",
            support::WAIT
        );
        let mut buf = [0u8; 4096];
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    let ready_at = seen.iter().position(|m| m.contains("READY=1")).unwrap();
    let first_pet = seen.iter().position(|m| m.contains("WATCHDOG=1")).unwrap();
    assert!(
        ready_at < first_pet,
        "the first WATCHDOG=1 came before READY=1: {seen:?}"
    );

    d.signal(Signal::SIGTERM);
    expect_notify(&sock, &mut seen, "STOPPING=1");
    assert_eq!(d.wait_exit().code(), Some(0));
}

#[tokio::test]
async fn the_kill_endpoint_is_off_unless_fault_injection_is_enabled() {
    let d = Daemon::start(&[]);
    let (status, body) = admin(&d, reqwest::Method::POST, "/admin/actors/heartbeat/kill").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "fault_injection_disabled");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("PRIMED_FAULT_INJECTION=true")
    );
}

#[tokio::test]
async fn a_killed_actor_is_restarted_and_a_tree_that_gives_up_exits_non_zero() {
    let mut d = Daemon::start(&[("PRIMED_FAULT_INJECTION", "true")]);
    let http = client();
    let token = d.admin_token();

    // One crash: the supervisor restarts the actor and the process carries on; the
    // endpoint says how long the restart took (the first one is immediate).
    let (status, body) = admin(&d, reqwest::Method::POST, "/admin/actors/heartbeat/kill").await;
    assert_eq!(status, 200);
    assert_eq!(body["killed"], "heartbeat");
    assert!(body["restarted_in_ms"].as_f64().is_some(), "{body}");
    assert_eventually!(
        {
            let tree = admin_tree(&d).await;
            tree["children"][0]["restart_count"] == 1 && tree["children"][0]["state"] == "running"
        },
        "the killed heartbeat was not restarted"
    );
    let log = d.wait_for_log("child failed");
    assert!(
        log.contains("\"child\":\"heartbeat\"") && log.contains("killed"),
        "{log}"
    );

    // Crash it more often than the root's intensity allows (10 in 60 s): the tree gives up
    // and the process exits 1 for systemd to restart it. The root's restart backoff doubles
    // from 10 ms, so ten restarts take about ten seconds: this wait has its own bound.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = d.try_exit() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the tree never gave up"
        );
        // 409 while the actor is between incarnations; that is fine, try again.
        let _ = http
            .post(d.url("/admin/actors/heartbeat/kill"))
            .bearer_auth(&token)
            .send()
            .await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(status.code(), Some(1), "log:\n{}", d.log.join("\n"));
    d.wait_for_log("restart intensity exceeded");
    d.wait_for_log("the supervision tree gave up");
}

#[test]
fn a_shutdown_that_overruns_its_deadline_kills_what_is_left_and_exits_1() {
    use std::io::{Read, Write};
    let mut d = Daemon::start(&[("PRIMED_SHUTDOWN_TIMEOUT_SECONDS", "1")]);
    // A request whose body never finishes arriving keeps the HTTP drain busy. The server
    // answers "100 Continue" when the handler starts reading the body: then it is in flight.
    let mut slow = std::net::TcpStream::connect(d.addr).unwrap();
    slow.set_read_timeout(Some(support::WAIT)).unwrap();
    slow.write_all(
        b"POST /prime-check HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"\r\n\r\n") {
        slow.read_exact(&mut byte).expect("no 100 Continue");
        seen.push(byte[0]);
    }
    assert!(
        String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 100"),
        "{seen:?}"
    );
    slow.write_all(b"{\"num").unwrap();

    d.signal(Signal::SIGTERM);
    let status = d.wait_exit();
    assert_eq!(status.code(), Some(1), "log:\n{}", d.log.join("\n"));
    assert!(
        d.log
            .iter()
            .any(|l| l.contains("shutdown did not finish within 1s")),
        "log:\n{}",
        d.log.join("\n")
    );
}

/// The chaos harness crashes actors by name: every name it may pick is in the daemon's tree,
/// and crashing each one through the endpoint brings it back.
#[tokio::test]
async fn every_actor_the_chaos_schedule_crashes_exists_and_comes_back() {
    let d = Daemon::start(&[("PRIMED_FAULT_INJECTION", "true")]);
    fn names(node: &Value, out: &mut Vec<String>) {
        out.push(node["name"].as_str().unwrap_or_default().to_string());
        for child in node["children"].as_array().into_iter().flatten() {
            names(child, out);
        }
    }
    let mut all = Vec::new();
    names(&admin_tree(&d).await, &mut all);
    for actor in chaos::schedule::CRASHABLE_ACTORS {
        assert!(all.iter().any(|n| n == actor), "{actor} is not in {all:?}");
        let (status, body) = admin(
            &d,
            reqwest::Method::POST,
            &format!("/admin/actors/{actor}/kill"),
        )
        .await;
        assert_eq!(status, 200, "{actor}: {body}");
        assert!(
            body["restarted_in_ms"].as_f64().is_some(),
            "{actor}: {body}"
        );
    }
}

/// A store and a broker of different modes (`backends/mixed.rs`): the daemon starts, says
/// that no worker runs, accepts a request and publishes its event; the request waits as
/// pending and the tree has no workers, DLQ actor or retry timer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_and_a_broker_of_different_modes_accept_and_publish_but_run_no_worker() {
    use support::{NatsServer, TestDb};
    let db = TestDb::create();
    let nats = NatsServer::start();
    let nats_url = nats.url();
    let setups: [(&str, Vec<(&str, &str)>); 2] = [
        (
            "MySQL with the embedded queue",
            vec![("DATABASE_URL", db.url.as_str())],
        ),
        ("SQLite with NATS", vec![("NATS_URL", nats_url.as_str())]),
    ];
    for (setup, env) in setups {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Daemon::start_in(&dir.path().join("data"), &env);
        let log = d.wait_for_log("requests will wait as pending");
        assert!(log.contains("same mode"), "{setup}: {log}");
        let names: Vec<String> = admin_tree(&d).await["children"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect();
        assert!(
            names.contains(&"outbox-relay".to_string()),
            "{setup}: {names:?}"
        );
        for absent in [
            "dlq",
            "retry-timer",
            "dlq-replayer",
            "primecheck-workers",
            "email-workers",
        ] {
            assert!(!names.contains(&absent.to_string()), "{setup}: {names:?}");
        }
        let r = client()
            .post(d.url("/prime-check"))
            .json(&serde_json::json!({"number": "97", "email": "a@b.co"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{setup}");
        let id = r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let got: Value = client()
            .get(d.url(&format!("/prime-check/{id}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(got["status"], "pending", "{setup}: {got}");
        let health: Value = client()
            .get(d.url("/health"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            health["checks"]["database"]["status"], "ok",
            "{setup}: {health}"
        );
        d.signal(Signal::SIGTERM);
        assert!(d.wait_exit().success(), "{setup}");
    }
    // The SQLite store's event reached JetStream's stream.
    let client = async_nats::connect(&nats_url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("PRIME").await.unwrap();
    assert_eventually!(
        stream.info().await.unwrap().state.messages >= 1,
        "the event was not published to NATS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_is_not_fed_while_the_tree_is_unhealthy_and_is_fed_again_after() {
    let (_dir, path) = temp_path("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let path = path.to_string_lossy().into_owned();
    let d = Daemon::start(&[
        ("NOTIFY_SOCKET", &path),
        ("WATCHDOG_USEC", "1000000"),
        ("PRIMED_FAULT_INJECTION", "true"),
    ]);
    // Every datagram, in the order the daemon sent them.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (seen, done) = (seen.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let mut buf = [0u8; 4096];
                if let Ok(n) = sock.recv(&mut buf) {
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
        })
    };
    let pets = |seen: &[String]| seen.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    assert_eventually!(pets(&seen.lock().unwrap()) >= 1, "no watchdog pet");

    // Killed again and again, a worker's restarts back off (10 ms doubling): the later ones
    // leave it down for a second or more, the tree unhealthy meanwhile.
    let worker = |t: &Value| {
        t["children"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "email-workers")
            .unwrap()["children"][0]
            .clone()
    };
    for _ in 0..10 {
        let (status, _) = admin(
            &d,
            reqwest::Method::POST,
            "/admin/actors/email-worker-1/kill",
        )
        .await;
        assert_eq!(status, 200);
        assert_eventually!(
            worker(&admin_tree(&d).await)["state"] == "running",
            "email-worker-1 did not come back"
        );
    }
    // And the watchdog is fed again afterwards.
    let after = pets(&seen.lock().unwrap());
    assert_eventually!(
        pets(&seen.lock().unwrap()) >= after + 2,
        "the watchdog is not fed again"
    );
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    reader.join().unwrap();

    let seen = seen.lock().unwrap().clone();
    let down = seen
        .iter()
        .position(|m| m.contains("STATUS=unhealthy"))
        .unwrap_or_else(|| panic!("the tree was never reported unhealthy: {seen:?}"));
    assert!(
        seen[down].contains("email-workers/email-worker-1") && !seen[down].contains("WATCHDOG=1"),
        "{}",
        seen[down]
    );
    // Between each "unhealthy" and the "healthy again" after it, not one pet.
    let mut unhealthy = false;
    for m in &seen {
        if m.contains("STATUS=unhealthy") {
            unhealthy = true;
        } else if m.contains("STATUS=healthy again") {
            assert!(unhealthy, "healthy again without being unhealthy: {seen:?}");
            assert!(m.contains("WATCHDOG=1"), "{m}");
            unhealthy = false;
        } else if m.contains("WATCHDOG=1") {
            assert!(!unhealthy, "the watchdog was fed while unhealthy: {seen:?}");
        }
    }
    assert!(!unhealthy, "never healthy again: {seen:?}");
}
