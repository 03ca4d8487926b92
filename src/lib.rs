//! `primed`: the daemon that runs the prime-checking pipeline as supervised actors.
//!
//! The binary (`main.rs`) only parses the command line; everything it runs lives here so
//! that integration tests can drive the same code. Start-up, in order: [`daemon`] (start,
//! wait, ordered stop) → [`backends`] (the stores and brokers of the configured mode) →
//! [`wiring`] (each child's arguments) → [`tree`] (the one place the running supervision
//! tree is declared). Around them: [`config`] (environment and TOML, one file per
//! subsystem), [`http`] (API, DLQ API, admin, health, rate-limit middleware), [`ratelimit`],
//! [`metrics`] (with [`process_metrics`]) and [`collector`], [`logging`], and [`adapters`] (backends behind the ports of
//! the `actors` crate).

pub mod adapters;
pub mod backends;
pub mod cli;
pub mod collector;
pub mod config;
pub mod daemon;
pub mod dlq_cli;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod ops;
pub mod process_metrics;
pub mod ratelimit;
pub mod tree;
pub mod wiring;
