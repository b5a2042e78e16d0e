//! leakfinder: a service with three deliberate, bounded leaks, built to teach and automate
//! finding memory and task leaks in Rust services.
//!
//! It is the Rust twin of a Go/Echo teaching app: leak 1 appends to a global vector, leak 2 blocks
//! tasks forever on a channel nobody reads, leak 3 fills a global mutex-guarded map. Each is
//! started, stopped and reset over an OpenAPI-described HTTP API with Swagger UI.
//!
//! The profiles, their HTTP routes and the leak analysis are the workspace's crates
//! (`leakfinder-profiling`, `leakfinder-http`, `leakfinder-detector`, over `leakfinder-pprof`);
//! this crate uses them through their public API only.
//!
//! # Layout
//! - [`config`] — the typed command-line and environment configuration.
//! - [`app`] — binding, the shared [`app::AppState`], serving until shutdown.
//! - [`api`] — the OpenAPI operations, the spec, Swagger UI and JSON errors.
//! - [`healthcheck`] — the container health probe.
//! - [`leaks`] — the three leaks beside their globals, the safe counterpart, and the controller.
//! - [`process`] — RSS and jemalloc counters, and returning freed memory to the OS.
//! - [`symbols`] — `leakfinder-lab symbols`: the prebuilt symbol table beside the binary.
//! - [`telemetry`] — logs, OTLP metrics, and profiles pushed to Pyroscope.
//! - [`watch`] — the in-process leak watch behind `/leak-report`.

pub mod api;
pub mod app;
pub mod config;
pub mod healthcheck;
pub mod leaks;
pub mod process;
pub mod symbols;
pub mod telemetry;
pub mod watch;
