//! The `leakfinder` command: `leakfinder scan URL` watches a service's pprof endpoints and says
//! what leaks; `leakfinder fleet --pyroscope URL` says it for every service that pushes to a
//! Pyroscope; `leakfinder symbols EXE` writes a service's symbol table beside its binary. The
//! analysis is the library; this is its command line.

use std::process::ExitCode;

use clap::Parser;
use leakfinder_detector::fleet::{self, FleetArgs};
use leakfinder_detector::scan::{self, ScanArgs};
use leakfinder_detector::symbols::{self, SymbolsArgs};

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
    /// Writes the prebuilt symbol table of a service's executable beside it (`EXE.symbols`),
    /// so the service symbolises its profiles without reading its debug info (exit 0: written,
    /// 1: error).
    Symbols(SymbolsArgs),
    /// Finds leaks in every service of a fleet from the profiles it pushes to Pyroscope (exit 0:
    /// nothing, 1: leaks found, 2: error). With --every, runs until SIGTERM and exports OTLP
    /// metrics.
    Fleet(Box<FleetArgs>),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Scan(args) => scan::run(&args),
        Command::Symbols(args) => symbols::run(&args),
        Command::Fleet(args) => fleet::run(&args),
    }
}
