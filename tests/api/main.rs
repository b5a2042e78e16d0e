//! Integration tests against the real `leakfinder` binary, one process per test on port 0.
//!
//! Each test starts its own process: the three leaks are process-wide globals by design, and the
//! binary is the only place where jemalloc is the allocator, so this is the service users run.

mod helpers;

mod allocs;
mod config;
mod detector;
mod endpoints;
mod examples;
mod fleet;
mod goroutine;
mod install;
mod leaks;
mod lifecycle;
mod load;
mod methods;
mod pprof;
mod replay;
mod schemathesis;
mod soak;
mod stack;
mod swagger;
mod telemetry;
mod twins;
mod watch;
