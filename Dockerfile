# syntax=docker/dockerfile:1
#
# One image with both services, `ingest` and `dispatcher`; pick one with the command:
#
#   docker build -t open-webhooks .
#   docker run open-webhooks                            # ingest (the default command)
#   docker run open-webhooks /usr/local/bin/dispatcher
#
# Build: the Rust image (Debian bookworm, gcc included: mimalloc and ring compile C). No protoc:
# proto/build.rs compiles the .proto files with protox, in pure Rust.
# Runtime: distroless cc (glibc and libgcc only, no shell, no package manager), as the nonroot
# user. TLS roots for receivers are compiled into the dispatcher (webpki roots), so the image's
# CA bundle is not what decides which receivers are trusted (see WEBHOOKS_EXTRA_CA_CERTS).

ARG RUST_VERSION=1.95

# 1. Dependencies: a stage that sees only the manifests and Cargo.lock, so its result (the
# downloaded crates) is cached until one of those changes. Cargo needs every workspace member's
# manifest and a file for each target it declares: the members get empty stand-ins (also for the
# explicit `path`s and `[[bench]]`s of their manifests), which never reach the build stage.
# scripts/validate-deploy.sh checks that every workspace member is copied here.
FROM rust:${RUST_VERSION}-bookworm AS deps
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY proto/Cargo.toml proto/
COPY common/Cargo.toml common/
COPY ingest/Cargo.toml ingest/
COPY dispatcher/Cargo.toml dispatcher/
COPY tests/Cargo.toml tests/
COPY bench/Cargo.toml bench/
RUN set -eu; \
    for manifest in */Cargo.toml; do \
      dir=${manifest%/Cargo.toml}; \
      mkdir -p "$dir/src"; touch "$dir/src/lib.rs"; \
      sed -n 's/^path = "\(.*\)"$/\1/p' "$manifest" | while read -r p; do \
        mkdir -p "$dir/$(dirname "$p")"; touch "$dir/$p"; done; \
      sed -n '/^\[\[bench\]\]/,/^$/s/^name = "\(.*\)"$/\1/p' "$manifest" | while read -r b; do \
        mkdir -p "$dir/benches"; touch "$dir/benches/$b.rs"; done; \
    done; \
    cargo fetch --locked

# 2. The build, offline (every crate was fetched above) and reproducible (--locked), on the real
# sources only. The target directory is a BuildKit cache mount, so a rebuild after a source
# change recompiles only what changed; the binaries are copied out of it in the same step.
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY --from=deps /usr/local/cargo/registry /usr/local/cargo/registry
COPY . .
RUN --mount=type=cache,target=/src/target,sharing=locked \
    set -eu; \
    cargo build --release --locked --offline -p ingest -p dispatcher; \
    mkdir -p /out; \
    cp target/release/ingest target/release/dispatcher /out/

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="open-webhooks" \
      org.opencontainers.image.description="Open Webhooks: ingest and dispatcher" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/ingest /out/dispatcher /usr/local/bin/
# 65532 is distroless' nonroot user; numeric, so Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
# 8080: ingest's API, /healthz, /readyz, /metrics. 9090: the dispatcher's /healthz, /readyz, /metrics.
EXPOSE 8080 9090
CMD ["/usr/local/bin/ingest"]
