//! Each route's methods: a method it does not serve gets a 405 whose `Allow` header lists exactly
//! the ones it does (RFC 9110, section 15.5.6), with the JSON error body; OPTIONS gets the same
//! list with a 204.

use std::collections::BTreeSet;

use reqwest::Method;
use serde_json::Value;

use crate::helpers::{TestApp, spawn_app};

/// Methods to try on every route; whichever a route does not serve must get a 405.
const TRIED: [&str; 6] = ["GET", "POST", "PUT", "PATCH", "DELETE", "TRACE"];

/// The routes that are not OpenAPI operations, with what they serve.
const PLAIN: [(&str, &[&str]); 9] = [
    ("/openapi.json", &["GET"]),
    ("/openapi.yaml", &["GET"]),
    ("/swagger/", &["GET"]),
    ("/swagger", &["GET"]),
    ("/debug/pprof/", &["GET"]),
    ("/debug/pprof/heap", &["GET"]),
    ("/debug/pprof/cmdline", &["GET"]),
    ("/debug/pprof/symbol", &["GET"]),
    ("/debug/pprof/allocs", &["GET"]),
];

/// What `Allow` must say for a route serving `declared`: HEAD wherever GET is served (poem answers
/// it from the GET handler), and OPTIONS everywhere.
fn allow_for(declared: &[&str]) -> BTreeSet<String> {
    let mut allow: BTreeSet<String> = declared.iter().map(|m| m.to_uppercase()).collect();
    if allow.contains("GET") {
        allow.insert("HEAD".to_owned());
    }
    allow.insert("OPTIONS".to_owned());
    allow
}

fn parse_allow(response: &reqwest::Response, what: &str) -> BTreeSet<String> {
    let allow = response
        .headers()
        .get("allow")
        .unwrap_or_else(|| panic!("{what}: no Allow header in {:?}", response.headers()));
    allow
        .to_str()
        .unwrap()
        .split(',')
        .map(|method| method.trim().to_owned())
        .collect()
}

/// Every OpenAPI operation from the served spec, as (a concrete path, its declared methods).
async fn operations(app: &TestApp) -> Vec<(String, Vec<String>)> {
    let spec = app.get_json("/openapi.json", 200).await;
    let paths = spec["paths"].as_object().expect("the spec has paths");
    paths
        .iter()
        .map(|(template, item)| {
            let path = template.replace("{kind}", "slice");
            assert!(
                !path.contains('{'),
                "a parameter this test fills: {template}"
            );
            let methods = item.as_object().unwrap().keys().cloned().collect();
            (path, methods)
        })
        .collect()
}

#[tokio::test]
async fn a_method_a_route_does_not_serve_gets_405_with_allow_and_json() {
    let app = spawn_app(&[]);
    let mut routes = operations(&app).await;
    assert!(
        routes.iter().any(|(path, _)| path == "/stop-leak/slice"),
        "{routes:?}"
    );
    routes.extend(PLAIN.iter().map(|(path, methods)| {
        let methods = methods.iter().map(|m| m.to_lowercase()).collect();
        (path.to_string(), methods)
    }));

    for (path, declared) in &routes {
        let declared: Vec<&str> = declared.iter().map(String::as_str).collect();
        let expected = allow_for(&declared);
        for method in TRIED.iter().filter(|m| !expected.contains(**m)) {
            let what = format!("{method} {path}");
            let response = app
                .client
                .request(
                    Method::from_bytes(method.as_bytes()).unwrap(),
                    app.url(path),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 405, "{what}");
            assert_eq!(parse_allow(&response, &what), expected, "{what}");
            let content_type = response.headers()["content-type"].to_str().unwrap();
            assert!(content_type.starts_with("application/json"), "{what}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["status"], 405, "{what}: {body}");
            assert!(body["error"].is_string(), "{what}: {body}");
            for allowed in &expected {
                assert!(
                    body["valid"].as_str().unwrap().contains(allowed.as_str()),
                    "{what}: the body names {allowed}: {body}"
                );
            }
        }

        let what = format!("OPTIONS {path}");
        let options = app
            .client
            .request(Method::OPTIONS, app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(options.status(), 204, "{what}");
        assert_eq!(parse_allow(&options, &what), expected, "{what}");
    }
}

#[tokio::test]
async fn every_method_allow_lists_is_served() {
    let app = spawn_app(&[]);
    // Routes whose GET is cheap and changes nothing lasting.
    for path in [
        "/stop-leak/slice",
        "/leak-test",
        "/openapi.json",
        "/swagger/",
        "/debug/pprof/heap",
    ] {
        let options = app
            .client
            .request(Method::OPTIONS, app.url(path))
            .send()
            .await
            .unwrap();
        let allow = parse_allow(&options, path);
        assert!(allow.contains("HEAD"), "{path}: {allow:?}");
        for method in allow {
            let response = app
                .client
                .request(
                    Method::from_bytes(method.as_bytes()).unwrap(),
                    app.url(path),
                )
                .send()
                .await
                .unwrap();
            let status = response.status();
            assert!(
                status.is_success(),
                "{method} {path} is allowed and answers {status}"
            );
            if method == "HEAD" {
                assert!(response.bytes().await.unwrap().is_empty(), "HEAD {path}");
            }
        }
    }
}
