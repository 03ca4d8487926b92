//! A production-mode daemon (MariaDB, NATS, SMTP) and the calls the pipeline's tests make
//! to it: submit a check, read a request, and the admin API with the tests' token.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Daemon, NatsServer, TestDb, smtp_env};

/// The admin token of [`daemon`].
pub const TOKEN: &str = "workers-test-token";

/// An HTTP client with a 10 s timeout.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A production-mode daemon with fast retries, on `db`, `nats` and SMTP at `smtp_port`.
pub fn daemon(db: &TestDb, nats: &NatsServer, smtp_port: u16, extra: &[(&str, &str)]) -> Daemon {
    let env = daemon_env(db, nats, smtp_port, extra);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Daemon::start(&env)
}

/// The environment of [`daemon`].
pub fn daemon_env(
    db: &TestDb,
    nats: &NatsServer,
    smtp_port: u16,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("DATABASE_URL".into(), db.url.clone()),
        ("NATS_URL".into(), nats.url()),
        ("ADMIN_API_KEYS".into(), TOKEN.into()),
        ("PRIMED_OUTBOX_POLL_INTERVAL_MS".into(), "100".into()),
        ("PRIMED_RETRY_BACKOFF".into(), "300ms,600ms".into()),
        ("PRIMED_SMTP_TIMEOUT_SECONDS".into(), "2".into()),
        ("PRIMED_DLQ_RULES".into(), String::new()),
    ];
    env.extend(smtp_env(smtp_port));
    for (k, v) in extra {
        env.retain(|(name, _)| name != k);
        env.push((k.to_string(), v.to_string()));
    }
    env
}

/// Submits `number` for `email`; the new request's id.
pub async fn submit(d: &Daemon, number: &str, email: &str) -> String {
    let r = client()
        .post(d.url("/prime-check"))
        .json(&json!({"number": number, "email": email}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The request `id` as the public API shows it.
pub async fn request(d: &Daemon, id: &str) -> Value {
    client()
        .get(d.url(&format!("/prime-check/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// An admin API GET that must answer 200: its JSON.
pub async fn admin_get(d: &Daemon, path: &str) -> Value {
    let r = client()
        .get(d.url(path))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.unwrap()
}

/// An admin API call with a JSON body: its status and JSON answer.
pub async fn admin_send(
    d: &Daemon,
    method: reqwest::Method,
    path: &str,
    body: &Value,
) -> (u16, Value) {
    let r = client()
        .request(method, d.url(path))
        .bearer_auth(TOKEN)
        .json(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// `POST /api/dlq/reprocess`: its status and JSON answer.
pub async fn reprocess(d: &Daemon, body: Value) -> (u16, Value) {
    admin_send(d, reqwest::Method::POST, "/api/dlq/reprocess", &body).await
}

/// The dead letters `GET /api/dlq/messages?query` lists.
pub async fn dead_letters(d: &Daemon, query: &str) -> Vec<Value> {
    admin_get(d, &format!("/api/dlq/messages?{query}")).await["items"]
        .as_array()
        .unwrap()
        .clone()
}

/// A MySQL store on `db`, migrated, with a pool of `connections`.
pub async fn migrated_store(db: &TestDb, connections: u32) -> primed::adapters::mysql::MysqlStore {
    use primed::adapters::mysql::{MysqlStore, PoolSettings};
    let store = MysqlStore::connect(
        &primed::config::Secret::new(db.url.clone()),
        PoolSettings {
            max_connections: connections,
            acquire_timeout: Duration::from_secs(5),
            outbox_max_retries: 3,
        },
    )
    .unwrap();
    store.migrate().await.unwrap();
    store
}

/// `primed dlq ARGS` against `d`: exit code, stdout, stderr.
pub fn dlq_cli(d: &Daemon, args: &[&str]) -> (Option<i32>, String, String) {
    let base = d.url("");
    let out = super::primed()
        .arg("dlq")
        .args(["--url", base.trim_end_matches('/'), "--token", TOKEN])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Pulls one message from the prime-check consumer within `wait` and drops it without an
/// ack (a worker that died holding it); its event id, or None when none came.
pub async fn pull_and_drop(js: &async_nats::jetstream::Context, wait: Duration) -> Option<String> {
    use futures::StreamExt;
    let consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream("PRIME")
        .await
        .unwrap()
        .get_consumer("primecheck-worker")
        .await
        .unwrap();
    let mut batch = consumer
        .batch()
        .max_messages(1)
        .expires(wait)
        .messages()
        .await
        .unwrap();
    let message = batch.next().await?.unwrap();
    Some(
        message
            .headers
            .as_ref()
            .unwrap()
            .get("Nats-Msg-Id")
            .unwrap()
            .to_string(),
    )
}
