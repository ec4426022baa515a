#!/usr/bin/env bash
# Interop suite: the official MCP Python SDK (mcp==2.3.0) against server-everything, directly
# and through mcp-gate, over three transport pairs (stdio->stdio, stdio->HTTP, HTTP->stdio) and
# both client modes (legacy, auto). See tests/interop/interop.py. Then approval gating seen by the
# SDK client: tests/interop/gating.py (server-everything, 2025-11-25) and
# tests/interop/gating_2026.py (the SDK's own MCPServer, 2026-07-28, over stdio and serve, with the
# input_required rounds the SDK drives itself). Then held calls answered with tasks, seen by the
# TypeScript SDK client (@modelcontextprotocol/sdk 1.32.2, `callToolStream`): tests/interop/tasks_ts.mjs,
# over stdio and serve. Last, interop.py's stdio pairs again with busy polling off (`[stdio] busy_poll_us = 0`).
#
# Environment:
#   MCP_GATE_BIN   mcp-gate binary to test (default: target/release/mcp-gate, built here)
#   MCP_GATE_LOG   the proxy's log filter (default: debug); every process's stderr goes to
#                  artifacts/interop/ (INTEROP_ARTIFACTS)
#   INTEROP_PAIRS / INTEROP_MODES   run a subset, e.g. INTEROP_PAIRS=A INTEROP_MODES=legacy
# Exit status: 0 when every check passes, 1 otherwise.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { printf '[interop] %s\n' "$*" >&2; }

# ---- peers (idempotent) ----------------------------------------------------
bash "$ROOT/scripts/install-peers.sh" >&2
# shellcheck source=peers.env
source "$ROOT/scripts/peers.env"

# ---- build -----------------------------------------------------------------
log "cargo build --release --locked"
cargo build --release --locked >&2

export MCP_GATE_BIN="${MCP_GATE_BIN:-$ROOT/target/release/mcp-gate}"
export EVERYTHING
export MCP_GATE_LOG="${MCP_GATE_LOG:-debug}"
export MCP_GATE_DATA_DIR="${MCP_GATE_DATA_DIR:-$(mktemp -d)}"
[[ -x "$MCP_GATE_BIN" ]] || { log "no mcp-gate binary at $MCP_GATE_BIN"; exit 1; }

# ---- run -------------------------------------------------------------------
log "running tests/interop/interop.py with $PEERS_PY (mcp-gate: $MCP_GATE_BIN)"
status=0
"$PEERS_PY" "$ROOT/tests/interop/interop.py" || status=1
log "running tests/interop/gating.py (approval gating seen by the Python SDK)"
"$PEERS_PY" "$ROOT/tests/interop/gating.py" || status=1
log "running tests/interop/gating_2026.py (gating in front of a 2026-07-28 MCPServer, client in auto mode)"
"$PEERS_PY" "$ROOT/tests/interop/gating_2026.py" || status=1
log "running tests/interop/tasks_ts.mjs (held calls as tasks, seen by the TypeScript SDK's callToolStream)"
PEERS_NODE_MODULES="$PEERS_NODE_MODULES" "$PEERS_NODE22" "$ROOT/tests/interop/tasks_ts.mjs" || status=1
log "running tests/interop/interop.py's stdio pairs (A, B) with mcp-gate's busy polling off ([stdio] busy_poll_us = 0)"
logs="${INTEROP_ARTIFACTS:-$ROOT/artifacts/interop}"
INTEROP_PAIRS=A,B INTEROP_ARTIFACTS="$logs/no-busy-poll" MCP_GATE_STDIO__BUSY_POLL_US=0 \
  "$PEERS_PY" "$ROOT/tests/interop/interop.py" || status=1
# Each run's proxies said whether they poll (their log filter is debug unless MCP_GATE_LOG says
# otherwise): the first run's by default, the last run's not at all.
if [[ "$MCP_GATE_LOG" == debug ]]; then
  if ! grep -qs "busy polling while messages come close together" "$logs"/*through-mcp-gate*; then
    log "FAIL: no mcp-gate of the first run says it polls (logs in $logs)"
    status=1
  fi
  if grep -qs "busy polling while messages come close together" "$logs"/no-busy-poll/*through-mcp-gate*; then
    log "FAIL: an mcp-gate with busy_poll_us = 0 says it polls (logs in $logs/no-busy-poll)"
    status=1
  fi
fi
exit "$status"
