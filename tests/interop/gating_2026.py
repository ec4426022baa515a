"""Approval gating seen by the official Python SDK client (mcp 2.3.0) in `mode="auto"` through the
real binary, in front of a 2026-07-28 upstream: the SDK's own `MCPServer`
(tests/interop/mcpserver_upstream.py), over stdio (`mcp-gate -- ...`) and over `mcp-gate serve`.

Checks, for each transport: the negotiated version is 2026-07-28; a held call fails fast with a
result the SDK parses (the caller sees the approval URL); after an approval through the API the
identical retry runs once (the upstream counts its runs); a call denied by policy and one denied by
a person reach the caller with the denial. Prints PASS/FAIL lines and
`gating-2026: N passed, M failed`; exits 1 on failure.

Run: MCP_GATE_BIN=target/release/mcp-gate .peers/venv/bin/python tests/interop/gating_2026.py
"""

import asyncio
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from mcp import Client, StdioServerParameters

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gate_client import TOKEN, api, api_base, approval, check, summary, text  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
GATE = os.environ.get("MCP_GATE_BIN") or str(ROOT / "target" / "release" / "mcp-gate")
UPSTREAM = [sys.executable, str(ROOT / "tests" / "interop" / "mcpserver_upstream.py")]
CONFIG = """
[[rules]]
name = "system files"
tool = "delete_file"
when = [{ pointer = "/path", glob = "/etc/*" }]
action = "deny"
reason = "system files stay"

[[rules]]
name = "deleting needs a person"
tool = "delete_file"
action = "approve"

[policy]
default = "allow"

[approvals]
listen = "127.0.0.1:0"
"""

def gate_env(data_dir, runs):
    env = dict(os.environ)
    env.update(
        MCP_GATE_TOKEN=TOKEN,
        MCP_GATE_DATA_DIR=str(data_dir),
        MCP_GATE_WAIT_SECS="0",
        MCP_GATE_LOG=os.environ.get("MCP_GATE_LOG", "info"),
        MCP_GATE_INTEROP_RUNS=str(runs),
    )
    return env


def config(data_dir):
    cfg = Path(data_dir) / "gating-2026.toml"
    cfg.write_text(CONFIG)
    return str(cfg)


def runs_of(runs):
    return Path(runs).read_text().splitlines() if Path(runs).exists() else []


async def scenario(name, client, runs):
    async with client() as c:
        check(f"{name}/version", c.protocol_version == "2026-07-28", c.protocol_version)
        try:
            held = await c.call_tool("delete_file", {"path": "/srv/a.txt"})
        except Exception as e:  # the SDK could not parse the gate's reply
            check(f"{name}/held-parses", False, repr(e))
            return
        aid, status, url = approval(held)
        check(f"{name}/held-parses", held.is_error and status == "pending", f"{held}")
        check(f"{name}/held-shows-url", url and url in text(held) and TOKEN not in text(held), text(held))
        check(f"{name}/held-not-run", runs_of(runs) == [], runs_of(runs))
        if not url:
            return
        code, body = api(api_base(url) + aid + "/approve", {"notes": "ok from python"})
        check(f"{name}/api-approve", code == 200 and body["status"] == "approved", f"{code} {body}")
        ran = await c.call_tool("delete_file", {"path": "/srv/a.txt"})
        check(f"{name}/approved-runs", not ran.is_error and "deleted /srv/a.txt" in text(ran), f"{ran}")
        check(f"{name}/runs-once", runs_of(runs) == ["/srv/a.txt"], runs_of(runs))

        denied = await c.call_tool("delete_file", {"path": "/etc/passwd"})
        check(f"{name}/policy-denial-shown", denied.is_error and "system files stay" in text(denied), f"{denied}")

        held = await c.call_tool("delete_file", {"path": "/srv/b.txt"})
        aid, _, _ = approval(held)
        code, body = api(api_base(url) + aid + "/deny", {"reason": "keep b", "approver": "alice"})
        check(f"{name}/api-deny", code == 200 and body["status"] == "denied", f"{code} {body}")
        denied = await c.call_tool("delete_file", {"path": "/srv/b.txt"})
        t = text(denied)
        check(f"{name}/person-denial-shown", denied.is_error and "alice" in t and "keep b" in t, t)
        check(f"{name}/denied-not-run", runs_of(runs) == ["/srv/a.txt"], runs_of(runs))

        ok = await c.call_tool("echo", {"message": "hi"})
        check(f"{name}/allowed-runs", not ok.is_error and "Echo: hi" in text(ok), f"{ok}")


async def over_stdio(data_dir):
    runs = Path(data_dir) / "runs"
    params = StdioServerParameters(
        command=GATE, args=["--config", config(data_dir), "--", *UPSTREAM], env=gate_env(data_dir, runs)
    )
    await scenario("stdio", lambda: Client(params, mode="auto", read_timeout_seconds=60), runs)


async def over_serve(data_dir):
    runs = Path(data_dir) / "runs"
    log = open(Path(data_dir) / "serve.log", "w+b")
    proc = subprocess.Popen(
        [GATE, "serve", "--listen", "127.0.0.1:0", "--config", config(data_dir), "--", *UPSTREAM],
        env=gate_env(data_dir, runs),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        url = None
        for _ in range(200):
            await asyncio.sleep(0.05)
            log.seek(0)
            m = re.search(rb"mcp-gate: listening on (http://\S+/mcp)", log.read())
            if m:
                url = m.group(1).decode()
                break
            if proc.poll() is not None:
                break
        check("serve/started", url is not None, "no listening line in the log")
        if url:
            await scenario("serve", lambda: Client(url, mode="auto", read_timeout_seconds=60), runs)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


async def main():
    with tempfile.TemporaryDirectory() as d1:
        await asyncio.wait_for(over_stdio(d1), 120)
    with tempfile.TemporaryDirectory() as d2:
        await asyncio.wait_for(over_serve(d2), 120)
    sys.exit(0 if summary("gating-2026") else 1)


if __name__ == "__main__":
    asyncio.run(main())
