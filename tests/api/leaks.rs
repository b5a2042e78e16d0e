//! Each leak grows, holds its cap, keeps its memory when stopped, and frees it on reset.

use std::time::Duration;

use tokio::task::JoinSet;

use crate::helpers::{MEMORY_FRESH, flag, num, spawn_app};

const MIB: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn each_leak_grows_and_the_process_rss_grows_with_it() {
    for kind in ["slice", "channel", "mutex"] {
        let app = spawn_app(&[("LEAK_CHUNK_BYTES", "1048576"), ("LEAK_INTERVAL_MS", "2")]);
        let before = app.report().await;
        app.get_json(&format!("/start-leak/{kind}"), 200).await;
        let grown = app
            .wait_for(WAIT, "32 MiB leaked", |r| {
                num(r, &format!("leaks/{kind}/bytes")) >= 32 * MIB
            })
            .await;
        assert!(flag(&grown, &format!("leaks/{kind}/active")));
        let items = num(&grown, &format!("leaks/{kind}/items"));
        let bytes = num(&grown, &format!("leaks/{kind}/bytes"));
        assert_eq!(bytes, items * MIB, "{kind}: every item is one chunk");
        // Memory figures are cached for up to 100 ms: one read after that is newer than `grown`.
        tokio::time::sleep(MEMORY_FRESH).await;
        let measured = app.report().await;
        let rss_growth = num(&measured, "process/rss_bytes") - num(&before, "process/rss_bytes");
        assert!(
            rss_growth >= bytes / 2,
            "{kind}: RSS grew {rss_growth} for {bytes} leaked"
        );
        let heap_growth = num(&measured, "process/heap_allocated_bytes")
            - num(&before, "process/heap_allocated_bytes");
        assert!(
            heap_growth >= bytes / 2,
            "{kind}: heap grew {heap_growth} for {bytes} leaked"
        );
        if kind == "channel" {
            // One chunk sits in the channel's buffer; every other one is held by a blocked task.
            assert_eq!(num(&grown, "leaks/channel/blocked_tasks"), items - 1);
            assert!(num(&grown, "process/alive_tasks") >= items - 1);
        }
    }
}

#[tokio::test]
async fn the_cap_holds() {
    let app = spawn_app(&[
        ("LEAK_CHUNK_BYTES", "262144"),
        ("LEAK_INTERVAL_MS", "1"),
        ("LEAK_MAX_BYTES", "4194304"),
    ]);
    for kind in ["slice", "channel", "mutex"] {
        app.get_json(&format!("/start-leak/{kind}"), 200).await;
    }
    let capped = app
        .wait_for(WAIT, "all three capped", |r| {
            ["slice", "channel", "mutex"]
                .iter()
                .all(|kind| flag(r, &format!("leaks/{kind}/capped")))
        })
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let later = app.report().await;
    for kind in ["slice", "channel", "mutex"] {
        assert_eq!(
            num(&capped, &format!("leaks/{kind}/bytes")),
            4 * MIB,
            "{kind}"
        );
        assert_eq!(num(&capped, &format!("leaks/{kind}/items")), 16, "{kind}");
        assert_eq!(
            num(&later, &format!("leaks/{kind}/bytes")),
            4 * MIB,
            "{kind} stays capped"
        );
        assert!(
            flag(&later, &format!("leaks/{kind}/active")),
            "{kind} is still started"
        );
    }
    assert_eq!(num(&later, "leaks/channel/blocked_tasks"), 15);
    let again = app.get_json("/start-leak/slice", 200).await;
    assert_eq!(again["status"], "already_running");
}

#[tokio::test]
async fn stop_keeps_the_memory_and_reset_frees_it() {
    for kind in ["slice", "channel", "mutex"] {
        let app = spawn_app(&[
            ("LEAK_CHUNK_BYTES", "1048576"),
            ("LEAK_INTERVAL_MS", "1"),
            ("LEAK_MAX_BYTES", "134217728"),
        ]);
        app.get_json(&format!("/start-leak/{kind}"), 200).await;
        app.wait_for(WAIT, "64 MiB leaked", |r| {
            num(r, &format!("leaks/{kind}/bytes")) >= 64 * MIB
        })
        .await;

        let stopped = app.get_json(&format!("/stop-leak/{kind}"), 200).await;
        assert_eq!(stopped["status"], "stopped");
        let retained = num(&stopped, "retained_bytes");
        assert!(retained >= 64 * MIB);
        tokio::time::sleep(MEMORY_FRESH).await;
        let after_stop = app.report().await;
        assert!(
            !flag(&after_stop, &format!("leaks/{kind}/active")),
            "{kind}"
        );
        assert_eq!(
            num(&after_stop, &format!("leaks/{kind}/bytes")),
            retained,
            "{kind}: stop keeps memory"
        );
        assert!(
            num(&after_stop, "process/heap_allocated_bytes") >= retained,
            "{kind}"
        );

        let reset = app.get_json(&format!("/reset-leak/{kind}"), 200).await;
        assert_eq!(num(&reset, "released_bytes"), retained, "{kind}");
        assert_eq!(num(&reset, "retained_bytes"), 0, "{kind}");
        let after_reset = app.report().await;
        assert_eq!(
            num(&after_reset, &format!("leaks/{kind}/bytes")),
            0,
            "{kind}"
        );
        assert_eq!(
            num(&after_reset, &format!("leaks/{kind}/items")),
            0,
            "{kind}"
        );
        assert_eq!(
            num(&after_reset, "leaks/channel/blocked_tasks"),
            0,
            "{kind}"
        );
        // The heap and RSS drop by what was released. Polled for a few seconds: the leak watch's
        // profiles allocate for a moment (debug info, about 40 MiB, when an address is new).
        let dropped = |report: &serde_json::Value| {
            let drop = |path: &str| num(&after_stop, path).saturating_sub(num(report, path));
            (
                drop("process/heap_allocated_bytes"),
                drop("process/rss_bytes"),
            )
        };
        let released = app
            .wait_for(
                Duration::from_secs(10),
                "the heap and RSS to drop",
                |report| {
                    let (heap, rss) = dropped(report);
                    heap >= retained * 9 / 10 && rss >= retained / 2
                },
            )
            .await;
        let (heap_drop, rss_drop) = dropped(&released);
        assert!(
            heap_drop >= retained * 9 / 10 && rss_drop >= retained / 2,
            "{kind}"
        );

        // A reset leak starts again from nothing.
        app.get_json(&format!("/start-leak/{kind}"), 200).await;
        app.wait_for(WAIT, "growth after reset", |r| {
            num(r, &format!("leaks/{kind}/bytes")) > 0
        })
        .await;
    }
}

#[tokio::test]
async fn resetting_the_channel_leak_ends_every_blocked_task() {
    let app = spawn_app(&[("LEAK_CHUNK_BYTES", "1024"), ("LEAK_INTERVAL_MS", "1")]);
    let idle = num(&app.report().await, "process/alive_tasks");
    app.get_json("/start-leak/channel", 200).await;
    app.wait_for(WAIT, "1000 blocked tasks", |r| {
        num(r, "leaks/channel/blocked_tasks") >= 1000
    })
    .await;
    app.get_json("/reset-leak/channel", 200).await;
    let after = app.report().await;
    assert_eq!(num(&after, "leaks/channel/blocked_tasks"), 0);
    assert!(num(&after, "process/alive_tasks") <= idle + 1, "{after}");
}

#[tokio::test]
async fn fifty_concurrent_starts_start_exactly_one_job() {
    let app = spawn_app(&[("LEAK_INTERVAL_MS", "50")]);
    for kind in ["slice", "channel", "mutex"] {
        let mut calls = JoinSet::new();
        for i in 0..50 {
            let request = if i % 2 == 0 {
                app.client.get(app.url(&format!("/start-leak/{kind}")))
            } else {
                app.client.post(app.url(&format!("/start-leak/{kind}")))
            };
            calls.spawn(async move {
                let response = request.send().await.unwrap();
                assert_eq!(response.status(), 200);
                let body: serde_json::Value = response.json().await.unwrap();
                body["status"].as_str().unwrap().to_owned()
            });
        }
        let statuses = calls.join_all().await;
        let started = statuses
            .iter()
            .filter(|status| *status == "started")
            .count();
        let already = statuses
            .iter()
            .filter(|status| *status == "already_running")
            .count();
        assert_eq!((started, already), (1, 49), "{kind}");
    }
    // Exactly one producer per leak: growth is one chunk per tick, not fifty.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = app.report().await;
    for kind in ["slice", "channel", "mutex"] {
        let items = num(&report, &format!("leaks/{kind}/items"));
        assert!(
            (1..=15).contains(&items),
            "{kind}: {items} chunks in ~500 ms at 50 ms a tick"
        );
    }
}
