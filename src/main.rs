//! The `primed` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;
use primed::cli::{Cli, Command, ConfigAction, OutboxAction, RatelimitAction};
use primed::config::Config;
use primed::{daemon, logging, ops};

/// mimalloc instead of the system allocator: the relay and the API allocate a few small
/// strings per event, and glibc's malloc and free were a third of the relay's own CPU
/// (BENCHMARKS.md, "Pipeline").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
                for warning in config.warnings() {
                    println!("# warning: {warning}");
                }
                println!("# configuration is valid");
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Health { url } => {
            let config = match load() {
                Ok(config) => config,
                Err(code) => return code,
            };
            let url = ops::ready_url(&config, url.as_deref());
            report(block_on(ops::health(&url)).map(|body| println!("ready: {body}")))
        }
        Command::Migrate => {
            let config = match load() {
                Ok(config) => config,
                Err(code) => return code,
            };
            report(block_on(ops::migrate(&config)).map(|msg| println!("{msg}")))
        }
        Command::Outbox {
            action: OutboxAction::Replay { since },
        } => {
            let config = match load() {
                Ok(config) => config,
                Err(code) => return code,
            };
            let since = match ops::parse_since(&since, chrono::Utc::now()) {
                Ok(since) => since,
                Err(message) => {
                    eprintln!("primed: {message}");
                    return ExitCode::from(EX_USAGE);
                }
            };
            report(block_on(ops::outbox_replay(&config, since)).map(|n| {
                println!("{n} outbox events published since {} are due again; a running relay publishes them", since.to_rfc3339());
            }))
        }
        Command::Ratelimit {
            action: RatelimitAction::Reset { pattern },
        } => {
            let config = match load() {
                Ok(config) => config,
                Err(code) => return code,
            };
            report(
                block_on(ops::ratelimit_reset(&config, &pattern)).map(|(glob, n)| {
                    println!("deleted {n} rate-limit keys matching {glob}");
                }),
            )
        }
        Command::Dlq(args) => {
            let config = match load() {
                Ok(config) => config,
                Err(code) => return code,
            };
            let runtime = match runtime(tokio::runtime::Builder::new_current_thread()) {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            match runtime.block_on(primed::dlq_cli::run(*args, &config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("primed: {err}");
                    ExitCode::from(err.exit_code())
                }
            }
        }
        Command::Run => {
            let config = match load() {
                Ok(config) => config,
                Err(code) => return code,
            };
            let telemetry = logging::init(config.otlp_endpoint.as_deref(), config.otlp_protocol);
            if let Some(endpoint) = &config.otlp_metrics_endpoint {
                match logging::push_metrics(
                    endpoint,
                    config.otlp_protocol,
                    config.otlp_metrics_interval,
                ) {
                    Ok(()) => tracing::info!(
                        url = %endpoint,
                        protocol = config.otlp_protocol.name(),
                        interval_ms = config.otlp_metrics_interval.as_millis() as u64,
                        "pushing metrics over OTLP"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot push metrics over OTLP; /metrics serves them")
                    }
                }
            }
            let runtime = match runtime(tokio::runtime::Builder::new_multi_thread()) {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            let result = runtime.block_on(daemon::run(config));
            telemetry.shutdown();
            match result {
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

fn runtime(mut builder: tokio::runtime::Builder) -> Result<tokio::runtime::Runtime, ExitCode> {
    builder.enable_all().build().map_err(|err| {
        eprintln!("primed: cannot start the async runtime: {err}");
        ExitCode::FAILURE
    })
}

fn block_on<T>(
    future: impl std::future::Future<Output = Result<T, ops::OpsError>>,
) -> Result<T, ops::OpsError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|_| ops::OpsError::NotConfigured("cannot start the async runtime"))?
        .block_on(future)
}

fn report(result: Result<(), ops::OpsError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("primed: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}
