# syntax=docker/dockerfile:1
#
# The relay and the exchange simulator, in one small image.
#
#   docker build -t kalshi-relay:local .
#   docker run --rm -p 127.0.0.1:8080:8080 -e KALSHI_API_KEY_ID=... \
#     -e KALSHI_PRIVATE_KEY_PATH=/run/secrets/kalshi.pem -v ./kalshi.pem:/run/secrets/kalshi.pem:ro \
#     kalshi-relay:local
#   docker run --rm --entrypoint exchange-sim kalshi-relay:local --listen 0.0.0.0:9001 \
#     --admin-listen 0.0.0.0:9002 --no-auth
#
# Stages: `chef` (toolchain + cargo-chef), `planner` (the dependency recipe of the workspace),
# `builder` (dependencies from the recipe in their own cached layer, then our crates), `runtime`
# (Debian slim, curl for the health check, a non-root user). Editing our sources rebuilds only
# the last `cargo build`; editing Cargo.toml/Cargo.lock rebuilds the dependency layer too.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json -p relay -p exchange-sim
COPY . .
RUN cargo build --release --locked -p relay -p exchange-sim --bins \
 && install -m 0755 target/release/relay target/release/exchange-sim /usr/local/bin/

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# curl only for HEALTHCHECK; the relay itself trusts the webpki roots compiled into it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin relay
COPY --from=builder /usr/local/bin/relay /usr/local/bin/exchange-sim /usr/local/bin/
# The relay's default config path is configs/relay.toml relative to its working directory.
WORKDIR /opt/relay
COPY configs/relay.toml /opt/relay/configs/relay.toml
# Numeric, so orchestrators can check runAsNonRoot without reading /etc/passwd.
USER 10001:10001
# 8080: relay (WebSocket, /healthz, /readyz, /metrics, /status); 9001/9002: exchange-sim.
EXPOSE 8080 9001 9002
# /healthz is 200 while the process serves (readiness is /readyz). Assumes the relay listens on
# port 8080; a container running exchange-sim or another port overrides this (see
# docker-compose.yml).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS -o /dev/null http://127.0.0.1:8080/healthz || exit 1
# SIGTERM drains clients with close 1012 (downstream.shutdown_drain_seconds, default 10 s):
# give `docker stop` more than that (`--time 15`, compose `stop_grace_period`).
STOPSIGNAL SIGTERM
ENTRYPOINT ["relay"]
# A container must listen beyond its loopback. Without client tokens in the config the relay
# refuses a non-loopback address unless security.allow_anonymous = true says so explicitly.
CMD ["--config", "/opt/relay/configs/relay.toml", "--listen", "0.0.0.0:8080", "--log-format", "json"]
