"""A 2026-07-28 upstream for the interop tier: the Python SDK's own `MCPServer` over stdio, with
a harmless tool (`echo`) and a destructive one (`delete_file`, which deletes nothing: it says what
it would have removed and counts its runs in the file named by $MCP_GATE_INTEROP_RUNS).

Run: .peers/venv/bin/python tests/interop/mcpserver_upstream.py
"""

import os

from mcp.server.mcpserver import MCPServer

server = MCPServer("interop-2026")


@server.tool()
def echo(message: str) -> str:
    """Returns its message."""
    return f"Echo: {message}"


@server.tool()
def delete_file(path: str) -> str:
    """Deletes a file (here: only counts the call)."""
    runs = os.environ.get("MCP_GATE_INTEROP_RUNS")
    if runs:
        with open(runs, "a") as f:
            f.write(path + "\n")
    return f"deleted {path}"


if __name__ == "__main__":
    server.run()
