//! Adapters: backends behind the ports of the `actors` crate, one module per backend.

pub mod mysql;
pub mod nats;
pub mod sqlite;
pub mod systemd;
