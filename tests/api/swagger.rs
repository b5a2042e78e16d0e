//! Swagger UI in a real headless Chromium: it loads, lists the leak operations, and an executed
//! `/leak-test` call shows a 200. Needs Debian's `chromium` and `npm ci` in tests/browser (both
//! installed by `.ci/run`); without them this test fails rather than passing unseen.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::helpers::spawn_app;

#[tokio::test]
async fn swagger_ui_lists_the_leak_operations_and_executes_leak_test() {
    let browser_tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        browser_tests.join("node_modules/playwright-core").is_dir(),
        "run `npm ci` in tests/browser first (.ci/run does)"
    );
    let app = spawn_app(&[]);
    let screenshot = std::env::temp_dir().join("leakfinder-swagger.png");
    let base = app.base.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .current_dir(&browser_tests)
            .args(["swagger.mjs", &base, screenshot.to_str().unwrap()])
            .output()
            .expect("node is installed")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the browser run failed: {stderr}");
    let seen: Value =
        serde_json::from_slice(&output.stdout).expect("the script prints one JSON line");

    assert_eq!(seen["title"], "Swagger UI");
    let operations: Vec<&str> = seen["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|op| op.as_str().unwrap())
        .collect();
    for expected in [
        "GET /start-leak/{kind}",
        "POST /start-leak/{kind}",
        "GET /stop-leak/{kind}",
        "GET /reset-leak/{kind}",
        "GET /leak-test",
        "GET /safe-test",
        "GET /healthz",
    ] {
        assert!(
            operations.contains(&expected),
            "{expected} in {operations:?}"
        );
    }
    assert_eq!(seen["executedStatus"], "200");
    let body: Value =
        serde_json::from_str(seen["body"].as_str().unwrap()).expect("the UI shows the JSON body");
    assert!(body["leaks"]["slice"]["bytes"].is_u64(), "{body}");
    assert_eq!(seen["errors"], serde_json::json!([]));
}
