//! The headers primed puts on every JetStream message (read back by its consumers).

/// Header carrying the event id (besides `Nats-Msg-Id`).
pub const HEADER_EVENT_ID: &str = "Primed-Event-Id";
/// Header carrying the delivery attempt of the publish.
pub const HEADER_ATTEMPT: &str = "Primed-Attempt";
/// Header carrying the request's correlation id.
pub const HEADER_REQUEST_ID: &str = "Primed-Request-Id";
/// Header naming the dead letter a message reprocesses.
pub const HEADER_DLQ_ID: &str = "Primed-Dlq-Id";
/// W3C trace context header.
pub const HEADER_TRACEPARENT: &str = "traceparent";
