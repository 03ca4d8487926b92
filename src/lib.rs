//! `primed`: the daemon that runs the prime-checking pipeline as supervised actors.
//!
//! The binary (`main.rs`) only parses the command line; everything it runs lives here so
//! that integration tests can drive the same code: [`config`] (environment and TOML),
//! [`tree`] (the one place the running supervision tree is declared), [`daemon`] (start-up
//! and the written shutdown procedure), [`http`] (health, readiness, admin) and
//! [`adapters`] (backends behind the ports of the `actors` crate).

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
pub mod ratelimit;
pub mod tree;
pub mod wiring;
