//! Broker port: what the outbox relay needs from the message broker.

use futures::future::BoxFuture;

/// One message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingMessage {
    /// The event id: the broker deduplicates on it.
    pub event_id: String,
    /// Subject.
    pub subject: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// Delivery attempt (1 for the first publish).
    pub attempt: u32,
    /// Correlation id.
    pub request_id: Option<String>,
    /// W3C trace context.
    pub traceparent: Option<String>,
    /// The dead letter this message reprocesses.
    pub dlq_id: Option<i64>,
}

impl OutgoingMessage {
    /// A new event's first publish (right after its commit).
    pub fn first(
        event_id: String,
        subject: &str,
        payload: Vec<u8>,
        request_id: Option<String>,
        traceparent: Option<String>,
    ) -> Self {
        Self {
            event_id,
            subject: subject.into(),
            payload,
            attempt: 1,
            request_id,
            traceparent,
            dlq_id: None,
        }
    }
}

/// A publish failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("publish failed: {0}")]
pub struct BrokerError(pub String);

/// A message broker with durable, deduplicated publishing.
pub trait Broker: Send + Sync + 'static {
    /// Publishes the messages and waits for the broker's acknowledgements (pipelined, not
    /// one round trip per message). One result per message, in order.
    fn publish_batch<'a>(
        &'a self,
        messages: &'a [OutgoingMessage],
    ) -> BoxFuture<'a, Vec<Result<(), BrokerError>>>;

    /// Whether the broker can take publishes now (asked after a publish failed): `false`
    /// when the failure was the broker's — down, unreachable, its stream without a leader —
    /// rather than the message's. Such a failure spends none of the event's retries.
    fn available(&self) -> BoxFuture<'_, bool> {
        Box::pin(std::future::ready(true))
    }
}
