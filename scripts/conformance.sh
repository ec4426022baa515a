#!/usr/bin/env bash
# Run the MCP conformance server suite twice and compare:
#   1. directly against the fixture upstream (conformance-upstream over HTTP);
#   2. through mcp-gate: `mcp-gate serve -- conformance-upstream stdio`.
# Exits non-zero if any scenario that passes directly fails through mcp-gate
# (or if the direct run cannot be made at all).
#
# Environment:
#   CONFORMANCE_SUITE    suite to run: all (default), active, pending
#   CONFORMANCE_TIMEOUT  seconds allowed for one suite run (default 600)
#   GATE_PROFILE         cargo profile for mcp-gate (default release)
#   FIXTURE_PROFILE      cargo profile for conformance-upstream (default dev)
#   MCP_GATE_BIN         use this mcp-gate binary instead of building one
# Stress (a bench, not part of CI; the defaults leave the run as above):
#   CONFORMANCE_ROUNDS    run the through-mcp-gate tier this many times in a
#                         row, each with a fresh mcp-gate and upstream (default
#                         1); each round is compared with the direct run
#   CONFORMANCE_LOAD      1: keep every core busy (one `yes >/dev/null` per
#                         core) while the through-mcp-gate rounds run; the
#                         direct run, the baseline, runs without load
#   CONFORMANCE_UPSTREAM  how mcp-gate reaches the fixture: stdio (default,
#                         `serve -- conformance-upstream stdio`) or http (the
#                         fixture serves Streamable HTTP and mcp-gate is its
#                         HTTP client, configured with `servers.NAME.url`)
# Outputs go to artifacts/conformance/ (direct.log, via-mcp-gate.log, the
# servers' stderr, per-scenario checks.json under direct/ and via-mcp-gate/,
# and summary.txt; with several rounds, round N's files are via-mcp-gate-rN*).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/artifacts/conformance"
SUITE="${CONFORMANCE_SUITE:-all}"
SUITE_TIMEOUT="${CONFORMANCE_TIMEOUT:-600}"
GATE_PROFILE="${GATE_PROFILE:-release}"
FIXTURE_PROFILE="${FIXTURE_PROFILE:-dev}"
ROUNDS="${CONFORMANCE_ROUNDS:-1}"
LOAD="${CONFORMANCE_LOAD:-0}"
UPSTREAM_MODE="${CONFORMANCE_UPSTREAM:-stdio}"
if ! [[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]]; then
  printf '[conformance] CONFORMANCE_ROUNDS must be a positive integer, not %s\n' "$ROUNDS" >&2
  exit 2
fi
if [[ "$UPSTREAM_MODE" != stdio && "$UPSTREAM_MODE" != http ]]; then
  printf '[conformance] CONFORMANCE_UPSTREAM must be stdio or http, not %s\n' "$UPSTREAM_MODE" >&2
  exit 2
fi

log() { printf '[conformance] %s\n' "$*" >&2; }

# ---- peers -----------------------------------------------------------------
# shellcheck source=peers.env
source "$ROOT/scripts/peers.env"
if [[ ! -x "$PEERS_NODE22" || ! -f "$CONFORMANCE_JS" ]]; then
  log "peers missing; running scripts/install-peers.sh"
  bash "$ROOT/scripts/install-peers.sh" >&2
fi

# ---- build -----------------------------------------------------------------
# mcp-gate is built exactly as `cargo build --release` builds it (normal
# dependencies only), so after scripts/interop.sh this is a no-op; the fixture
# is built in the dev profile, as `cargo test` already builds the examples.
cd "$ROOT"
profile_dir() { if [[ "$1" == dev || "$1" == test ]]; then echo debug; else echo "$1"; fi; }
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
FIXTURE="$TARGET_DIR/$(profile_dir "$FIXTURE_PROFILE")/examples/conformance-upstream"
GATE="${MCP_GATE_BIN:-$TARGET_DIR/$(profile_dir "$GATE_PROFILE")/mcp-gate}"

log "building conformance-upstream (profile $FIXTURE_PROFILE)"
cargo build --locked --profile "$FIXTURE_PROFILE" --example conformance-upstream >&2
gate_built=1
if [[ -n "${MCP_GATE_BIN:-}" ]]; then
  log "using mcp-gate at $MCP_GATE_BIN"
else
  log "building mcp-gate (profile $GATE_PROFILE)"
  if ! cargo build --locked --profile "$GATE_PROFILE" --bin mcp-gate >&2; then
    log "mcp-gate failed to build; the via-mcp-gate run counts as all failed"
    gate_built=0
  fi
fi

rm -rf "$OUT"
mkdir -p "$OUT"

# ---- process helpers -------------------------------------------------------
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

stop() { # $1 = pid
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Wait until $2 (a log file) has a `listening on http://HOST:PORT/mcp` line;
# print the URL. Fails if process $1 exits or 30 s pass.
wait_for_listen_line() {
  local pid="$1" logfile="$2" url=""
  for _ in $(seq 300); do
    url="$(sed -n 's#.*listening on \(http://[^ ]*/mcp\).*#\1#p' "$logfile" | head -n1)"
    if [[ -n "$url" ]]; then printf '%s\n' "$url"; return 0; fi
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# Wait until 127.0.0.1:$2 accepts TCP connections. Fails if process $1 exits
# or 30 s pass.
wait_for_port() {
  local pid="$1" port="$2"
  for _ in $(seq 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

run_suite() { # $1 = url, $2 = name (log file stem / results dir)
  local rc=0
  log "running suite '$SUITE' against $1"
  timeout --kill-after=10 "$SUITE_TIMEOUT" \
    "$PEERS_NODE22" "$CONFORMANCE_JS" server --url "$1" --suite "$SUITE" -o "$OUT/$2" \
    >"$OUT/$2.log" 2>&1 || rc=$?
  # Keep a copy without colour codes for reading and parsing.
  sed 's/\x1b\[[0-9;]*m//g' "$OUT/$2.log" >"$OUT/$2.txt"
  log "suite against $2 exited $rc"
}

# ---- 1. direct -------------------------------------------------------------
"$FIXTURE" http 127.0.0.1:0 2>"$OUT/upstream-direct.stderr" &
upstream_pid=$!
PIDS+=("$upstream_pid")
if ! direct_url="$(wait_for_listen_line "$upstream_pid" "$OUT/upstream-direct.stderr")"; then
  log "conformance-upstream did not start; its stderr:"
  cat "$OUT/upstream-direct.stderr" >&2
  exit 1
fi
run_suite "$direct_url" direct
stop "$upstream_pid"

# ---- 2. via mcp-gate -------------------------------------------------------
# The stem of round $1's files: via-mcp-gate when there is one round.
round_stem() { if [[ "$ROUNDS" == 1 ]]; then echo via-mcp-gate; else echo "via-mcp-gate-r$1"; fi; }

via_round() { # $1 = round number
  local stem gate_suffix gate_port gate_pid upstream_url upstream_pid="" config
  stem="$(round_stem "$1")"
  gate_suffix="${stem#via-mcp-gate}"
  : >"$OUT/$stem.txt"
  : >"$OUT/mcp-gate$gate_suffix.stderr"
  config=("--config" "$ROOT/tests/interop/relay-only.toml" "--" "$FIXTURE" stdio)
  if [[ "$UPSTREAM_MODE" == http ]]; then
    "$FIXTURE" http 127.0.0.1:0 2>"$OUT/upstream$gate_suffix.stderr" &
    upstream_pid=$!
    PIDS+=("$upstream_pid")
    if ! upstream_url="$(wait_for_listen_line "$upstream_pid" "$OUT/upstream$gate_suffix.stderr")"; then
      log "conformance-upstream (http, round $1) did not start; its stderr:"
      cat "$OUT/upstream$gate_suffix.stderr" >&2
      stop "$upstream_pid"
      return 0
    fi
    {
      cat "$ROOT/tests/interop/relay-only.toml"
      printf '\n[servers.conformance]\nurl = "%s"\n' "$upstream_url"
    } >"$OUT/relay-http$gate_suffix.toml"
    config=("--config" "$OUT/relay-http$gate_suffix.toml")
  fi
  gate_port="$(free_port)"
  MCP_GATE_DATA_DIR="$OUT/gate-data$gate_suffix" "$GATE" serve --listen "127.0.0.1:$gate_port" "${config[@]}" \
    2>"$OUT/mcp-gate$gate_suffix.stderr" </dev/null &
  gate_pid=$!
  PIDS+=("$gate_pid")
  if wait_for_port "$gate_pid" "$gate_port"; then
    run_suite "http://127.0.0.1:$gate_port/mcp" "$stem"
  else
    log "mcp-gate did not start listening on 127.0.0.1:$gate_port; its stderr:"
    tail -n 50 "$OUT/mcp-gate$gate_suffix.stderr" >&2
  fi
  stop "$gate_pid"
  if [[ -n "$upstream_pid" ]]; then stop "$upstream_pid"; fi
}

BURNERS=()
if [[ "$LOAD" == 1 ]]; then
  cores="$(nproc 2>/dev/null || echo 2)"
  log "CPU load: $cores busy loops while mcp-gate is tested"
  for _ in $(seq "$cores"); do
    yes >/dev/null &
    BURNERS+=("$!")
    PIDS+=("$!")
  done
fi
for round in $(seq "$ROUNDS"); do
  if [[ "$ROUNDS" != 1 ]]; then log "round $round of $ROUNDS"; fi
  if [[ "$gate_built" == 1 ]]; then
    via_round "$round"
  else
    stem="$(round_stem "$round")"
    : >"$OUT/$stem.txt"
    : >"$OUT/mcp-gate${stem#via-mcp-gate}.stderr"
  fi
done
for pid in "${BURNERS[@]}"; do
  stop "$pid"
done

# ---- compare ---------------------------------------------------------------
# Per-scenario lines of a run's `=== SUMMARY ===`, as
# "<mark> <scenario> <checks passed> <checks failed>".
scenarios() { # $1 = parsed log
  sed -n '/=== SUMMARY ===/,$p' "$1" |
    sed -n 's/^\(✓\|✗\) \([A-Za-z0-9._/-]*\): \([0-9]*\) passed, \([0-9]*\) failed.*$/\1 \2 \3 \4/p'
}
total_line() { # $1 = parsed log
  local line
  line="$(sed -n '/=== SUMMARY ===/,$p' "$1" | grep -E '^Total: [0-9]+ passed, [0-9]+ failed' | tail -n1 || true)"
  printf '%s\n' "${line:-Total: no summary (run did not complete)}"
}

scenarios "$OUT/direct.txt" >"$OUT/direct.scenarios"

if [[ ! -s "$OUT/direct.scenarios" ]]; then
  log "the direct run produced no scenario summary; see $OUT/direct.log"
  exit 1
fi

# Compares round stem $1 with the direct run: fills regressions, fixed, fewer
# and table.
compare_round() {
  local stem="$1" mark name passed failed via via_passed via_failed
  scenarios "$OUT/$stem.txt" >"$OUT/$stem.scenarios"
  regressions=()
  fixed=()
  fewer=()
  table=()
  while read -r mark name passed failed; do
    read -r via via_passed via_failed < <(
      awk -v n="$name" '$2 == n { print $1, $3, $4; exit }' "$OUT/$stem.scenarios"
    ) || true
    via="${via:-✗}"
    table+=("$(printf '  %-30s direct %s %2s/%-2s  via mcp-gate %s %2s/%-2s' \
      "$name" "$mark" "$passed" "$failed" "$via" "${via_passed:--}" "${via_failed:--}")")
    if [[ "$mark" == "✓" && "$via" != "✓" ]]; then
      regressions+=("$name")
    elif [[ "$mark" != "✓" && "$via" == "✓" ]]; then
      fixed+=("$name")
    elif [[ -n "${via_passed:-}" && "$via_passed" -lt "$passed" ]]; then
      fewer+=("$name")
    fi
    via="" via_passed="" via_failed=""
  done <"$OUT/direct.scenarios"
}

via_total() { # $1 = stem
  if [[ "$gate_built" == 1 ]]; then
    total_line "$OUT/$1.txt"
  else
    echo "Total: not run (mcp-gate did not build)"
  fi
}

failed_rounds=0
if [[ "$ROUNDS" == 1 ]]; then
  compare_round via-mcp-gate
  {
    echo "suite: $SUITE"
    echo "direct: $(total_line "$OUT/direct.txt")"
    echo "via mcp-gate: $(via_total via-mcp-gate)"
    echo "per scenario: mark, checks passed/failed"
    printf '%s\n' "${table[@]}"
    if ((${#fewer[@]})); then
      echo "fewer checks pass via mcp-gate (others became INFO/WARNING; not a failure): ${fewer[*]}"
    fi
    if ((${#fixed[@]})); then
      echo "pass only via mcp-gate: ${fixed[*]}"
    fi
    if ((${#regressions[@]})); then
      echo "REGRESSIONS (pass directly, fail via mcp-gate): ${regressions[*]}"
    else
      echo "no regressions: every scenario that passes directly passes via mcp-gate"
    fi
  } | tee "$OUT/summary.txt"
  if ((${#regressions[@]})); then failed_rounds=1; fi
else
  {
    echo "suite: $SUITE"
    echo "direct: $(total_line "$OUT/direct.txt")"
    echo "via mcp-gate: $ROUNDS rounds, upstream over $UPSTREAM_MODE, CPU load $([[ "$LOAD" == 1 ]] && echo on || echo off)"
  } >"$OUT/summary.txt"
  for round in $(seq "$ROUNDS"); do
    stem="$(round_stem "$round")"
    compare_round "$stem"
    printf '%s\n' "${table[@]}" >"$OUT/$stem.table"
    {
      echo "== round $round: $(via_total "$stem")"
      if ((${#regressions[@]})); then
        echo "   FAIL: regressions (pass directly, fail via mcp-gate): ${regressions[*]}"
      else
        echo "   pass: every scenario that passes directly passes via mcp-gate"
      fi
      if ((${#fewer[@]})); then echo "   fewer checks pass via mcp-gate: ${fewer[*]}"; fi
    } >>"$OUT/summary.txt"
    if ((${#regressions[@]})); then failed_rounds=$((failed_rounds + 1)); fi
  done
  echo "rounds failed: $failed_rounds of $ROUNDS" >>"$OUT/summary.txt"
  cat "$OUT/summary.txt"
fi

if ((failed_rounds)); then
  exit 1
fi
exit 0
