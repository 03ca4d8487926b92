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
    /// Print the version.
    Version,
}

/// `primed config …`
#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Validate the configuration and print the effective values (secrets redacted).
    /// Exits 64 on invalid configuration.
    Check,
}
