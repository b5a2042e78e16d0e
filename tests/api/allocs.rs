//! The heap profile's allocation and age evidence, read by the real `go tool pprof`: Go's four
//! sample types (`allocs` shows `alloc_space` by default, `heap` `inuse_space`), and the age of
//! live memory as a numeric label that `-tags` shows and `-tagfocus` filters on.

use std::time::Duration;

use crate::helpers::{TestApp, spawn_app};
use crate::pprof::{go_pprof, top_rows};

const SLICE: &str = "leakfinder::leaks::slice::run_leaker_job1_simple_slice";
const MAP: &str = "leakfinder::leaks::map::run_leaker_job3_mutex_map";
const CACHE: &str = "leakfinder::leaks::benign::run_benign_cache_warmup";

/// The service with fast leaks capped at 32 MiB each.
fn small_leaks() -> TestApp {
    spawn_app(&[
        ("LEAK_CHUNK_BYTES", "1048576"),
        ("LEAK_INTERVAL_MS", "5"),
        ("LEAK_MAX_BYTES", &(32u64 << 20).to_string()),
    ])
}

async fn capped(app: &TestApp, kind: &str) {
    app.get_json(&format!("/start-leak/{kind}"), 200).await;
    app.wait_for(Duration::from_secs(30), "the leak to cap", |report| {
        report["leaks"][kind]["capped"] == true
    })
    .await;
}

/// The sum of `sample_type` over the samples whose leaf function starts with `function`.
fn total_at(profile: &leakfinder_pprof::Profile, sample_type: &str, function: &str) -> f64 {
    let name = |index: i64| profile.string_table[index as usize].as_str();
    let column = profile
        .sample_type
        .iter()
        .position(|t| name(t.r#type) == sample_type)
        .unwrap_or_else(|| panic!("the profile has {sample_type}"));
    profile
        .sample
        .iter()
        .filter(|sample| {
            let location = &profile.location[sample.location_id[0] as usize - 1];
            let function_id = location.line[0].function_id;
            name(profile.function[function_id as usize - 1].name).starts_with(function)
        })
        .map(|sample| sample.value[column] as f64)
        .sum()
}

/// `name`'s row of `-top` output (flat bytes as printed, and the flat share).
fn flat_share(top: &str, name: &str) -> f64 {
    top_rows(top)
        .iter()
        .find(|row| row.name.starts_with(name))
        .map_or(0.0, |row| row.flat_percent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocs_shows_what_was_allocated_and_heap_what_is_still_in_use() {
    let app = small_leaks();
    capped(&app, "slice").await;
    // The benign cache churns: it allocates far more than it keeps once warm (8 MiB, 6.4 s).
    app.get_json("/start-benign/cache-warmup", 200).await;
    tokio::time::sleep(Duration::from_secs(12)).await;

    let allocs = app.url("/debug/pprof/allocs");
    let by_default = go_pprof(&["-top"], &allocs);
    assert!(by_default.contains("Type: alloc_space"), "{by_default}");
    let heap = app.url("/debug/pprof/heap");
    let inuse = go_pprof(&["-top"], &heap);
    assert!(inuse.contains("Type: inuse_space"), "{inuse}");
    let alloc_space = go_pprof(&["-top", "-sample_index=alloc_space"], &heap);
    assert!(alloc_space.contains("Type: alloc_space"), "{alloc_space}");
    for index in ["alloc_objects", "inuse_objects"] {
        let top = go_pprof(&["-top", &format!("-sample_index={index}")], &heap);
        assert!(top.contains(&format!("Type: {index}")), "{top}");
    }

    // The leak keeps all it allocated; the cache, a small part of it.
    let body = app.get("/debug/pprof/heap").await.bytes().await.unwrap();
    let profile = leakfinder_pprof::decode(&body, 64 << 20).unwrap();
    let bytes = |sample_type: &str, function: &str| total_at(&profile, sample_type, function);
    let (leak_alloc, leak_inuse) = (bytes("alloc_space", SLICE), bytes("inuse_space", SLICE));
    assert!(leak_inuse > 16.0 * 1024.0 * 1024.0, "{leak_inuse}");
    assert!(
        leak_inuse >= 0.95 * leak_alloc,
        "the leak keeps what it allocates: {leak_inuse} of {leak_alloc}"
    );
    let (cache_alloc, cache_inuse) = (bytes("alloc_space", CACHE), bytes("inuse_space", CACHE));
    assert!(cache_inuse > 0.0, "the cache holds its entries");
    assert!(
        cache_alloc > 1.3 * cache_inuse,
        "the cache frees what it evicts: {cache_inuse} of {cache_alloc}"
    );
    assert!(flat_share(&alloc_space, SLICE) > 0.0, "{alloc_space}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_memory_carries_its_age_which_tags_shows_and_tagfocus_filters() {
    let app = small_leaks();
    capped(&app, "slice").await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    capped(&app, "mutex").await;

    let heap = app.url("/debug/pprof/heap");
    let tags = go_pprof(&["-tags"], &heap);
    assert!(tags.contains(" age: Total "), "{tags}");
    // The slice's chunks are about 6 s old, the map's under 2 s: ages in seconds.
    assert!(
        tags.lines()
            .any(|line| line.trim_end().ends_with(": 6s") || line.trim_end().ends_with(": 7s")),
        "{tags}"
    );

    // Shares are of the whole profile (two leaks of 32 MiB): each filter keeps one of them.
    let old = go_pprof(&["-top", "-tagfocus=age=4s:"], &heap);
    let young = go_pprof(&["-top", "-tagfocus=age=:3s"], &heap);
    assert!(flat_share(&old, SLICE) > 40.0, "{old}");
    assert_eq!(flat_share(&old, MAP), 0.0, "{old}");
    assert!(flat_share(&young, MAP) > 40.0, "{young}");
    assert_eq!(flat_share(&young, SLICE), 0.0, "{young}");
}
