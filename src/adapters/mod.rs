//! Adapters: backends behind the ports of the `actors` crate, one module per backend.

mod common;
mod group;
pub mod mail;
pub mod mysql;
pub mod nats;
pub mod sent_journal;
pub mod smtp;
pub mod sqlite;
pub mod systemd;
pub mod timed;
