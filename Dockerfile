# agenthook container image: the service (`serve`, the default) and the bitHuman simulator
# (`sim`) in one binary.
#
#   docker build -t agenthook .
#   docker run --rm -p 8080:8080 agenthook serve --simulator        # try it, no secret needed
#   docker run -d -p 8080:8080 -v agenthook-data:/data \
#       -e BITHUMAN_API_SECRET=... -v "$PWD/agenthook.toml:/etc/agenthook/agenthook.toml:ro" \
#       agenthook serve --config /etc/agenthook/agenthook.toml
#
# The image listens on 0.0.0.0:8080 and keeps its sled database in the /data volume (both set
# with AGENTHOOK__* variables below, which win over any --config file). It runs as the
# unprivileged user agenthook, uid/gid 10001: a bind-mounted /data must be writable by it.
# /etc/agenthook/default.toml documents every key; it is compiled in, the copy is for reading.
#
# Health: GET /healthz (process alive) and GET /readyz (storage open, workers running; 503
# while shutting down). There is no HEALTHCHECK here: the same image also runs `agenthook sim`,
# which serves neither route, and the image ships no curl. Probe from the orchestrator
# (docker-compose.yml shows a probe that needs only bash).
#
# SIGTERM drains in-flight requests and deliveries for up to server.shutdown_grace (20s):
# give the container more than Docker's default 10s to stop (`docker stop -t 30`).

# Cargo.toml's rust-version; the committed Cargo.lock builds with it.
ARG RUST_VERSION=1.89

FROM rust:${RUST_VERSION}-slim-bookworm AS builder

# The image already has gcc and libc headers. aws-lc-sys (rustls' crypto) compiles C with the
# cc crate; cmake is its build path on targets the cc path does not cover.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src

# Dependencies first, against stub sources, so that this layer is reused until Cargo.toml or
# Cargo.lock changes. Every target the manifest names must exist (each bench gets a stub).
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && for bench in $(sed -n '/^\[\[bench\]\]/,/^name/s/^name = "\(.*\)"/\1/p' Cargo.toml); do \
           echo 'fn main() {}' > "benches/${bench}.rs"; \
       done \
    && cargo build --release --locked \
    && rm -rf src benches

# The real sources. Forget the stub's build of this package (copied files can be older than
# it, and cargo decides freshness by modification time) so the binary is built from them.
COPY src ./src
COPY config ./config
COPY benches ./benches
RUN rm -rf target/release/.fingerprint/agenthook-* \
        target/release/deps/agenthook-* target/release/deps/libagenthook-* \
        target/release/agenthook \
    && cargo build --release --locked --bin agenthook \
    && ./target/release/agenthook --version


FROM debian:bookworm-slim

# CA roots for HTTPS to bitHuman and to receivers (rustls-platform-verifier reads the system
# store).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 agenthook \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin agenthook \
    && mkdir -p /data /etc/agenthook \
    && chown 10001:10001 /data

COPY --from=builder /src/target/release/agenthook /usr/local/bin/agenthook
COPY config/default.toml /etc/agenthook/default.toml

ENV AGENTHOOK__SERVER__BIND=0.0.0.0:8080 \
    AGENTHOOK__STORAGE__PATH=/data

# Declared after the chown: a new named volume starts out owned by agenthook.
VOLUME ["/data"]
USER 10001:10001
EXPOSE 8080
STOPSIGNAL SIGTERM

ENTRYPOINT ["agenthook"]
CMD ["serve"]
