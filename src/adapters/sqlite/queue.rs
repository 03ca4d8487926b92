//! The embedded queue: the `queue_messages` table of the same SQLite file standing in for
//! JetStream — the broker that writes it ([`EmbeddedQueue`]), the sources the workers pull
//! from ([`EmbeddedSource`]) and the feed of messages that ran out of deliveries
//! ([`EmbeddedAdvisories`]).

use std::sync::Arc;
use std::time::Duration;

use actors::model::{ErrorClass, NewDeadLetter};
use actors::ports::{Advisory, AdvisoryFeed, Delivery, Message, Source};
use actors::{Broker, BrokerError, OutgoingMessage, StoreError};
use futures::FutureExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use sqlx::Row;
use sqlx::sqlite::{SqlitePool, SqliteRow};

use super::workers::Grouped;
use super::{QueueWakes, us};
use super::{SqliteStore, from_micros, now, rejected};
use crate::adapters::group::Group;

/// The embedded broker: messages go into `queue_messages` in the same file. An event id is
/// stored once, however often it is published (the embedded counterpart of JetStream's
/// `Nats-Msg-Id` dedupe).
#[derive(Clone, Debug)]
pub struct EmbeddedQueue {
    pool: SqlitePool,
    /// Woken after each publish, per subject, so pulling workers need not poll fast.
    pub(crate) wakes: Arc<QueueWakes>,
    /// The store's grouped writes (acknowledgements).
    pub(crate) grouped: Arc<Grouped>,
}

impl EmbeddedQueue {
    /// A queue in the store's file.
    pub fn new(store: &SqliteStore) -> Self {
        Self {
            pool: store.pool.clone(),
            wakes: store.wakes.clone(),
            grouped: store.grouped.clone(),
        }
    }

    /// The pool (shared with the store).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Messages waiting on `subject` (for `/health` and tests).
    pub async fn depth(&self, subject: &str) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM queue_messages WHERE subject = ?")
            .bind(subject)
            .fetch_one(&self.pool)
            .await
            .map_err(rejected)?;
        row.try_get("n").map_err(rejected)
    }
}

impl Broker for EmbeddedQueue {
    fn publish_batch<'a>(
        &'a self,
        messages: &'a [OutgoingMessage],
    ) -> BoxFuture<'a, Vec<Result<(), BrokerError>>> {
        async move {
            let result: Result<(), sqlx::Error> = async {
                let mut tx = self.pool.begin().await?;
                let now = now();
                for m in messages {
                    sqlx::query(
                        "INSERT INTO queue_messages (event_id, subject, payload, request_id, traceparent, attempt, visible_at, created_at, dlq_id) \
                         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING",
                    )
                    .bind(&m.event_id)
                    .bind(&m.subject)
                    .bind(String::from_utf8_lossy(&m.payload).into_owned())
                    .bind(&m.request_id)
                    .bind(&m.traceparent)
                    .bind(m.attempt)
                    .bind(now)
                    .bind(now)
                    .bind(m.dlq_id)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await
            }
            .await;
            match result {
                Ok(()) => {
                    let mut subjects: Vec<&str> =
                        messages.iter().map(|m| m.subject.as_str()).collect();
                    subjects.sort_unstable();
                    subjects.dedup();
                    for subject in subjects {
                        self.wakes.wake(subject);
                    }
                    messages.iter().map(|_| Ok(())).collect()
                }
                Err(err) => {
                    let err = BrokerError(format!("embedded queue: {err}"));
                    messages.iter().map(|_| Err(err.clone())).collect()
                }
            }
        }
        .boxed()
    }
}

/// Messages of one subject from the embedded queue.
#[derive(Clone)]
pub struct EmbeddedSource {
    pool: SqlitePool,
    subject: String,
    lease: Duration,
    max_deliver: u32,
    published: Arc<tokio::sync::Notify>,
    acks: Arc<Group<i64, ()>>,
}

impl EmbeddedSource {
    /// A source of `subject`; an unacknowledged delivery is leased for `ack_wait`, and a
    /// message is delivered at most `max_deliver` times.
    pub fn new(queue: &EmbeddedQueue, subject: &str, ack_wait: Duration, max_deliver: u32) -> Self {
        Self {
            pool: queue.pool().clone(),
            subject: subject.into(),
            lease: ack_wait,
            max_deliver,
            published: queue.wakes.of(subject),
            acks: queue.grouped.acks.clone(),
        }
    }

    async fn claim(&self, max: usize) -> Result<Vec<Box<dyn Delivery>>, BrokerError> {
        let now = now();
        let rows = sqlx::query(
            "UPDATE queue_messages SET deliveries = deliveries + 1, visible_at = ? WHERE id IN ( \
               SELECT id FROM queue_messages WHERE subject = ? AND visible_at <= ? AND deliveries < ? \
               ORDER BY id LIMIT ?) \
             RETURNING id, event_id, subject, payload, request_id, traceparent, deliveries, created_at, dlq_id",
        )
        .bind(now + us(self.lease))
        .bind(&self.subject)
        .bind(now)
        .bind(self.max_deliver)
        .bind(i64::try_from(max).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| BrokerError(format!("embedded queue: {e}")))?;
        let mut out: Vec<Box<dyn Delivery>> = Vec::with_capacity(rows.len());
        for row in rows {
            let message = queue_message(&row).map_err(|e| BrokerError(e.to_string()))?;
            out.push(Box::new(QueueDelivery {
                pool: self.pool.clone(),
                acks: self.acks.clone(),
                id: row.try_get("id").map_err(|e| BrokerError(e.to_string()))?,
                lease: self.lease,
                message,
            }));
        }
        Ok(out)
    }
}

fn queue_message(row: &SqliteRow) -> Result<Message, sqlx::Error> {
    let payload: String = row.try_get("payload")?;
    let deliveries: i64 = row.try_get("deliveries")?;
    let id: i64 = row.try_get("id")?;
    Ok(Message {
        event_id: row.try_get("event_id")?,
        subject: row.try_get("subject")?,
        payload: payload.into_bytes(),
        delivery: u32::try_from(deliveries).unwrap_or(1),
        stream_seq: u64::try_from(id).unwrap_or(0),
        published_at: from_micros(row.try_get("created_at")?),
        request_id: row.try_get("request_id")?,
        traceparent: row.try_get("traceparent")?,
        dlq_id: row.try_get("dlq_id")?,
    })
}

struct QueueDelivery {
    pool: SqlitePool,
    acks: Arc<Group<i64, ()>>,
    id: i64,
    lease: Duration,
    message: Message,
}

impl QueueDelivery {
    /// Removes the row (acknowledged or terminated), grouped with others.
    async fn delete(&self) -> Result<(), BrokerError> {
        self.acks
            .submit(self.id)
            .await
            .map_err(|e| BrokerError(format!("embedded queue: {e}")))
    }

    async fn exec(&self, sql: &str, bind: Option<i64>) -> Result<(), BrokerError> {
        let mut q = sqlx::query(sql);
        if let Some(v) = bind {
            q = q.bind(v);
        }
        q.bind(self.id)
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|e| BrokerError(format!("embedded queue: {e}")))
    }
}

impl Delivery for QueueDelivery {
    fn message(&self) -> &Message {
        &self.message
    }

    fn ack(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.delete().boxed()
    }

    fn nak(&self, delay: Duration) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.exec(
            "UPDATE queue_messages SET visible_at = ? WHERE id = ?",
            Some(now() + us(delay)),
        )
        .boxed()
    }

    fn term(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.delete().boxed()
    }

    fn progress(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.exec(
            "UPDATE queue_messages SET visible_at = ? WHERE id = ?",
            Some(now() + us(self.lease)),
        )
        .boxed()
    }
}

impl Source for EmbeddedSource {
    fn pull(
        &self,
        max: usize,
        expires: Duration,
    ) -> BoxStream<'static, Result<Box<dyn Delivery>, BrokerError>> {
        let source = self.clone();
        futures::stream::once(async move {
            let deadline = tokio::time::Instant::now() + expires;
            loop {
                // Register for a wake before looking, so a publish in between is not missed.
                let woken = source.published.notified();
                let found = source.claim(max).await?;
                if !found.is_empty() || tokio::time::Instant::now() >= deadline {
                    return Ok(found);
                }
                // A NAKed message becomes visible without a publish: look again soon.
                let nap = tokio::time::Instant::now() + Duration::from_millis(100);
                tokio::select! {
                    _ = woken => {}
                    _ = tokio::time::sleep_until(nap.min(deadline)) => {}
                }
            }
        })
        .map(|r: Result<Vec<Box<dyn Delivery>>, BrokerError>| match r {
            Ok(v) => futures::stream::iter(v.into_iter().map(Ok)).boxed(),
            Err(e) => futures::stream::iter([Err(e)]).boxed(),
        })
        .flatten()
        .boxed()
    }
}

use futures::StreamExt;

/// Messages delivered `max_deliver` times without an acknowledgement whose last lease ran
/// out: the embedded counterpart of the max-deliveries advisory.
pub struct EmbeddedAdvisories {
    pool: SqlitePool,
    acks: Arc<Group<i64, ()>>,
    /// (subject, max deliveries)
    budgets: Vec<(String, u32)>,
}

impl EmbeddedAdvisories {
    /// For these subjects and their delivery budgets.
    pub fn new(queue: &EmbeddedQueue, budgets: Vec<(String, u32)>) -> Self {
        Self {
            pool: queue.pool().clone(),
            acks: queue.grouped.acks.clone(),
            budgets,
        }
    }
}

impl AdvisoryFeed for EmbeddedAdvisories {
    fn poll(
        &self,
        max: usize,
        _wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<Advisory>, BrokerError>> {
        async move {
            let mut out = Vec::new();
            let now = now();
            for (subject, budget) in &self.budgets {
                let rows = sqlx::query(
                    "SELECT id, event_id, subject, payload, request_id, traceparent, deliveries, created_at, dlq_id \
                     FROM queue_messages WHERE subject = ? AND deliveries >= ? AND visible_at <= ? ORDER BY id LIMIT ?",
                )
                .bind(subject)
                .bind(budget)
                .bind(now)
                .bind(i64::try_from(max).unwrap_or(i64::MAX))
                .fetch_all(&self.pool)
                .await
                .map_err(|e| BrokerError(format!("embedded queue: {e}")))?;
                for row in rows {
                    let message = queue_message(&row).map_err(|e| BrokerError(e.to_string()))?;
                    let id: i64 = row.try_get("id").map_err(|e| BrokerError(e.to_string()))?;
                    let letter = NewDeadLetter {
                        original_subject: message.subject.clone(),
                        original_message_id: Some(message.event_id.clone()),
                        payload: message.payload.clone(),
                        error: format!(
                            "delivered {} times without an acknowledgement (the worker died, hung or ran past the ack wait)",
                            message.delivery
                        ),
                        error_type: ErrorClass::Transient,
                        retry_count: message.delivery,
                        original_created_at: message.published_at,
                        request_id: serde_json::from_slice::<serde_json::Value>(&message.payload)
                            .ok()
                            .and_then(|v| {
                                v.get("request_id")
                                    .and_then(|r| r.as_str())
                                    .map(str::to_string)
                            }),
                        dlq_id: message.dlq_id,
                    };
                    out.push(Advisory {
                        letter: Some(letter),
                        summary: format!(
                            "{subject} queue id {id} after {} deliveries",
                            message.delivery
                        ),
                        delivery: Box::new(QueueDelivery {
                            pool: self.pool.clone(),
                            acks: self.acks.clone(),
                            id,
                            lease: Duration::ZERO,
                            message,
                        }),
                    });
                }
            }
            Ok(out)
        }
        .boxed()
    }

    /// Nothing to reconcile: the embedded advisories are read from the queue table itself
    /// (messages past their delivery budget), so none can be missed.
    fn unsettled<'a>(
        &'a self,
        _settled: &'a std::collections::HashMap<String, u64>,
        _max: usize,
    ) -> BoxFuture<'a, Result<Vec<actors::ports::Unsettled>, BrokerError>> {
        async { Ok(Vec::new()) }.boxed()
    }
}
