"""What the gating tiers (gating.py, gating_2026.py) share: the approver token, the check log, and
reading a held call's approval and deciding on it through the approval server's API."""

import json
import urllib.request

TOKEN = "interop-approver-token-0123456789"

results = []


def check(name, ok, detail=""):
    ok = bool(ok)
    results.append(ok)
    print(("PASS " if ok else "FAIL ") + name + ("" if ok else f": {detail}"), flush=True)


def summary(tier):
    """Prints the tier's totals; whether every check passed."""
    print(f"{tier}: {sum(results)} passed, {len(results) - sum(results)} failed", flush=True)
    return all(results)


def approval(result):
    meta = (result.meta or {}).get("mcp-gate/approval") or {}
    return meta.get("id"), meta.get("status"), meta.get("url")


def api(url, body):
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, json.loads(resp.read())


def api_base(page_url):
    return page_url.split("/approvals/")[0] + "/api/v1/approvals/"


def text(result):
    return " ".join(getattr(c, "text", "") for c in result.content)
