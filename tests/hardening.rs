//! What a hostile client or a curious local user can do to a running daemon (issue 18): each
//! test is the attack, against a real `primed run` (the embedded mode unless it needs more).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::json;
use support::{Daemon, primed, sample, scrape};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_do_not_grow_the_metrics() {
    let d = Daemon::start(&[]);
    let http = reqwest::Client::new();
    for i in 0..50 {
        let method =
            reqwest::Method::from_bytes(format!("X{}{i}", "M".repeat(500)).as_bytes()).unwrap();
        let r = http
            .request(method, d.url("/prime-check"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error(), "{}", r.status());
    }
    let text = scrape(&d).await;
    assert!(
        !text.contains("MMMMMMMM"),
        "a client-chosen method became a label value"
    );
    assert!(
        text.contains(r#"http_requests_total{endpoint="/prime-check",method="other""#),
        "made-up methods are counted as `other`"
    );
    assert!(
        text.len() < 200_000,
        "/metrics is {} bytes after 50 made-up methods",
        text.len()
    );
}

#[test]
fn url_credentials_never_show_in_config_check() {
    let (status, text) = config_check("NATS_URL", "nats://someone:hunter2secret@127.0.0.1:4222");
    assert!(status.success(), "{text}");
    assert!(!text.contains("hunter2secret"), "{text}");
    assert!(text.contains("nats://<redacted>@127.0.0.1:4222"), "{text}");
}

#[test]
fn url_credentials_never_show_in_the_connect_error() {
    // A port out of range: the connection fails at once, with the URL in the error.
    let mut d = primed();
    d.args(["run"])
        .env("PRIMED_DATA_DIR", tempfile::tempdir().unwrap().path())
        .env("PRIMED_HTTP_ADDR", "127.0.0.1:0")
        .env("NATS_URL", "nats://someone:hunter2secret@127.0.0.1:99999");
    let (_, out) = run(d);
    assert!(!out.contains("hunter2secret"), "{out}");
    assert!(out.contains("<redacted>@127.0.0.1"), "{out}");
}

/// `primed config check` with `key` set to `value`: its exit status and output.
fn config_check(key: &str, value: &str) -> (std::process::ExitStatus, String) {
    let mut check = primed();
    check.args(["config", "check"]).env(key, value);
    run(check)
}

/// Runs `cmd` to its end: its exit status, and stdout and stderr joined.
fn run(mut cmd: std::process::Command) -> (std::process::ExitStatus, String) {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_data_is_readable_by_its_owner_only() {
    let tmp = tempfile::tempdir().unwrap();
    // A parent that does not exist yet, as on a first start.
    let data = tmp.path().join("var").join("primed");
    let d = Daemon::start_in(&data, &[]);
    let http = reqwest::Client::new();
    let r = http
        .post(d.url("/prime-check"))
        .json(&json!({"number": "97", "email": "owner@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let mail = data.join("mail");
    let emails = || {
        std::fs::read_dir(&mail)
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    assert_eventually!(emails().len() == 1, "the email is written");
    assert_eq!(mode(&data), 0o700, "data directory");
    assert_eq!(mode(&mail), 0o700, "mail directory");
    for name in ["primed.db", "primed.db-wal", "primed.db-shm", "admin-token"] {
        let path = data.join(name);
        if name == "primed.db" || path.exists() {
            assert_eq!(mode(&path), 0o600, "{name}");
        }
    }
    assert_eq!(mode(&emails()[0]), 0o600, "the .eml file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_open_data_directory_is_named_in_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut d = Daemon::start_in(&data, &[]);
    let line = d.wait_for_log("the data directory is open to other users");
    assert!(line.contains("chmod 700"), "{line}");
    assert_eq!(mode(&data), 0o755, "the operator's choice is kept");
}

/// Every error is `{"error": code, "message": text}` with a JSON content type.
async fn json_error(
    r: reqwest::Response,
) -> (reqwest::StatusCode, reqwest::header::HeaderMap, String) {
    let status = r.status();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    assert!(
        headers
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap().starts_with("application/json")),
        "{status}: content type {:?}, body {text:?}",
        headers.get("content-type")
    );
    let body: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {text:?}"));
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{text}"
    );
    (status, headers, body["error"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_the_documented_json() {
    let d = Daemon::start(&[]);
    let http = reqwest::Client::new();

    let r = http
        .post(d.url("/login"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (status, _, code) = json_error(r).await;
    assert_eq!((status.as_u16(), code.as_str()), (400, "malformed_json"));

    let r = http.post(d.url("/login")).body("x").send().await.unwrap();
    let (status, _, code) = json_error(r).await;
    assert_eq!(
        (status.as_u16(), code.as_str()),
        (415, "unsupported_media_type")
    );

    let r = http
        .post(d.url("/login"))
        .json(&json!({"operator": "x"}))
        .send()
        .await
        .unwrap();
    let (status, _, code) = json_error(r).await;
    assert_eq!((status.as_u16(), code.as_str()), (422, "invalid_request"));

    let r = http.put(d.url("/prime-check")).send().await.unwrap();
    let (status, headers, code) = json_error(r).await;
    assert_eq!(
        (status.as_u16(), code.as_str()),
        (405, "method_not_allowed")
    );
    assert!(
        headers["allow"].to_str().unwrap().contains("POST"),
        "the Allow header is kept"
    );

    let r = http
        .delete(d.url(&format!("/prime-check/{}", "0".repeat(36))))
        .send()
        .await
        .unwrap();
    let (status, _, _) = json_error(r).await;
    assert_eq!(status.as_u16(), 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_carry_a_session_or_csrf_token_are_not_cached() {
    let d = Daemon::start(&[]);
    let http = reqwest::Client::new();
    let r = http
        .post(d.url("/login"))
        .json(&json!({"operator": "ops", "token": d.admin_token()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let r = http
        .get(d.url("/api/session"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
}

/// Reads until the server closes the connection (or fails the test after [`support::WAIT`]),
/// returning what it sent.
async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let read = tokio::time::timeout(support::WAIT, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the server kept the connection open for {:?}",
        support::WAIT
    );
    String::from_utf8_lossy(&got).into_owned()
}

const SHORT_LIMITS: &[(&str, &str)] = &[
    ("PRIMED_HTTP_HEADER_TIMEOUT_SECONDS", "1"),
    ("PRIMED_HTTP_BODY_TIMEOUT_SECONDS", "1"),
    ("PRIMED_HTTP_IDLE_TIMEOUT_SECONDS", "1"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_clients_are_cut_off() {
    use tokio::io::AsyncWriteExt;
    let d = Daemon::start(SHORT_LIMITS);

    // A connection that never sends a byte.
    let mut silent = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    assert_eq!(read_until_closed(&mut silent).await, "");

    // A kept-alive connection after its answer.
    let mut idle = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    idle.write_all(b"GET /ready HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut idle).await;
    assert!(answer.starts_with("HTTP/1.1 "), "{answer}");

    // Headers trickled one line every 300 ms: the whole head must arrive within 1 s.
    let mut trickle = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    trickle.write_all(b"GET /ready HTTP/1.1\r\n").await.unwrap();
    let mut lines_sent = 0;
    for i in 0..60 {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        if trickle
            .write_all(format!("x-trickle-{i}: y\r\n").as_bytes())
            .await
            .is_err()
        {
            break;
        }
        lines_sent += 1;
    }
    assert!(
        lines_sent < 60,
        "a head trickled over 18 s was still being read"
    );

    // A body that stops half-way: 408, and the connection closes.
    let mut slow_body = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    slow_body
        .write_all(
            b"POST /prime-check HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"number\":",
        )
        .await
        .unwrap();
    let answer = read_until_closed(&mut slow_body).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""error":"body_timeout""#), "{answer}");

    // A declared body over the limit is refused before it is sent.
    let mut huge = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    huge.write_all(
        b"POST /prime-check HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 99999999999\r\n\r\n",
    )
    .await
    .unwrap();
    let answer = read_until_closed(&mut huge).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains(r#""error":"payload_too_large""#),
        "{answer}"
    );

    let text = scrape(&d).await;
    assert!(
        sample(
            &text,
            r#"http_connections_closed_total{reason="idle_timeout"}"#
        ) >= 2.0,
        "{text}"
    );
    assert!(
        sample(
            &text,
            r#"http_connections_closed_total{reason="header_timeout"}"#
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_refused_with_503() {
    let d = Daemon::start(&[("PRIMED_HTTP_MAX_CONNECTIONS", "3")]);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::net::TcpStream::connect(d.addr).await.unwrap());
    }
    // The held ones are accepted in order. The next one sends its request, as a client
    // would, and still reads the whole answer (no reset for unread data).
    let mut extra = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    {
        use tokio::io::AsyncWriteExt;
        extra
            .write_all(b"GET /ready HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
    }
    let answer = read_until_closed(&mut extra).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("too_many_connections"), "{answer}");
    assert!(answer.contains("PRIMED_HTTP_MAX_CONNECTIONS"), "{answer}");
    held.clear();
    let http = reqwest::Client::new();
    assert_eventually!(
        match http.get(d.url("/metrics")).send().await {
            Ok(r) if r.status() == 200 => {
                let text = r.text().await.unwrap();
                sample(&text, r#"http_connections_closed_total{reason="refused"}"#) >= 1.0
            }
            _ => false,
        },
        "the refusal is counted once the held connections are gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_does_not_hold_up_shutdown() {
    use tokio::io::AsyncWriteExt;
    let mut d = Daemon::start(&[("PRIMED_HTTP_HEADER_TIMEOUT_SECONDS", "60")]);
    let mut stalled = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    stalled
        .write_all(b"GET /ready HTTP/1.1\r\nx-half: ")
        .await
        .unwrap();
    let mut idle = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    idle.write_all(b"GET /ready HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // Both are being served once the kept-alive one has its answer.
    {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 256];
        let n = idle.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 "));
    }
    d.signal(nix::sys::signal::Signal::SIGTERM);
    let status = d.wait_exit();
    assert!(status.success(), "{status:?}");
    let log = d.log_so_far();
    assert!(
        !log.contains("at the drain deadline"),
        "a connection without a request held the drain: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_http_actor_answers_first_and_serves_again() {
    let mut d = Daemon::start(&[]);
    let http = reqwest::Client::new();
    let token = d.admin_token();
    let r = http
        .post(d.url("/admin/actors/http/restart"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    let restarts = || {
        let http = http.clone();
        let token = token.clone();
        let url = d.url("/admin/actors");
        async move {
            let Ok(r) = http.get(url).bearer_auth(token).send().await else {
                return None;
            };
            let tree: serde_json::Value = r.json().await.ok()?;
            tree["children"]
                .as_array()?
                .iter()
                .find(|c| c["name"] == "http")
                .filter(|c| c["state"] == "running")
                .and_then(|c| c["restart_count"].as_u64())
        }
    };
    assert_eventually!(
        restarts().await == Some(1),
        "the http actor is running again after one restart"
    );
    let log = d.log_so_far();
    assert!(
        !log.contains("at the drain deadline"),
        "the restart waited out the drain deadline: {log}"
    );
    assert!(
        log.contains(r#""action":"restart""#) && log.contains(r#""actor":"http""#),
        "the restart is audited: {log}"
    );
}

const JWT_SECRET: &str = "hardening-test-secret-0123456789abcdef";

fn user_token(sub: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    primed::ratelimit::identity::sign_hs256(
        &json!({"sub": sub, "exp": now + 600}),
        JWT_SECRET.as_bytes(),
    )
}

/// Alice, Bob and an anonymous client each submit a request; what each of them (and an
/// admin) can then read.
async fn each_caller_sees_only_what_is_theirs(d: &Daemon) {
    let http = reqwest::Client::new();
    let submit = async |token: Option<String>, email: &str| {
        let r = send_as(
            http.post(d.url("/prime-check"))
                .json(&json!({"number": "97", "email": email})),
            token,
        )
        .await;
        assert_eq!(r.status(), 202);
        r.json::<serde_json::Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let alice = submit(Some(user_token("alice")), "alice@example.com").await;
    let bob = submit(Some(user_token("bob")), "bob@example.com").await;
    let anonymous = submit(None, "mallory@example.com").await;

    let list = async |token: Option<String>| {
        let r = send_as(http.get(d.url("/prime-check-list?limit=100")), token).await;
        let status = r.status().as_u16();
        (status, r.json::<serde_json::Value>().await.unwrap())
    };
    let emails = |page: &serde_json::Value| {
        let mut v: Vec<String> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["email"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };

    let (status, body) = list(None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["items"], json!([]), "an anonymous caller owns nothing");
    assert!(body["hint"].as_str().unwrap().contains("Bearer"), "{body}");
    assert!(!body.to_string().contains("@example.com"));

    let (status, page) = list(Some(user_token("alice"))).await;
    assert_eq!(status, 200);
    assert_eq!(emails(&page), ["alice@example.com"]);
    let (_, page) = list(Some(user_token("bob"))).await;
    assert_eq!(emails(&page), ["bob@example.com"]);
    let (_, page) = list(Some(d.admin_token())).await;
    assert_eq!(
        emails(&page),
        [
            "alice@example.com",
            "bob@example.com",
            "mallory@example.com"
        ]
    );
    let (status, _) = list(Some("not-a-token".into())).await;
    assert_eq!(status, 401);

    // One request by its id: public, the address masked unless it is the caller's own.
    let get = async |id: &str, token: Option<String>| {
        let r = send_as(http.get(d.url(&format!("/prime-check/{id}"))), token).await;
        assert_eq!(r.status(), 200);
        r.json::<serde_json::Value>().await.unwrap()["email"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(get(&alice, None).await, "a…@example.com");
    assert_eq!(get(&alice, Some(user_token("bob"))).await, "a…@example.com");
    assert_eq!(
        get(&alice, Some(user_token("alice"))).await,
        "alice@example.com"
    );
    assert_eq!(get(&bob, Some(d.admin_token())).await, "bob@example.com");
    assert_eq!(get(&anonymous, None).await, "m…@example.com");
}

/// Sends `request`, with `token` as its bearer token when there is one.
async fn send_as(request: reqwest::RequestBuilder, token: Option<String>) -> reqwest::Response {
    match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
    .send()
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_shows_each_user_their_own_requests_embedded() {
    let d = Daemon::start(&[("JWT_SECRET", JWT_SECRET)]);
    each_caller_sees_only_what_is_theirs(&d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_shows_each_user_their_own_requests_on_mysql() {
    let db = support::TestDb::create();
    let d = Daemon::start(&[("JWT_SECRET", JWT_SECRET), ("DATABASE_URL", &db.url)]);
    each_caller_sees_only_what_is_theirs(&d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_admin_tokens_is_limited_per_address_and_logged_once() {
    let mut d = Daemon::start(&[("PRIMED_AUTH_FAILURES_PER_MINUTE", "3")]);
    let http = reqwest::Client::new();
    let token = d.admin_token();
    let login = |guess: String| {
        let http = http.clone();
        let url = d.url("/login");
        async move {
            http.post(url)
                .json(&json!({"operator": "eve", "token": guess}))
                .send()
                .await
                .unwrap()
        }
    };
    for i in 0..2 {
        assert_eq!(login(format!("wrong-guess-{i:016}")).await.status(), 401);
    }
    let r = http
        .get(d.url("/admin/actors"))
        .bearer_auth("wrong-bearer-guess-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a bearer guess costs the same");
    // The bucket is empty: even the right token waits now.
    let r = login(token.clone()).await;
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let (_, _, code) = json_error(r).await;
    assert_eq!(code, "too_many_failed_authentications");
    // Requests without credentials are not held up.
    let r = http.get(d.url("/ready")).send().await.unwrap();
    assert!(r.status() != 429, "{}", r.status());
    let text = scrape(&d).await;
    assert_eq!(
        sample(&text, r#"auth_failures_total{result="refused"}"#),
        3.0
    );
    assert!(sample(&text, r#"auth_failures_total{result="limited"}"#) >= 1.0);
    let lines = d
        .log_so_far()
        .lines()
        .filter(|l| l.contains("failed authentication"))
        .count();
    assert_eq!(lines, 1, "three failures in a minute are one log line");
}

#[test]
fn config_check_warns_of_trusting_everyone_and_refuses_a_port_that_is_not_a_number() {
    let (status, text) = config_check("RATE_LIMIT_TRUSTED_PROXIES", "0.0.0.0/0");
    assert!(status.success(), "{text}");
    assert!(
        text.contains("# warning: RATE_LIMIT_TRUSTED_PROXIES contains 0.0.0.0/0"),
        "{text}"
    );

    let (status, text) = config_check("DATABASE_URL", "mysql://u:hunter2secret@db:port/x");
    assert_eq!(status.code(), Some(64), "{text}");
    assert!(
        text.contains("DATABASE_URL must be a mysql:// URL"),
        "{text}"
    );
    assert!(!text.contains("hunter2secret"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_session_cookie_does_not_lock_the_operator_out() {
    // An admin page left open across a restart keeps polling with a cookie the daemon
    // forgot: many 401s, none counted as a guess; logging in again works.
    let d = Daemon::start(&[("PRIMED_AUTH_FAILURES_PER_MINUTE", "2")]);
    let http = reqwest::Client::new();
    for _ in 0..5 {
        let r = http
            .get(d.url("/admin/actors"))
            .header("cookie", "primed_session=forgotten-by-a-restart")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    let r = http
        .post(d.url("/login"))
        .json(&json!({"operator": "ops", "token": d.admin_token()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
