//! Invalid configuration stops start-up with a clear message and a non-zero exit.

use std::process::Command;

use crate::helpers::BINARY;

fn start_with(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let output = Command::new(BINARY)
        .env_clear()
        .envs(env.iter().copied())
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Arguments, environment, and what the error message must name.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn invalid_values_stop_start_up_with_a_message() {
    let cases: [Case; 6] = [
        (&["--leak-chunk-bytes", "0"], &[], "--leak-chunk-bytes"),
        (
            &[],
            &[("LEAK_CHUNK_BYTES", "67108865")],
            "--leak-chunk-bytes",
        ),
        (&[], &[("LEAK_INTERVAL_MS", "soon")], "--leak-interval-ms"),
        (
            &["--leak-max-bytes", "99999999999999"],
            &[],
            "--leak-max-bytes",
        ),
        (&[], &[("LEAKFINDER_ADDR", "localhost")], "--addr"),
        (
            &["--leak-chunk-bytes", "4096", "--leak-max-bytes", "1024"],
            &[],
            "must not exceed --leak-max-bytes",
        ),
    ];
    for (args, env, expected) in cases {
        let (code, stderr) = start_with(args, env);
        assert_eq!(code, Some(2), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?} {env:?}: {stderr}");
    }
}

#[test]
fn an_address_in_use_is_a_clear_failure() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr) = start_with(&["--addr", &addr], &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
}

/// Secrets given by environment never show in `--help` (clap prints other variables' values),
/// and half a basic auth stops start-up.
#[test]
fn push_secrets_stay_out_of_help_and_half_a_basic_auth_is_refused() {
    let output = Command::new(BINARY)
        .env_clear()
        .env("PYROSCOPE_BASIC_AUTH_USER", "pusher")
        .env("PYROSCOPE_BASIC_AUTH_PASSWORD", "pw-s3cret")
        .env("PYROSCOPE_AUTH_TOKEN", "t0ken-s3cret")
        .env("PYROSCOPE_TENANT_ID", "team-a")
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("PYROSCOPE_BASIC_AUTH_PASSWORD"), "{help}");
    assert!(help.contains("PYROSCOPE_AUTH_TOKEN"), "{help}");
    assert!(help.contains("team-a"), "the tenant is no secret: {help}");
    assert!(
        !help.contains("pw-s3cret") && !help.contains("t0ken-s3cret"),
        "{help}"
    );
    let (code, stderr) = start_with(&[], &[("PYROSCOPE_BASIC_AUTH_USER", "pusher")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("PYROSCOPE_BASIC_AUTH_USER and PYROSCOPE_BASIC_AUTH_PASSWORD go together"),
        "{stderr}"
    );
}
