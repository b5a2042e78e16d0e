# syntax=docker/dockerfile:1
# A release build that keeps line tables and symbols (profiles carry names and lines) and ships
# with its prebuilt symbol table, with dependencies cached by cargo-chef, run as a non-root user.

FROM rust:1.95.0-slim-bookworm AS chef
# jemalloc's build needs make; cargo-chef caches the dependency build.
RUN apt-get update \
    && apt-get install -y --no-install-recommends make=4.3-4.1 \
    && rm -rf /var/lib/apt/lists/* \
    && cargo install cargo-chef --locked --version 0.1.78
WORKDIR /app

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
# .cargo/config.toml sets --cfg tokio_unstable (task hooks and tracing) and frame pointers (task
# stacks): the dependencies must be cooked with the same flags as the final build, or the cache
# would not be reused.
COPY .cargo .cargo
COPY --from=planner /app/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin leakfinder-lab
COPY . .
RUN cargo build --release --locked --bin leakfinder-lab \
    && target/release/leakfinder-lab symbols

FROM debian:12.12-slim AS runtime
# libc's detached symbols: Debian strips libc's own, and without them the CPU profile's hottest
# leaf under a leak is `libc.so.6+0x16e0ba` instead of `__memset_avx2_unaligned_erms`. Not pinned:
# it must be the version of the libc6 it describes, which apt upgrades alongside it (a pin would
# stop building at Debian's next libc update).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libc6-dbg \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home leakfinder
# The binary and its symbol table (written by `leakfinder-lab symbols` above, matched by build ID),
# so profiles are symbolised without reading debug info.
COPY --from=builder /app/target/release/leakfinder-lab /app/target/release/leakfinder-lab.symbols /usr/local/bin/
USER 10001
ENV LEAKFINDER_ADDR=0.0.0.0:8080
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=10 \
    CMD ["leakfinder-lab", "healthcheck"]
ENTRYPOINT ["leakfinder-lab"]
