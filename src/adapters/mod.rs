//! Adapters: backends behind the ports of the `actors` crate, one module per backend.

mod group;
pub mod mail;
pub mod mysql;
pub mod nats;
pub mod sent_journal;
pub mod smtp;
mod sql;
pub use sql::Shared;
pub mod sqlite;
pub mod systemd;
pub mod timed;
