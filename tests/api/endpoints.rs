//! Every endpoint answers, with the JSON shape the README documents; bad input gets 4xx JSON.

use serde_json::Value;

use crate::helpers::{flag, num, spawn_app};

const KINDS: [&str; 3] = ["slice", "channel", "mutex"];

#[tokio::test]
async fn health_and_leak_report_have_their_shape() {
    let app = spawn_app(&[]);
    let health = app.get_json("/healthz", 200).await;
    assert_eq!(health["status"], "ok");

    let report = app.report().await;
    for kind in KINDS {
        for field in ["active", "capped"] {
            assert!(
                !flag(&report, &format!("leaks/{kind}/{field}")),
                "{kind} {field}"
            );
        }
        for field in ["bytes", "items", "blocked_tasks"] {
            assert_eq!(
                num(&report, &format!("leaks/{kind}/{field}")),
                0,
                "{kind} {field}"
            );
        }
    }
    assert!(num(&report, "process/rss_bytes") > 0);
    assert!(num(&report, "process/heap_allocated_bytes") > 0);
    assert!(num(&report, "process/heap_resident_bytes") > 0);
    assert!(num(&report, "process/alive_tasks") >= 1);
    assert!(
        num(&report, "process/memory_age_ms") <= 100,
        "memory figures are at most 100 ms old: {report}"
    );
    assert_eq!(num(&report, "settings/chunk_bytes"), 262_144);
    assert_eq!(num(&report, "settings/interval_ms"), 5);
    assert_eq!(num(&report, "settings/max_bytes"), 268_435_456);
    assert!(
        app.logs()
            .iter()
            .any(|line| line.contains("no leak is active yet") && line.contains("/swagger/")),
        "the start-up log says where Swagger is and that no leak is active"
    );
}

#[tokio::test]
async fn leak_operations_answer_get_and_post_with_their_shape() {
    let app = spawn_app(&[("LEAK_INTERVAL_MS", "1000")]);
    for kind in KINDS {
        let started = app.get_json(&format!("/start-leak/{kind}"), 200).await;
        assert_eq!(
            started,
            serde_json::json!({"kind": kind, "status": "started"})
        );
        let again = app
            .client
            .post(app.url(&format!("/start-leak/{kind}")))
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 200);
        let again: Value = again.json().await.unwrap();
        assert_eq!(again["status"], "already_running");

        let stopped = app.get_json(&format!("/stop-leak/{kind}"), 200).await;
        assert_eq!(stopped["kind"], kind);
        assert_eq!(stopped["status"], "stopped");
        assert!(stopped["retained_bytes"].is_u64() && stopped["retained_items"].is_u64());
        let not_running = app.get_json(&format!("/stop-leak/{kind}"), 200).await;
        assert_eq!(not_running["status"], "not_running");

        let reset = app
            .client
            .post(app.url(&format!("/reset-leak/{kind}")))
            .send()
            .await
            .unwrap();
        assert_eq!(reset.status(), 200);
        let reset: Value = reset.json().await.unwrap();
        assert_eq!(reset["kind"], kind);
        assert_eq!(reset["retained_bytes"], 0);
        assert!(reset["released_bytes"].is_u64() && reset["released_items"].is_u64());
    }
}

#[tokio::test]
async fn safe_test_receives_everything_and_accepts_get_and_post() {
    let app = spawn_app(&[]);
    let run = app.get_json("/safe-test", 200).await;
    assert_eq!(num(&run, "tasks"), 10);
    assert_eq!(num(&run, "received"), 10);
    assert_eq!(num(&run, "timed_out"), 0);
    assert_eq!(num(&run, "bytes_received"), 10 * 65_536);
    assert!(run["elapsed_ms"].is_f64());

    let posted = app
        .client
        .post(app.url("/safe-test?tasks=200"))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    let posted: Value = posted.json().await.unwrap();
    assert_eq!(num(&posted, "received"), 200);

    // Nothing outlives the request: the runtime's alive tasks return to where they were.
    let report = app.report().await;
    assert_eq!(num(&report, "leaks/channel/blocked_tasks"), 0);
    assert!(num(&report, "process/alive_tasks") < 10, "{report}");
}

#[tokio::test]
async fn the_spec_lists_every_route_and_swagger_is_served() {
    let app = spawn_app(&[]);
    let spec = app.get_json("/openapi.json", 200).await;
    let paths = spec["paths"].as_object().expect("the spec has paths");
    for route in [
        "/start-leak/{kind}",
        "/stop-leak/{kind}",
        "/reset-leak/{kind}",
        "/safe-test",
    ] {
        for method in ["get", "post"] {
            assert!(
                paths[route].get(method).is_some(),
                "{method} {route} is in the spec"
            );
        }
    }
    for route in ["/leak-test", "/healthz"] {
        assert!(
            paths[route].get("get").is_some(),
            "GET {route} is in the spec"
        );
    }
    let kinds = &spec["components"]["schemas"]["LeakKind"]["enum"];
    assert_eq!(kinds, &serde_json::json!(KINDS));

    let yaml = app.get("/openapi.yaml").await;
    assert_eq!(yaml.status(), 200);
    assert!(yaml.text().await.unwrap().contains("/start-leak/{kind}:"));

    for path in ["/swagger/", "/swagger/index.html", "/swagger"] {
        let page = app.get(path).await;
        assert_eq!(page.status(), 200, "{path}");
        assert!(
            page.text().await.unwrap().contains("SwaggerUIBundle"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn bad_input_gets_a_4xx_json_body_that_says_what_is_valid() {
    let app = spawn_app(&[]);
    for path in ["/start-leak/bogus", "/stop-leak/SLICE", "/reset-leak/%20"] {
        let error = app.get_json(path, 400).await;
        assert_eq!(error["status"], 400);
        assert!(error["error"].as_str().unwrap().contains("kind"), "{error}");
        assert_eq!(error["valid"], "kind is one of: slice, channel, mutex");
    }
    for path in [
        "/safe-test?tasks=0",
        "/safe-test?tasks=1001",
        "/safe-test?tasks=many",
        "/safe-test?tasks=-1",
    ] {
        let error = app.get_json(path, 400).await;
        assert!(
            error["error"].as_str().unwrap().contains("tasks"),
            "{error}"
        );
        assert!(
            error["valid"].as_str().unwrap().contains("1 to 1000"),
            "{error}"
        );
    }
    let missing = app.get_json("/no/such/route", 404).await;
    assert_eq!(missing["status"], 404);
    assert!(missing["valid"].as_str().unwrap().contains("/openapi.json"));

    let wrong_method = app
        .client
        .delete(app.url("/leak-test"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), 405);
    let body: Value = wrong_method.json().await.unwrap();
    assert_eq!(body["status"], 405);

    // None of it disturbed the service or its state.
    let report = app.report().await;
    for kind in KINDS {
        assert!(!flag(&report, &format!("leaks/{kind}/active")));
    }
    assert_eq!(app.get_json("/healthz", 200).await["status"], "ok");
}
