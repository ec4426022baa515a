"""Approval gating seen by the official Python SDK client (mcp 2.3.0) through the real binary,
in front of @modelcontextprotocol/server-everything over stdio.

Checks: fail fast with the approval URL; approve through the API; the identical retry runs once;
a second retry is held again; a deny reaches the model with who and why; wait mode released
mid-wait by an approval. Prints PASS/FAIL lines and `gating: N passed, M failed`; exits 1 on
failure.

Run: MCP_GATE_BIN=target/release/mcp-gate .peers/venv/bin/python tests/interop/gating.py
"""

import asyncio
import json
import os
import sys
import tempfile
import urllib.request
from pathlib import Path

from mcp import Client, StdioServerParameters

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gate_client import TOKEN, api, api_base, approval, check, summary, text  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
GATE = os.environ.get("MCP_GATE_BIN") or str(ROOT / "target" / "release" / "mcp-gate")
EVERYTHING = os.environ["EVERYTHING"].split()
CONFIG = """
[[rules]]
name = "echo needs a person"
tool = "echo"
action = "approve"

[[rules]]
name = "read-only"
annotations = { readOnlyHint = true }
action = "allow"

[policy]
default = "allow"

[approvals]
listen = "127.0.0.1:0"    # MCP_GATE_APPROVALS_LISTEN overrides it in wait mode
"""

def params(data_dir, wait_secs):
    cfg = Path(data_dir) / "gating.toml"
    cfg.write_text(CONFIG)
    env = dict(os.environ)
    env.update(
        MCP_GATE_TOKEN=TOKEN,
        MCP_GATE_DATA_DIR=str(data_dir),
        MCP_GATE_WAIT_SECS=str(wait_secs),
        MCP_GATE_LOG="info",
    )
    return StdioServerParameters(command=GATE, args=["--config", str(cfg), "--", *EVERYTHING, "stdio"], env=env)


async def fail_fast(data_dir):
    async with Client(params(data_dir, 0), mode="legacy") as c:
        held = await c.call_tool("echo", {"message": "gated"})
        aid, status, url = approval(held)
        check("fail-fast/held", held.is_error and status == "pending" and url, f"{held}")
        check("fail-fast/url-in-text", url in text(held) and TOKEN not in text(held), text(held))
        again = await c.call_tool("echo", {"message": "gated"})
        check("fail-fast/retry-joins", approval(again)[0] == aid, f"{approval(again)} vs {aid}")
        code, body = api(api_base(url) + aid + "/approve", {"notes": "ok from python"})
        check("api/approve", code == 200 and body["status"] == "approved", f"{code} {body}")
        ran = await c.call_tool("echo", {"message": "gated"})
        check("retry/runs-once", not ran.is_error and "gated" in text(ran), f"{ran}")
        held2 = await c.call_tool("echo", {"message": "gated"})
        aid2, status2, _ = approval(held2)
        check("retry/second-is-held", status2 == "pending" and aid2 != aid, f"{approval(held2)}")
        code, body = api(api_base(url) + aid2 + "/deny", {"reason": "not twice", "approver": "alice"})
        check("api/deny", code == 200 and body["status"] == "denied", f"{code} {body}")
        denied = await c.call_tool("echo", {"message": "gated"})
        t = text(denied)
        check("deny/reaches-model", denied.is_error and "alice" in t and "not twice" in t and "Do not retry" in t, t)
        ok = await c.call_tool("get-sum", {"a": 1, "b": 2})
        check("allowed/runs", not ok.is_error and "3" in text(ok), f"{ok}")


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api_get(url):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


async def wait_mode(data_dir):
    port = free_port()
    p = params(data_dir, 30)
    p.env["MCP_GATE_APPROVALS_LISTEN"] = f"127.0.0.1:{port}"
    base = f"http://127.0.0.1:{port}/api/v1/approvals"
    async with Client(p, mode="legacy", read_timeout_seconds=60) as c:
        call = asyncio.ensure_future(c.call_tool("echo", {"message": "waited"}))
        aid = None
        for _ in range(100):
            await asyncio.sleep(0.1)
            try:
                pending = api_get(base + "?status=pending")["approvals"]
            except OSError:
                continue
            if pending:
                aid = pending[0]["id"]
                break
        check("wait/request-listed", aid is not None)
        if aid is None:
            call.cancel()
            return
        code, _ = api(f"{base}/{aid}/approve", {"notes": "approved mid-wait"})
        result = await asyncio.wait_for(call, 20)
        check("wait/approved-mid-wait", code == 200 and not result.is_error and "waited" in text(result), f"{result}")


async def main():
    with tempfile.TemporaryDirectory() as d1:
        await asyncio.wait_for(fail_fast(d1), 120)
    with tempfile.TemporaryDirectory() as d2:
        await asyncio.wait_for(wait_mode(d2), 120)
    sys.exit(0 if summary("gating") else 1)


if __name__ == "__main__":
    asyncio.run(main())
