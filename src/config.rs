//! Typed configuration: every option is a flag with an environment variable beside it.
//!
//! Parsing and validation live here so that `main` stays thin and an invalid value stops start-up
//! with a clear message (clap's own error output, exit code 2) before anything is bound or spawned.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

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
#[command(name = "leakfinder", version, about, long_about = None)]
pub struct Config {
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
}

impl Config {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("leakfinder").chain(args.iter().copied()))
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
