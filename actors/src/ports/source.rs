//! Where workers pull their messages from (JetStream consumers, the embedded queue table).

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::stream::BoxStream;

use super::broker::BrokerError;

/// One delivered message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Event id (`Nats-Msg-Id`); empty when the publisher sent none.
    pub event_id: String,
    /// Subject.
    pub subject: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// Delivery count, from 1.
    pub delivery: u32,
    /// Position in the stream.
    pub stream_seq: u64,
    /// When it was published.
    pub published_at: DateTime<Utc>,
    /// Correlation id.
    pub request_id: Option<String>,
    /// W3C trace context.
    pub traceparent: Option<String>,
    /// The dead letter this message reprocesses.
    pub dlq_id: Option<i64>,
}

/// A delivered message and the acknowledgements the broker takes for it.
pub trait Delivery: Send + Sync {
    /// The message.
    fn message(&self) -> &Message;
    /// Done: do not deliver again.
    fn ack(&self) -> BoxFuture<'_, Result<(), BrokerError>>;
    /// Deliver again after `delay`.
    fn nak(&self, delay: Duration) -> BoxFuture<'_, Result<(), BrokerError>>;
    /// Never deliver again (it was dead-lettered).
    fn term(&self) -> BoxFuture<'_, Result<(), BrokerError>>;
    /// Still working: restart the ack deadline.
    fn progress(&self) -> BoxFuture<'_, Result<(), BrokerError>>;
}

/// Where a worker pulls from (a durable consumer shared by all daemons).
pub trait Source: Send + Sync + 'static {
    /// A pull request for up to `max` messages, yielded as they arrive, ending when `max`
    /// have come or `expires` has passed.
    fn pull(
        &self,
        max: usize,
        expires: Duration,
    ) -> BoxStream<'static, Result<Box<dyn Delivery>, BrokerError>>;
}
