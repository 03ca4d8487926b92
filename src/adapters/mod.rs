//! Adapters: backends behind the ports of the `actors` crate, one module per backend.
//!
//! - `mysql/`: the production store (accept queue, outbox claims and marks, the workers'
//!   grouped records); `sqlite/`: the embedded store with its queue table and workers;
//!   `sql/`: what the two SQL stores share, written once for a dialect ([`Shared`]: the
//!   dead-letter queue, health rows and records).
//! - [`nats`]: JetStream publishing, consumers and headers.
//! - [`smtp`] and [`mail`]: the mailers; [`sent_journal`]: what the SMTP server accepted.
//! - [`timed`]: store calls timed into metrics; `pool_wait.rs`: the tasks waiting for a
//!   pooled connection; `group.rs`: the group commit both stores
//!   use; [`systemd`]: notify and watchdog.

mod group;
pub mod mail;
pub mod mysql;
pub mod nats;
mod pool_wait;
pub(crate) use pool_wait::waiting;
pub mod sent_journal;
pub mod smtp;
mod sql;
pub use sql::Shared;
pub mod sqlite;
pub mod systemd;
pub mod timed;
