#!/usr/bin/env bash
# Starts a throw-away PostgreSQL cluster for the tests and exports its address as
# MCP_GATE_TEST_POSTGRES. Source it: `source scripts/postgres.sh`; the cluster stops (and its
# files go) when the sourcing shell exits. Installs Debian's PostgreSQL 15 server when missing.
#
# The cluster listens on a free loopback port and a Unix socket in its own directory, trusts
# local connections (nothing else can reach it) and runs with fsync off: it is for tests only.

PG_DEB="15.18-0+deb12u1"
PG_BIN=/usr/lib/postgresql/15/bin

pg_log() { printf '[postgres] %s\n' "$*" >&2; }

if [[ "$(id -u)" == 0 ]]; then
  pg_root=()
elif command -v sudo >/dev/null; then
  pg_root=(sudo)
else
  pg_root=(false)
fi

if [[ ! -x "$PG_BIN/postgres" ]]; then
  pg_log "installing Debian's postgresql-15 ($PG_DEB)"
  "${pg_root[@]}" apt-get update -qq >&2
  pg_pkg="postgresql-15=$PG_DEB"
  if ! apt-cache madison postgresql-15 | awk -F'|' '{gsub(/ /, "", $2); print $2}' | grep -qxF "$PG_DEB"; then
    pg_log "WARNING: apt no longer offers postgresql-15 $PG_DEB; installing Debian's current build"
    pg_pkg=postgresql-15
  fi
  "${pg_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "$pg_pkg" >&2
fi
pg_log "$("$PG_BIN/postgres" --version)"

PG_DIR="$(mktemp -d /tmp/mcp-gate-pg.XXXXXX)"
# initdb and postgres refuse to run as root: the cluster belongs to the postgres user then.
if [[ "$(id -u)" == 0 ]]; then
  chown postgres "$PG_DIR"
  pg_as=(runuser -u postgres --)
else
  pg_as=()
fi
PG_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"${pg_as[@]}" "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres --auth=trust -E UTF8 --no-sync >"$PG_DIR/initdb.log" 2>&1 \
  || { cat "$PG_DIR/initdb.log" >&2; return 1 2>/dev/null || exit 1; }
"${pg_as[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -s \
  -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400" \
  start >&2 || { cat "$PG_DIR/server.log" >&2; return 1 2>/dev/null || exit 1; }

pg_stop() {
  "${pg_as[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate -s stop >/dev/null 2>&1 || true
  rm -rf "$PG_DIR"
}
trap pg_stop EXIT

export MCP_GATE_TEST_POSTGRES="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
export PG_BIN
pg_log "throw-away cluster on 127.0.0.1:$PG_PORT ($PG_DIR)"
