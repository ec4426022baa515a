#!/usr/bin/env python3
"""Throughput benchmark: the MCP Python SDK (mcp==2.3.0) calling server-everything's `echo` tool,
directly and through mcp-gate. Run by scripts/bench.sh with the peers venv python.

Pairs (each side keeps one client session open for the whole pair):
  stdio  client -> [mcp-gate ->] server-everything stdio
  http   client --Streamable HTTP--> mcp-gate serve -> server-everything stdio
         (direct: server-everything's own `streamableHttp` mode)

For each pair and load (`seq`: one call at a time; `c16`: 16 workers under asyncio.gather sharing
the session), both sides are warmed up, then the measured calls are split into ROUNDS rounds that
alternate direct/via (direct first in even rounds, via first in odd ones) so that machine drift
hits both sides alike. Calls/s per side = calls / summed time; the ratio is via / direct. The
median of per-round ratios is reported too (robust to one noisy round).

Output: `key=value` lines on stdout (consumed by bench.sh); progress on stderr; every child
process's stderr goes to a log file in BENCH_ARTIFACTS.

Environment:
  MCP_GATE_BIN      mcp-gate binary (required)
  EVERYTHING        command prefix for server-everything (required)
  BENCH_ARTIFACTS   directory for logs (default: artifacts/bench)
  BENCH_PY_CALLS    measured calls per side per load (default 2000)
  BENCH_PY_WARMUP   warm-up calls per side per load (default 300)
  BENCH_PY_ROUNDS   rounds the measured calls are split into (default 10)
  BENCH_PY_CONC     concurrent workers for the concurrent load (default 16)
  BENCH_PY_MODE     Client mode: auto (SDK default) or legacy (default auto)
  BENCH_PY_PAIRS    subset of pairs, e.g. "stdio" (default stdio,http)
  BENCH_GATE_LOG    MCP_GATE_LOG for the proxy (default info, the proxy's default)
  BENCH_GATE_ARGS   mcp-gate options placed before `--` (e.g. "--config allow.toml")
  BENCH_RELAY_BIN   a bare relay (the bare-relay example); when set, the stdio pair
                    runs it as a third side, `relay` (client -> relay -> server-everything), the
                    baseline for what any extra process in the path costs
  BENCH_PY_LOADS    subset of loads, e.g. "seq" (default seq,cN)
  BENCH_ALT_POLL_US  unless "off", the stdio pair also runs mcp-gate with `[stdio]
                    busy_poll_us` set to it (default 0: busy polling off;
                    MCP_GATE_STDIO__BUSY_POLL_US, its own data directory) as a fourth side, `alt`
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

ROOT = Path(__file__).resolve().parents[1]
ART = Path(os.environ.get("BENCH_ARTIFACTS") or ROOT / "artifacts" / "bench")
GATE = os.environ["MCP_GATE_BIN"]
EV = shlex.split(os.environ["EVERYTHING"])
CALLS = int(os.environ.get("BENCH_PY_CALLS", "2000"))
WARMUP = int(os.environ.get("BENCH_PY_WARMUP", "300"))
ROUNDS = int(os.environ.get("BENCH_PY_ROUNDS", "10"))
CONC = int(os.environ.get("BENCH_PY_CONC", "16"))
MODE = os.environ.get("BENCH_PY_MODE", "auto")
PAIRS = [p.strip() for p in os.environ.get("BENCH_PY_PAIRS", "stdio,http").split(",") if p.strip()]
GATE_LOG = os.environ.get("BENCH_GATE_LOG", "info")
# mcp-gate options before `--` (bench.sh: a config allowing every call when the build has a policy).
GATE_ARGS = shlex.split(os.environ.get("BENCH_GATE_ARGS", ""))
RELAY = os.environ.get("BENCH_RELAY_BIN", "")
ALT_POLL_US = os.environ.get("BENCH_ALT_POLL_US", "0")
LOADS = [x.strip() for x in os.environ.get("BENCH_PY_LOADS", f"seq,c{CONC}").split(",") if x.strip()]
START_TIMEOUT = 20.0
CALL_TIMEOUT = 30.0


def log(msg: str) -> None:
    print(f"[bench_py] {msg}", file=sys.stderr, flush=True)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["MCP_GATE_LOG"] = GATE_LOG
    if extra:
        env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Procs:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], logname: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
        path = ART / f"{logname}.log"
        f = open(path, "wb")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, env=env)
        f.close()
        self.procs.append(p)
        return p, path

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


async def wait_port(p: subprocess.Popen[bytes], port: int, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"{what} exited with {p.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}")


async def wait_log(p: subprocess.Popen[bytes], path: Path, pattern: re.Pattern[bytes], what: str) -> re.Match[bytes]:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        m = pattern.search(path.read_bytes() if path.exists() else b"")
        if m:
            return m
        if p.poll() is not None:
            raise RuntimeError(f"{what} exited with {p.returncode}; see {path}")
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{what} did not start; see {path}")


async def call_n(client: Client, n: int, conc: int) -> float:
    """Makes n echo calls with `conc` workers; returns elapsed seconds."""

    async def worker(count: int, w: int) -> None:
        for i in range(count):
            msg = f"bench {w}/{i}"
            r = await client.call_tool("echo", {"message": msg})
            # The upstream's echo, not an answer of the proxy's own (a gate hold or denial).
            text = "".join(getattr(c, "text", "") for c in r.content)
            if r.is_error or msg not in text:
                raise RuntimeError(f"unexpected echo result: {r}")

    per = [n // conc + (1 if i < n % conc else 0) for i in range(conc)]
    t0 = time.perf_counter()
    with anyio.fail_after(CALL_TIMEOUT * 10):
        await asyncio.gather(*(worker(c, w) for w, c in enumerate(per) if c))
    return time.perf_counter() - t0


async def open_client(stack: AsyncExitStack, target: Any) -> Client:
    client = Client(target, mode=MODE, cache=None, read_timeout_seconds=CALL_TIMEOUT)
    # Entered in this task (the client's task group must exit in the task that entered it);
    # its requests, including the handshake, are bounded by read_timeout_seconds.
    await stack.enter_async_context(client)
    tools = await client.list_tools()
    if not any(t.name == "echo" for t in tools.tools):
        raise RuntimeError("server lists no `echo` tool")
    return client


async def run_pair(pair: str, procs: Procs, out: dict[str, str]) -> None:
    async with AsyncExitStack() as stack:
        relay: Client | None = None
        alt: Client | None = None
        if pair == "stdio":
            d_err = open(ART / "py-stdio-direct-everything.log", "w")
            v_err = open(ART / "py-stdio-via-mcp-gate.log", "w")
            stack.callback(d_err.close)
            stack.callback(v_err.close)
            d_params = StdioServerParameters(command=EV[0], args=[*EV[1:], "stdio"], env=child_env())
            v_params = StdioServerParameters(command=GATE, args=[*GATE_ARGS, "--", *EV, "stdio"], env=child_env())
            direct = await open_client(stack, stdio_client(d_params, errlog=d_err))
            via = await open_client(stack, stdio_client(v_params, errlog=v_err))
            if RELAY:
                r_err = open(ART / "py-stdio-relay.log", "w")
                stack.callback(r_err.close)
                r_params = StdioServerParameters(command=RELAY, args=[*EV, "stdio"], env=child_env())
                relay = await open_client(stack, stdio_client(r_params, errlog=r_err))
            if ALT_POLL_US != "off":
                a_err = open(ART / "py-stdio-alt-mcp-gate.log", "w")
                stack.callback(a_err.close)
                data = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-alt-"))
                a_env = child_env({"MCP_GATE_STDIO__BUSY_POLL_US": ALT_POLL_US, "MCP_GATE_APPROVALS__DATA_DIR": data})
                a_params = StdioServerParameters(command=GATE, args=[*GATE_ARGS, "--", *EV, "stdio"], env=a_env)
                alt = await open_client(stack, stdio_client(a_params, errlog=a_err))
        elif pair == "http":
            port = free_port()
            p, _ = procs.start([*EV, "streamableHttp"], "py-http-direct-everything", child_env({"PORT": str(port)}))
            await wait_port(p, port, "server-everything streamableHttp")
            p, path = procs.start(
                [GATE, "serve", "--listen", "127.0.0.1:0", *GATE_ARGS, "--", *EV, "stdio"],
                "py-http-via-mcp-gate",
                child_env(),
            )
            m = await wait_log(p, path, re.compile(rb"mcp-gate: listening on (http://\S+/mcp)"), "mcp-gate serve")
            direct = await open_client(stack, f"http://127.0.0.1:{port}/mcp")
            via = await open_client(stack, m.group(1).decode())
        else:
            raise ValueError(pair)
        out[f"{pair}_protocol_direct"] = direct.protocol_version
        out[f"{pair}_protocol_via"] = via.protocol_version
        sides = [("direct", direct), ("via", via)]
        if relay is not None:
            sides.append(("relay", relay))
        if alt is not None:
            sides.append(("alt", alt))

        for load, conc in (("seq", 1), (f"c{CONC}", CONC)):
            if load not in LOADS:
                continue
            for _, side in sides:
                await call_n(side, WARMUP, conc)
            per_round = [CALLS // ROUNDS + (1 if i < CALLS % ROUNDS else 0) for i in range(ROUNDS)]
            t = {name: 0.0 for name, _ in sides}
            ratios: dict[str, list[float]] = {name: [] for name, _ in sides[1:]}
            for r, n in enumerate(per_round):
                # Each side goes first in turn, so that machine drift hits every side alike.
                order = sides[r % len(sides) :] + sides[: r % len(sides)]
                dt = {}
                for name, client in order:
                    dt[name] = await call_n(client, n, conc)
                    t[name] += dt[name]
                for name in ratios:
                    ratios[name].append(dt["direct"] / dt[name])
                log(
                    f"{pair} {load} round {r + 1}/{ROUNDS}: "
                    + ", ".join(f"{name} {n / dt[name]:.0f}/s" for name, _ in sides)
                    + ", ratio "
                    + ", ".join(f"{name} {dt['direct'] / dt[name]:.3f}" for name in ratios)
                )
            key = f"{pair}_{load}"
            d_cps = CALLS / t["direct"]
            out[f"{key}_direct_cps"] = f"{d_cps:.0f}"
            for name in ratios:
                cps = CALLS / t[name]
                # The gate's figures keep their historical names (via_cps, ratio, ...).
                prefix = "" if name == "via" else f"{name}_"
                out[f"{key}_{name}_cps"] = f"{cps:.0f}"
                out[f"{key}_{prefix}ratio"] = f"{cps / d_cps:.3f}"
                out[f"{key}_{prefix}ratio_median_round"] = f"{statistics.median(ratios[name]):.3f}"
                out[f"{key}_{prefix}ratio_min_round"] = f"{min(ratios[name]):.3f}"
                out[f"{key}_{prefix}ratio_max_round"] = f"{max(ratios[name]):.3f}"
            log(
                f"{pair} {load}: "
                + ", ".join(f"{name} {CALLS / t[name]:.0f}/s" for name, _ in sides)
                + ", ratio "
                + ", ".join(f"{name} {t['direct'] / t[name]:.3f}" for name in ratios)
            )


async def main() -> int:
    ART.mkdir(parents=True, exist_ok=True)
    out: dict[str, str] = {"calls": str(CALLS), "warmup": str(WARMUP), "rounds": str(ROUNDS), "mode": MODE}
    procs = Procs()
    status = 0
    try:
        for pair in PAIRS:
            t0 = time.monotonic()
            try:
                await run_pair(pair, procs, out)
            except Exception as e:  # noqa: BLE001 - report and go on with the other pair
                status = 1
                msg = f"{type(e).__name__}: {e}"
                if isinstance(e, BaseExceptionGroup):
                    msg += " [" + "; ".join(f"{type(x).__name__}: {x}" for x in e.exceptions[:3]) + "]"
                log(f"{pair}: FAILED: {msg}")
                out[f"{pair}_error"] = msg.replace("\n", " ")
            log(f"{pair}: {time.monotonic() - t0:.1f}s")
    finally:
        procs.stop_all()
    for k, v in out.items():
        print(f"{k}={v}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
