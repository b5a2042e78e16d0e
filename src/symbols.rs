//! `leakfinder-lab symbols`: writes the prebuilt symbol table beside an executable, as Go binaries
//! carry their `pclntab`, so that profiles are symbolised without reading DWARF in the process.

use leakfinder_profiling::symbols::table;

use crate::config::SymbolsArgs;

/// `leakfinder symbols`: writes the table and says what it wrote, or why it could not.
pub fn run(args: &SymbolsArgs) -> std::process::ExitCode {
    let executable = match &args.executable {
        Some(path) => path.clone(),
        None => match std::env::current_exe() {
            Ok(path) => path,
            Err(error) => {
                eprintln!("leakfinder symbols: cannot find this executable: {error}");
                return std::process::ExitCode::FAILURE;
            }
        },
    };
    let output = args
        .output
        .clone()
        .unwrap_or_else(|| table::path_beside(&executable));
    let started = std::time::Instant::now();
    match table::write(&executable, &output) {
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
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("leakfinder symbols: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
