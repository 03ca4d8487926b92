//! What a NATS cluster says about its own leader elections: which node leads the pipeline's
//! stream and consumers before a node is killed, and when the servers report a new leader
//! (JetStream's `LEADER_ELECTED` advisories, stamped by the server that won). The harness
//! compares the time to heal of a node loss with these, measured in the same run.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use futures::StreamExt;

use super::services::NatsNode;

/// The pipeline's stream and the consumers on it whose leaders matter to the pipeline.
const STREAM: &str = "PRIME";
const CONSUMERS: [&str; 2] = [
    primed::adapters::nats::CONSUMER_PRIMECHECK,
    primed::adapters::nats::CONSUMER_EMAIL,
];

/// One election a server reported.
#[derive(Debug, Clone, PartialEq)]
pub struct Election {
    /// `stream PRIME` or `consumer <name>`.
    pub what: String,
    /// The new leader's server name.
    pub leader: String,
    /// When the server elected it (the advisory's timestamp).
    pub at: DateTime<Utc>,
}

/// Listens to the leader-elected advisories on every node (one connection each, so that
/// the node being killed does not blind it) and keeps them, each once.
pub struct Elections {
    seen: Arc<Mutex<Vec<Election>>>,
    _clients: Vec<async_nats::Client>,
}

impl Elections {
    /// Subscribes on every node.
    pub async fn watch(nodes: &[NatsNode]) -> Result<Self, String> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let ids = Arc::new(Mutex::new(BTreeSet::new()));
        let mut clients = Vec::new();
        for node in nodes {
            let client = async_nats::connect(format!("nats://127.0.0.1:{}", node.port))
                .await
                .map_err(|e| format!("cannot connect to NATS :{}: {e}", node.port))?;
            for subject in [
                format!("$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.{STREAM}"),
                format!("$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.{STREAM}.*"),
            ] {
                let mut sub = client
                    .subscribe(subject.clone())
                    .await
                    .map_err(|e| format!("cannot subscribe to {subject}: {e}"))?;
                let (seen, ids) = (seen.clone(), ids.clone());
                tokio::spawn(async move {
                    while let Some(message) = sub.next().await {
                        let Some((id, election)) = parse(&message.payload) else {
                            continue;
                        };
                        let new = ids.lock().map(|mut ids| ids.insert(id)).unwrap_or(false);
                        if new && let Ok(mut seen) = seen.lock() {
                            seen.push(election);
                        }
                    }
                });
            }
            // The subscriptions are registered on the server once a round trip is done.
            client
                .flush()
                .await
                .map_err(|e| format!("NATS :{}: {e}", node.port))?;
            clients.push(client);
        }
        Ok(Self {
            seen,
            _clients: clients,
        })
    }

    /// The elections reported at or after `since`, in order.
    pub fn since(&self, since: DateTime<Utc>) -> Vec<Election> {
        let mut out: Vec<Election> = self
            .seen
            .lock()
            .map(|s| s.iter().filter(|e| e.at >= since).cloned().collect())
            .unwrap_or_default();
        out.sort_by_key(|e| e.at);
        out
    }
}

/// An advisory's id and the election it reports.
fn parse(payload: &[u8]) -> Option<(String, Election)> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let what = match v["consumer"].as_str() {
        Some(consumer) => format!("consumer {consumer}"),
        None => format!("stream {}", v["stream"].as_str()?),
    };
    Some((
        v["id"].as_str()?.to_string(),
        Election {
            what,
            leader: v["leader"].as_str()?.to_string(),
            at: v["timestamp"].as_str()?.parse().ok()?,
        },
    ))
}

/// What each node leads now: `(what, leader's server name)` for the stream and its
/// consumers (asked of any node that answers).
pub async fn leaders(nodes: &[NatsNode]) -> Result<Vec<(String, String)>, String> {
    let js = async_nats::jetstream::new(super::settle::connect_any(nodes).await?);
    let mut stream = js
        .get_stream(STREAM)
        .await
        .map_err(|e| format!("stream {STREAM}: {e}"))?;
    let mut out = Vec::new();
    let info = stream.info().await.map_err(|e| e.to_string())?;
    if let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.clone()) {
        out.push((format!("stream {STREAM}"), leader));
    }
    for name in CONSUMERS {
        let mut consumer: async_nats::jetstream::consumer::PullConsumer = stream
            .get_consumer(name)
            .await
            .map_err(|e| format!("consumer {name}: {e}"))?;
        let info = consumer.info().await.map_err(|e| e.to_string())?;
        if let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.clone()) {
            out.push((format!("consumer {name}"), leader));
        }
    }
    Ok(out)
}

/// From the elections reported after a node was killed at `killed`: the time until the
/// last of the groups it led (`led`) had a new leader, in ms. None when it led nothing, or
/// when one of them was not re-elected among `elections`.
pub fn election_ms(led: &[String], killed: DateTime<Utc>, elections: &[Election]) -> Option<f64> {
    if led.is_empty() {
        return None;
    }
    let mut last: Option<DateTime<Utc>> = None;
    for what in led {
        let first = elections
            .iter()
            .filter(|e| &e.what == what && e.at >= killed)
            .map(|e| e.at)
            .min()?;
        last = Some(last.map_or(first, |l| l.max(first)));
    }
    last.map(|t| (t - killed).num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_800_000_000_000 + ms).unwrap()
    }

    fn elected(what: &str, ms: i64) -> Election {
        Election {
            what: what.into(),
            leader: "n2".into(),
            at: at(ms),
        }
    }

    #[test]
    fn the_election_ends_when_the_last_group_the_node_led_has_a_leader() {
        let led = [
            "stream PRIME".to_string(),
            "consumer email-worker".to_string(),
        ];
        let elections = [
            elected("consumer email-worker", -50), // before the kill: not this one
            elected("stream PRIME", 1200),
            elected("consumer primecheck-worker", 3000), // not led by the killed node
            elected("consumer email-worker", 1900),
            elected("stream PRIME", 2500), // a second election: the first one counts
        ];
        assert_eq!(election_ms(&led, at(0), &elections), Some(1900.0));
        // A group never re-elected: no election time.
        assert_eq!(election_ms(&led, at(0), &elections[..2]), None);
        // A node that led nothing has no election to wait for.
        assert_eq!(election_ms(&[], at(0), &elections), None);
    }

    #[test]
    fn advisories_are_read_as_the_server_writes_them() {
        let payload = br#"{"type":"io.nats.jetstream.advisory.v1.consumer_leader_elected","id":"abc","timestamp":"2026-12-03T17:00:01.250Z","stream":"PRIME","consumer":"email-worker","leader":"chaos-nats-1","replicas":[]}"#;
        let (id, e) = parse(payload).unwrap();
        assert_eq!(id, "abc");
        assert_eq!(e.what, "consumer email-worker");
        assert_eq!(e.leader, "chaos-nats-1");
        assert_eq!(e.at.timestamp_subsec_millis(), 250);
        assert!(parse(b"not json").is_none());
    }
}
