//! The ports: every trait an adapter in the daemon implements, in one place. No actor knows
//! which backend is behind one.
//!
//! - [`store`]: requests and their outbox ([`RequestStore`], [`OutboxStore`] with its
//!   [`Claim`]s, [`OutboxMarks`]), the workers' records ([`WorkerStore`]), dead letters
//!   ([`DlqStore`]), safe replay jobs ([`ReplayStore`]), the gauges ([`GaugeSource`]) and
//!   retention ([`RetentionStore`]).
//! - [`broker`]: durable, deduplicated publishing ([`Broker`]).
//! - [`source`]: where workers pull messages from ([`Source`], [`Delivery`]).
//! - [`advisories`]: messages whose last delivery was never acknowledged ([`AdvisoryFeed`]).
//! - [`mail`]: sending email ([`Mailer`]) and noting what the server accepted
//!   ([`SendJournal`]).
//! - [`health`]: the heartbeat's sinks ([`HealthSink`]) and the `worker_health_checks`
//!   rows ([`HealthStore`]).

pub mod advisories;
pub mod broker;
pub mod health;
pub mod mail;
pub mod source;
pub mod store;

pub use advisories::{Advisory, AdvisoryFeed, Unsettled};
pub use broker::{Broker, BrokerError, OutgoingMessage};
pub use health::{HealthSink, HealthSinkError, HealthStore, WorkerHealth};
pub use mail::{Email, MailError, Mailer, OnAccepted, SendJournal};
pub use source::{Delivery, Message, Source};
pub use store::{
    Claim, DlqStore, GaugeSource, OutboxMarks, OutboxStore, ReplayControl, ReplayStore,
    RequestStore, Retained, RetentionStore, Settle, StoreError, StoreGauges, WorkerStore,
};
