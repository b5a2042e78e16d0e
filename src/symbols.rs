//! `leakfinder-lab symbols`: writes the prebuilt symbol table beside an executable (this one by
//! default), as Go binaries carry their `pclntab`, so that profiles are symbolised without reading
//! DWARF in the process. The same code as the installable `leakfinder symbols EXE`
//! ([`leakfinder_detector::symbols`]).

use crate::config::SymbolsArgs;

/// `leakfinder-lab symbols`: writes the table and says what it wrote, or why it could not.
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
    leakfinder_detector::symbols::write(&executable, args.output.as_deref())
}
