"""One held tool call through the real mcp-gate binary, for the browser test (approve.mjs).

Starts `mcp-gate --config CONFIG --name files -- MCP_GATE_BIN demo-server` over stdio with the
Python SDK (mcp 2.3.0); mcp-gate's stderr passes through to ours, so the caller can read the
approvals URL from it. Calls the demo server's `delete_file` on each path of HELD_CALL_PATHS
(comma-separated, default notes/todo.txt), one after the other; each waits while the call is held
(its `note` argument holds a right-to-left override, U+202E, which the dashboard must show as a
visible mark), and its tool result is printed as one line of JSON on stdout. Then keeps mcp-gate
(and its dashboard) running until our stdin closes. Exits 0 only when every result was the
upstream's real output, 1 when one was an error (denied, expired, still pending...).

Run: .peers/venv/bin/python tests/browser/held_call.py target/debug/mcp-gate tests/browser/gate.toml
     with MCP_GATE_TOKEN, MCP_GATE_WAIT_SECS, MCP_GATE_DATA_DIR... in the environment.
"""

import asyncio
import json
import os
import sys

from mcp import Client, StdioServerParameters

PATHS = os.environ.get("HELD_CALL_PATHS", "notes/todo.txt").split(",")


async def main(gate, config):
    params = StdioServerParameters(
        command=gate, args=["--config", config, "--name", "files", "--", gate, "demo-server"], env=dict(os.environ)
    )
    failed = 0
    async with Client(params, mode="legacy", read_timeout_seconds=120) as client:
        for path in PATHS:
            arguments = {"path": path, "note": "keep /home/user/\u202ecod.tropeR"}
            result = await client.call_tool("delete_file", arguments)
            print(json.dumps(result.model_dump(mode="json", by_alias=True, exclude_none=True)), flush=True)
            text = " ".join(getattr(c, "text", "") for c in result.content)
            expected = f"deleted {path}"
            if result.is_error or text != expected:
                print(f"held_call: expected {expected!r}, got isError={result.is_error} {text!r}", file=sys.stderr)
                failed = 1
        await asyncio.to_thread(sys.stdin.read)
    return failed


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: held_call.py MCP_GATE_BIN CONFIG")
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2])))
