//! Typed configuration: every option is a flag with an environment variable beside it.
//!
//! Parsing and validation live here so that `main` stays thin and an invalid value stops start-up
//! with a clear message (clap's own error output, exit code 2) before anything is bound or spawned.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use leakfinder_profiling::push::{AuthError, PushAuth};

/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// One gibibyte.
pub const GIB: u64 = 1 << 30;

/// The largest chunk a leak may allocate per tick.
pub const MAX_CHUNK_BYTES: u64 = 64 * MIB;
/// The largest cap a single leak may be given. Three leaks at this cap stay far below a host's
/// memory on any machine this lab is meant for; the default is a quarter of it.
pub const MAX_LEAK_BYTES: u64 = 4 * GIB;

/// Command-line and environment configuration of the service.
#[derive(Debug, Clone, Parser)]
#[command(name = "leakfinder-lab", version, about, long_about = None)]
pub struct Config {
    /// What to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address to listen on. Port 0 picks a free port; the start-up log names the real one.
    #[arg(long, env = "LEAKFINDER_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,

    /// Bytes each leak retains per tick (at least 1, at most 64 MiB).
    #[arg(
        long,
        env = "LEAK_CHUNK_BYTES",
        default_value_t = MIB,
        value_parser = clap::value_parser!(u64).range(1..=MAX_CHUNK_BYTES),
    )]
    pub leak_chunk_bytes: u64,

    /// Milliseconds between two ticks of a leak (1 to 60000).
    #[arg(
        long,
        env = "LEAK_INTERVAL_MS",
        default_value_t = 100,
        value_parser = clap::value_parser!(u64).range(1..=60_000),
    )]
    pub leak_interval_ms: u64,

    /// Bytes at which each leak stops growing and reports itself as capped (at most 4 GiB).
    #[arg(
        long,
        env = "LEAK_MAX_BYTES",
        default_value_t = GIB,
        value_parser = clap::value_parser!(u64).range(1..=MAX_LEAK_BYTES),
    )]
    pub leak_max_bytes: u64,

    /// A bearer token that lets any peer read `/debug/pprof` (`Authorization: Bearer <token>`).
    /// Without it, or an allowed network, only loopback peers may.
    #[arg(long, env = "LEAKFINDER_PPROF_TOKEN", hide_env_values = true)]
    pub pprof_token: Option<String>,

    /// Networks whose peers may read `/debug/pprof` without a token, comma-separated
    /// (`172.16.0.0/12,fd00::/8`). Loopback peers always may.
    #[arg(long, env = "LEAKFINDER_PPROF_ALLOW", value_delimiter = ',')]
    pub pprof_allow: Vec<leakfinder_http::Network>,

    /// The service name on every metric and profile.
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "leakfinder")]
    pub service_name: String,

    /// Where to push profiles (Pyroscope's base URL, e.g. `http://pyroscope:4040`). Push is off
    /// when unset.
    #[arg(long, env = "PYROSCOPE_SERVER_ADDRESS")]
    pub pyroscope_server_address: Option<String>,

    /// Seconds between two CPU profile pushes.
    #[arg(
        long,
        env = "PYROSCOPE_CPU_INTERVAL_SECS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..=3600),
    )]
    pub pyroscope_cpu_interval_secs: u64,

    /// Seconds between two heap (and task) profile pushes.
    #[arg(
        long,
        env = "PYROSCOPE_HEAP_INTERVAL_SECS",
        default_value_t = 15,
        value_parser = clap::value_parser!(u64).range(1..=3600),
    )]
    pub pyroscope_heap_interval_secs: u64,

    /// The tenant profiles are pushed as (`X-Scope-OrgID`), for a multi-tenant Pyroscope.
    #[arg(long, env = "PYROSCOPE_TENANT_ID")]
    pub pyroscope_tenant_id: Option<String>,

    /// The user of basic auth for the profile push (with its password).
    #[arg(long, env = "PYROSCOPE_BASIC_AUTH_USER")]
    pub pyroscope_basic_auth_user: Option<String>,

    /// The password of basic auth for the profile push.
    #[arg(long, env = "PYROSCOPE_BASIC_AUTH_PASSWORD", hide_env_values = true)]
    pub pyroscope_basic_auth_password: Option<Secret>,

    /// A bearer token for the profile push (instead of basic auth).
    #[arg(long, env = "PYROSCOPE_AUTH_TOKEN", hide_env_values = true)]
    pub pyroscope_auth_token: Option<Secret>,

    /// OTLP base endpoint (`/v1/metrics` is appended), e.g. `http://prometheus:9090/api/v1/otlp`.
    /// Metric export is off when neither this nor the metrics endpoint is set.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// OTLP metrics endpoint, used as given (it wins over the base endpoint).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")]
    pub otlp_metrics_endpoint: Option<String>,

    /// OTLP protocol: `http/protobuf` or `http/json` (gRPC is not built in).
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_PROTOCOL",
        default_value = "http/protobuf"
    )]
    pub otlp_protocol: OtlpProtocol,

    /// Milliseconds between two metric exports.
    #[arg(
        long,
        env = "OTEL_METRIC_EXPORT_INTERVAL",
        default_value_t = 5000,
        value_parser = clap::value_parser!(u64).range(100..=3_600_000),
    )]
    pub metric_export_interval_ms: u64,

    /// Milliseconds between two heap profiles of the continuous leak watch (`/leak-report`); its
    /// task profiles are as often, but at most once a second.
    #[arg(
        long,
        env = "LEAK_REPORT_INTERVAL_MS",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u64).range(100..=600_000),
    )]
    pub leak_report_interval_ms: u64,
}

/// A value that must never reach a log: its `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value, to send where it belongs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<hidden>")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(Self(value.to_owned()))
    }
}

/// Commands besides serving (the default).
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Exits 0 if the service at `--addr` answers `/healthz` (for container health checks).
    Healthcheck,
    /// Watches a service's heap and task profiles and reports what leaks (exit 0: nothing,
    /// 1: leaks found, 2: error). Works on this service and on any Go `net/http/pprof` service.
    Scan(leakfinder_detector::scan::ScanArgs),
    /// Finds leaks in every service of a fleet from the profiles it pushes to Pyroscope (exit 0:
    /// nothing, 1: leaks found, 2: error). With --every, runs for ever and exports OTLP metrics.
    /// The detector crate's `leakfinder fleet`, here too.
    Fleet(Box<leakfinder_detector::fleet::FleetArgs>),
    /// Writes the symbol table of an executable beside it (`<executable>.symbols`), so the
    /// service symbolises profiles without reading debug info. Run it after each build.
    Symbols(SymbolsArgs),
}

/// Arguments of `leakfinder symbols`.
#[derive(Debug, Clone, clap::Args)]
pub struct SymbolsArgs {
    /// The executable to index (default: this one).
    pub executable: Option<std::path::PathBuf>,
    /// Where to write the table (default: beside the executable, `.symbols` appended).
    #[arg(long)]
    pub output: Option<std::path::PathBuf>,
}

/// The OTLP encodings this build can export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OtlpProtocol {
    /// Protobuf over HTTP (the default).
    #[value(name = "http/protobuf")]
    HttpProtobuf,
    /// JSON over HTTP.
    #[value(name = "http/json")]
    HttpJson,
}

impl Config {
    /// Where metrics go, if anywhere: the metrics endpoint as given, else the base endpoint with
    /// `/v1/metrics` appended, as the OpenTelemetry specification says. Empty values count as unset.
    pub fn otlp_metrics_url(&self) -> Option<String> {
        if let Some(url) = non_empty(&self.otlp_metrics_endpoint) {
            return Some(url.to_owned());
        }
        non_empty(&self.otlp_endpoint)
            .map(|base| format!("{}/v1/metrics", base.trim_end_matches('/')))
    }

    /// Who may read `/debug/pprof`: loopback peers, the allowed networks, and the token's holders.
    pub fn pprof_access(&self) -> leakfinder_http::Access {
        let access = self.pprof_allow.iter().fold(
            leakfinder_http::Access::loopback_only(),
            |access, network| access.allow(*network),
        );
        match &self.pprof_token {
            Some(token) => access.token(token.clone()),
            None => access,
        }
    }

    /// Where profiles go, if anywhere (an empty value counts as unset).
    pub fn pyroscope_url(&self) -> Option<&str> {
        non_empty(&self.pyroscope_server_address).map(|url| url.trim_end_matches('/'))
    }

    /// The profile push's credentials, checked: basic auth (both halves) or a token, not both.
    pub fn pyroscope_auth(&self) -> Result<PushAuth, ConfigError> {
        PushAuth::from_parts(
            self.pyroscope_basic_auth_user.as_deref(),
            self.pyroscope_basic_auth_password
                .as_ref()
                .map(Secret::expose),
            self.pyroscope_auth_token.as_ref().map(Secret::expose),
        )
        .map_err(ConfigError::PyroscopeAuth)
    }

    /// The profile push's tenant, if set and not empty.
    pub fn pyroscope_tenant(&self) -> Option<String> {
        non_empty(&self.pyroscope_tenant_id).map(str::to_owned)
    }
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|value| !value.is_empty())
}

impl Config {
    /// How often metrics are exported.
    pub fn metric_export_interval(&self) -> Duration {
        Duration::from_millis(self.metric_export_interval_ms)
    }

    /// The leak settings this configuration gives, checked for consistency.
    pub fn leak_settings(&self) -> Result<LeakSettings, ConfigError> {
        if self.leak_chunk_bytes > self.leak_max_bytes {
            return Err(ConfigError::ChunkAboveCap {
                chunk: self.leak_chunk_bytes,
                cap: self.leak_max_bytes,
            });
        }
        Ok(LeakSettings {
            chunk_bytes: usize::try_from(self.leak_chunk_bytes)
                .map_err(|_| ConfigError::TooLargeForPlatform)?,
            interval: Duration::from_millis(self.leak_interval_ms),
            max_bytes: self.leak_max_bytes,
        })
    }
}

/// How fast and how far the deliberate leaks grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeakSettings {
    /// Bytes retained per tick.
    pub chunk_bytes: usize,
    /// Time between ticks.
    pub interval: Duration,
    /// Retained bytes at which a leak stops growing.
    pub max_bytes: u64,
}

/// A configuration whose values are each valid but do not fit together.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A single chunk would already exceed the cap, so no leak could ever grow.
    #[error("--leak-chunk-bytes ({chunk}) must not exceed --leak-max-bytes ({cap})")]
    ChunkAboveCap {
        /// The configured chunk size.
        chunk: u64,
        /// The configured cap.
        cap: u64,
    },
    /// The chunk size does not fit this platform's address space.
    #[error("--leak-chunk-bytes does not fit in this platform's usize")]
    TooLargeForPlatform,
    /// The push's credentials do not fit together.
    #[error("{0}")]
    PyroscopeAuth(#[source] AuthError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("leakfinder").chain(args.iter().copied()))
    }

    #[test]
    fn pprof_access_is_loopback_unless_networks_or_a_token_say_more() {
        let peer = |text: &str| text.parse().ok();
        let default = parse(&[]).unwrap().pprof_access();
        assert_eq!(default.check(peer("127.0.0.1"), None), Ok(()));
        assert!(default.check(peer("10.1.2.3"), None).is_err());
        let opened = parse(&[
            "--pprof-allow",
            "10.0.0.0/8,fd00::/8",
            "--pprof-token",
            "t0k",
        ])
        .unwrap()
        .pprof_access();
        assert_eq!(opened.check(peer("10.1.2.3"), None), Ok(()));
        assert_eq!(opened.check(peer("fd00::7"), None), Ok(()));
        assert!(opened.check(peer("11.0.0.1"), None).is_err());
        assert_eq!(opened.check(peer("11.0.0.1"), Some("Bearer t0k")), Ok(()));
        let error = parse(&["--pprof-allow", "10.0.0.0/33"])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("is not an IP address or a network"),
            "{error}"
        );
    }

    #[test]
    fn defaults_match_the_documented_table() {
        let config = parse(&[]).expect("no arguments is a valid configuration");
        assert_eq!(config.addr, "127.0.0.1:8080".parse().unwrap());
        let settings = config.leak_settings().unwrap();
        assert_eq!(settings.chunk_bytes, 1 << 20);
        assert_eq!(settings.interval, Duration::from_millis(100));
        assert_eq!(settings.max_bytes, 1 << 30);
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        assert!(parse(&["--leak-chunk-bytes", "0"]).is_err());
        assert!(parse(&["--leak-chunk-bytes", &(MAX_CHUNK_BYTES + 1).to_string()]).is_err());
        assert!(parse(&["--leak-interval-ms", "0"]).is_err());
        assert!(parse(&["--leak-max-bytes", &(MAX_LEAK_BYTES + 1).to_string()]).is_err());
        assert!(parse(&["--addr", "not-an-address"]).is_err());
        assert!(parse(&["--leak-chunk-bytes", "-5"]).is_err());
    }

    #[test]
    fn the_otlp_endpoint_resolves_as_the_specification_says() {
        let base = parse(&["--otlp-endpoint", "http://prom:9090/api/v1/otlp/"]).unwrap();
        assert_eq!(
            base.otlp_metrics_url().as_deref(),
            Some("http://prom:9090/api/v1/otlp/v1/metrics")
        );
        let both = parse(&[
            "--otlp-endpoint",
            "http://a",
            "--otlp-metrics-endpoint",
            "http://b/custom",
        ])
        .unwrap();
        assert_eq!(both.otlp_metrics_url().as_deref(), Some("http://b/custom"));
        assert_eq!(parse(&[]).unwrap().otlp_metrics_url(), None);
        assert_eq!(
            parse(&["--otlp-endpoint", " "]).unwrap().otlp_metrics_url(),
            None
        );
        assert!(
            parse(&["--otlp-protocol", "grpc"]).is_err(),
            "gRPC is not built in"
        );
        assert_eq!(
            parse(&["--otlp-protocol", "http/json"])
                .unwrap()
                .otlp_protocol,
            OtlpProtocol::HttpJson
        );
        let pyroscope = parse(&["--pyroscope-server-address", "http://pyro:4040/"]).unwrap();
        assert_eq!(pyroscope.pyroscope_url(), Some("http://pyro:4040"));
    }

    #[test]
    fn push_credentials_are_basic_or_a_token_and_never_shown_in_debug() {
        let basic = parse(&[
            "--pyroscope-basic-auth-user",
            "me",
            "--pyroscope-basic-auth-password",
            "pw-s3cret",
            "--pyroscope-tenant-id",
            "team-a",
        ])
        .unwrap();
        assert_eq!(
            basic.pyroscope_auth(),
            Ok(PushAuth::Basic {
                user: "me".into(),
                password: "pw-s3cret".into()
            })
        );
        assert_eq!(basic.pyroscope_tenant().as_deref(), Some("team-a"));
        let shown = format!("{basic:?} {:?}", basic.pyroscope_auth());
        assert!(!shown.contains("pw-s3cret"), "{shown}");
        let token = parse(&["--pyroscope-auth-token", "t0k"]).unwrap();
        assert_eq!(token.pyroscope_auth(), Ok(PushAuth::Bearer("t0k".into())));
        assert!(!format!("{token:?}").contains("t0k"));
        assert_eq!(parse(&[]).unwrap().pyroscope_auth(), Ok(PushAuth::None));
        let half = parse(&["--pyroscope-basic-auth-user", "me"]).unwrap();
        assert!(half.pyroscope_auth().is_err());
        let both = parse(&[
            "--pyroscope-basic-auth-user",
            "me",
            "--pyroscope-basic-auth-password",
            "pw",
            "--pyroscope-auth-token",
            "t0k",
        ])
        .unwrap();
        assert!(both.pyroscope_auth().is_err());
    }

    #[test]
    fn a_chunk_above_the_cap_is_rejected() {
        let config = parse(&["--leak-chunk-bytes", "2048", "--leak-max-bytes", "1024"]).unwrap();
        assert_eq!(
            config.leak_settings(),
            Err(ConfigError::ChunkAboveCap {
                chunk: 2048,
                cap: 1024
            })
        );
    }
}
