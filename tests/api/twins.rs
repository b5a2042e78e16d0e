//! Tokio twins of real blocking bugs (`examples/tokio_twins.rs`): `leakfinder scan` finds each
//! leaky twin at its function and the line of its await, and stays quiet on every fixed twin.

use std::path::PathBuf;
use std::process::Command;

use crate::detector::scan;
use crate::helpers::{start_listening, twin_leaks};

/// The example binary, built by `cargo test` beside this test's own binary.
fn example(name: &str) -> PathBuf {
    let deps = std::env::current_exe().unwrap();
    deps.parent()
        .and_then(|deps| deps.parent())
        .expect("tests run from target/<profile>/deps")
        .join("examples")
        .join(name)
}

/// Each twin-leak marker; the test expects six.
fn expected_leaks() -> Vec<(String, String, i64)> {
    let leaks = twin_leaks();
    assert_eq!(
        leaks.len(),
        6,
        "five twins, and the join twin's worker: {leaks:?}"
    );
    leaks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_leaky_tokio_twin_is_found_at_its_await_and_no_fixed_twin_is() {
    let twins = start_listening(Command::new(example("tokio_twins")).arg("both"));
    let scan = scan(&twins.url, "20s").await;
    assert_eq!(scan.code, 1, "leaks found: {}", scan.stderr);
    let tasks: Vec<&serde_json::Value> = scan
        .findings
        .iter()
        .filter(|finding| finding["kind"] == "tasks")
        .collect();
    for (name, function, line) in expected_leaks() {
        let wanted = format!("tokio_twins::{function}");
        let found = tasks.iter().find(|finding| {
            finding["function"]
                .as_str()
                .is_some_and(|f| f.starts_with(&wanted))
        });
        let found = found.unwrap_or_else(|| {
            panic!(
                "the {name} twin ({wanted}) is found: {tasks:#?}\n{}",
                scan.stderr
            )
        });
        assert_eq!(found["line"], line, "{name}: the await's line: {found}");
        assert_eq!(found["file"], "examples/tokio_twins.rs", "{found}");
        assert!(
            found["spawned_by"]
                .as_str()
                .is_some_and(|site| site.contains("examples/tokio_twins.rs:")),
            "{name}: the spawn site is named: {found}"
        );
    }
    for finding in &scan.findings {
        let function = finding["function"].as_str().unwrap();
        assert!(
            !function.contains("_fixed") && !function.contains("run_fixed"),
            "a fixed twin is not a leak: {finding}"
        );
    }
    assert!(
        scan.stderr.contains("no heap profile this round"),
        "the twins serve no heap profile; the scan goes on with tasks: {}",
        scan.stderr
    );
}
