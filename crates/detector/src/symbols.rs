//! The `leakfinder symbols EXE [OUT]` command: writes the prebuilt symbol table of a service's
//! executable (`leakfinder-symbols`' format), beside it by default (`EXE.symbols`), where
//! `leakfinder-profiling` looks for it: a service that finds a table of its own build there
//! symbolises its profiles with one binary search per new address instead of reading its debug
//! info. Run it after `cargo build --release`, and ship the table beside the binary.
//!
//! It reads the executable's debug info and writes a file; it never runs the executable, and
//! needs nothing of the profiling runtime.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use leakfinder_symbols::table;

/// The `symbols` command's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct SymbolsArgs {
    /// The executable: a build with debug info (`debug = "limited"`), not stripped.
    pub executable: PathBuf,
    /// Where to write the table (default: beside the executable, `.symbols` appended, where
    /// the service looks for it).
    pub output: Option<PathBuf>,
}

/// `leakfinder symbols`: writes the table and says what it wrote (exit 0), or why it could
/// not (exit 1).
pub fn run(args: &SymbolsArgs) -> ExitCode {
    write(&args.executable, args.output.as_deref())
}

/// Writes the table of `executable` to `output` (default: [`table::path_beside`] it), and
/// prints what it wrote on stdout, or why it could not on stderr (exit 1).
pub fn write(executable: &Path, output: Option<&Path>) -> ExitCode {
    let output = output.map_or_else(|| table::path_beside(executable), Path::to_owned);
    let started = Instant::now();
    match table::write(executable, &output) {
        Ok(written) => {
            println!(
                "wrote {} ({:.1} MiB: {} address runs, {} scopes, {} strings) in {:.1} s",
                output.display(),
                written.bytes as f64 / (1024.0 * 1024.0),
                written.segments,
                written.scopes,
                written.strings,
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("leakfinder symbols: {error}");
            ExitCode::FAILURE
        }
    }
}
