#!/usr/bin/env bash
# Instructions per relayed `tools/call`, per thread, under callgrind: a figure that stays the same
# however busy the machine is, unlike calls/s (scripts/bench.sh). Not part of the test suite.
#
# The raw Rust client (bench-client) makes sequential `tools/call`s of raw-upstream's tool through
# `valgrind --tool=callgrind --separate-threads=yes mcp-gate --config GATE -- raw-upstream` (every
# call allowed by the policy and audited), once with SMALL and once with LARGE calls; the
# difference of each thread's instruction count divided by LARGE - SMALL is its cost per call,
# start-up and shutdown cancelled out. The same is done with the bare relay
# (bare-relay example) in place of mcp-gate: the baseline of any process in the path.
#
# Threads: `main` (mcp-gate's first thread: the stdio runtime, the session, the relay, and the
# audit rows it commits when it goes quiet), `store` (the one whose code runs the store worker,
# which commits the rows the loop leaves), `other` (the rest, summed). How the rows split between
# `main` and `store` varies from run to run under valgrind, so either figure alone may even be
# negative; their sum does not vary. The groups committed and the rows appended are printed, with
# the cost of appending one row (`audit::Chain::append`, inclusive, over both threads).
#
# The figures in README were taken from a release build without LTO, with line tables so that
# callgrind names the functions (and much quicker to build than the release profile):
#   CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_STRIP=false \
#   CARGO_PROFILE_RELEASE_DEBUG=line-tables-only scripts/bench_instructions.sh
#
# Environment:
#   BENCH_NO_BUILD=1                  skip `cargo build` (use existing target/release binaries)
#   MCP_GATE_BIN / BENCH_RELAY_BIN    the binaries measured (default: target/release/...)
#   CG_SMALL / CG_LARGE               calls of the two runs (default 200 / 1200)
#   CG_OUT                            where callgrind's files go (default: artifacts/callgrind/)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { printf '[instructions] %s\n' "$*" >&2; }
command -v valgrind >/dev/null || { log "valgrind is not installed"; exit 1; }

if [[ "${BENCH_NO_BUILD:-0}" != 1 ]]; then
  log "cargo build --release --locked --bin mcp-gate --examples"
  cargo build --release --locked --bin mcp-gate --example bench-client --example raw-upstream --example bare-relay >&2
fi
REL="$ROOT/target/release"
GATE="${MCP_GATE_BIN:-$REL/mcp-gate}"
RELAY="${BENCH_RELAY_BIN:-$REL/examples/bare-relay}"
CLIENT="$REL/examples/bench-client"
RAW="$REL/examples/raw-upstream"
for b in "$GATE" "$RELAY" "$CLIENT" "$RAW"; do
  [[ -x "$b" ]] || { log "missing binary $b"; exit 1; }
done
SMALL="${CG_SMALL:-200}"
LARGE="${CG_LARGE:-1200}"
OUT="${CG_OUT:-$ROOT/artifacts/callgrind}"
rm -rf "$OUT"
mkdir -p "$OUT"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/data"
printf '[policy]\ndefault = "allow"\n\n[approvals]\nlisten = "127.0.0.1:0"\ndata_dir = "%s"\n' "$TMP/data" >"$TMP/gate.toml"

# Runs `calls` calls through `cmd` under callgrind; its files go to $OUT/$name-$calls.*
run() { # $1 name, $2 calls, $3... command
  local name="$1" calls="$2"
  shift 2
  # No whitespace in the paths: bench-client splits its commands on it.
  "$CLIENT" latency --direct "$RAW" \
    --via "valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file=$OUT/$name-$calls.%p $*" \
    --blocks 1 --block-size "$((calls - 10))" --warmup 10 \
    --method tools/call --tool raw_tool --expect '"received"' >"$OUT/$name-$calls.txt" 2>"$OUT/$name-$calls.log"
}

# Instructions of each thread of run `$1`, as `role=count` lines (roles summed).
threads() { # $1 prefix of the run's files
  local f role total
  declare -A sum=([main]=0 [store]=0 [other]=0)
  for f in "$1".*; do
    [[ "$f" == *.txt || "$f" == *.log ]] && continue
    total="$(awk '/^totals:/ {print $2}' "$f")"
    [[ -n "$total" ]] || continue
    if [[ "$f" == *-01 ]]; then
      role=main
    elif grep -q 'store.*worker' "$f"; then
      role=store
    else
      role=other
    fi
    sum[$role]=$((sum[$role] + total))
  done
  for role in main store other; do echo "$role=${sum[$role]}"; done
}

for side in gate relay; do
  for calls in "$SMALL" "$LARGE"; do
    log "$side: $calls calls under callgrind"
    if [[ "$side" == gate ]]; then
      run gate "$calls" "$GATE" --config "$TMP/gate.toml" -- "$RAW"
    else
      run relay "$calls" "$RELAY" "$RAW"
    fi
  done
done

echo "| Side | Thread | Instructions per call |"
echo "|---|---|---|"
for side in gate relay; do
  declare -A small=() large=()
  while IFS='=' read -r k v; do small[$k]=$v; done < <(threads "$OUT/$side-$SMALL")
  while IFS='=' read -r k v; do large[$k]=$v; done < <(threads "$OUT/$side-$LARGE")
  all=0
  for role in main store other; do
    per=$(((large[$role] - small[$role]) / (LARGE - SMALL)))
    all=$((all + per))
    [[ "$side" == relay && "$role" == store ]] && continue
    echo "| $side | $role | $per |"
  done
  echo "| $side | **all** | **$all** |"
done

# The audit rows of the gate: committed in groups by the event loop when it goes quiet (stdio
# mode), or by the store's thread when the loop does not; both threads are summed. Groups
# committed, rows appended, and the cost of appending one row.
inclusive() { # $1 file, $2 function: its inclusive instructions
  callgrind_annotate --inclusive=yes "$1" 2>/dev/null | grep -F "$2 [" | head -1 | tr -d ',' | awk '{print $1}'
}
calls_of() { # $1 file, $2 function: how many times it was called
  callgrind_annotate --inclusive=yes --tree=calling "$1" 2>/dev/null | grep -F "=> " | grep -F "$2 (" \
    | sed 's/.*(\([0-9,]*\)x).*/\1/' | tr -d ',' | sort -n | tail -1
}
summed() { # $1 run prefix, $2 inclusive|calls_of, $3 function: summed over the run's threads
  local f v t=0
  for f in "$1".*-[0-9]*; do
    v="$("$2" "$f" "$3")"
    t=$((t + ${v:-0}))
  done
  echo "$t"
}
append=store::audit::Chain::append
groups_small="$(summed "$OUT/gate-$SMALL" calls_of store::deferred::commit_group)"
groups_large="$(summed "$OUT/gate-$LARGE" calls_of store::deferred::commit_group)"
rows_small="$(summed "$OUT/gate-$SMALL" calls_of "$append")"
rows_large="$(summed "$OUT/gate-$LARGE" calls_of "$append")"
if ((rows_large > rows_small)); then
  per_row=$((($(summed "$OUT/gate-$LARGE" inclusive "$append") - $(summed "$OUT/gate-$SMALL" inclusive "$append")) \
    / (rows_large - rows_small)))
  echo
  echo "Audit rows: $rows_small / $rows_large appended in $groups_small / $groups_large groups for $SMALL / $LARGE calls;" \
    "appending one row (audit::Chain::append, inclusive): $per_row instructions."
fi
