//! The pipeline's actors and the ports (traits) they need.
//!
//! Each actor lives in its own module with its messages, state and tests: [`heartbeat`],
//! [`outbox_relay`] (and [`direct`], its fast path), [`worker`] (with the [`handlers`] it
//! runs), [`dlq`], [`retry_timer`], [`retention`]. Every port — a trait an adapter in the
//! daemon implements — is in [`ports`]; no actor here knows which backend it talks to. Unit
//! tests run the actors on in-memory fake ports (`fakes.rs`).
#![warn(missing_docs)]

pub mod breaker;
pub mod direct;
pub mod dlq;
#[cfg(test)]
mod fakes;
pub mod fingerprint;
pub mod handlers;
pub mod heartbeat;
pub mod instruments;
pub mod liveness;
pub mod metrics;
pub mod model;
pub mod outbox_relay;
pub mod ports;
pub mod primality;
pub mod replay;
pub mod retention;
pub mod retry;
pub mod retry_timer;
pub mod trace;
pub mod worker;

pub use direct::DirectPublisher;
pub use heartbeat::{HealthReport, Heartbeat, HeartbeatArgs, HeartbeatMsg};
pub use liveness::{Instance, Liveness, WorkerHealthSink, WorkerStats};
pub use outbox_relay::{OutboxRelay, RelayArgs, RelayMsg, RelayWake};
pub use ports::{
    Broker, BrokerError, Claim, DlqStore, GaugeSource, HealthSink, HealthSinkError, HealthStore,
    OutboxMarks, OutboxStore, OutgoingMessage, ReplayControl, ReplayStore, RequestStore, Retained,
    RetentionStore, Settle, StoreError, StoreGauges, WorkerHealth, WorkerStore,
};
pub use retry::RetryPolicy;
