//! `leakfinder scan` and `leakfinder fleet` over HTTPS, against a local TLS server (127.0.0.1,
//! port 0) whose certificates are made here: a CA, a server certificate it signs for
//! 127.0.0.1, and one it signs for another name. With `--ca-cert` both commands work; without
//! it, with the wrong name, or against a plain HTTP server behind an `https://` URL they exit 2
//! and say what failed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use leakfinder_pprof::{Frame, ProfileBuilder, StackEntry, encode_gzip};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

const LEAKFINDER: &str = env!("CARGO_BIN_EXE_leakfinder");
/// A range of 8 windows of 15 s, the fewest `fleet` takes.
const FROM: i64 = 1_796_136_113_000;
const TO: i64 = FROM + 8 * 15_000;

/// A CA and the PEM file that holds its certificate.
struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pem: PathBuf,
    _dir: TempDir,
}

impl Authority {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "leakfinder test CA");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let dir = TempDir::new();
        let pem = dir.0.join("ca.pem");
        std::fs::write(&pem, issuer.pem()).unwrap();
        Self {
            issuer,
            pem,
            _dir: dir,
        }
    }

    /// A server certificate for `name`, signed by this CA, with its key.
    fn certificate(&self, name: &str) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (certificate.der().clone(), key)
    }
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "leakfinder-https-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One request as the server read it.
struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
}

/// A server on 127.0.0.1, port 0, answering each connection's requests with `answer`, over TLS
/// with `certificate`. Runs until the test process ends.
fn serve(
    (chain, key): (CertificateDer<'static>, PrivateKeyDer<'static>),
    answer: fn(&Request) -> (u16, &'static str, Vec<u8>),
) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    #[allow(deprecated)] // ring has no post-quantum key exchange: not needed in a test
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![chain], key)
            .unwrap(),
    );
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let config = Arc::clone(&config);
            std::thread::spawn(move || {
                let Ok(connection) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let _ = exchange(rustls::StreamOwned::new(connection, stream), answer);
            });
        }
    });
    port
}

/// A plain HTTP server on 127.0.0.1, port 0, that answers whatever it is sent (a TLS
/// ClientHello too) with `400 Bad Request`, as an HTTP server does.
fn serve_plain_http() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut request = [0; 1024];
                if stream.read(&mut request).is_ok() {
                    let _ = stream.write_all(
                        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 11\r\nConnection: close\r\n\r\nBad Request",
                    );
                }
            });
        }
    });
    port
}

/// Reads requests on one connection and answers each, until the peer closes or fails.
fn exchange(
    mut stream: impl Read + Write,
    answer: fn(&Request) -> (u16, &'static str, Vec<u8>),
) -> std::io::Result<()> {
    loop {
        let mut reader = BufReader::new(&mut stream);
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut words = line.split_whitespace();
        let (method, path) = (
            words.next().unwrap_or("").to_owned(),
            words.next().unwrap_or("").to_owned(),
        );
        let mut length = 0;
        loop {
            let mut header = String::new();
            reader.read_line(&mut header)?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        drop(reader);
        let (status, content_type, out) = answer(&Request { method, path, body });
        write!(
            stream,
            "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            out.len()
        )?;
        stream.write_all(&out)?;
        stream.flush()?;
    }
}

/// A profile with one flat site, of `sample_type`.
fn profile(sample_type: (&str, &str), value: i64) -> Vec<u8> {
    let mut builder = ProfileBuilder::new(&[sample_type], sample_type, 1);
    let entry = StackEntry {
        address: 1,
        frames: vec![Frame::new("main.flat", "main.go", 7)].into(),
        skip: 0,
    };
    builder.add_sample(&[entry], vec![value], &[]);
    encode_gzip(&builder.build())
}

/// A pprof endpoint and a Pyroscope of one healthy service, `checkout`, in one.
fn answer(request: &Request) -> (u16, &'static str, Vec<u8>) {
    let heap = ("inuse_space", "bytes");
    match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/debug/pprof/heap?gc=1") => {
            (200, "application/octet-stream", profile(heap, 1 << 20))
        }
        ("GET", "/debug/pprof/goroutine") => (
            200,
            "application/octet-stream",
            profile(("goroutine", "count"), 3),
        ),
        ("POST", "/querier.v1.QuerierService/LabelValues") => {
            let names = if String::from_utf8_lossy(&request.body).contains("__profile_type__") {
                r#"{"names":["memory:inuse_space:bytes:space:bytes"]}"#
            } else {
                r#"{"names":["checkout"]}"#
            };
            (200, "application/json", names.as_bytes().to_vec())
        }
        ("POST", "/querier.v1.QuerierService/SelectMergeProfile") => {
            let mut plain = Vec::new();
            flate2::read::GzDecoder::new(profile(heap, 1 << 20).as_slice())
                .read_to_end(&mut plain)
                .unwrap();
            (200, "application/proto", plain)
        }
        _ => (404, "text/plain", b"404 page not found".to_vec()),
    }
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn leakfinder(args: &[&str]) -> Run {
    let output = Command::new(LEAKFINDER)
        .env_clear()
        .args(args)
        .output()
        .unwrap();
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn scan(port: u16, ca: Option<&Path>) -> Run {
    let url = format!("https://127.0.0.1:{port}");
    let out = TempDir::new();
    let out_dir = out.0.display().to_string();
    let mut args = vec![
        "scan",
        &url,
        "--duration",
        "1s",
        "--interval",
        "1s",
        "--out",
        &out_dir,
    ];
    let ca = ca.map(|path| path.display().to_string());
    if let Some(ca) = &ca {
        args.extend(["--ca-cert", ca]);
    }
    leakfinder(&args)
}

fn fleet(port: u16, ca: Option<&Path>) -> Run {
    let url = format!("https://127.0.0.1:{port}");
    let (from, to) = (FROM.to_string(), TO.to_string());
    let mut args = vec!["fleet", "--pyroscope", &url, "--from", &from, "--to", &to];
    let ca = ca.map(|path| path.display().to_string());
    if let Some(ca) = &ca {
        args.extend(["--ca-cert", ca]);
    }
    leakfinder(&args)
}

#[test]
fn scan_and_fleet_work_over_https_with_the_ca_given() {
    let ca = Authority::new();
    let port = serve(ca.certificate("127.0.0.1"), answer);

    let scanned = scan(port, Some(&ca.pem));
    assert_eq!(scanned.code, Some(0), "{}", scanned.stderr);
    assert!(
        scanned
            .stdout
            .starts_with(&format!("no leak found at https://127.0.0.1:{port} ")),
        "{}",
        scanned.stdout
    );

    let fleet = fleet(port, Some(&ca.pem));
    assert_eq!(fleet.code, Some(0), "{}", fleet.stderr);
    assert!(
        fleet
            .stdout
            .contains("checkout: no leak (8 heap, 0 goroutine windows)"),
        "{}",
        fleet.stdout
    );
}

#[test]
fn an_unknown_issuer_is_said_to_be_the_certificate() {
    let ca = Authority::new();
    let port = serve(ca.certificate("127.0.0.1"), answer);
    for (command, run) in [("scan", scan(port, None)), ("fleet", fleet(port, None))] {
        assert_eq!(run.code, Some(2), "{command}: {}", run.stderr);
        assert!(
            run.stderr
                .contains("its certificate is not trusted (unknown issuer")
                && run.stderr.contains("--ca-cert FILE"),
            "{command}: {}",
            run.stderr
        );
    }
}

#[test]
fn a_certificate_for_another_name_is_said_to_be_the_name() {
    let ca = Authority::new();
    let port = serve(ca.certificate("pyroscope.example"), answer);
    for (command, run) in [
        ("scan", scan(port, Some(&ca.pem))),
        ("fleet", fleet(port, Some(&ca.pem))),
    ] {
        assert_eq!(run.code, Some(2), "{command}: {}", run.stderr);
        assert!(
            run.stderr
                .contains("its certificate is not valid for this host name (name mismatch"),
            "{command}: {}",
            run.stderr
        );
    }
}

#[test]
fn a_plain_http_server_behind_an_https_url_is_said_to_be_the_protocol() {
    let port = serve_plain_http();
    for (command, run) in [("scan", scan(port, None)), ("fleet", fleet(port, None))] {
        assert_eq!(run.code, Some(2), "{command}: {}", run.stderr);
        assert!(
            run.stderr.contains("no TLS handshake (protocol error")
                && run.stderr.contains("is it a plain http:// server?"),
            "{command}: {}",
            run.stderr
        );
    }
}

#[test]
fn a_ca_file_that_is_missing_or_not_pem_is_refused_with_exit_2() {
    let dir = TempDir::new();
    let garbage = dir.0.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let missing = dir.0.join("missing.pem");
    for ca in [&missing, &garbage] {
        for (command, run) in [("scan", scan(1, Some(ca))), ("fleet", fleet(1, Some(ca)))] {
            assert_eq!(run.code, Some(2), "{command}: {}", run.stderr);
            assert!(
                run.stderr.contains(&format!("--ca-cert {}", ca.display())),
                "{command}: {}",
                run.stderr
            );
        }
    }
}
