//! The task profile's text forms read by third-party parsers of Go's: `?debug=2` by
//! `github.com/maruel/panicparse/v2` (the fixture `tests/fixtures/panicparse`), `?debug=1` by
//! `go tool pprof` as Go's legacy text format; both must agree with the protobuf profile on every
//! stack and count. And the protobuf profile's age labels, read by `go tool pprof -tags` and
//! `-tagfocus`.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{TestApp, build_go, num, spawn_app};
use crate::pprof::go_pprof;

/// Tasks the channel leak leaves blocked: hundreds, as the brief of these tests asks.
const BLOCKED: u64 = 300;
const CHUNK: u64 = 64 << 10;
/// The job's blocked tasks, as every form names their await.
const JOB2_TASK: &str =
    "leakfinder::leaks::channel::run_leaker_job2_channel_task_block::{{closure}}::{{closure}}";
/// Ids the text forms give tasks whose tokio id is unknown start here (see the goroutine route's
/// docs): above any id tokio gives out in practice.
const SYNTHETIC_IDS: u64 = 900_000_000_000_000_000;

/// The lab with the channel leak run to its cap (`BLOCKED` tasks parked at their send), and the
/// leak watch slowed down so that the tasks barely change between two profiles.
async fn blocked_tasks() -> TestApp {
    let app = spawn_app(&[
        ("LEAK_CHUNK_BYTES", &CHUNK.to_string()),
        ("LEAK_INTERVAL_MS", "5"),
        ("LEAK_MAX_BYTES", &(BLOCKED * CHUNK).to_string()),
        ("LEAK_REPORT_INTERVAL_MS", "600000"),
    ]);
    app.get_json("/start-leak/channel", 200).await;
    app.wait_for(
        Duration::from_secs(30),
        "the channel leak to reach its cap",
        |report| num(report, "leaks/channel/bytes") >= BLOCKED * CHUNK,
    )
    .await;
    app
}

/// A frame as every form shows it: function, file, line.
type Frame = (String, String, i64);

/// What identifies a stack of tasks in every form: the wait, the frames (leaf first), and the
/// `created by` function, file and line.
type StackKey = (String, Vec<Frame>, Frame);

/// The protobuf task profile's tasks per stack, and its total.
fn protobuf_stacks(bytes: &[u8]) -> (BTreeMap<StackKey, u64>, u64) {
    let profile = leakfinder_pprof::decode(bytes, 64 << 20).unwrap();
    let text = |index: i64| profile.string_table[index as usize].clone();
    let mut stacks = BTreeMap::new();
    let mut total = 0;
    for sample in &profile.sample {
        let mut frames: Vec<Vec<Frame>> = sample
            .location_id
            .iter()
            .map(|id| {
                let location = profile.location.iter().find(|l| l.id == *id).unwrap();
                location
                    .line
                    .iter()
                    .map(|line| {
                        let function = profile
                            .function
                            .iter()
                            .find(|f| f.id == line.function_id)
                            .unwrap();
                        (text(function.name), text(function.filename), line.line)
                    })
                    .collect()
            })
            .collect();
        let created = frames
            .pop()
            .expect("every stack ends in its created-by frame");
        let (function, file, line) = created.into_iter().next().unwrap();
        let function = function
            .strip_prefix("created by ")
            .unwrap_or_else(|| panic!("the root-most frame is created by: {function}"))
            .to_owned();
        let wait = sample
            .label
            .iter()
            .find(|label| text(label.key) == "wait")
            .map(|label| text(label.str))
            .expect("every sample has a wait label");
        let key = (wait, frames.concat(), (function, file, line));
        *stacks.entry(key).or_default() += sample.value[0] as u64;
        total += sample.value[0] as u64;
    }
    (stacks, total)
}

/// Asserts two forms count the same tasks at the same stacks, naming the stacks that differ.
fn assert_same<K: Ord + std::fmt::Debug>(
    read: &BTreeMap<K, u64>,
    profile: &BTreeMap<K, u64>,
    form: &str,
) {
    let differ: Vec<String> = read
        .keys()
        .chain(profile.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|key| read.get(key) != profile.get(key))
        .map(|key| {
            format!(
                "{key:?}: {:?} read, {:?} in the profile",
                read.get(key),
                profile.get(key)
            )
        })
        .collect();
    assert!(
        differ.is_empty(),
        "{form} and the protobuf profile differ:\n{}",
        differ.join("\n")
    );
}

/// Runs the panicparse fixture on `dump` and returns what it parsed.
fn panicparse(dump: &str) -> Value {
    let scratch = tempfile::tempdir().unwrap();
    let binary = scratch.path().join("panicparse");
    build_go("panicparse", &binary);
    let mut child = Command::new(&binary)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let dump = dump.to_owned();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(dump.as_bytes()).unwrap();
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

/// `created by F in goroutine N`, as panicparse keeps it whole: F, and N when present.
fn creator(complete: &str) -> (String, Option<u64>) {
    match complete.rsplit_once(" in goroutine ") {
        Some((function, id)) if id.bytes().all(|b| b.is_ascii_digit()) => {
            (function.to_owned(), Some(id.parse().unwrap()))
        }
        _ => (complete.to_owned(), None),
    }
}

/// The goroutines panicparse read, checked to be the whole dump.
fn goroutines(parsed: &Value) -> &Vec<Value> {
    for field in ["error", "unread", "before"] {
        assert_eq!(
            parsed[field], "",
            "panicparse read the whole dump, nothing else ({field})"
        );
    }
    parsed["goroutines"].as_array().unwrap()
}

/// A goroutine's frames as panicparse read them (none for `stack unavailable`).
fn frames_of(goroutine: &Value) -> Vec<Frame> {
    goroutine["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|frame| frame["file"] != "<unavailable>")
        .map(|frame| {
            (
                frame["function"].as_str().unwrap().to_owned(),
                frame["file"].as_str().unwrap().to_owned(),
                frame["line"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// The dump's tasks per stack, as panicparse read them.
fn panicparse_stacks(goroutines: &[Value]) -> BTreeMap<StackKey, u64> {
    let mut stacks = BTreeMap::new();
    for goroutine in goroutines {
        let created = &goroutine["created_by"];
        let (function, _) = creator(created["complete"].as_str().unwrap());
        let key = (
            goroutine["state"].as_str().unwrap().to_owned(),
            frames_of(goroutine),
            (
                function,
                created["file"].as_str().unwrap().to_owned(),
                created["line"].as_i64().unwrap(),
            ),
        );
        *stacks.entry(key).or_default() += 1;
    }
    stacks
}

/// Frames of the runtime, which Go's forms hide unless asked: tokio's, the standard library's,
/// and the tracer's.
fn is_runtime(function: &str) -> bool {
    let path = function.trim_start_matches('<');
    let path = path
        .strip_prefix('&')
        .map_or(path, |path| path.strip_prefix("mut ").unwrap_or(path));
    [
        "tokio::",
        "std::",
        "core::",
        "alloc::",
        "leakfinder_profiling::tasks::roots::",
    ]
    .iter()
    .any(|prefix| path.starts_with(prefix))
}

/// Takes `forms` between two protobuf profiles until both profiles have the same tasks at the
/// same stacks (the lab's own tasks come and go), and returns the profile's stacks with the forms.
async fn settled<const N: usize>(
    app: &TestApp,
    forms: [&str; N],
) -> ((BTreeMap<StackKey, u64>, u64), [String; N]) {
    let protobuf = async || {
        let response = app.get("/debug/pprof/goroutine").await;
        assert_eq!(response.status(), 200);
        protobuf_stacks(&response.bytes().await.unwrap())
    };
    for _ in 0..20 {
        let before = protobuf().await;
        let mut texts = Vec::new();
        for form in forms {
            let response = app.get(form).await;
            assert_eq!(response.status(), 200, "{form}");
            texts.push(response.text().await.unwrap());
        }
        if protobuf().await == before {
            return (before, texts.try_into().unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the tasks never held still between two profiles");
}

#[tokio::test]
async fn panicparse_reads_every_task_of_debug_2_as_the_protobuf_profile_counts_them() {
    let app = blocked_tasks().await;
    let ((stacks, total), [full, hidden]) = settled(
        &app,
        [
            "/debug/pprof/goroutine?debug=2&runtime=1",
            "/debug/pprof/goroutine?debug=2",
        ],
    )
    .await;

    // Every task, with its state, frames and creator, as the protobuf profile has them.
    let parsed = panicparse(&full);
    let every = goroutines(&parsed);
    assert_eq!(every.len() as u64, total, "one goroutine per task");
    assert_same(
        &panicparse_stacks(every),
        &stacks,
        "panicparse's reading of debug=2",
    );
    let ids: Vec<u64> = every.iter().map(|g| g["id"].as_u64().unwrap()).collect();
    assert!(
        ids.windows(2).all(|pair| pair[0] < pair[1]),
        "entries in id order, each id once: {ids:?}"
    );
    // The blocked senders: tokio's ids, one creator task, parked for less than a minute.
    let blocked: Vec<&Value> = every
        .iter()
        .filter(|g| frames_of(g).iter().any(|frame| frame.0 == JOB2_TASK))
        .collect();
    assert!(blocked.len() as u64 >= BLOCKED - 1, "{}", blocked.len());
    let mut creators = std::collections::BTreeSet::new();
    for goroutine in &blocked {
        assert_eq!(goroutine["state"], "chan send", "{goroutine}");
        assert_eq!(goroutine["minutes"], 0, "{goroutine}");
        assert!(goroutine["id"].as_u64().unwrap() < SYNTHETIC_IDS);
        let (function, parent) = creator(goroutine["created_by"]["complete"].as_str().unwrap());
        assert!(function.contains("run_leaker_job2"), "{goroutine}");
        creators.insert(parent.expect("the spawning task's id is known"));
        assert!(
            frames_of(goroutine)
                .iter()
                .any(|(function, ..)| is_runtime(function)),
            "runtime=1 shows tokio's frames: {goroutine}"
        );
    }
    assert_eq!(creators.len(), 1, "one job spawned them all: {creators:?}");
    assert!(
        every
            .iter()
            .any(|g| g["id"].as_u64().unwrap() >= SYNTHETIC_IDS),
        "untraced tasks (the server's) get synthetic ids"
    );

    // By default the runtime's frames are hidden, as Go hides its own; the rest is the same.
    let parsed = panicparse(&hidden);
    let shown = goroutines(&parsed);
    assert_eq!(shown.len(), every.len());
    for (goroutine, whole) in shown.iter().zip(every) {
        assert_eq!(goroutine["id"], whole["id"]);
        assert_eq!(goroutine["state"], whole["state"]);
        assert_eq!(goroutine["created_by"], whole["created_by"]);
        let frames = frames_of(whole);
        let kept: Vec<Frame> = frames
            .iter()
            .filter(|(function, ..)| !is_runtime(function))
            .cloned()
            .collect();
        let expected = if kept.is_empty() { frames } else { kept };
        assert_eq!(frames_of(goroutine), expected, "{goroutine}");
    }
    let sender = shown
        .iter()
        .find(|g| frames_of(g).iter().any(|frame| frame.0 == JOB2_TASK))
        .unwrap();
    assert_eq!(
        frames_of(sender)[0].0,
        JOB2_TASK,
        "the user's await is the first frame shown: {sender}"
    );
    assert!(
        hidden
            .lines()
            .any(|line| line.starts_with("goroutine ") && line.ends_with(" [chan send]:")),
        "Go's header: {hidden}"
    );
}

/// `go tool pprof -raw -symbolize=none` on `?debug=1`: each sample's addresses and count.
fn pprof_raw_stacks(raw: &str) -> BTreeMap<Vec<u64>, u64> {
    let mut addresses: BTreeMap<u64, u64> = BTreeMap::new();
    let mut samples: Vec<(u64, Vec<u64>)> = Vec::new();
    let mut section = "";
    for line in raw.lines() {
        match line.trim() {
            "Samples:" | "Locations" | "Mappings" => {
                section = line.trim();
                continue;
            }
            _ => {}
        }
        let Some((head, rest)) = line.trim().split_once(':') else {
            continue;
        };
        let Ok(number) = head.parse::<u64>() else {
            continue;
        };
        match section {
            "Samples:" => samples.push((
                number,
                rest.split_whitespace()
                    .map(|id| id.parse().unwrap())
                    .collect(),
            )),
            "Locations" => {
                let address = rest.split_whitespace().next().unwrap();
                let address = u64::from_str_radix(address.trim_start_matches("0x"), 16).unwrap();
                addresses.insert(number, address);
            }
            _ => {}
        }
    }
    let mut stacks = BTreeMap::new();
    for (count, ids) in samples {
        let stack = ids.iter().map(|id| addresses[id]).collect();
        *stacks.entry(stack).or_default() += count;
    }
    stacks
}

/// A `?debug=1` text, read by hand: each record's count, its stack of addresses as `go tool
/// pprof` takes them (one less than printed), and the same stack by its frame lines, as
/// [`protobuf_stacks`] keys it.
fn count_records(text: &str) -> (BTreeMap<Vec<u64>, u64>, BTreeMap<StackKey, u64>) {
    let hex = |word: &str| u64::from_str_radix(word.trim_start_matches("0x"), 16).unwrap();
    let mut frames: BTreeMap<u64, Vec<Frame>> = BTreeMap::new();
    for line in text.lines().filter(|line| line.starts_with("#\t")) {
        let fields: Vec<&str> = line.split('\t').filter(|f| !f.is_empty()).collect();
        let (function, place) = (fields[2], fields[3]);
        let function = function
            .rsplit_once("+0x")
            .map_or(function, |(name, _)| name);
        let (file, number) = place.rsplit_once(':').unwrap();
        frames.entry(hex(fields[1])).or_default().push((
            function.to_owned(),
            file.to_owned(),
            number.parse().unwrap(),
        ));
    }
    let (mut by_address, mut by_frame) = (BTreeMap::new(), BTreeMap::new());
    let mut lines = text.lines().skip(1);
    while let Some(line) = lines.next() {
        let Some((count, addresses)) = line.split_once(" @ ") else {
            continue;
        };
        let count: u64 = count.parse().unwrap();
        let addresses: Vec<u64> = addresses.split(' ').map(|a| hex(a) - 1).collect();
        let wait = lines
            .next()
            .and_then(|labels| labels.strip_prefix("# labels: {\"wait\":\""))
            .and_then(|rest| rest.strip_suffix("\"}"))
            .unwrap_or_else(|| panic!("a wait label after {line}"))
            .to_owned();
        let mut stack: Vec<Vec<Frame>> = addresses
            .iter()
            .map(|address| frames.get(address).cloned().unwrap_or_default())
            .collect();
        let created = stack.pop().unwrap().remove(0);
        let function = created.0.strip_prefix("created by ").unwrap().to_owned();
        *by_frame
            .entry((wait, stack.concat(), (function, created.1, created.2)))
            .or_default() += count;
        *by_address.entry(addresses).or_default() += count;
    }
    (by_address, by_frame)
}

#[tokio::test]
async fn go_tool_pprof_reads_debug_1_as_go_s_legacy_text_with_every_stack_and_count() {
    let app = blocked_tasks().await;
    // On the client's one connection: `go tool pprof` fetching the text itself would add its
    // own connection's task to what it reads. `runtime=1`: every frame has its line.
    let ((stacks, total), [text, hidden]) = settled(
        &app,
        [
            "/debug/pprof/goroutine?debug=1&runtime=1",
            "/debug/pprof/goroutine?debug=1",
        ],
    )
    .await;
    let directory = tempfile::tempdir().unwrap();
    let saved = directory.path().join("goroutine.txt");
    std::fs::write(&saved, &text).unwrap();
    let saved = saved.display().to_string();
    let raw = tokio::task::spawn_blocking(move || go_pprof(&["-raw"], &saved))
        .await
        .unwrap();

    // pprof reads Go's legacy goroutine format: every record's stack and count, as printed.
    assert!(raw.contains("goroutine/count"), "{raw}");
    let (printed, by_frame) = count_records(&text);
    assert_same(
        &pprof_raw_stacks(&raw),
        &printed,
        "go tool pprof's reading of debug=1",
    );
    // And what it reads is the protobuf profile's stacks and counts. (By frames, not addresses:
    // a task parked in `select!` is polled at one of several call sites of the same line.)
    assert_same(&by_frame, &stacks, "debug=1");
    assert!(
        text.starts_with(&format!("goroutine profile: total {total}\n")),
        "{text}"
    );
    let blocked = text
        .lines()
        .filter_map(|line| line.split_once(" @ 0x"))
        .map(|(count, _)| count.parse::<u64>().unwrap())
        .max()
        .unwrap();
    assert!(
        blocked >= BLOCKED - 1,
        "the blocked senders share a stack: {text}"
    );

    // By default the runtime's frames before the program's are left out of the frame lines,
    // as Go leaves out `runtime.*`; the records are the same.
    let counts = |records: BTreeMap<Vec<u64>, u64>| {
        let mut counts: Vec<u64> = records.into_values().collect();
        counts.sort_unstable();
        counts
    };
    assert_eq!(counts(count_records(&hidden).0), counts(printed.clone()));
    let record = hidden
        .split("\n\n")
        .find(|record| record.contains(JOB2_TASK))
        .unwrap_or_else(|| panic!("job 2's record: {hidden}"));
    // (The first record follows the `goroutine profile: total` line.)
    let mut lines = record.lines().skip_while(|line| !line.contains(" @ 0x"));
    assert!(lines.next().is_some(), "{record}");
    assert_eq!(lines.next(), Some("# labels: {\"wait\":\"chan send\"}"));
    let frame = lines.next().unwrap();
    let fields: Vec<&str> = frame.split('\t').filter(|f| !f.is_empty()).collect();
    assert_eq!(fields.len(), 4, "{frame:?}");
    assert!(
        fields[2].starts_with(JOB2_TASK) && fields[2][JOB2_TASK.len()..].starts_with("+0x"),
        "Go's frame line, the program's frame first: {record}"
    );
    assert!(fields[3].starts_with("src/leaks/channel.rs:"), "{frame:?}");
    assert!(
        text.contains("tokio::sync::mpsc::bounded::Sender<T>::send"),
        "runtime=1 shows them: {text}"
    );
}

/// Each numeric label's values in `go tool pprof -tags` output, as printed (`12s`, `300`).
fn tag_values<'a>(tags: &'a str, key: &str) -> Vec<&'a str> {
    tags.lines()
        .skip_while(|line| !line.trim_start().starts_with(&format!("{key}: Total")))
        .skip(1)
        .take_while(|line| !line.trim().is_empty() && !line.contains(": Total"))
        .filter_map(|line| line.rsplit_once(": ").map(|(_, value)| value.trim()))
        .collect()
}

#[tokio::test]
async fn task_samples_carry_age_parked_and_spawned_labels_that_pprof_shows_and_filters() {
    let app = blocked_tasks().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let bytes = app
        .get("/debug/pprof/goroutine")
        .await
        .bytes()
        .await
        .unwrap();
    // pprof reads this very profile, saved: ages move on between two requests.
    let directory = tempfile::tempdir().unwrap();
    let saved = directory.path().join("goroutine.pb.gz");
    std::fs::write(&saved, &bytes).unwrap();
    let url = saved.display().to_string();
    let profile = leakfinder_pprof::decode(&bytes, 64 << 20).unwrap();
    let text = |index: i64| profile.string_table[index as usize].as_str();
    let number = |sample: &leakfinder_pprof::Sample, key: &str| {
        sample
            .label
            .iter()
            .find(|label| text(label.key) == key)
            .map(|label| (label.num, text(label.num_unit)))
    };
    let (mut blocked, mut samples) = (0, 0);
    let mut spawned = std::collections::BTreeSet::new();
    for sample in &profile.sample {
        let wait = sample.label.iter().find(|l| text(l.key) == "wait").unwrap();
        if text(wait.str) != "chan send" {
            continue;
        }
        blocked += sample.value[0];
        samples += 1;
        let (age, unit) = number(sample, "age").expect("traced tasks have an age");
        assert_eq!(unit, "seconds");
        assert!((2..=60).contains(&age), "{age}");
        let (parked, unit) = number(sample, "parked").expect("and a time parked");
        assert_eq!(unit, "seconds");
        assert!(parked <= age, "{parked} {age}");
        let (count, unit) = number(sample, "spawned").expect("their site counts spawns");
        assert_eq!(unit, "count");
        spawned.insert(count);
    }
    assert!(blocked as u64 >= BLOCKED - 1);
    // Spawned over a second or two, seconds ago: a few age buckets, four per octave.
    assert!(
        samples <= 6,
        "tasks share samples by stack and age bucket: {blocked} tasks in {samples} samples"
    );
    assert_eq!(spawned.len(), 1, "one value per site: {spawned:?}");
    assert!(*spawned.first().unwrap() >= blocked);

    let tags = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || go_pprof(&["-tags"], &url))
            .await
            .unwrap()
    };
    for key in ["age", "parked"] {
        let values = tag_values(&tags, key);
        assert!(!values.is_empty(), "{key} in -tags: {tags}");
        assert!(
            values.iter().all(|value| value.ends_with('s')),
            "{key} shown in seconds: {values:?}\n{tags}"
        );
    }
    assert!(!tag_values(&tags, "spawned").is_empty(), "{tags}");

    // -tagfocus keeps the samples whose mean age is in the range.
    let old_enough: i64 = profile
        .sample
        .iter()
        .filter(|sample| number(sample, "age").is_some_and(|(age, _)| age >= 3))
        .map(|sample| sample.value[0])
        .sum();
    let focused =
        tokio::task::spawn_blocking(move || go_pprof(&["-raw", "-tagfocus=age=3s:"], &url))
            .await
            .unwrap();
    let kept: u64 = pprof_raw_stacks(&focused).values().sum();
    assert_eq!(kept, old_enough as u64, "{focused}");
}
