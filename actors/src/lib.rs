//! The pipeline's actors and the ports (traits) they need.
//!
//! Each actor lives in its own module with its messages, state and tests; each port is a
//! trait an adapter in the daemon implements. No actor here knows which backend it talks to.
#![warn(missing_docs)]

pub mod breaker;
pub mod broker;
pub mod consumer;
pub mod direct;
pub mod dlq;
pub mod heartbeat;
pub mod liveness;
pub mod metrics;
pub mod model;
pub mod outbox_relay;
pub mod primality;
pub mod retry;
pub mod store;
pub mod trace;
pub mod workers;

pub use broker::{Broker, BrokerError, OutgoingMessage};
pub use direct::{DirectPublisher, OutboxMarks};
pub use heartbeat::{
    HealthReport, HealthSink, HealthSinkError, Heartbeat, HeartbeatArgs, HeartbeatMsg,
};
pub use liveness::{HealthStore, Instance, Liveness, WorkerHealth, WorkerHealthSink, WorkerStats};
pub use outbox_relay::{OutboxRelay, RelayArgs, RelayMsg, RelayWake};
pub use retry::RetryPolicy;
pub use store::{
    Claim, DlqStore, GaugeSource, OutboxStore, RequestStore, Settle, StoreError, StoreGauges,
    WorkerStore,
};
