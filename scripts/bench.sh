#!/usr/bin/env bash
# Benchmarks mcp-gate against direct connections and prints one Markdown table (also written to
# artifacts/bench.md). Not part of the test suite: it enforces no thresholds and exits 0 whenever
# the measurements could be taken; the "target" column only says how a figure compares.
#
#   1. Python SDK (mcp==2.3.0) calls/s of server-everything's `echo` tool, sequential and
#      16-way concurrent, stdio->stdio and HTTP->stdio, direct vs through mcp-gate
#      (scripts/bench_py.py). The stdio pair also runs a bare relay (bare-relay example: one
#      thread copying bytes both ways) as a third side: the baseline for what any process in the
#      path costs. It also runs mcp-gate with another `[stdio] busy_poll_us` (BENCH_ALT_POLL_US,
#      default 0: busy polling off; "off" leaves it out) as a fourth side.
#   2. Added per-call latency (p50/p90/p99) with a raw Rust stdio client (bench-client example)
#      against raw-upstream, direct vs `mcp-gate -- raw-upstream`, in alternating blocks; then the
#      same with the bare relay in place of mcp-gate, and with mcp-gate's other busy_poll_us.
#      Then the time from spawning to the `initialize` answer, raw-upstream alone vs behind
#      mcp-gate, alternating starts.
#   3. Idle RSS of mcp-gate alone with three raw-upstream servers after initialize + tools/list.
#   4. `mcp-gate serve` with 100 client sessions open (one raw-upstream child each): its RSS and
#      open file descriptors (/proc/PID/status, /proc/PID/fd) before and after, per 100 sessions.
#   5. Replicas sharing one PostgreSQL database (bench-replicas example, its own section after the
#      table): approve-to-dispatch latency (p50/p90/p99) of a call held on replica A and approved
#      through replica B, through A itself, and on one SQLite replica, interleaved round by round;
#      and held calls created per second by concurrent clients spread over A and B vs one SQLite
#      replica. Starts a throw-away PostgreSQL cluster (scripts/postgres.sh).
#
# The machine may be noisy: sides are interleaved and compared as ratios, not absolute figures.
#
# Environment:
#   BENCH_NO_BUILD=1        skip `cargo build` (use existing target/release binaries)
#   MCP_GATE_BIN            mcp-gate binary (default: target/release/mcp-gate)
#   BENCH_GATE_LOG          MCP_GATE_LOG for every mcp-gate started (default: info, its default)
#   BENCH_RS_BLOCKS / BENCH_RS_BLOCK_SIZE / BENCH_RS_WARMUP   latency run (default 10 / 2000 / 2000)
#   BENCH_STARTS            starts per side in the start-to-first-answer run (default 20)
#   BENCH_PY_CALLS / BENCH_PY_WARMUP / BENCH_PY_ROUNDS / BENCH_PY_CONC / BENCH_PY_MODE /
#   BENCH_PY_PAIRS / BENCH_PY_LOADS / BENCH_RELAY_BIN / BENCH_ALT_POLL_US   see scripts/bench_py.py (e.g. BENCH_PY_PAIRS=stdio
#                           BENCH_PY_LOADS=seq for the sequential stdio figures only)
#   BENCH_ARTIFACTS         logs of every process (default: artifacts/bench/)
#   BENCH_ONLY_PY=1         measure only the Python SDK throughput (1.); the other rows say n/a
#   BENCH_REPLICAS=0        skip the replicas section (5.)
#   BENCH_ONLY_REPLICAS=1   measure only the replicas section (5.): no peers, no table before it
#   BENCH_REPLICAS_ROUNDS / BENCH_REPLICAS_CLIENTS / BENCH_REPLICAS_CALLS / BENCH_REPLICAS_TP_ROUNDS
#                           replicas: latency rounds per side (default 200), concurrent clients in
#                           the throughput run (16), calls per client per round (25), throughput
#                           rounds per side (6); see tests/fixtures/bench_replicas.rs
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { printf '[bench] %s\n' "$*" >&2; }
started=$SECONDS

ONLY_REPLICAS="${BENCH_ONLY_REPLICAS:-0}"

# ---- peers and build ---------------------------------------------------------------------------
if [[ "$ONLY_REPLICAS" != 1 ]]; then
bash "$ROOT/scripts/install-peers.sh" >&2
# shellcheck source=peers.env
source "$ROOT/scripts/peers.env"
fi
if [[ "${BENCH_NO_BUILD:-0}" != 1 ]]; then
  log "cargo build --release --locked --bin mcp-gate --examples"
  cargo build --release --locked --bin mcp-gate --examples >&2
fi
measure_started=$SECONDS
REL="$ROOT/target/release"
export MCP_GATE_BIN="${MCP_GATE_BIN:-$REL/mcp-gate}"
BENCH_CLIENT="$REL/examples/bench-client"
RAW="$REL/examples/raw-upstream"
export BENCH_RELAY_BIN="${BENCH_RELAY_BIN:-$REL/examples/bare-relay}"
BENCH_REPLICAS_BIN="$REL/examples/bench-replicas"
needed=("$MCP_GATE_BIN")
[[ "$ONLY_REPLICAS" == 1 ]] || needed+=("$BENCH_CLIENT" "$RAW" "$BENCH_RELAY_BIN")
[[ "${BENCH_REPLICAS:-1}" == 0 ]] || needed+=("$BENCH_REPLICAS_BIN" "$REL/examples/conformance-upstream")
for b in "${needed[@]}"; do
  [[ -x "$b" ]] || { log "missing binary $b"; exit 1; }
done
export EVERYTHING
export BENCH_GATE_LOG="${BENCH_GATE_LOG:-info}"
export MCP_GATE_LOG="$BENCH_GATE_LOG"
export BENCH_ALT_POLL_US="${BENCH_ALT_POLL_US:-0}"
export BENCH_ARTIFACTS="${BENCH_ARTIFACTS:-$ROOT/artifacts/bench}"
rm -rf "$BENCH_ARTIFACTS"
mkdir -p "$BENCH_ARTIFACTS"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
: >"$TMP/bench.md"

if [[ "$ONLY_REPLICAS" != 1 ]]; then
# ---- gate configuration -------------------------------------------------------------------------
# The benchmark measures relaying, so every call must reach the upstream. A build whose gate holds
# unlisted tools for approval by default gets a config allowing every call (and an approval server
# on a free port with its files under $TMP); a build without a policy gets no config at all. The
# first candidate `check-config` accepts is used.
GATE_ARGS=()
GATE_NOTE="no config (this build has no policy section)"
mkdir -p "$TMP/data"
printf '[policy]\ndefault = "allow"\n\n[approvals]\nlisten = "127.0.0.1:0"\ndata_dir = "%s"\n' "$TMP/data" >"$TMP/gate-1.toml"
printf '[policy]\ndefault = "allow"\n' >"$TMP/gate-2.toml"
for candidate in "$TMP/gate-1.toml" "$TMP/gate-2.toml"; do
  if "$MCP_GATE_BIN" check-config --config "$candidate" -- "$RAW" >/dev/null 2>&1; then
    cp "$candidate" "$TMP/gate.toml"
    GATE_ARGS=(--config "$TMP/gate.toml")
    GATE_NOTE="\`--config\` with \`[policy] default = \"allow\"\`"
    break
  fi
done
cp "$TMP/gate.toml" "$BENCH_ARTIFACTS/gate.toml" 2>/dev/null || true
export BENCH_GATE_ARGS="${GATE_ARGS[*]}"
log "mcp-gate arguments before \`--\`: ${BENCH_GATE_ARGS:-(none)}"

# key=value results -> shell variables prefixed with the section name.
load() { # $1 = prefix, $2 = file
  local k v
  while IFS='=' read -r k v; do
    [[ "$k" =~ ^[A-Za-z0-9_]+$ ]] || continue
    printf -v "${1}_${k}" '%s' "$v"
  done <"$2"
}
get() { local n="$1"; printf '%s' "${!n:-n/a}"; }
# Arithmetic on possibly missing figures: prints n/a when an operand is missing.
calc() { # $1 = awk expression over a,b ; $2 a ; $3 b
  if [[ "$2" == n/a || "$3" == n/a || -z "$2" || -z "$3" ]]; then printf 'n/a'; return; fi
  awk -v a="$2" -v b="$3" "BEGIN { printf \"%s\", $1 }"
}
verdict() { # $1 = awk condition over x ; $2 = x
  if [[ "$2" == n/a || -z "$2" ]]; then printf 'n/a'; return; fi
  awk -v x="$2" "BEGIN { print (($1) ? \"yes\" : \"**no**\") }"
}

audit_rows=n/a
S_rss_before_kb=n/a; S_rss_after_kb=n/a; S_fd_before=n/a; S_fd_after=n/a; S_opened=0; S_children_kb=n/a
if [[ "${BENCH_ONLY_PY:-0}" != 1 ]]; then
# ---- 2. added latency (raw Rust client) --------------------------------------------------------
# Direct raw-upstream vs the command line $2 (ending in raw-upstream); results in $BENCH_ARTIFACTS/$1.txt.
latency_run() {
  log "latency: bench-client, direct raw-upstream vs $(basename "${2%% *}") raw-upstream"
  "$BENCH_CLIENT" latency \
    --direct "$RAW" \
    --via "$2" \
    --blocks "${BENCH_RS_BLOCKS:-10}" --block-size "${BENCH_RS_BLOCK_SIZE:-2000}" --warmup "${BENCH_RS_WARMUP:-2000}" \
    --method tools/call --tool raw_tool --expect '"received"' \
    >"$BENCH_ARTIFACTS/$1.txt" 2>"$BENCH_ARTIFACTS/$1.log" || log "latency run failed (see $BENCH_ARTIFACTS/$1.log)"
}
latency_run latency "$MCP_GATE_BIN ${GATE_ARGS[*]} -- $RAW"
load L "$BENCH_ARTIFACTS/latency.txt"
# The same with the bare relay in place of mcp-gate: what any process in the path adds.
latency_run latency-relay "$BENCH_RELAY_BIN $RAW"
load LR "$BENCH_ARTIFACTS/latency-relay.txt"
# The same with mcp-gate's other `[stdio] busy_poll_us` (by default 0: polling off), on a data
# directory of its own.
if [[ "$BENCH_ALT_POLL_US" != off ]]; then
  mkdir -p "$TMP/alt-data"
  latency_run latency-alt "env MCP_GATE_STDIO__BUSY_POLL_US=$BENCH_ALT_POLL_US MCP_GATE_APPROVALS__DATA_DIR=$TMP/alt-data $MCP_GATE_BIN ${GATE_ARGS[*]} -- $RAW"
  load LB "$BENCH_ARTIFACTS/latency-alt.txt"
fi
# The audit log (builds with a policy): how many of the latency run's allowed calls were recorded
# once that mcp-gate had exited. Only the latency run has used the database at this point.
audit_rows=n/a
if [[ -f "$TMP/data/mcp-gate.db" ]]; then
  audit_rows="$("$PEERS_PY" -c 'import sqlite3, sys
try:
    c = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True)
    print(c.execute("select count(*) from audit").fetchone()[0])
except Exception:
    print("n/a")' "$TMP/data/mcp-gate.db")"
fi

# Start to first answer: spawn -> initialize result, raw-upstream alone vs behind mcp-gate.
log "startup: bench-client, raw-upstream vs mcp-gate raw-upstream"
"$BENCH_CLIENT" startup --direct "$RAW" --via "$MCP_GATE_BIN ${GATE_ARGS[*]} -- $RAW" --starts "${BENCH_STARTS:-20}" \
  >"$BENCH_ARTIFACTS/startup.txt" 2>"$BENCH_ARTIFACTS/startup.log" || log "startup run failed (see $BENCH_ARTIFACTS/startup.log)"
load ST "$BENCH_ARTIFACTS/startup.txt"

# ---- 3. idle memory with three upstreams ------------------------------------------------------
log "memory: mcp-gate --config (three raw-upstream servers)"
{ [[ -f "$TMP/gate.toml" ]] && cat "$TMP/gate.toml"; echo; } >"$TMP/three.toml"
cat >>"$TMP/three.toml" <<EOF
[servers.one]
command = "$RAW"
[servers.two]
command = "$RAW"
[servers.three]
command = "$RAW"
EOF
"$BENCH_CLIENT" rss --cmd "$MCP_GATE_BIN --config $TMP/three.toml" --settle-ms 1000 \
  >"$BENCH_ARTIFACTS/memory.txt" 2>"$BENCH_ARTIFACTS/memory.log" || log "memory run failed (see $BENCH_ARTIFACTS/memory.log)"
load M "$BENCH_ARTIFACTS/memory.txt"

# ---- 4. resources per 100 sessions of `serve` -----------------------------------------------------
log "sessions: mcp-gate serve with 100 sessions (one raw-upstream child each)"
{ [[ -f "$TMP/gate.toml" ]] && cat "$TMP/gate.toml"; echo; } >"$TMP/sessions.toml"
# max_sessions belongs to [listen]: prepend it before any other table.
{ printf '[listen]\nmax_sessions = 128\n\n'; cat "$TMP/sessions.toml"; } >"$TMP/sessions2.toml"
S_rss_before_kb=n/a; S_rss_after_kb=n/a; S_fd_before=n/a; S_fd_after=n/a; S_opened=0; S_children_kb=n/a
"$MCP_GATE_BIN" serve --config "$TMP/sessions2.toml" --listen 127.0.0.1:0 -- "$RAW" \
  >/dev/null 2>"$BENCH_ARTIFACTS/sessions.log" &
serve_pid=$!
serve_url=""
for _ in $(seq 1 100); do
  serve_url="$(sed -n 's/^mcp-gate: listening on //p' "$BENCH_ARTIFACTS/sessions.log" | head -1)"
  [[ -n "$serve_url" ]] && break
  sleep 0.1
done
vm_rss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo n/a; }
fds() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
if [[ -n "$serve_url" ]]; then
  sleep 0.5
  S_rss_before_kb="$(vm_rss "$serve_pid")"
  S_fd_before="$(fds "$serve_pid")"
  for i in $(seq 1 100); do
    if curl -sf -o /dev/null -X POST "$serve_url" -H 'content-type: application/json' \
      -H 'accept: application/json, text/event-stream' \
      -d '{"jsonrpc":"2.0","id":'"$i"',"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}'; then
      S_opened=$((S_opened + 1))
    fi
  done
  sleep 1
  S_rss_after_kb="$(vm_rss "$serve_pid")"
  S_fd_after="$(fds "$serve_pid")"
  S_children_kb=0
  for child in $(pgrep -P "$serve_pid" || true); do
    S_children_kb=$((S_children_kb + $(vm_rss "$child" | sed 's/n\/a/0/')))
  done
fi
kill "$serve_pid" 2>/dev/null || true
wait "$serve_pid" 2>/dev/null || true
fi

# ---- 1. Python SDK throughput -------------------------------------------------------------------
log "throughput: Python SDK -> server-everything echo (scripts/bench_py.py)"
"$PEERS_PY" "$ROOT/scripts/bench_py.py" >"$BENCH_ARTIFACTS/python.txt" 2>"$BENCH_ARTIFACTS/python.log" \
  || log "python benchmark reported a failure (see $BENCH_ARTIFACTS/python.log)"
load P "$BENCH_ARTIFACTS/python.txt"

# ---- table --------------------------------------------------------------------------------------
conc="c${BENCH_PY_CONC:-16}"
py_row() { # $1 pair, $2 load key, $3 label
  local d v r rm rmin rmax
  d="$(get "P_${1}_${2}_direct_cps")"
  v="$(get "P_${1}_${2}_via_cps")"
  r="$(get "P_${1}_${2}_ratio")"
  rm="$(get "P_${1}_${2}_ratio_median_round")"
  rmin="$(get "P_${1}_${2}_ratio_min_round")"
  rmax="$(get "P_${1}_${2}_ratio_max_round")"
  printf '| %s | %s calls/s | %s calls/s | **%sx** (per round: median %s, %s–%s) | ≥ 0.9x | %s |\n' \
    "$3" "$d" "$v" "$r" "$rm" "$rmin" "$rmax" "$(verdict 'x >= 0.9' "$r")"
}
side_row() { # $1 pair, $2 load key, $3 side, $4 label, $5 target ($6 its verdict expression)
  local d v r rm rmin rmax
  d="$(get "P_${1}_${2}_direct_cps")"
  v="$(get "P_${1}_${2}_${3}_cps")"
  r="$(get "P_${1}_${2}_${3}_ratio")"
  rm="$(get "P_${1}_${2}_${3}_ratio_median_round")"
  rmin="$(get "P_${1}_${2}_${3}_ratio_min_round")"
  rmax="$(get "P_${1}_${2}_${3}_ratio_max_round")"
  printf '| %s | %s calls/s | %s calls/s | %sx (per round: median %s, %s–%s) | %s | %s |\n' \
    "$4" "$d" "$v" "$r" "$rm" "$rmin" "$rmax" "$5" "$(if [[ -n "${6:-}" ]]; then verdict "$6" "$r"; else printf '–'; fi)"
}
relay_row() { # $1 pair, $2 load key, $3 label
  side_row "$1" "$2" relay "$3" baseline
}
alt_row() { # $1 pair, $2 load key, $3 label
  [[ "$BENCH_ALT_POLL_US" == off ]] || side_row "$1" "$2" alt "$3" comparison
}
rss_mb="$(calc 'a/1024' "$(get M_rss_kb)" 1)"
rss_mb="$(calc 'sprintf("%.1f", a)' "$rss_mb" 1)"
hwm_mb="$(calc 'sprintf("%.1f", a/1024)' "$(get M_hwm_kb)" 1)"
kids_mb="$(calc 'sprintf("%.1f", a/1024)' "$(get M_children_rss_kb)" 1)"

{
  echo "## mcp-gate benchmark"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, load average at start: $(cut -d' ' -f1-3 /proc/loadavg);" \
    "mcp-gate $("$MCP_GATE_BIN" --version 2>/dev/null | awk '{print $2}') ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')), MCP_GATE_LOG=$BENCH_GATE_LOG."
  echo
  echo "| Measurement | Direct | Through mcp-gate | Ratio / added | Target | Within target |"
  echo "|---|---|---|---|---|---|"
  py_row stdio seq "Python SDK, stdio→stdio, sequential echo"
  relay_row stdio seq "Python SDK, stdio→stdio, sequential echo, bare relay instead of mcp-gate"
  alt_row stdio seq "Python SDK, stdio→stdio, sequential echo, mcp-gate with \`[stdio] busy_poll_us = $BENCH_ALT_POLL_US\`"
  py_row stdio "$conc" "Python SDK, stdio→stdio, ${conc#c}-way concurrent echo"
  relay_row stdio "$conc" "Python SDK, stdio→stdio, ${conc#c}-way concurrent echo, bare relay instead of mcp-gate"
  alt_row stdio "$conc" "Python SDK, stdio→stdio, ${conc#c}-way concurrent echo, mcp-gate with \`busy_poll_us = $BENCH_ALT_POLL_US\`"
  py_row http seq "Python SDK, HTTP→stdio, sequential echo"
  py_row http "$conc" "Python SDK, HTTP→stdio, ${conc#c}-way concurrent echo"
  printf '| Raw Rust client, tools/call latency p50 | %s µs | %s µs | **+%s µs** (per block pair: median %s, %s–%s) | ≤ 30 µs | %s |\n' \
    "$(get L_direct_p50_us)" "$(get L_via_p50_us)" "$(get L_added_p50_us)" "$(get L_block_added_p50_median_us)" \
    "$(get L_block_added_p50_min_us)" "$(get L_block_added_p50_max_us)" "$(verdict 'x <= 30' "$(get L_added_p50_us)")"
  printf '| Raw Rust client, tools/call latency p50, bare relay instead of mcp-gate | %s µs | %s µs | +%s µs (per block pair: median %s, %s–%s) | baseline | – |\n' \
    "$(get LR_direct_p50_us)" "$(get LR_via_p50_us)" "$(get LR_added_p50_us)" "$(get LR_block_added_p50_median_us)" \
    "$(get LR_block_added_p50_min_us)" "$(get LR_block_added_p50_max_us)"
  if [[ "$BENCH_ALT_POLL_US" != off ]]; then
    printf '| Raw Rust client, tools/call latency p50, mcp-gate with `[stdio] busy_poll_us = %s` | %s µs | %s µs | +%s µs (per block pair: median %s, %s–%s) | – | – |\n' \
      "$BENCH_ALT_POLL_US" "$(get LB_direct_p50_us)" "$(get LB_via_p50_us)" "$(get LB_added_p50_us)" "$(get LB_block_added_p50_median_us)" \
      "$(get LB_block_added_p50_min_us)" "$(get LB_block_added_p50_max_us)"
  fi
  printf '| Raw Rust client, tools/call latency p90 | %s µs | %s µs | +%s µs | – | – |\n' \
    "$(get L_direct_p90_us)" "$(get L_via_p90_us)" "$(get L_added_p90_us)"
  printf '| Raw Rust client, tools/call latency p99 | %s µs | %s µs | +%s µs | – | – |\n' \
    "$(get L_direct_p99_us)" "$(get L_via_p99_us)" "$(get L_added_p99_us)"
  printf '| CPU time per call (upstream process vs mcp-gate process) | %s µs | %s µs | – | – | – |\n' \
    "$(get L_direct_cpu_us_per_call)" "$(get L_via_cpu_us_per_call)"
  printf '| CPU time per call (upstream process vs bare relay process) | %s µs | %s µs | – | – | – |\n' \
    "$(get LR_direct_cpu_us_per_call)" "$(get LR_via_cpu_us_per_call)"
  printf '| Context switches per call, voluntary + involuntary (same processes) | %s + %s | %s + %s | – | – | – |\n' \
    "$(get L_direct_vol_ctxsw_per_call)" "$(get L_direct_invol_ctxsw_per_call)" \
    "$(get L_via_vol_ctxsw_per_call)" "$(get L_via_invol_ctxsw_per_call)"
  printf '| Start to first answer (spawn → `initialize` result, raw-upstream), p50 of %s starts | %s ms | %s ms | +%s ms (fastest: %s / %s ms) | – | – |\n' \
    "$(get ST_starts_per_side)" "$(get ST_direct_start_p50_ms)" "$(get ST_via_start_p50_ms)" "$(get ST_added_start_p50_ms)" \
    "$(get ST_direct_start_min_ms)" "$(get ST_via_start_min_ms)"
  printf '| RSS of mcp-gate at the end of the latency run | – | %s MB (peak %s MB) | – | – | – |\n' \
    "$(calc 'sprintf("%.1f", a/1024)' "$(get L_via_rss_kb_end)" 1)" "$(calc 'sprintf("%.1f", a/1024)' "$(get L_via_hwm_kb_end)" 1)"
  if [[ "$audit_rows" != n/a ]]; then
    printf '| Audit records on disk after the latency run'"'"'s mcp-gate exited | – | %s of %s allowed calls | %s%% | all | %s |\n' \
      "$audit_rows" "$(get L_via_calls_total)" "$(calc 'sprintf("%.0f", 100*a/b)' "$audit_rows" "$(get L_via_calls_total)")" \
      "$(verdict 'x >= 100' "$(calc '100*a/b' "$audit_rows" "$(get L_via_calls_total)")")"
  fi
  printf '| `serve` with %s sessions open (one stdio child each): RSS of mcp-gate | – | %s MB (%s MB with none) | **+%s MB per 100 sessions** | – | – |\n' \
    "$S_opened" "$(calc 'sprintf("%.1f", a/1024)' "$S_rss_after_kb" 1)" "$(calc 'sprintf("%.1f", a/1024)' "$S_rss_before_kb" 1)" \
    "$(calc 'sprintf("%.1f", (a-b)/1024)' "$S_rss_after_kb" "$S_rss_before_kb")"
  printf '| `serve` with %s sessions open: open file descriptors of mcp-gate | – | %s (%s with none) | **+%s per 100 sessions** | – | – |\n' \
    "$S_opened" "$S_fd_after" "$S_fd_before" "$(calc 'sprintf("%d", a-b)' "$S_fd_after" "$S_fd_before")"
  printf '| `serve` with %s sessions open: RSS of its upstream children | – | %s MB | – | – | – |\n' \
    "$S_opened" "$(calc 'sprintf("%.1f", a/1024)' "$S_children_kb" 1)"
  printf '| Idle RSS, mcp-gate alone, 3 stdio upstreams (after initialize + tools/list) | – | %s MB (peak %s MB, %s threads) | upstreams: %s MB in %s processes | ≤ 15 MB | %s |\n' \
    "$rss_mb" "$hwm_mb" "$(get M_threads)" "$kids_mb" "$(get M_children)" "$(verdict 'x <= 15' "$rss_mb")"
  echo
  echo "Python: $(get P_calls) measured calls per side and load after $(get P_warmup) warm-up calls, in $(get P_rounds)" \
    "alternating rounds; client mode \`$(get P_mode)\`, negotiated protocol stdio $(get P_stdio_protocol_direct)/$(get P_stdio_protocol_via)," \
    "HTTP $(get P_http_protocol_direct)/$(get P_http_protocol_via) (direct/via). Ratio = via calls/s ÷ direct calls/s." \
    "The bare relay (stdio only; also in the latency run) copies bytes both ways as soon as they arrive," \
    "from one thread polling both inputs: what any extra process costs the client and server on this machine."
  echo "HTTP direct baseline: server-everything's own \`streamableHttp\` mode; via: \`mcp-gate serve\` → server-everything stdio."
  echo "Latency: $(get L_samples_per_side) sequential \`tools/call\` round trips per side over newline-delimited JSON-RPC," \
    "$(get L_block_pairs) alternating block pairs; direct = raw-upstream, via = \`mcp-gate -- raw-upstream\` ($(get L_via_threads) threads)." \
    "MB = MiB (VmRSS/1024)."
  echo "Every mcp-gate ran with $GATE_NOTE; every timed response was checked to come from the upstream."
  for pair in stdio http; do
    e="$(get "P_${pair}_error")"
    [[ "$e" == n/a ]] || echo "**Python $pair pair failed:** $e"
  done
  echo
  echo "Logs of every process: \`${BENCH_ARTIFACTS#"$ROOT"/}/\`. Measurements took $((SECONDS - measure_started)) s ($((SECONDS - started)) s with the build)."
} >"$TMP/bench.md"
fi

# ---- 5. replicas sharing one PostgreSQL database ------------------------------------------------
replicas_failed=0
if [[ "${BENCH_REPLICAS:-1}" != 0 ]]; then
  log "replicas: bench-replicas, two mcp-gate serve replicas on one PostgreSQL database vs one on SQLite"
  replicas_started=$SECONDS
  replicas_load="$(cut -d' ' -f1-3 /proc/loadavg)"
  # A subshell, so that the throw-away cluster stops (postgres.sh's EXIT trap) when it is done.
  if (
    # shellcheck source=postgres.sh
    source "$ROOT/scripts/postgres.sh" || exit 1
    "$BENCH_REPLICAS_BIN"
  ) >"$BENCH_ARTIFACTS/replicas.md" 2>"$BENCH_ARTIFACTS/replicas.log"; then
    { [[ -s "$TMP/bench.md" ]] && echo; cat "$BENCH_ARTIFACTS/replicas.md"; echo
      echo "Replicas: $(nproc) CPUs, load average at its start: $replicas_load," \
        "mcp-gate $("$MCP_GATE_BIN" --version 2>/dev/null | awk '{print $2}') ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))," \
        "MCP_GATE_LOG=$BENCH_GATE_LOG; took $((SECONDS - replicas_started)) s. Log: \`${BENCH_ARTIFACTS#"$ROOT"/}/replicas.log\`."
    } >>"$TMP/bench.md"
  else
    replicas_failed=1
    log "replicas run failed (see $BENCH_ARTIFACTS/replicas.log)"
    { [[ -s "$TMP/bench.md" ]] && echo
      echo "## mcp-gate replicas sharing one PostgreSQL database"
      echo
      echo "**The replicas benchmark failed:** \`${BENCH_ARTIFACTS#"$ROOT"/}/replicas.log\` ends with:"
      echo
      echo '```'
      tail -n 15 "$BENCH_ARTIFACTS/replicas.log"
      echo '```'
    } >>"$TMP/bench.md"
  fi
fi

mkdir -p "$ROOT/artifacts"
cp "$TMP/bench.md" "$ROOT/artifacts/bench.md"
cat "$TMP/bench.md"
log "written to artifacts/bench.md"
[[ "$replicas_failed" == 0 ]] || exit 1
