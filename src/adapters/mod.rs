//! Adapters: backends behind the ports of the `actors` crate, one module per backend.

mod common;
mod group;
pub mod mail;
pub mod mysql;
mod mysql_accept;
pub mod mysql_workers;
pub mod nats;
pub mod nats_consumer;
pub mod sent_journal;
pub mod smtp;
pub mod sqlite;
pub mod sqlite_workers;
pub mod systemd;
pub mod timed;
