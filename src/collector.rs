//! The metrics collector actor: every `interval` it reads the gauges that no code path
//! updates by itself — outbox backlog and lag, dead letters by status, queue lengths,
//! JetStream consumers' pending counts, database pool connections, Redis clients — and sets
//! them in the registry.
//!
//! Failure behaviour: a source that cannot be read is logged at debug level, counted in
//! `metrics_collection_errors_total{source}` and tried again next time; its gauges keep
//! their last value. The actor never fails on it.

use std::sync::Arc;
use std::time::Duration;

use actors::GaugeSource;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::adapters::nats::ConsumerGauges;
use crate::metrics::metrics;
use crate::ratelimit::RateLimiter;

/// The collector actor.
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsCollector;

/// Where the gauges come from.
#[derive(Clone)]
pub struct CollectorArgs {
    /// The store.
    pub store: Arc<dyn GaugeSource>,
    /// JetStream consumers, in production mode.
    pub nats: Option<ConsumerGauges>,
    /// The rate limiter (for Redis).
    pub limiter: Option<Arc<RateLimiter>>,
    /// Time between collections.
    pub interval: Duration,
}

/// Messages the collector handles.
#[derive(Debug)]
pub enum CollectorMsg {
    /// Collect now.
    Tick,
}

fn failed(source: &str, error: &dyn std::fmt::Display) {
    tracing::debug!(source, error = %error, "could not read a metrics source");
    metrics()
        .collection_errors
        .with_label_values(&[source])
        .inc();
}

/// Reads every source once.
pub async fn collect(args: &CollectorArgs) {
    let m = metrics();
    match args.store.gauges().await {
        Ok(g) => {
            m.outbox_pending.set(g.outbox_pending);
            m.outbox_relay_lag.set(g.outbox_lag_seconds);
            for status in ["pending", "reprocessing", "resolved", "discarded"] {
                let n = g
                    .dead_letters
                    .iter()
                    .find(|(s, _)| s == status)
                    .map_or(0, |(_, n)| *n);
                m.dlq_message_count.with_label_values(&[status]).set(n);
            }
            for (subject, n) in &g.queue {
                m.message_queue_length
                    .with_label_values(&[subject.as_str()])
                    .set(*n);
            }
            if args.nats.is_none() {
                // The embedded queue: subjects with nothing waiting read 0.
                for subject in ["primecheck.requested", "email.send"] {
                    if !g.queue.iter().any(|(s, _)| s == subject) {
                        m.message_queue_length.with_label_values(&[subject]).set(0);
                    }
                }
            }
            m.database_connections
                .with_label_values(&["active"])
                .set(g.connections_active);
            m.database_connections
                .with_label_values(&["idle"])
                .set(g.connections_idle);
        }
        Err(e) => failed("database", &e),
    }
    if let Some(nats) = &args.nats {
        match nats.pending().await {
            Ok(consumers) => {
                for (consumer, pending, ack_pending) in consumers {
                    m.nats_consumer_pending
                        .with_label_values(&[nats.stream(), consumer])
                        .set(pending as i64);
                    let queue = match consumer {
                        crate::adapters::nats::CONSUMER_PRIMECHECK => "primecheck.requested",
                        _ => "email.send",
                    };
                    m.message_queue_length
                        .with_label_values(&[queue])
                        .set((pending + ack_pending) as i64);
                }
            }
            Err(e) => failed("nats", &e),
        }
    }
    if let Some(redis) = args.limiter.as_ref().and_then(|l| l.redis()) {
        match redis.connected_clients().await {
            Ok(n) => m.redis_connected_clients.set(n),
            Err(e) => failed("redis", &e),
        }
    }
}

impl Actor for MetricsCollector {
    type Msg = CollectorMsg;
    type State = CollectorArgs;
    type Arguments = CollectorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<CollectorMsg>,
        args: CollectorArgs,
    ) -> Result<CollectorArgs, ActorProcessingErr> {
        myself.cast(CollectorMsg::Tick)?;
        Ok(args)
    }

    async fn handle(
        &self,
        myself: ActorRef<CollectorMsg>,
        CollectorMsg::Tick: CollectorMsg,
        args: &mut CollectorArgs,
    ) -> Result<(), ActorProcessingErr> {
        // Bounded, so a hung source delays only the next collection.
        if tokio::time::timeout(args.interval.max(Duration::from_secs(1)) * 2, collect(args))
            .await
            .is_err()
        {
            failed("timeout", &"a collection took longer than two intervals");
        }
        myself.send_after(args.interval, || CollectorMsg::Tick);
        Ok(())
    }
}
