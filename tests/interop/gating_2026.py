"""Approval gating seen by the official Python SDK client (mcp 2.3.0) in `mode="auto"` through the
real binary, in front of a 2026-07-28 upstream: the SDK's own `MCPServer`
(tests/interop/mcpserver_upstream.py), over stdio (`mcp-gate -- ...`) and over `mcp-gate serve`.

Checks, for each transport: the negotiated version is 2026-07-28; a held call fails fast with a
result the SDK parses (the caller sees the approval URL); after an approval through the API the
identical retry runs once (the upstream counts its runs); a call denied by policy and one denied by
a person reach the caller with the denial.

Then, with a client that has an elicitation callback (so it declares URL elicitation and takes
`input_required`), against a proxy that waits up to 2 s per round and answers 2 rounds: the SDK
drives the rounds itself. The callback sees the approval page's URL (mode url), approves or denies
through the API and accepts; `call_tool` returns the real result or the denial. Approved from the
side after 3 s, the call needs one state-only round and the callback runs once. Nobody deciding,
`call_tool` returns the readable pending result (not the SDK's rounds-exceeded error). Forged and
replayed `requestState`s sent through the low-level session raise MCPError -32602. The upstream
runs each approved call once.

Prints PASS/FAIL lines and `gating-2026: N passed, M failed`; exits 1 on failure.

Run: MCP_GATE_BIN=target/release/mcp-gate .peers/venv/bin/python tests/interop/gating_2026.py
"""

import asyncio
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from mcp import Client, MCPError, StdioServerParameters
from mcp import types

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

# The input_required tier: each round waits up to 2 s (MCP_GATE_WAIT_SECS), 2 rounds at most.
MRTR_CONFIG = CONFIG + "mrtr_rounds = 2\n"
MRTR_WAIT_SECS = 2

def gate_env(data_dir, runs, wait_secs=0):
    env = dict(os.environ)
    env.update(
        MCP_GATE_TOKEN=TOKEN,
        MCP_GATE_DATA_DIR=str(data_dir),
        MCP_GATE_WAIT_SECS=str(wait_secs),
        MCP_GATE_LOG=os.environ.get("MCP_GATE_LOG", "info"),
        MCP_GATE_INTEROP_RUNS=str(runs),
    )
    return env


def config(data_dir, text=CONFIG):
    cfg = Path(data_dir) / "gating-2026.toml"
    cfg.write_text(text)
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


class Page:
    """An elicitation callback that plays the person at the approval page: it checks the URL
    request, decides through the API (`decide`: "approve", "deny" or None), and accepts."""

    def __init__(self, name, decide):
        self.name = name
        self.decide = decide
        self.urls = []

    async def __call__(self, context, params):
        mode, url = getattr(params, "mode", None), getattr(params, "url", None)
        self.urls.append(url)
        check(f"{self.name}/callback-url-mode", mode == "url" and url and "/approvals/apr_" in url, f"{params}")
        if url and self.decide:
            aid = url.rsplit("/", 1)[-1]
            body = {"notes": "ok from python"} if self.decide == "approve" else {"reason": "not b", "approver": "bob"}
            code, got = await asyncio.to_thread(api, api_base(url) + aid + "/" + self.decide, body)
            check(f"{self.name}/api-{self.decide}", code == 200, f"{code} {got}")
        return types.ElicitResult(action="accept")


async def approve_later(page, delay):
    """Approves the request whose page the callback saw, `delay` seconds from now."""
    await asyncio.sleep(delay)
    url = page.urls[0] if page.urls else None
    if url:
        await asyncio.to_thread(api, api_base(url) + url.rsplit("/", 1)[-1] + "/approve", {"notes": "later"})


async def input_required_scenario(name, client, runs):
    approve = Page(f"{name}/mrtr-approve", "approve")
    async with client(approve) as c:
        ran = await c.call_tool("delete_file", {"path": "/srv/c.txt"})
        check(f"{name}/mrtr-approved-runs", not ran.is_error and "deleted /srv/c.txt" in text(ran), f"{ran}")
        check(f"{name}/mrtr-asked-once", len(approve.urls) == 1, approve.urls)
        check(f"{name}/mrtr-runs-once", runs_of(runs) == ["/srv/c.txt"], runs_of(runs))

    deny = Page(f"{name}/mrtr-deny", "deny")
    async with client(deny) as c:
        denied = await c.call_tool("delete_file", {"path": "/srv/d.txt"})
        t = text(denied)
        check(f"{name}/mrtr-denial-shown", denied.is_error and "bob" in t and "not b" in t, f"{denied}")
        check(f"{name}/mrtr-denied-not-run", runs_of(runs) == ["/srv/c.txt"], runs_of(runs))

    # Approved from the side after 3 s: one round waits 2 s and ends state-only; the SDK retries
    # without asking again, and the next round sees the approval.
    later = Page(f"{name}/mrtr-later", None)
    async with client(later) as c:
        side = asyncio.create_task(approve_later_when_asked(later, 3))
        ran = await c.call_tool("delete_file", {"path": "/srv/e.txt"})
        await side
        check(f"{name}/mrtr-state-only-runs", not ran.is_error and "deleted /srv/e.txt" in text(ran), f"{ran}")
        check(f"{name}/mrtr-state-only-asked-once", len(later.urls) == 1, later.urls)
        check(f"{name}/mrtr-state-only-runs-once", runs_of(runs) == ["/srv/c.txt", "/srv/e.txt"], runs_of(runs))

    # Nobody decides: after the rounds, the readable pending result.
    nobody = Page(f"{name}/mrtr-nobody", None)
    async with client(nobody) as c:
        try:
            pending = await c.call_tool("delete_file", {"path": "/srv/f.txt"})
            aid, status, url = approval(pending)
            ok = pending.is_error and status == "pending" and url and url in text(pending)
            check(f"{name}/mrtr-rounds-end-pending", ok, f"{pending}")
        except Exception as e:
            check(f"{name}/mrtr-rounds-end-pending", False, repr(e))

        # Forged and replayed states, through the low-level session.
        try:
            await c.session.call_tool(
                "delete_file", {"path": "/srv/g.txt"}, request_state="mcpg1.e30.AAAA", allow_input_required=True
            )
            check(f"{name}/mrtr-forged-refused", False, "accepted")
        except MCPError as e:
            check(f"{name}/mrtr-forged-refused", e.code == -32602, repr(e))
        first = await c.session.call_tool("delete_file", {"path": "/srv/g.txt"}, allow_input_required=True)
        state = getattr(first, "request_state", None)
        asks = getattr(first, "input_requests", None) or {}
        check(f"{name}/mrtr-low-level-asks", state and "mcp-gate/approval" in asks, f"{first}")
        if state:
            url = asks["mcp-gate/approval"].params.url
            await asyncio.to_thread(api, api_base(url) + url.rsplit("/", 1)[-1] + "/approve", {})
            responses = {"mcp-gate/approval": types.ElicitResult(action="accept")}
            ran = await c.session.call_tool(
                "delete_file", {"path": "/srv/g.txt"}, input_responses=responses, request_state=state,
                allow_input_required=True,
            )
            check(f"{name}/mrtr-low-level-runs", "deleted /srv/g.txt" in text(ran), f"{ran}")
            try:
                await c.session.call_tool(
                    "delete_file", {"path": "/srv/g.txt"}, input_responses=responses, request_state=state,
                    allow_input_required=True,
                )
                check(f"{name}/mrtr-replay-refused", False, "accepted")
            except MCPError as e:
                check(f"{name}/mrtr-replay-refused", e.code == -32602 and "already used" in str(e), repr(e))
        want = ["/srv/c.txt", "/srv/e.txt", "/srv/g.txt"]
        check(f"{name}/mrtr-each-ran-once", runs_of(runs) == want, runs_of(runs))


async def approve_later_when_asked(page, delay):
    """Waits until the callback saw the page, then approves `delay` seconds later."""
    for _ in range(400):
        if page.urls:
            break
        await asyncio.sleep(0.05)
    await approve_later(page, delay)


async def over_stdio(data_dir, text_=CONFIG, wait_secs=0, run=scenario):
    runs = Path(data_dir) / "runs"
    params = StdioServerParameters(
        command=GATE, args=["--config", config(data_dir, text_), "--", *UPSTREAM], env=gate_env(data_dir, runs, wait_secs)
    )
    if run is scenario:
        await run("stdio", lambda: Client(params, mode="auto", read_timeout_seconds=60), runs)
    else:
        await run(
            "stdio", lambda cb: Client(params, mode="auto", read_timeout_seconds=60, elicitation_callback=cb), runs
        )


async def over_serve(data_dir, text_=CONFIG, wait_secs=0, run=scenario):
    runs = Path(data_dir) / "runs"
    log = open(Path(data_dir) / "serve.log", "w+b")
    proc = subprocess.Popen(
        [GATE, "serve", "--listen", "127.0.0.1:0", "--config", config(data_dir, text_), "--", *UPSTREAM],
        env=gate_env(data_dir, runs, wait_secs),
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
        if url and run is scenario:
            await run("serve", lambda: Client(url, mode="auto", read_timeout_seconds=60), runs)
        elif url:
            await run(
                "serve", lambda cb: Client(url, mode="auto", read_timeout_seconds=60, elicitation_callback=cb), runs
            )
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
    with tempfile.TemporaryDirectory() as d3:
        await asyncio.wait_for(over_stdio(d3, MRTR_CONFIG, MRTR_WAIT_SECS, input_required_scenario), 180)
    with tempfile.TemporaryDirectory() as d4:
        await asyncio.wait_for(over_serve(d4, MRTR_CONFIG, MRTR_WAIT_SECS, input_required_scenario), 180)
    sys.exit(0 if summary("gating-2026") else 1)


if __name__ == "__main__":
    asyncio.run(main())
