//! `leakfinder fleet` over a synthetic fleet of 1 000 services: the recorded Pyroscope answers
//! (`tests/fixtures/pyroscope`) replayed under 1 000 names (`svc-0000` is checkout, `svc-0001`
//! catalog, `svc-0002` orders-go, and so on).
//!
//! 1. One scan: the real binary once over the recorded 6 minutes (24 windows of 15 s); prints
//!    wall time, CPU time, peak memory (the child's VmHWM, from `getrusage`), queries and bytes;
//!    fails if any request was not recorded or a verdict is wrong.
//! 2. Watch mode at `--every 5m --since 10m`: three periods (at 10, 15 and 20 minutes, time
//!    wrapped around the recording) read the way watch mode did before (each period re-reads its
//!    whole range) and the way it does now (`fleet::watch::Watch`: only the windows new since
//!    the last period); prints queries and bytes per period side by side.
//!
//! `cargo bench --bench fleet [-- SERVICES]`.

#[path = "../tests/api/replay.rs"]
#[allow(dead_code)]
mod replay;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Instant;

use clap::Parser;
use leakfinder_detector::fleet::report::FleetReport;
use leakfinder_detector::fleet::watch::Watch;
use leakfinder_detector::fleet::{FleetArgs, scan_fleet};
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
    drop(replay);
    watch_periods(&aliases);
}

/// `leakfinder fleet`'s arguments, as the command line gives them.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    fleet: FleetArgs,
}

/// The leaking sites of a report, as (service, function).
fn verdicts(report: &FleetReport) -> BTreeSet<(String, String)> {
    report
        .services
        .iter()
        .flat_map(|service| {
            service
                .findings
                .iter()
                .map(|located| (service.service.clone(), located.finding.function.clone()))
        })
        .collect()
}

/// Watch mode's periods at `--every 5m --since 10m`, before and now, over `aliases`.
fn watch_periods(aliases: &[(String, String)]) {
    const MINUTE: i64 = 60_000;
    const PERIODS: i64 = 3;
    let replay = Replay::start(Options {
        aliases: aliases.to_vec(),
        wrap: true,
        ..Options::default()
    });
    let args = Cli::parse_from([
        "fleet",
        "--pyroscope",
        &replay.url,
        "--since",
        "10m",
        "--every",
        "5m",
        "--concurrency",
        "8",
    ])
    .fleet;
    let client = args.client().expect("a client of the replay");
    let periods: Vec<i64> = (0..PERIODS)
        .map(|p| S + 10 * MINUTE + p * 5 * MINUTE)
        .collect();
    // Before: every period scans its whole `--since` range afresh.
    let mut before = Vec::new();
    for &now in &periods {
        let (bytes, started) = (replay.bytes(), Instant::now());
        let range = args.range(now).expect("a range of 40 windows");
        let report = scan_fleet(&client, &args, &range).expect("the scan runs");
        before.push((report, replay.bytes() - bytes, started.elapsed()));
    }
    // Now: one watch, each period reading what is new, its series kept between periods.
    let rss_before = rss_kib();
    let mut watch = Watch::new();
    let mut now_way = Vec::new();
    for &now in &periods {
        let (bytes, started) = (replay.bytes(), Instant::now());
        let report = watch.period(&client, &args, now).expect("the period runs");
        now_way.push((report, replay.bytes() - bytes, started.elapsed()));
    }
    let kept = rss_kib().saturating_sub(rss_before);
    let unrecorded = replay.unrecorded();
    assert!(
        unrecorded.is_empty(),
        "unrecorded requests: {:?}",
        &unrecorded[..unrecorded.len().min(5)]
    );
    println!(
        "fleet watch bench: --every 5m --since 10m (40 windows), {} services, periods at 10, 15 and 20 min",
        aliases.len()
    );
    println!(
        "  period  queries before  queries now  MiB before  MiB now  wall before  wall now  leaking sites before/now"
    );
    for (p, ((old, old_bytes, old_wall), (new, new_bytes, new_wall))) in
        before.iter().zip(&now_way).enumerate()
    {
        assert_eq!(old.errors() + new.errors(), 0, "no service failed");
        println!(
            "  {:>6}  {:>14}  {:>11}  {:>10.1}  {:>7.1}  {:>9.1} s  {:>6.1} s  {}/{}",
            p + 1,
            old.queries,
            new.queries,
            *old_bytes as f64 / (1 << 20) as f64,
            *new_bytes as f64 / (1 << 20) as f64,
            old_wall.as_secs_f64(),
            new_wall.as_secs_f64(),
            verdicts(old).len(),
            verdicts(new).len(),
        );
    }
    let steady = |ways: &[(FleetReport, u64, std::time::Duration)]| {
        ways[1..]
            .iter()
            .map(|(report, _, _)| report.queries)
            .sum::<u64>() as f64
            / (ways.len() - 1) as f64
    };
    let (old, new) = (steady(&before), steady(&now_way));
    println!(
        "  from the second period on: {old:.0} queries per period before, {new:.0} now ({:.0} and {:.0} per second at one period per 5 minutes)",
        old / 300.0,
        new / 300.0
    );
    println!(
        "  the watch's series of {} services: {:.1} MiB (this process's RSS growth over the periods)",
        watch.services(),
        kept as f64 / 1024.0
    );
    assert_eq!(
        now_way[0].0.queries, before[0].0.queries,
        "the first period reads the whole range either way"
    );
    assert!(
        new <= 0.6 * old,
        "later periods read about half as much: {new} against {old}"
    );
}

/// This process's resident memory now, in KiB (`VmRSS`).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|value| value.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
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
