//! When the run may vouch: the pipeline recovered after a fault (a request goes through on
//! every daemon), every worker heartbeats healthy, and the consumers are quiet (nothing
//! waiting, nothing delivered and unacknowledged).

use std::time::{Duration, Instant};

use sqlx::mysql::MySqlPool;

use super::load::{Kind, Outcome, Shared, submit};
use super::options::RECOVERY_TIMEOUT;
use super::services::NatsNode;

/// Waits until every daemon's `/health` is ok and a fresh request has gone through the whole
/// pipeline (result and email recorded); returns when, or why not after [`RECOVERY_TIMEOUT`].
pub(super) async fn recover(shared: &Shared, db: &MySqlPool) -> Result<(Instant, String), String> {
    let started = Instant::now();
    let deadline = started + RECOVERY_TIMEOUT;
    'health: loop {
        for port in &shared.ports {
            let why = match shared
                .http
                .get(format!("http://127.0.0.1:{port}/health"))
                .send()
                .await
            {
                Ok(r) => match r.json::<serde_json::Value>().await {
                    Ok(h) if h["status"] == "ok" => None,
                    Ok(h) => Some(format!(
                        "health of :{port} is {}: {}",
                        h["status"],
                        not_ok(&h)
                    )),
                    Err(e) => Some(format!("health of :{port}: {e}")),
                },
                Err(e) => Some(format!("health of :{port}: {e}")),
            };
            if let Some(why) = why {
                if Instant::now() > deadline {
                    return Err(why);
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
                continue 'health;
            }
        }
        break;
    }
    let healthy = Instant::now();
    let id = match submit(shared, Kind::Probe).await {
        Outcome::Accepted(id) => id,
        other => return Err(format!("a probe request got {other:?}")),
    };
    let accepted = Instant::now();
    while Instant::now() < deadline {
        let emailed: Option<i64> =
            sqlx::query_scalar("SELECT COUNT(*) FROM sent_emails WHERE request_id = ?")
                .bind(&id)
                .fetch_one(db)
                .await
                .ok();
        if emailed.unwrap_or(0) > 0 {
            let now = Instant::now();
            let mut phases = format!(
                "health ok after {} ms, probe accepted {} ms later, emailed {} ms after that",
                (healthy - started).as_millis(),
                (accepted - healthy).as_millis(),
                (now - accepted).as_millis()
            );
            if let Some(steps) = timeline(db, &id).await {
                phases.push_str(&format!(" [{steps}]"));
            }
            return Ok((now, phases));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(format!("probe request {id} was not emailed"))
}

/// The checks of a health answer that are not ok.
fn not_ok(health: &serde_json::Value) -> String {
    health["checks"]
        .as_object()
        .map(|checks| {
            checks
                .iter()
                .filter(|(_, c)| c["status"] != "ok")
                .map(|(name, c)| format!("{name} ({})", c["error"].as_str().unwrap_or("?")))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// Whether every worker's last heartbeat is healthy and recent (what the check demands).
pub(super) async fn all_healthy(db: &MySqlPool) -> bool {
    let unhealthy: Result<i64, _> = sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM worker_health_checks WHERE {}",
        super::invariants::UNHEALTHY
    ))
    .fetch_one(db)
    .await;
    matches!(unhealthy, Ok(0))
}

/// Waits until no message of the main stream waits for a consumer or for an acknowledgement
/// (so no redelivery, and no late repeat, can come), up to `within`.
pub(super) async fn quiet(nodes: &[NatsNode], within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let js = async_nats::jetstream::new(connect_any(nodes).await?);
    loop {
        let mut busy = Vec::new();
        for durable in [
            primed::adapters::nats::CONSUMER_PRIMECHECK,
            primed::adapters::nats::CONSUMER_EMAIL,
        ] {
            let info = async {
                let stream = js.get_stream("PRIME").await.map_err(|e| e.to_string())?;
                let mut consumer: async_nats::jetstream::consumer::PullConsumer = stream
                    .get_consumer(durable)
                    .await
                    .map_err(|e| e.to_string())?;
                consumer
                    .info()
                    .await
                    .map(|i| (i.num_pending, i.num_ack_pending))
                    .map_err(|e| e.to_string())
            }
            .await;
            match info {
                Ok((0, 0)) => {}
                Ok((pending, unacked)) => busy.push(format!(
                    "{durable}: {pending} waiting, {unacked} unacknowledged"
                )),
                Err(e) => busy.push(format!("{durable}: {e}")),
            }
        }
        if busy.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(busy.join("; "));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A client with every node of the cluster as its server list (a comma-joined URL is not a
/// server list to the client).
pub(super) async fn connect_any(nodes: &[NatsNode]) -> Result<async_nats::Client, String> {
    let servers = nodes
        .iter()
        .map(|n| format!("nats://127.0.0.1:{}", n.port).parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad NATS address: {e}"))?;
    async_nats::connect(servers)
        .await
        .map_err(|e| format!("cannot connect to NATS: {e}"))
}

/// Where a request's trip went, from its rows: ms from its acceptance until its check event
/// was published, it was checked, its email event was published and its email sent.
async fn timeline(db: &MySqlPool, id: &str) -> Option<String> {
    let ms = "TIMESTAMPDIFF(MICROSECOND, r.created_at, {}) DIV 1000";
    let published = |subject: &str| {
        format!(
            "(SELECT MIN(o.published_at) FROM outbox o WHERE o.request_id = r.request_id AND o.subject = '{subject}')"
        )
    };
    let sql = format!(
        "SELECT {}, {}, {}, {} FROM prime_check_requests r WHERE r.id = ?",
        ms.replace("{}", &published("primecheck.requested")),
        ms.replace("{}", "r.completed_at"),
        ms.replace("{}", &published("email.send")),
        ms.replace(
            "{}",
            "(SELECT MIN(s.sent_at) FROM sent_emails s WHERE s.request_id = r.id)"
        ),
    );
    type Row = (Option<i64>, Option<i64>, Option<i64>, Option<i64>);
    let row: Row = sqlx::query_as(&sql).bind(id).fetch_one(db).await.ok()?;
    let show = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
    Some(format!(
        "from acceptance: check published +{} ms, checked +{}, email published +{}, sent +{}",
        show(row.0),
        show(row.1),
        show(row.2),
        show(row.3)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check behind "none doubled": a message that waits, or one delivered and never
    /// acknowledged, keeps the consumers from being quiet, and the run from vouching.
    #[tokio::test]
    async fn consumers_holding_a_message_are_not_quiet() {
        #![allow(clippy::unwrap_used)]
        use primed::adapters::nats::{JetStreamBroker, JetStreamSettings};
        let dir = tempfile::tempdir().unwrap();
        let nodes = NatsNode::start_all(dir.path(), 1).await.unwrap();
        let url = format!("nats://127.0.0.1:{}", nodes[0].port);
        let settings = JetStreamSettings::new("PRIME");
        let (broker, client) = JetStreamBroker::connect(&url, &settings).await.unwrap();
        broker.ensure_topology(&settings).await.unwrap();
        assert_eq!(quiet(&nodes, Duration::from_millis(200)).await, Ok(()));

        let js = async_nats::jetstream::new(client);
        js.publish("email.send", "{}".into())
            .await
            .unwrap()
            .await
            .unwrap();
        let why = quiet(&nodes, Duration::from_millis(300)).await.unwrap_err();
        assert!(why.contains("1 waiting"), "{why}");

        // Taken and never acknowledged: still not quiet.
        let stream = js.get_stream("PRIME").await.unwrap();
        let consumer: async_nats::jetstream::consumer::PullConsumer = stream
            .get_consumer(primed::adapters::nats::CONSUMER_EMAIL)
            .await
            .unwrap();
        let taken = consumer.fetch().max_messages(1).messages().await.unwrap();
        let taken: Vec<_> = futures::StreamExt::collect(taken).await;
        assert_eq!(taken.len(), 1);
        let why = quiet(&nodes, Duration::from_millis(300)).await.unwrap_err();
        assert!(why.contains("1 unacknowledged"), "{why}");
    }
}
