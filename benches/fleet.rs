//! `leakfinder fleet` over a synthetic fleet of 1 000 services: the recorded Pyroscope answers
//! (`tests/fixtures/pyroscope`) replayed under 1 000 names (`svc-0000` is checkout, `svc-0001`
//! catalog, `svc-0002` orders-go, and so on). Runs the real binary once over the recorded 6
//! minutes (24 windows of 15 s) and prints wall time, CPU time, peak memory (the child's VmHWM,
//! from `getrusage`), queries and bytes; fails if any request was not recorded or a verdict is
//! wrong. `cargo bench --bench fleet [-- SERVICES]`.

#[path = "../tests/api/replay.rs"]
#[allow(dead_code)]
mod replay;

use std::process::Command;
use std::time::Instant;

use replay::{E, Options, Replay, S};

const RECORDED: [&str; 3] = ["checkout", "catalog", "orders-go"];

fn main() {
    let services: usize = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(1000);
    let aliases: Vec<(String, String)> = (0..services)
        .map(|i| (format!("svc-{i:04}"), RECORDED[i % 3].to_owned()))
        .collect();
    let replay = Replay::start(Options {
        aliases: aliases.clone(),
        ..Options::default()
    });
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_leakfinder-lab"))
        .env_clear()
        .args([
            "fleet",
            "--pyroscope",
            &replay.url,
            "--json",
            "--concurrency",
            "8",
        ])
        .args(["--from", &S.to_string(), "--to", &E.to_string()])
        .output()
        .expect("the leakfinder binary runs");
    let wall = started.elapsed().as_secs_f64();
    let usage = children_usage();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let unrecorded = replay.unrecorded();
    assert!(
        unrecorded.is_empty(),
        "unrecorded requests: {:?}",
        &unrecorded[..unrecorded.len().min(5)]
    );
    assert_eq!(output.status.code(), Some(1), "leaks found: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    let scanned = report["services"].as_array().unwrap();
    assert_eq!(scanned.len(), services);
    for service in scanned {
        let name = service["service"].as_str().unwrap();
        let index: usize = name[4..].parse().unwrap();
        let findings = service["findings"].as_array().unwrap();
        assert_eq!(service["error"], serde_json::Value::Null, "{name}");
        let expected = match RECORDED[index % 3] {
            "checkout" => 1,
            "catalog" => 0,
            _ => 2,
        };
        assert_eq!(findings.len(), expected, "{name}: {findings:?}");
    }
    let queries = report["queries"].as_u64().unwrap();
    assert_eq!(replay.served(), queries);
    let cpu = usage.cpu_seconds;
    let bytes = replay.bytes();
    let span = (E - S) as f64 / 1000.0;
    println!(
        "fleet bench: {services} services x 24 windows ({span:.0} s of profiles), concurrency 8"
    );
    println!("  wall time        {wall:.2} s");
    println!("  CPU time         {cpu:.2} s (user + system of leakfinder fleet)");
    println!(
        "  peak memory      {:.1} MiB (VmHWM)",
        usage.max_rss_kib as f64 / 1024.0
    );
    println!(
        "  queries          {queries} ({:.0}/s while running, {:.1} per service)",
        queries as f64 / wall,
        queries as f64 / services as f64
    );
    println!(
        "  bytes received   {:.1} MiB ({:.1} KiB per query)",
        bytes as f64 / (1 << 20) as f64,
        bytes as f64 / 1024.0 / queries as f64
    );
    println!("  CPU per query    {:.2} ms", cpu * 1000.0 / queries as f64);
}

struct Usage {
    cpu_seconds: f64,
    max_rss_kib: i64,
}

/// CPU time and peak RSS of this process's waited-for children.
#[allow(unsafe_code)]
fn children_usage() -> Usage {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a full `rusage` into the pointer it is given, which points at
    // zeroed memory of that type; RUSAGE_CHILDREN is a valid `who`.
    let usage = unsafe {
        assert_eq!(
            libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()),
            0
        );
        usage.assume_init()
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Usage {
        cpu_seconds: seconds(usage.ru_utime) + seconds(usage.ru_stime),
        max_rss_kib: usage.ru_maxrss,
    }
}
