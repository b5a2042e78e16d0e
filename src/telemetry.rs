//! Logging: a `tracing` subscriber filtered by `RUST_LOG`, writing to a sink the caller chooses.

use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// A subscriber that honours `RUST_LOG` (falling back to `default_filter`) and writes to `sink`,
/// so tests can silence or capture the logs.
pub fn subscriber<W>(default_filter: &str, sink: W) -> impl Subscriber + Send + Sync
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(sink)
        .with_ansi(false)
        .finish()
}
