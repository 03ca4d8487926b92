//! `primed-chaos`: runs primed daemons against their own MariaDB, NATS, Redis and maildev,
//! injects faults from a seeded schedule and checks that no accepted request is lost or
//! doubled (DESIGN §11–§12). Exit status: 0 when every promise held, 1 when one broke, 2
//! when the run could not be carried out.

use std::path::PathBuf;
use std::process::ExitCode;

use chaos::harness::{self, LONG, Options, SHORT};
use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProfileArg {
    /// About two minutes: every fault class once, and a few more (what CI runs).
    Short,
    /// Sixty faults under a heavier load.
    Long,
}

/// Chaos harness for primed: faults from a seeded schedule, then the invariants.
#[derive(Debug, Parser)]
#[command(name = "primed-chaos", version)]
struct Args {
    /// How much to run.
    #[arg(long, value_enum, default_value = "short")]
    profile: ProfileArg,
    /// The schedule's seed; the same seed replays the same schedule (default: random,
    /// printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Daemons to run side by side.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=8))]
    daemons: u16,
    /// Run NATS as a three-node JetStream cluster with three replicas per stream.
    #[arg(long)]
    cluster: bool,
    /// Faults to inject (default: the profile's).
    #[arg(long)]
    faults: Option<usize>,
    /// The primed binary (default: the one next to this program).
    #[arg(long)]
    primed: Option<PathBuf>,
    /// Where services and daemons keep data and logs (default: a new temporary directory,
    /// kept after the run for inspection).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Also write the JSON report here (it is always written to the work directory).
    #[arg(long)]
    report: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut profile = match args.profile {
        ProfileArg::Short => SHORT,
        ProfileArg::Long => LONG,
    };
    if let Some(faults) = args.faults {
        profile.faults = faults;
    }
    let Some(primed) = args.primed.or_else(harness::sibling_primed) else {
        eprintln!(
            "error: no primed binary next to primed-chaos; build it (cargo build) or pass --primed PATH"
        );
        return ExitCode::from(2);
    };
    if !primed.is_file() {
        eprintln!(
            "error: no primed binary at {}; build it (cargo build --bins) or pass --primed PATH",
            primed.display()
        );
        return ExitCode::from(2);
    }
    let work_dir = args.work_dir.unwrap_or_else(harness::default_work_dir);
    let options = Options {
        profile,
        seed: args.seed.unwrap_or_else(rand::random),
        daemons: usize::from(args.daemons),
        cluster: args.cluster,
        primed,
        work_dir: work_dir.clone(),
    };
    let report = match harness::run(options).await {
        Ok(report) => report,
        Err(err) => {
            eprintln!(
                "error: the chaos run could not be carried out: {err}\n(logs are in {})",
                work_dir.display()
            );
            return ExitCode::from(2);
        }
    };
    print!("{}", report.table());
    let json = match serde_json::to_string_pretty(&report) {
        Ok(json) => json,
        Err(err) => {
            eprintln!("error: cannot encode the report: {err}");
            return ExitCode::from(2);
        }
    };
    for path in std::iter::once(work_dir.join("report.json")).chain(args.report) {
        if let Err(err) = std::fs::write(&path, &json) {
            eprintln!(
                "error: cannot write the report to {}: {err}",
                path.display()
            );
            return ExitCode::from(2);
        }
        println!("report: {}", path.display());
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
