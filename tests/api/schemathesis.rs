//! Schemathesis against the served spec with every check: status codes, content types, headers and
//! bodies conform to the spec, bad input is rejected with a 4xx, no 5xx, and undeclared methods
//! get a 405 with `Allow`. Needs `st` from PyPI (`.ci/run` installs the pinned version); without it
//! this test fails rather than passing unseen.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::helpers::spawn_app;

/// The whole run takes about 30 s on two cores; a hang fails instead of blocking the suite.
const RUN_LIMIT: Duration = Duration::from_secs(300);

#[tokio::test]
async fn schemathesis_finds_nothing_with_every_check() {
    // Leaks stay small (at most 1 MiB each) however often the fuzzer starts them.
    let app = spawn_app(&[
        ("LEAK_CHUNK_BYTES", "4096"),
        ("LEAK_INTERVAL_MS", "50"),
        ("LEAK_MAX_BYTES", "1048576"),
    ]);
    let spec = app.get_json("/openapi.json", 200).await;
    let operations: usize = spec["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();
    // Schemathesis keeps state (.hypothesis, .schemathesis) in its working directory.
    let scratch = tempfile::Builder::new()
        .prefix("leakfinder-schemathesis-")
        .tempdir()
        .unwrap();

    let args = [
        "run",
        &app.url("/openapi.json"),
        "--checks",
        "all",
        "--seed",
        "405",
        "--max-examples",
        "100",
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--generation-database",
        "none",
        "--no-color",
    ];
    let child = Command::new("st")
        .args(args)
        .current_dir(scratch.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("`st` is installed: python3 -m pip install schemathesis (.ci/run pins it)");
    let output = tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("st run did not finish within {RUN_LIMIT:?}"))
        .unwrap();

    let printed = format!(
        "st {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "st exited {}:\n{printed}",
        output.status
    );
    assert!(
        printed.contains(&format!("Tested: {operations}\n")),
        "every one of the spec's {operations} operations was tested:\n{printed}"
    );
    assert!(printed.contains("No issues found"), "{printed}");
}
