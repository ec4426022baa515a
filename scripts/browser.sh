#!/usr/bin/env bash
# Browser test: the approval dashboard driven end to end in headless Chromium (Debian's chromium
# with playwright-core), with a Python SDK client whose tool call waits for the approval, and a
# TypeScript SDK client whose held call is a task (callToolStream). See tests/browser/approve.mjs. Screenshots and mcp-gate's stderr go to artifacts/browser/.
#
# Environment:
#   MCP_GATE_BIN        mcp-gate binary to test (default: target/debug/mcp-gate, built here)
#   CHROMIUM_BIN        the browser (default: /usr/bin/chromium)
#   BROWSER_ARTIFACTS   where screenshots go (default: artifacts/browser)
# Exit status: 0 when every check passes, 1 otherwise.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { printf '[browser] %s\n' "$*" >&2; }

# ---- peers (idempotent) ----------------------------------------------------
bash "$ROOT/scripts/install-peers.sh" >/dev/null
# shellcheck source=peers.env
source "$ROOT/scripts/peers.env"

# ---- build -----------------------------------------------------------------
if [[ -z "${MCP_GATE_BIN:-}" ]]; then
  log "cargo build --locked"
  cargo build --locked >&2
  export MCP_GATE_BIN="$ROOT/target/debug/mcp-gate"
fi
[[ -x "$MCP_GATE_BIN" ]] || { log "no mcp-gate binary at $MCP_GATE_BIN"; exit 1; }

# ---- run -------------------------------------------------------------------
log "running tests/browser/approve.mjs with $PEERS_NODE22 (mcp-gate: $MCP_GATE_BIN)"
exec "$PEERS_NODE22" "$ROOT/tests/browser/approve.mjs"
