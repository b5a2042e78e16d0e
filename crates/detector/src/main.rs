//! The `leakfinder` command: `leakfinder scan URL` watches a service's pprof endpoints and says
//! what leaks. The analysis is the library; this is its command line.

use std::process::ExitCode;

use clap::Parser;
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
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Scan(args) => scan::run(&args),
    }
}
