//! The `leakfinder` command: `leakfinder scan URL` watches a service's pprof endpoints and says
//! what leaks; `leakfinder fleet --pyroscope URL` says it for every service that pushes to a
//! Pyroscope. The analysis is the library; this is its command line.

use std::process::ExitCode;

use clap::Parser;
use leakfinder_detector::fleet::{self, FleetArgs};
use leakfinder_detector::scan::{self, ScanArgs};

/// Finds memory and task leaks in services that serve pprof profiles.
#[derive(Debug, Parser)]
#[command(name = "leakfinder", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Watches a service's heap and task profiles and reports what leaks (exit 0: nothing,
    /// 1: leaks found, 2: error). Works on leakfinder's own endpoints and on any Go
    /// `net/http/pprof` service.
    Scan(ScanArgs),
    /// Finds leaks in every service of a fleet from the profiles it pushes to Pyroscope (exit 0:
    /// nothing, 1: leaks found, 2: error). With --every, runs until SIGTERM and exports OTLP
    /// metrics.
    Fleet(Box<FleetArgs>),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Scan(args) => scan::run(&args),
        Command::Fleet(args) => fleet::run(&args),
    }
}
