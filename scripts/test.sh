#!/usr/bin/env bash
# The whole test suite: formatting, lints, Rust tests (unit, in-process, binary), then interop
# with pinned third-party peers (Python SDK, server-everything), the approval dashboard in
# headless Chromium, and the official conformance suite. Installs the pinned peers into .peers/
# (and Debian's chromium) first, and a throw-away PostgreSQL cluster (Debian's postgresql-15) on
# which the store's suite runs a second time and the replica tests run.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== pinned peers"
bash scripts/install-peers.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

echo "== PostgreSQL (throw-away cluster)"
# Exports MCP_GATE_TEST_POSTGRES; the cluster stops when this script exits.
source scripts/postgres.sh
export MCP_GATE_REQUIRE_POSTGRES=1

echo "== cargo test"
# Builds the fixture examples too (tests start them as upstreams). The store's suite runs on
# SQLite here; the replica tests (tests/it/replicas.rs) run on PostgreSQL.
cargo test --locked

echo "== the store's suite on PostgreSQL"
MCP_GATE_TEST_ENGINE=postgres cargo test --locked --lib store::

echo "== interop (Python SDK client, server-everything)"
bash scripts/interop.sh

echo "== browser (headless Chromium)"
# Tests target/debug/mcp-gate, which cargo test has just built (browser.sh checks with cargo build).
bash scripts/browser.sh

echo "== conformance suite, direct and through mcp-gate"
bash scripts/conformance.sh

echo "== all tests passed"
