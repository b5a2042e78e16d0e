//! An executable's code as functions, files and lines, inline frames included, read from its
//! debug info: the lean reader a service symbolises its own addresses with ([`dwarf`]), and the
//! prebuilt symbol table written beside a binary after the build ([`table`]), as Go's linker
//! writes `pclntab` into every Go binary.
//!
//! No allocator, no profiler, no runtime: `leakfinder-profiling` symbolises a running process's
//! profiles with it, and the `leakfinder` command (`leakfinder symbols EXE`) writes a table with
//! it, for any ELF executable with debug info.
//!
//! ```no_run
//! use std::path::Path;
//! use leakfinder_symbols::table;
//!
//! let executable = Path::new("target/release/my-service");
//! // `target/release/my-service.symbols`: the service finds it there, matched by build ID.
//! let written = table::write(executable, &table::path_beside(executable))?;
//! println!("{} bytes", written.bytes);
//! # Ok::<(), table::TableError>(())
//! ```
//!
//! # Layout
//! - [`dwarf`]: the debug-info reader: for a batch of addresses, only the compilation units that
//!   hold them, each only as far as they need; and every unit's code, read once for a table.
//! - `lines`: DWARF's line-number program run by hand, so a run can start at any sequence.
//! - [`table`]: the prebuilt table's format, its writer and its reader (positioned reads, no
//!   mapping), refused unless its build ID is the executable's own.

#![warn(missing_docs)]

pub mod dwarf;
mod lines;
pub mod table;
