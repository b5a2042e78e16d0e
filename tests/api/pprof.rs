//! `/debug/pprof` read by the real `go tool pprof`, run from the repo root with `-symbolize=none`
//! so that nothing comes from the binary: every name, file and line is in the profile itself.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::helpers::{BINARY, MEMORY_FRESH, TestApp, num, spawn_app, spawn_binary};

/// Runs `go tool pprof -symbolize=none ARGS URL` from the crate root and returns its stdout.
pub fn go_pprof(args: &[&str], url: &str) -> String {
    run_pprof(&[&["-symbolize=none"], args].concat(), url)
}

/// Runs `go tool pprof ARGS SOURCE` from the crate root and returns its stdout.
fn run_pprof(args: &[&str], url: &str) -> String {
    let scratch = tempfile::Builder::new()
        .prefix("leakfinder-pprof-")
        .tempdir()
        .unwrap();
    let output = Command::new("go")
        .args(["tool", "pprof"])
        .args(args)
        .arg(url)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PPROF_TMPDIR", scratch.path())
        .output()
        .expect("go is installed (go tool pprof is the client under test)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "go tool pprof {args:?} {url} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// One row of `-top`: flat%, cum% and the function name.
#[derive(Debug, Clone)]
pub struct TopRow {
    pub flat_percent: f64,
    pub cum_percent: f64,
    pub name: String,
}

/// The rows of `go tool pprof -top` output, in order.
pub fn top_rows(output: &str) -> Vec<TopRow> {
    output
        .lines()
        .skip_while(|line| !line.trim_start().starts_with("flat"))
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _flat = fields.next()?;
            let flat_percent = fields.next()?.trim_end_matches('%').parse().ok()?;
            let _sum = fields.next()?;
            let _cum = fields.next()?;
            let cum_percent = fields.next()?.trim_end_matches('%').parse().ok()?;
            let name = fields.collect::<Vec<_>>().join(" ");
            let name = name.trim_end_matches(" (inline)").to_owned();
            Some(TopRow {
                flat_percent,
                cum_percent,
                name,
            })
        })
        .collect()
}

/// Which column of `-list` to rank lines by.
#[derive(Clone, Copy)]
pub enum Column {
    Flat,
    Cum,
}

/// In `-list` output, the source line holding the most of `column`, and its share of the total.
pub fn hottest_line(list: &str, column: Column) -> (String, f64) {
    let total = list
        .lines()
        .find_map(|line| line.trim().strip_prefix("Total: "))
        .map(parse_quantity)
        .expect("-list prints a total");
    list.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let flat = fields.next()?;
            let cum = fields.next()?;
            let number = fields.next()?;
            number.strip_suffix(':')?.parse::<u32>().ok()?;
            let value = match column {
                Column::Flat => flat,
                Column::Cum => cum,
            };
            (value != ".").then(|| (line.to_owned(), parse_quantity(value) / total))
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .expect("-list shows at least one line with a value")
}

/// `152.48MB`, `512kB`, `100` to a number (bytes or count).
fn parse_quantity(text: &str) -> f64 {
    let text = text.trim();
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "" | "B" => 1.0,
        "kB" => 1024.0,
        "MB" => 1024.0 * 1024.0,
        "GB" => 1024.0 * 1024.0 * 1024.0,
        other => panic!("unknown unit {other} in {text}"),
    };
    number
        .parse::<f64>()
        .unwrap_or_else(|_| panic!("a number in {text}"))
        * scale
}

/// Starts one leak alone and lets it grow to `bytes`.
async fn leak_alone(kind: &str, bytes: u64) -> TestApp {
    leak_alone_in(Path::new(BINARY), kind, bytes).await
}

/// [`leak_alone`] with another copy of the binary.
pub async fn leak_alone_in(binary: &Path, kind: &str, bytes: u64) -> TestApp {
    let app = spawn_binary(
        binary,
        &[
            ("LEAK_CHUNK_BYTES", "1048576"),
            ("LEAK_INTERVAL_MS", "5"),
            ("LEAK_MAX_BYTES", &bytes.to_string()),
        ],
    );
    app.get_json(&format!("/start-leak/{kind}"), 200).await;
    app.wait_for(
        Duration::from_secs(30),
        "the leak to reach its cap",
        |report| num(report, &format!("leaks/{kind}/bytes")) >= bytes,
    )
    .await;
    app
}

pub const HEAP_LEAK: u64 = 96 << 20;

/// The names `top` shows, which the README's walkthrough promises (checked below).
pub const JOB1: &str = "leakfinder::leaks::slice::run_leaker_job1_simple_slice::{{closure}}";
const JOB2_TASK: &str =
    "leakfinder::leaks::channel::run_leaker_job2_channel_task_block::{{closure}}::{{closure}}";
const JOB3: &str = "leakfinder::leaks::map::run_leaker_job3_mutex_map::{{closure}}";

#[tokio::test]
async fn slice_leak_top_names_job1_and_list_shows_the_push_line() {
    let app = leak_alone("slice", HEAP_LEAK).await;
    let heap = app.url("/debug/pprof/heap");
    let rows = top_rows(&go_pprof(&["-top"], &heap));
    assert_eq!(rows[0].name, JOB1, "{rows:#?}");
    assert!(rows[0].flat_percent >= 80.0, "{rows:#?}");

    let list = go_pprof(&["-list", "run_leaker_job1_simple_slice"], &heap);
    let (line, share) = hottest_line(&list, Column::Flat);
    assert!(
        line.contains("lock(&LEAKY_STORE_1).push(vec![FILL_BYTE; len]);"),
        "{list}"
    );
    assert!(share >= 0.8, "{share} of the bytes on {line}\n{list}");
}

/// `leakfinder symbols` writes the table beside a copy of the binary; the copy symbolises through
/// it and its heap profile reads as with the debug info. A table of another build is refused
/// with a warning, and the profile still reads the same, from the debug info.
#[tokio::test]
async fn a_prebuilt_symbol_table_is_used_only_for_its_own_build_and_names_the_same_lines() {
    let directory = tempfile::tempdir().unwrap();
    let binary = directory.path().join("leakfinder");
    std::fs::copy(BINARY, &binary).unwrap();
    let written = Command::new(&binary).arg("symbols").output().unwrap();
    let table = directory.path().join("leakfinder.symbols");
    assert!(
        written.status.success() && table.exists(),
        "{}",
        String::from_utf8_lossy(&written.stderr)
    );
    assert!(String::from_utf8_lossy(&written.stdout).contains("address runs"));
    let missing = Command::new(&binary)
        .args(["symbols", "/nonexistent/executable"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("cannot read /nonexistent/executable"),
        "{missing:?}"
    );
    let bytes = std::fs::read(&table).unwrap();
    let stale = {
        let mut stale = bytes.clone();
        stale[32] ^= 0xff; // the first byte of the build ID
        stale
    };
    for (case, contents, log) in [
        (
            "own build",
            &bytes,
            "symbolising through the prebuilt symbol table",
        ),
        ("another build", &stale, "prebuilt symbol table unusable"),
    ] {
        std::fs::write(&table, contents).unwrap();
        let app = leak_alone_in(&binary, "slice", HEAP_LEAK).await;
        let heap = app.url("/debug/pprof/heap");
        let rows = top_rows(&go_pprof(&["-top"], &heap));
        assert_eq!(rows[0].name, JOB1, "{case}: {rows:#?}");
        let list = go_pprof(&["-list", "run_leaker_job1_simple_slice"], &heap);
        let (line, _) = hottest_line(&list, Column::Flat);
        assert!(
            line.contains("lock(&LEAKY_STORE_1).push(vec![FILL_BYTE; len]);"),
            "{case}: {list}"
        );
        assert!(
            app.logs().iter().any(|line| line.contains(log)),
            "{case}: {:#?}",
            app.logs()
        );
    }
}

#[tokio::test]
async fn mutex_leak_top_names_job3_and_list_shows_the_insert_line() {
    let app = leak_alone("mutex", HEAP_LEAK).await;
    let heap = app.url("/debug/pprof/heap");
    let rows = top_rows(&go_pprof(&["-top"], &heap));
    assert_eq!(rows[0].name, JOB3, "{rows:#?}");
    assert!(rows[0].flat_percent >= 80.0, "{rows:#?}");

    let list = go_pprof(&["-list", "run_leaker_job3_mutex_map"], &heap);
    let (line, share) = hottest_line(&list, Column::Flat);
    assert!(
        line.contains("lock(&LEAKY_MAP_3).insert(key, vec![FILL_BYTE; len]);"),
        "{list}"
    );
    assert!(share >= 0.8, "{share} of the bytes on {line}\n{list}");
}

/// The seed's plain command (`go tool pprof SOURCE`: pprof's default symbolization and its
/// simplifying demangler) reads our task and CPU profiles with the same names as
/// `-symbolize=none`: trait methods keep their `<... as ...>::poll`, not a bare `::poll`.
#[tokio::test]
async fn plain_go_tool_pprof_shows_the_names_symbolize_none_shows() {
    let app = leak_alone("channel", HEAP_LEAK).await;
    let directory = tempfile::tempdir().unwrap();
    let load = {
        let (client, url) = (app.client.clone(), app.url("/safe-test?tasks=50"));
        tokio::spawn(async move {
            for _ in 0..2000 {
                if client.get(&url).send().await.is_err() {
                    break;
                }
            }
        })
    };
    for (name, path) in [
        ("goroutine", "/debug/pprof/goroutine"),
        ("cpu", "/debug/pprof/profile?seconds=2"),
    ] {
        let response = app.get(path).await;
        assert_eq!(response.status(), 200);
        let bytes = response.bytes().await.unwrap();
        // Every Rust frame, inlined dependency code included, carries its full path: the
        // dependencies' debug info has linkage names, not only line tables (`poll`, `run`).
        let profile = leakfinder_pprof::decode(&bytes, 64 << 20).unwrap();
        let text = |index: i64| profile.string_table[index as usize].as_str();
        let bare: Vec<&str> = profile
            .function
            .iter()
            .filter(|function| text(function.filename).ends_with(".rs"))
            .map(|function| text(function.name))
            .filter(|name| !name.contains("::"))
            .collect();
        assert!(
            bare.is_empty(),
            "{name}: Rust frames without a path: {bare:?}"
        );
        let saved = directory.path().join(format!("{name}.pb.gz"));
        std::fs::write(&saved, &bytes).unwrap();
        let saved = saved.display().to_string();
        let names = |rows: Vec<TopRow>| -> BTreeSet<String> {
            rows.into_iter().map(|row| row.name).collect()
        };
        let args = ["-top", "-cum", "-nodecount=200"];
        let plain = names(top_rows(&run_pprof(&args, &saved)));
        let none = names(top_rows(&go_pprof(&args, &saved)));
        assert_eq!(plain, none, "{name}: the same names either way");
        assert!(
            plain
                .iter()
                .any(|name| name.contains(" as core::future::future::Future>::poll")),
            "{name}: trait methods keep their full names: {plain:#?}"
        );
        assert!(
            !plain.iter().any(|name| name.starts_with("::")),
            "{name}: no bare trait method: {plain:#?}"
        );
        if name == "cpu" {
            // Every thread starts in libc, and the leak's chunks are filled by its memset:
            // named from libc's own tables (its debug file), never `libc.so.6+0x16e0ba`.
            assert!(
                plain.contains("start_thread"),
                "{name}: libc frames are named: {plain:#?}"
            );
            assert!(
                !plain.iter().any(|name| name.starts_with("lib")
                    && name.contains(".so")
                    && name.contains("+0x")
                    && (name.starts_with("libc.")
                        || name.starts_with("libm.")
                        || name.starts_with("ld-linux"))),
                "{name}: no unsymbolised libc frame: {plain:#?}"
            );
        }
    }
    load.abort();
}

#[tokio::test]
async fn channel_leak_shows_in_the_task_profile_and_its_chunks_in_the_heap() {
    let app = leak_alone("channel", HEAP_LEAK).await;
    let tasks = app.url("/debug/pprof/goroutine");
    let rows = top_rows(&go_pprof(&["-top", "-cum"], &tasks));
    let job2 = rows
        .iter()
        .find(|row| row.name == JOB2_TASK)
        .unwrap_or_else(|| panic!("job 2 is in the task profile: {rows:#?}"));
    assert!(job2.cum_percent >= 80.0, "{rows:#?}");
    // As Go's goroutine profile: the root-most frame names the spawn.
    let created = rows
        .iter()
        .find(|row| row.name.starts_with("created by ") && row.name.contains("run_leaker_job2"))
        .unwrap_or_else(|| panic!("a created-by frame for job 2's spawn: {rows:#?}"));
    assert!(created.cum_percent >= 80.0, "{rows:#?}");
    let tags = go_pprof(&["-tags"], &tasks);
    let send = tags
        .lines()
        .find(|line| line.trim_end().ends_with(": chan send"))
        .unwrap_or_else(|| panic!("`tags` shows wait: chan send\n{tags}"));
    assert!(tags.contains("wait: Total"), "{tags}");
    assert!(send.contains('%'), "{send}");

    let list = go_pprof(&["-list", "run_leaker_job2_channel_task_block"], &tasks);
    let (line, share) = hottest_line(&list, Column::Cum);
    assert!(
        line.contains("sender.send(held).await") && line.contains("LEAKY_CHANNEL_2"),
        "{list}"
    );
    assert!(share >= 0.8, "{share} of the tasks on {line}\n{list}");

    let heap = app.url("/debug/pprof/heap");
    let rows = top_rows(&go_pprof(&["-top"], &heap));
    assert_eq!(rows[0].name, JOB2_TASK, "{rows:#?}");
    assert!(rows[0].flat_percent >= 80.0, "{rows:#?}");
    let list = go_pprof(&["-list", "run_leaker_job2_channel_task_block"], &heap);
    let (line, share) = hottest_line(&list, Column::Flat);
    assert!(
        line.contains("let chunk = vec![FILL_BYTE; len]; // job 2's allocation line"),
        "{list}"
    );
    assert!(share >= 0.8, "{share} of the bytes on {line}\n{list}");
}

#[tokio::test]
async fn the_task_profile_has_text_forms_an_alias_and_wait_labels() {
    let app = leak_alone("channel", 16 << 20).await;
    let text = app
        .get("/debug/pprof/goroutine?debug=1")
        .await
        .text()
        .await
        .unwrap();
    assert!(text.starts_with("goroutine profile: total "), "{text}");
    assert!(
        text.contains("# labels: {\"wait\":\"chan send\"}"),
        "{text}"
    );
    let count_line = text
        .lines()
        .find(|line| line.contains(" @ 0x"))
        .expect("a counted stack");
    let count: u64 = count_line.split(" @ ").next().unwrap().parse().unwrap();
    assert!(
        count >= 14,
        "the blocked tasks share one stack: {count_line}"
    );

    let per_task = app
        .get("/debug/pprof/tasks?debug=2")
        .await
        .text()
        .await
        .unwrap();
    let blocked = per_task.matches(" [chan send]:\n").count();
    assert!(blocked >= 15, "one entry per blocked task, got {blocked}");
    assert!(per_task.contains("\n\tsrc/leaks/channel.rs:"), "{per_task}");
    assert!(per_task.starts_with("goroutine "), "{per_task}");

    let labels = go_pprof(&["-tags"], &app.url("/debug/pprof/tasks"));
    assert!(labels.contains("chan send"), "{labels}");

    let bad = app.get_json("/debug/pprof/goroutine?debug=3", 400).await;
    assert!(
        bad["valid"].as_str().unwrap().contains("debug is 0"),
        "{bad}"
    );
    let bad = app
        .get_json("/debug/pprof/goroutine?debug=2&runtime=yes", 400)
        .await;
    assert!(
        bad["valid"].as_str().unwrap().contains("runtime is 0"),
        "{bad}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_profile_taken_under_load_has_samples() {
    let app = spawn_app(&[]);
    let load = {
        let client = app.client.clone();
        let url = app.url("/safe-test?tasks=200");
        tokio::spawn(async move {
            for _ in 0..2000 {
                if client.get(&url).send().await.is_err() {
                    break;
                }
            }
        })
    };
    let url = app.url("/debug/pprof/profile");
    let output = tokio::task::spawn_blocking(move || go_pprof(&["-top", "-seconds", "2"], &url))
        .await
        .unwrap();
    load.abort();
    assert!(output.contains("Type: cpu"), "{output}");
    let rows = top_rows(&output);
    assert!(!rows.is_empty(), "{output}");
    let total = output
        .lines()
        .find_map(|line| line.split("Total samples = ").nth(1))
        .expect("a sample total");
    assert!(!total.starts_with('0'), "{output}");
}

#[tokio::test]
async fn bad_profile_parameters_get_a_400_and_the_index_lists_every_profile() {
    let app = spawn_app(&[]);
    for seconds in ["0", "61", "-1", "abc", "1.5", ""] {
        let error = app
            .get_json(&format!("/debug/pprof/profile?seconds={seconds}"), 400)
            .await;
        assert_eq!(error["status"], 400);
        assert!(
            error["valid"].as_str().unwrap().contains("1 to 60"),
            "{error}"
        );
    }
    let index = app.get("/debug/pprof/").await.text().await.unwrap();
    for link in [
        "href=\"heap\"",
        "href=\"profile?seconds=5\"",
        "href=\"goroutine?debug=1\"",
        "href=\"tasks?debug=1\"",
    ] {
        assert!(index.contains(link), "{link} in the index");
    }
    assert!(
        index.contains("seconds") && index.contains("debug"),
        "the index documents parameters"
    );
}

#[tokio::test]
async fn cmdline_and_symbol_answer_as_go_s_do_or_say_why_not() {
    // A leak, so that the heap profile surely has samples (jemalloc samples at random).
    let app = leak_alone("slice", 32 << 20).await;
    let cmdline = app.get("/debug/pprof/cmdline").await.text().await.unwrap();
    let arguments: Vec<&str> = cmdline.split('\0').collect();
    assert!(arguments[0].ends_with("leakfinder-lab"), "{cmdline:?}");
    // Go's symbol protocol, on an address the heap profile names.
    let heap = app.get("/debug/pprof/heap").await.bytes().await.unwrap();
    let profile = leakfinder_pprof::decode(&heap, 64 << 20).unwrap();
    let function_name = |id: u64| {
        let function = profile.function.iter().find(|f| f.id == id).unwrap();
        profile.string_table[function.name as usize].clone()
    };
    // A location that is no sample's leaf keeps all its inlined frames (the leaf's allocator
    // frames are trimmed), so its first line is the innermost function at its address.
    let leaves: BTreeSet<u64> = profile.sample.iter().map(|s| s.location_id[0]).collect();
    let location = profile
        .location
        .iter()
        .find(|l| l.address != 0 && !l.line.is_empty() && !leaves.contains(&l.id))
        .expect("a heap location with an address and lines");
    let innermost = function_name(location.line[0].function_id);
    let answer = app
        .get(&format!(
            "/debug/pprof/symbol?{:#x}+0x1",
            location.address - 1
        ))
        .await
        .text()
        .await
        .unwrap();
    let mut lines = answer.lines();
    assert_eq!(lines.next(), Some("num_symbols: 1"), "{answer}");
    assert_eq!(
        lines.next(),
        Some(format!("{:#x} {innermost}", location.address - 1).as_str()),
        "{answer}"
    );
    assert_eq!(lines.next(), None, "0x1 names nothing: {answer}");
    let bad = app.get_json("/debug/pprof/symbol?0xzz", 400).await;
    assert_eq!(bad["error"], "invalid address: \"0xzz\"");
    let missing = app.get_json("/debug/pprof/threadcreate", 404).await;
    assert_eq!(missing["status"], 404);
}

#[test]
fn the_readme_walkthrough_names_what_the_profiles_show() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let expected: Vec<&str> = readme
        .lines()
        .filter(|line| line.contains("**Expected Result**"))
        .flat_map(|line| line.split('`').skip(1).step_by(2))
        .filter(|name| name.contains("run_leaker_job"))
        .collect();
    for function in [JOB1, JOB2_TASK, JOB3] {
        assert!(
            expected.contains(&function),
            "the README expects {function}: {expected:?}"
        );
    }
    for line in [
        "lock(&LEAKY_STORE_1).push(vec![FILL_BYTE; len]);",
        "lock(&LEAKY_MAP_3).insert(key, vec![FILL_BYTE; len]);",
        "let _ = sender.send(held).await;",
        "let chunk = vec![FILL_BYTE; len];",
    ] {
        assert!(readme.contains(line), "the README shows the line {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_cpu_profiles_share_the_one_sampler() {
    let app = spawn_app(&[]);
    let (first, second) = tokio::join!(
        app.get("/debug/pprof/profile?seconds=2"),
        app.get("/debug/pprof/profile?seconds=1"),
    );
    for response in [first, second] {
        assert_eq!(response.status(), 200);
        let bytes = response.bytes().await.unwrap();
        let profile = leakfinder_pprof::decode(&bytes, 64 << 20).unwrap();
        let name = |index: i64| profile.string_table[index as usize].clone();
        assert_eq!(name(profile.sample_type[1].r#type), "cpu");
        assert!(
            profile.duration_nanos >= 1_000_000_000,
            "{}",
            profile.duration_nanos
        );
    }
    assert_eq!(app.get_json("/healthz", 200).await["status"], "ok");
}

/// Sampling costs CPU on every thread, so it runs only while a CPU profile wants it and stops
/// a couple of seconds after the last one, as Go's profiler stops with its request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cpu_sampler_runs_only_while_a_profile_wants_it() {
    let app = spawn_app(&[]);
    let sampling = async || app.report().await["process"]["cpu_sampling"].clone();
    let sampling_cpu = async || num(&app.report().await, "process/cpu_sampling_cpu_us");
    assert_eq!(
        sampling().await,
        false,
        "nobody asked for a CPU profile yet"
    );
    assert_eq!(sampling_cpu().await, 0, "no profile, no sampling cost");
    let profile = app.get("/debug/pprof/profile?seconds=2");
    let during = async {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        sampling().await
    };
    let (response, during) = tokio::join!(profile, during);
    assert_eq!(response.status(), 200);
    assert_eq!(during, true, "the sampler runs while the profile is taken");
    // The sampler looks at demand once per window; it must stop within a few seconds.
    const STOPS_WITHIN: Duration = Duration::from_secs(4);
    let deadline = tokio::time::Instant::now() + STOPS_WITHIN;
    while sampling().await == true {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sampler still runs {STOPS_WITHIN:?} after the last profile ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What sampling cost is accounted, and stops growing once sampling stopped.
    let spent = sampling_cpu().await;
    assert!(spent > 0, "the sampler's CPU time is accounted");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sampling_cpu().await, spent, "no cost once sampling stopped");
}

/// The profiler's own memory is a small, flat baseline: symbolisation keeps no DWARF cache, the
/// symbol cache and the sampler's ring are not sampled, and none of it tops the heap profile.
#[tokio::test]
async fn the_profilers_own_memory_stays_small_flat_and_out_of_the_heap_profile() {
    const MIB: u64 = 1 << 20;
    let app = spawn_app(&[
        ("LEAK_CHUNK_BYTES", "1048576"),
        ("LEAK_MAX_BYTES", "16777216"),
    ]);
    let before = app.report().await;
    let every_profile = async || {
        for path in [
            "/debug/pprof/heap",
            "/debug/pprof/goroutine",
            "/debug/pprof/profile?seconds=1",
        ] {
            let response = app.get(path).await;
            assert_eq!(response.status(), 200, "{path}");
            response.bytes().await.unwrap();
        }
    };
    let allocated = |report: &serde_json::Value| num(report, "process/heap_allocated_bytes");
    // Nothing of the debug info is kept: what stays is the symbol index (the frames of the
    // addresses named so far) and the CPU sampler's last 64 windows. Bounded and small.
    every_profile().await;
    tokio::time::sleep(MEMORY_FRESH).await;
    let after_first = app.report().await;
    assert!(
        allocated(&after_first).saturating_sub(allocated(&before)) <= 8 * MIB,
        "{before}\n{after_first}"
    );
    let index = num(&after_first, "process/symbol_index_bytes");
    assert!(index > 0 && index <= 4 * MIB, "{after_first}");
    for _ in 0..5 {
        every_profile().await;
    }
    tokio::time::sleep(MEMORY_FRESH).await;
    let after_many = app.report().await;
    assert!(
        allocated(&after_many).saturating_sub(allocated(&after_first)) <= 4 * MIB,
        "{after_first}\n{after_many}"
    );
    assert!(num(&after_many, "process/symbol_index_bytes") <= 4 * MIB);
    // Symbolising is accounted: the first profiles' new addresses cost CPU time.
    assert!(
        num(&after_first, "process/symbolising_cpu_ms") > 0,
        "{after_first}"
    );
    assert!(allocated(&after_many) <= 48 * MIB, "{after_many}");
    assert!(
        num(&after_many, "process/rss_bytes") <= 64 * MIB,
        "{after_many}"
    );

    app.get_json("/start-leak/slice", 200).await;
    app.wait_for(Duration::from_secs(30), "16 MiB leaked", |r| {
        num(r, "leaks/slice/bytes") >= 16 * MIB
    })
    .await;
    let rows = top_rows(&go_pprof(&["-top"], &app.url("/debug/pprof/heap")));
    assert_eq!(rows[0].name, JOB1, "{rows:#?}");
    let machinery = ["gimli", "backtrace", "pprof::", "leakfinder_profiling"];
    for row in &rows {
        assert!(
            !machinery.iter().any(|name| row.name.contains(name)) || row.flat_percent < 1.0,
            "profiling machinery in the heap profile: {row:?}"
        );
    }
}
