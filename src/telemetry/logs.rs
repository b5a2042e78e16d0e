//! Logging: a `tracing` subscriber filtered by `RUST_LOG`, writing to a sink the caller chooses,
//! with the exporters' warnings rate-limited so a dead backend cannot flood the log.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Filter, Layer, SubscriberExt};

/// Exporter crates are quiet unless `RUST_LOG` says otherwise: their info logs are per push.
const DEFAULT_QUIET: &str = "pprof=warn,pyroscope=warn,Pyroscope=warn,opentelemetry=warn,\
                             opentelemetry_sdk=warn,opentelemetry-otlp=warn,opentelemetry_http=warn";

/// How often one exporter may warn.
pub const WARNING_PERIOD: Duration = Duration::from_secs(60);

/// Targets whose warnings are rate-limited: the exporters and our side of them.
const EXPORTER_TARGETS: &[&str] = &[
    "pyroscope",
    "Pyroscope",
    "opentelemetry",
    "leakfinder::telemetry",
];

/// Lets one warning per key through per period.
#[derive(Debug)]
pub struct RateLimiter {
    period: Duration,
    last: Mutex<HashMap<String, Instant>>,
}

impl RateLimiter {
    /// A limiter letting one event per key through every `period`.
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Whether an event for `key` at `now` may pass.
    pub fn allow(&self, key: &str, now: Instant) -> bool {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        match last.get(key) {
            Some(&at) if now.saturating_duration_since(at) < self.period => false,
            _ => {
                last.insert(key.to_owned(), now);
                true
            }
        }
    }
}

/// Rate-limits warnings and errors of the exporters, one per call site per [`WARNING_PERIOD`].
///
/// Decided in `event_enabled`, once per event: `enabled` may run several times for one event
/// (the `log` bridge asks twice), which would count it twice.
struct ExporterWarnings {
    limiter: RateLimiter,
}

impl<S> Filter<S> for ExporterWarnings {
    fn enabled(&self, _: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        true
    }

    fn callsite_enabled(&self, _: &'static Metadata<'static>) -> Interest {
        Interest::sometimes()
    }

    fn event_enabled(&self, event: &Event<'_>, _: &Context<'_, S>) -> bool {
        // Records bridged from `log` carry their real target in normalised metadata.
        let normalized = event.normalized_metadata();
        let metadata = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let exporter = EXPORTER_TARGETS
            .iter()
            .any(|target| metadata.target().starts_with(target));
        if !exporter || *metadata.level() > Level::WARN {
            return true;
        }
        let key = format!("{}:{}", metadata.target(), metadata.line().unwrap_or(0));
        self.limiter.allow(&key, Instant::now())
    }
}

/// The log filter: `RUST_LOG`'s `level` and `target=level` directives when it is set and reads,
/// else `default_filter` with the exporters quiet. A `Targets` filter, not `EnvFilter`: that one
/// compiles its directives with `regex` at start-up, which made the regex engine's code (about
/// 660 KiB) and its compiled programs resident in every idle service; span and field filters,
/// which need it, are not offered.
fn filter(rust_log: Option<&str>, default_filter: &str) -> Targets {
    rust_log
        .and_then(|directives| match directives.parse::<Targets>() {
            Ok(targets) => Some(targets),
            Err(error) => {
                eprintln!(
                    "RUST_LOG={directives:?} does not read ({error}); using the default filter"
                );
                None
            }
        })
        .unwrap_or_else(|| {
            format!("{default_filter},{DEFAULT_QUIET}")
                .parse()
                .unwrap_or_else(|_| Targets::new().with_default(Level::INFO))
        })
}

/// A subscriber that honours `RUST_LOG` (falling back to `default_filter`) and writes to `sink`,
/// so tests can silence or capture the logs. Records of crates that log through `log` are bridged in.
pub fn subscriber<W>(default_filter: &str, sink: W) -> impl Subscriber + Send + Sync
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref(), default_filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(sink)
        .with_ansi(false)
        .with_filter(ExporterWarnings {
            limiter: RateLimiter::new(WARNING_PERIOD),
        });
    if let Err(error) = tracing_log::LogTracer::init() {
        eprintln!("cannot bridge `log` records into the logs: {error}");
    }
    tracing_subscriber::registry().with(filter).with(fmt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_sets_levels_per_target_and_the_default_keeps_exporters_quiet() {
        let given = filter(Some("debug,poem=warn"), "info");
        assert!(given.would_enable("leakfinder::app", &Level::DEBUG));
        assert!(!given.would_enable("poem::server", &Level::INFO));
        let default = filter(None, "info");
        assert!(default.would_enable("leakfinder::app", &Level::INFO));
        assert!(!default.would_enable("leakfinder::app", &Level::DEBUG));
        assert!(!default.would_enable("opentelemetry_sdk::metrics", &Level::INFO));
        assert!(default.would_enable("opentelemetry_sdk::metrics", &Level::WARN));
        // A RUST_LOG that does not read falls back to the default, as EnvFilter's did.
        let unreadable = filter(Some("info,=oops=="), "info");
        assert!(unreadable.would_enable("leakfinder::app", &Level::INFO));
        assert!(!unreadable.would_enable("pyroscope::session", &Level::INFO));
    }

    #[test]
    fn one_warning_per_key_per_period_passes() {
        let limiter = RateLimiter::new(Duration::from_secs(60));
        let start = Instant::now();
        assert!(limiter.allow("pyroscope::session", start));
        assert!(!limiter.allow("pyroscope::session", start + Duration::from_secs(1)));
        assert!(
            limiter.allow("opentelemetry_sdk", start + Duration::from_secs(1)),
            "keys are separate"
        );
        assert!(!limiter.allow("pyroscope::session", start + Duration::from_secs(59)));
        assert!(limiter.allow("pyroscope::session", start + Duration::from_secs(60)));
    }
}
