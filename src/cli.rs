//! The command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// primed: a supervised, reliable prime-checking pipeline daemon.
///
/// With no configuration it runs in embedded mode (SQLite and an embedded queue in
/// PRIMED_DATA_DIR). Configuration comes from environment variables and, optionally, a TOML
/// file with the same keys; `primed config check` lists them all.
#[derive(Debug, Parser)]
#[command(name = "primed", version, about, long_about)]
pub struct Cli {
    /// A TOML file with configuration keys (environment variables override it).
    #[arg(long, global = true, env = "PRIMED_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon until SIGTERM or SIGINT (the default).
    Run,
    /// Inspect the configuration.
    Config {
        /// What to do with it.
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// Work on the transactional outbox.
    Outbox {
        /// What to do with it.
        #[command(subcommand)]
        action: OutboxAction,
    },
    /// Browse, group, replay, edit and discard dead letters through the running daemon's
    /// admin API.
    Dlq(Box<crate::dlq_cli::DlqArgs>),
    /// Work on the rate limits kept in Redis.
    Ratelimit {
        /// What to do with them.
        #[command(subcommand)]
        action: RatelimitAction,
    },
    /// Ask a running daemon whether it is ready (`GET /ready`): exit 0 when it is, 1 when it
    /// answers that it is not, 69 when it cannot be reached. For container health checks
    /// and scripts.
    Health {
        /// The daemon's base URL (default: http://PRIMED_HTTP_ADDR, a wildcard address
        /// asked on loopback).
        #[arg(long, env = "PRIMED_URL")]
        url: Option<String>,
    },
    /// Print the version.
    Version,
}

/// `primed ratelimit …`
#[derive(Debug, Subcommand)]
pub enum RatelimitAction {
    /// Delete the buckets whose key matches a pattern, so the clients they count start
    /// afresh (seed §7.2.1). Keys are `<prefix>:<endpoint>:ip:<address>`,
    /// `<prefix>:<endpoint>:user:<sub>` and `<prefix>:<endpoint>:global`; the prefix
    /// (RATE_LIMIT_KEY_PREFIX) is added when the pattern does not start with it.
    Reset {
        /// e.g. `prime-check:*`, `*:ip:203.0.113.7`, `prime-check-list:user:alice`, `*`.
        pattern: String,
    },
}

/// `primed outbox …`
#[derive(Debug, Subcommand)]
pub enum OutboxAction {
    /// Publish retained events again, e.g. after the broker lost acknowledged messages in
    /// an OS crash. Events the broker still has within its duplicate window are dropped by
    /// it; consumers apply each event once.
    Replay {
        /// Events published since this RFC 3339 time or age (`2026-11-24T10:00:00Z`, `90m`,
        /// `2h`): those the broker acknowledged from then on.
        #[arg(long, value_name = "TIME|AGE")]
        since: String,
    },
}

/// `primed config …`
#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Validate the configuration and print the effective values (secrets redacted).
    /// Exits 64 on invalid configuration.
    Check,
}
