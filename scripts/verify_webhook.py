"""Verifies an mcp-gate webhook delivery (the README's recipe, run by the test suite).

Usage: SIGNATURE='t=...,v1=...' DELIVERY=<X-Mcp-Gate-Delivery> MCP_GATE_WEBHOOK_SECRET=... python3 verify_webhook.py < body
Exits 0 when the signature is valid and fresh, 1 otherwise.
"""

import hashlib
import hmac
import time

REPLAY_WINDOW = 300  # seconds


def verify(secret: bytes, signature: str, delivery: str, body: bytes, now: float | None = None) -> bool:
    """Checks an X-Mcp-Gate-Signature header against the X-Mcp-Gate-Delivery id and the raw body."""
    fields = dict(part.split("=", 1) for part in signature.split(",") if "=" in part)
    try:
        t = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - t) > REPLAY_WINDOW:
        return False
    expected = hmac.new(secret, f"{t}.{delivery}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields.get("v1", ""))


if __name__ == "__main__":
    import os
    import sys

    ok = verify(
        os.environb[b"MCP_GATE_WEBHOOK_SECRET"], os.environ["SIGNATURE"], os.environ["DELIVERY"], sys.stdin.buffer.read()
    )
    sys.exit(0 if ok else 1)
