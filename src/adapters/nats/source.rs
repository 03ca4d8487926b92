//! JetStream as the consumers' source, and the max-deliveries advisories as the DLQ's feed.
//!
//! Advisories are plain NATS messages, lost when nobody listens; they are captured in a
//! small stream of their own (`<stream>_ADVISORIES`) and read through a durable consumer, so
//! an advisory that fires while every daemon is down is still handled when one starts.

use std::time::Duration;

use actors::BrokerError;
use actors::model::{ErrorClass, NewDeadLetter};
use actors::ports::{Advisory, AdvisoryFeed, Delivery, Message, Source, Unsettled};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use chrono::Utc;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt, TryStreamExt};

use super::headers::{HEADER_DLQ_ID, HEADER_EVENT_ID, HEADER_REQUEST_ID, HEADER_TRACEPARENT};
use super::{Interruptions, Subjects};

/// A durable pull consumer as a worker's source.
#[derive(Clone)]
pub struct JetStreamSource {
    consumer: PullConsumer,
    /// The subjects on the wire; messages are handed on with the pipeline's own.
    subjects: Subjects,
    /// What ends a pull before its time (see [`JetStreamSource::ended_by`]).
    interruptions: Option<Interruptions>,
}

impl JetStreamSource {
    /// Binds to an existing durable consumer.
    pub async fn bind(
        js: &jetstream::Context,
        stream: &str,
        durable: &str,
        subjects: &Subjects,
    ) -> Result<Self, BrokerError> {
        let consumer = js
            .get_stream(stream)
            .await
            .map_err(|e| BrokerError(format!("stream {stream}: {e}")))?
            .get_consumer::<jetstream::consumer::pull::Config>(durable)
            .await
            .map_err(|e| BrokerError(format!("consumer {durable}: {e}")))?;
        Ok(Self {
            consumer,
            subjects: subjects.clone(),
            interruptions: None,
        })
    }

    /// Ends each pull early when the connection drops or JetStream elects a new leader for
    /// the stream or a consumer: a pull request the old leader held is answered by nobody,
    /// and the worker would otherwise wait out its `expires` before it pulls from the new
    /// one. (A pull ended on an election whose old leader still served may leave a message
    /// it had sent unacknowledged; it is redelivered after the ack wait, never lost.)
    pub fn ended_by(mut self, interruptions: Interruptions) -> Self {
        self.interruptions = Some(interruptions);
        self
    }
}

fn header(headers: Option<&HeaderMap>, name: &str) -> Option<String> {
    headers
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_string())
}

struct JsDelivery {
    inner: jetstream::Message,
    message: Message,
}

impl JsDelivery {
    fn new(inner: jetstream::Message, subjects: &Subjects) -> Self {
        let headers = inner.headers.as_ref();
        let (delivery, stream_seq, published_at) = match inner.info() {
            Ok(info) => (
                u32::try_from(info.delivered).unwrap_or(1),
                info.stream_sequence,
                info.published,
            ),
            Err(_) => (1, 0, Utc::now()),
        };
        let event_id = header(headers, "Nats-Msg-Id")
            .or_else(|| header(headers, HEADER_EVENT_ID))
            .unwrap_or_default();
        let message = Message {
            event_id,
            subject: subjects.inner(&inner.subject).to_string(),
            payload: inner.payload.to_vec(),
            delivery,
            stream_seq,
            published_at,
            request_id: header(headers, HEADER_REQUEST_ID),
            traceparent: header(headers, HEADER_TRACEPARENT),
            dlq_id: header(headers, HEADER_DLQ_ID).and_then(|v| v.parse().ok()),
        };
        Self { inner, message }
    }

    async fn ack_kind(&self, kind: AckKind) -> Result<(), BrokerError> {
        self.inner
            .ack_with(kind)
            .await
            .map_err(|e| BrokerError(e.to_string()))
    }
}

impl Delivery for JsDelivery {
    fn message(&self) -> &Message {
        &self.message
    }

    fn ack(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.ack_kind(AckKind::Ack).boxed()
    }

    fn nak(&self, delay: Duration) -> BoxFuture<'_, Result<(), BrokerError>> {
        let delay = (!delay.is_zero()).then_some(delay);
        self.ack_kind(AckKind::Nak(delay)).boxed()
    }

    fn term(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.ack_kind(AckKind::Term).boxed()
    }

    fn progress(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.ack_kind(AckKind::Progress).boxed()
    }
}

impl Source for JetStreamSource {
    fn pull(
        &self,
        max: usize,
        expires: Duration,
    ) -> BoxStream<'static, Result<Box<dyn Delivery>, BrokerError>> {
        let consumer = self.consumer.clone();
        let subjects = self.subjects.clone();
        // The server ends a pull at `expires` with a status message. When the connection
        // drops, that message never comes and the client's own timer waits 5 s more,
        // stalling the worker after every broker restart; end the pull ourselves soon after
        // `expires` (a message the server still sends after that is redelivered after the
        // ack wait, never lost).
        // While the broker settles after a leader election or a reconnection, the pull
        // request may go unheard (see `Interruptions::settling`): pull briefly, so that
        // one lost is sent again within a few hundred milliseconds, not after `expires`.
        let (expires, grace) = if self
            .interruptions
            .as_ref()
            .is_some_and(Interruptions::settling)
        {
            (expires.min(SETTLING_PULL), SETTLING_GRACE)
        } else {
            (expires, PULL_GRACE)
        };
        let timer = tokio::time::sleep(expires + grace);
        let interrupted = self.interruptions.clone();
        let deadline = async move {
            match interrupted {
                Some(i) => {
                    tokio::select! {
                        () = timer => {}
                        () = i.next() => {}
                    }
                }
                None => timer.await,
            }
        };
        futures::stream::once(async move {
            consumer
                .batch()
                .max_messages(max)
                .expires(expires)
                .messages()
                .await
                .map_err(|e| BrokerError(e.to_string()))
        })
        .map_ok(move |batch| {
            let subjects = subjects.clone();
            batch.map(move |m| {
                m.map(|m| Box::new(JsDelivery::new(m, &subjects)) as Box<dyn Delivery>)
                    .map_err(|e| BrokerError(e.to_string()))
            })
        })
        .try_flatten()
        .take_until(deadline)
        .boxed()
    }
}

/// How long after a pull's `expires` the worker stops waiting for the server's end of it.
const PULL_GRACE: Duration = Duration::from_millis(500);

/// A pull's `expires`, and the wait past it, while the broker settles (see
/// `Interruptions::settling`). A message the server sends past the wait is redelivered after
/// the ack wait, never lost.
const SETTLING_PULL: Duration = Duration::from_millis(100);
const SETTLING_GRACE: Duration = Duration::from_millis(200);

/// The advisory stream's name for a main stream.
pub fn advisory_stream(stream: &str) -> String {
    format!("{stream}_ADVISORIES")
}

/// Durable consumer of the advisory stream.
pub const CONSUMER_ADVISORIES: &str = "dlq-advisories";

/// Max-deliveries advisories of the main stream's consumers, from their capture stream.
pub struct JetStreamAdvisories {
    source: JetStreamSource,
    stream: jetstream::stream::Stream,
    /// The main stream's subjects on the wire.
    subjects: Subjects,
}

impl JetStreamAdvisories {
    /// Binds to the advisory stream's durable consumer.
    pub async fn bind(
        js: &jetstream::Context,
        stream: &str,
        subjects: &Subjects,
    ) -> Result<Self, BrokerError> {
        // Advisory subjects name the stream, not the pipeline's subjects.
        let source = JetStreamSource::bind(
            js,
            &advisory_stream(stream),
            CONSUMER_ADVISORIES,
            &Subjects::default(),
        )
        .await?;
        let stream = js
            .get_stream(stream)
            .await
            .map_err(|e| BrokerError(format!("stream {stream}: {e}")))?;
        Ok(Self {
            source,
            stream,
            subjects: subjects.clone(),
        })
    }

    async fn advisory(&self, delivery: Box<dyn Delivery>) -> Advisory {
        #[derive(serde::Deserialize)]
        struct MaxDeliveries {
            stream: String,
            consumer: String,
            stream_seq: u64,
            deliveries: u32,
        }
        let parsed: Result<MaxDeliveries, _> = serde_json::from_slice(&delivery.message().payload);
        let Ok(adv) = parsed else {
            return Advisory {
                letter: None,
                summary: "an advisory that cannot be decoded".into(),
                delivery,
            };
        };
        let summary = format!(
            "{}/{} stream_seq {} after {} deliveries",
            adv.stream, adv.consumer, adv.stream_seq, adv.deliveries
        );
        let letter = match self.stream.get_raw_message(adv.stream_seq).await {
            Ok(original) => Some(letter_of(
                &original,
                &self.subjects,
                adv.deliveries,
                format!(
                    "delivered {} times without an acknowledgement (the worker died, hung or ran past the ack wait)",
                    adv.deliveries
                ),
            )),
            Err(_) => None,
        };
        Advisory {
            letter,
            summary,
            delivery,
        }
    }
}

/// The dead letter of a stream message delivered `deliveries` times, failing with `error`.
fn letter_of(
    original: &jetstream::message::StreamMessage,
    subjects: &Subjects,
    deliveries: u32,
    error: String,
) -> NewDeadLetter {
    NewDeadLetter {
        original_subject: subjects.inner(&original.subject).to_string(),
        original_message_id: header(Some(&original.headers), "Nats-Msg-Id"),
        payload: original.payload.to_vec(),
        error,
        error_type: ErrorClass::Transient,
        retry_count: deliveries,
        original_created_at: original.time,
        request_id: serde_json::from_slice::<serde_json::Value>(&original.payload)
            .ok()
            .and_then(|v| {
                v.get("request_id")
                    .and_then(|r| r.as_str())
                    .map(str::to_string)
            }),
        dlq_id: header(Some(&original.headers), HEADER_DLQ_ID).and_then(|v| v.parse().ok()),
    }
}

impl JetStreamAdvisories {
    /// One consumer's messages after `settled` (at most `max` below its acknowledgement
    /// floor) up to the last it delivered, at most `max`.
    async fn unsettled_of(
        &self,
        consumer: &str,
        settled: u64,
        max: usize,
    ) -> Result<Unsettled, BrokerError> {
        let info = self
            .stream
            .consumer_info(consumer)
            .await
            .map_err(|e| BrokerError(format!("consumer {consumer}: {e}")))?;
        let floor = info.ack_floor.stream_sequence;
        let from = settled.max(floor.saturating_sub(max as u64)) + 1;
        let to = info
            .delivered
            .stream_sequence
            .min(from.saturating_add(max as u64).saturating_sub(1));
        let filter = info.config.filter_subject.clone();
        let deliveries = u32::try_from(info.config.max_deliver.max(1)).unwrap_or(u32::MAX);
        let mut messages = Vec::new();
        for seq in from..=to {
            // Gone (removed by the stream's limits): nothing left to dead-letter.
            let Ok(original) = self.stream.get_raw_message(seq).await else {
                continue;
            };
            if !filter.is_empty() && original.subject.as_str() != filter {
                continue;
            }
            let time = original.time;
            let letter = letter_of(&original, &self.subjects, deliveries, String::new());
            messages.push((seq, time, letter));
        }
        Ok(Unsettled {
            consumer: consumer.to_string(),
            in_flight: info.num_ack_pending as u64,
            acked_upto: floor,
            messages,
        })
    }
}

impl AdvisoryFeed for JetStreamAdvisories {
    fn poll(
        &self,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<Advisory>, BrokerError>> {
        async move {
            let deliveries: Vec<Box<dyn Delivery>> = self
                .source
                .pull(max, wait.max(Duration::from_millis(10)))
                .try_collect()
                .await?;
            let mut out = Vec::with_capacity(deliveries.len());
            for d in deliveries {
                out.push(self.advisory(d).await);
            }
            Ok(out)
        }
        .boxed()
    }

    fn unsettled<'a>(
        &'a self,
        settled: &'a std::collections::HashMap<String, u64>,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<Unsettled>, BrokerError>> {
        async move {
            let mut out = Vec::new();
            for consumer in [super::CONSUMER_PRIMECHECK, super::CONSUMER_EMAIL] {
                let after = settled.get(consumer).copied().unwrap_or(0);
                out.push(self.unsettled_of(consumer, after, max).await?);
            }
            Ok(out)
        }
        .boxed()
    }
}
