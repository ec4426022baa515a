# syntax=docker/dockerfile:1
#
# mcp-gate as a container: `mcp-gate serve` on a distroless base, as a non-root user, with no
# shell. The configuration is mounted; the approval database lives in a volume.
#
#   docker build -t mcp-gate .
#   docker run --rm -p 8080:8080 -p 8377:8377 \
#     -v "$PWD/proxy.toml:/etc/mcp-gate/proxy.toml:ro" \
#     -v mcp-gate-data:/var/lib/mcp-gate \
#     mcp-gate
#
# The runtime image holds the binary and glibc, nothing else: an upstream started as a command
# (`[servers.NAME] command = ...`) must exist in the image, so in this image use HTTP upstreams
# (`url = ...`), or build an image of your own FROM this one that adds the commands.

# --- Build: the Rust toolchain at an exact version, on Debian 12 like the runtime (same glibc).
FROM rust:1.95.0-slim-bookworm AS build
WORKDIR /src
# Only what the binary is built from: the manifest, the lock file and src/ (migrations, page
# assets and the OpenAPI document are embedded from src/). See .dockerignore.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin mcp-gate \
    && cp target/release/mcp-gate /usr/local/bin/mcp-gate
# The data directory, owned by the runtime's non-root user (the runtime has no shell to make it).
RUN mkdir -p /out/var/lib/mcp-gate /out/etc/mcp-gate

# --- Run: distroless (glibc, CA certificates, no shell, no package manager), user 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /usr/local/bin/mcp-gate /usr/local/bin/mcp-gate
COPY --from=build --chown=65532:65532 /out/var/lib/mcp-gate /var/lib/mcp-gate
COPY --from=build /out/etc/mcp-gate /etc/mcp-gate
USER 65532:65532
# The approval database and the approver token file.
ENV MCP_GATE_DATA_DIR=/var/lib/mcp-gate
# The approval server listens on every interface of the container (this variable wins over
# `[approvals] listen`). Set `[approvals] public_url` to the address people open.
ENV MCP_GATE_APPROVALS_LISTEN=0.0.0.0:8377
# One JSON object per log line, on stderr.
ENV MCP_GATE_LOG_FORMAT=json
# 8080: the MCP endpoint (/mcp, /healthz, /readyz). 8377: approvals (dashboard, API,
# /healthz, /readyz, and /metrics when `[metrics] enabled = true`).
EXPOSE 8080 8377
ENTRYPOINT ["/usr/local/bin/mcp-gate", "serve"]
CMD ["--config", "/etc/mcp-gate/proxy.toml", "--listen", "0.0.0.0:8080"]
