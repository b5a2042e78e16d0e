//! `leakfinder symbols EXE [OUT]` as a user runs it, on a real executable with debug info (a copy
//! of the `leakfinder` binary itself): the table it writes beside the executable opens for that
//! build and gives the frames its debug info gives; a stripped, missing or non-ELF executable is
//! a clear error. (`tests/api/install.rs` checks that the lab service uses a table the installed
//! command wrote.) And the command stays what its README promises: no jemalloc, no profiling
//! runtime in its dependencies.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use leakfinder_symbols::dwarf::DebugInfo;
use leakfinder_symbols::table::{self, Table};

const LEAKFINDER: &str = env!("CARGO_BIN_EXE_leakfinder");

fn leakfinder(args: &[&Path]) -> Output {
    Command::new(LEAKFINDER)
        .arg("symbols")
        .args(args)
        .output()
        .expect("the leakfinder binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A copy of the `leakfinder` binary, named `name`, in `directory`.
fn executable(directory: &Path, name: &str) -> PathBuf {
    let copy = directory.join(name);
    std::fs::copy(LEAKFINDER, &copy).unwrap();
    copy
}

#[test]
fn the_table_is_written_beside_the_executable_and_gives_its_debug_info_s_frames() {
    let directory = tempfile::tempdir().unwrap();
    let service = executable(directory.path(), "my-service");
    let written = leakfinder(&[&service]);
    assert!(written.status.success(), "{}", text(&written.stderr));
    let beside = directory.path().join("my-service.symbols");
    assert_eq!(table::path_beside(&service), beside);
    assert!(
        text(&written.stdout).starts_with(&format!("wrote {} (", beside.display())),
        "{}",
        text(&written.stdout)
    );

    let table = Table::open(&beside, &table::build_id(&service).unwrap())
        .expect("the table opens for the build it was written for");
    let info = DebugInfo::map(&service.to_string_lossy()).unwrap();
    // Addresses in this crate's own functions (those not inlined), named by `.symtab`.
    let mut probes: Vec<u64> = info
        .text_symbols()
        .into_iter()
        .filter(|(_, _, name)| name.starts_with("leakfinder_detector::"))
        .flat_map(|(start, end, _)| [start, start + (end - start) / 2])
        .collect();
    probes.sort_unstable();
    probes.dedup();
    assert!(probes.len() > 40, "{} addresses", probes.len());
    let resolved = info.resolve(&probes);
    let mut with_lines = 0;
    for probe in &probes {
        let (frames, span) = table
            .lookup(*probe)
            .unwrap_or_else(|| panic!("{probe:#x} is in the table"));
        assert!(span.contains(probe));
        assert_eq!(frames, resolved[probe].frames, "{probe:#x}");
        let function = &frames.last().unwrap().function;
        assert!(function.starts_with("leakfinder_detector::"), "{frames:?}");
        with_lines += usize::from(frames[0].line > 0 && frames[0].file.ends_with(".rs"));
    }
    // Compiler-made code (a drop's cleanup) has line 0; most has its file and line.
    assert!(
        with_lines * 10 >= probes.len() * 8,
        "{with_lines} of {} addresses have a line",
        probes.len()
    );
}

#[test]
fn the_table_goes_where_out_says() {
    let directory = tempfile::tempdir().unwrap();
    let service = executable(directory.path(), "my-service");
    let out = directory.path().join("elsewhere.symbols");
    let written = leakfinder(&[&service, &out]);
    assert!(written.status.success(), "{}", text(&written.stderr));
    assert!(out.is_file());
    assert!(!table::path_beside(&service).exists());
    assert!(Table::open(&out, &table::build_id(&service).unwrap()).is_ok());
}

#[test]
fn a_missing_stripped_or_non_elf_executable_is_a_clear_error_and_leaves_no_table() {
    let directory = tempfile::tempdir().unwrap();
    let stripped = executable(directory.path(), "stripped");
    let strip = Command::new("strip").arg(&stripped).status();
    assert!(strip.expect("binutils' strip runs").success());
    let not_elf = directory.path().join("script.sh");
    std::fs::write(&not_elf, "#!/bin/sh\n").unwrap();
    let missing = directory.path().join("missing");
    for (executable, says) in [
        (&stripped, "has no debug info to build a table from"),
        (&not_elf, "is not an ELF executable"),
        (&missing, "cannot read"),
    ] {
        let failed = leakfinder(&[executable]);
        assert_eq!(failed.status.code(), Some(1), "{executable:?}");
        let stderr = text(&failed.stderr);
        assert!(
            stderr.starts_with("leakfinder symbols: ")
                && stderr.contains(&executable.display().to_string())
                && stderr.contains(says),
            "{stderr}"
        );
        assert!(!table::path_beside(executable).exists(), "{executable:?}");
    }
    let usage = Command::new(LEAKFINDER).arg("symbols").output().unwrap();
    assert_eq!(usage.status.code(), Some(2));
    assert!(text(&usage.stderr).contains("<EXECUTABLE>"));
}

/// The README's promise: the `leakfinder` command builds without jemalloc and without the
/// profiling runtime (`leakfinder-symbols` reads debug info; it samples nothing).
#[test]
fn the_command_depends_on_no_allocator_and_no_profiling_runtime() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let tree = Command::new(cargo)
        .args(["tree", "--locked", "--offline", "--edges", "normal,build"])
        .args(["--prefix", "none", "--package", "leakfinder-detector"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs the tests, so it is there");
    assert!(tree.status.success(), "{}", text(&tree.stderr));
    let tree = text(&tree.stdout);
    assert!(tree.contains("leakfinder-symbols"), "{tree}");
    for runtime in [
        "tikv-jemalloc",
        "jemalloc_pprof",
        "leakfinder-profiling",
        "framehop",
        "pyroscope",
    ] {
        assert!(
            !tree.lines().any(|line| line.starts_with(runtime)),
            "{runtime} in the detector's dependencies:\n{tree}"
        );
    }
}
