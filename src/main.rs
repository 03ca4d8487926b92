//! The `primed` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;
use primed::cli::{Cli, Command, ConfigAction};
use primed::config::Config;
use primed::{daemon, logging};

/// EX_USAGE from sysexits.h: the configuration or command line is wrong.
const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let load = || match Config::from_env(cli.config.as_deref()) {
        Ok(config) => Ok(config),
        Err(err) => {
            eprintln!("primed: invalid configuration: {err}");
            Err(ExitCode::from(EX_USAGE))
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Version => {
            println!("primed {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Config {
            action: ConfigAction::Check,
        } => match load() {
            Ok(config) => {
                print!("{}", config.render());
                println!("# configuration is valid");
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run => {
            let config = match load() {
                Ok(config) => config,
                Err(code) => return code,
            };
            logging::init();
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(err) => {
                    eprintln!("primed: cannot start the async runtime: {err}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(daemon::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    tracing::error!(error = %err, "primed stopped with an error");
                    eprintln!("primed: {err}");
                    ExitCode::from(err.exit_code())
                }
            }
        }
    }
}
