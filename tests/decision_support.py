"""OPA decision-log events as a Tollgate gateway uploads them, and helpers to upload them."""

from __future__ import annotations

import gzip
import hashlib
import json
from datetime import UTC, datetime, timedelta

from django.test import Client

IDP = "https://idp.example"
LOGS = "/api/v1/gateway/logs"
# When the sample decisions happened: 10:00 UTC yesterday by the real clock, never a fixed date
# (stored decisions meet retention and the dashboards, which read the real clock). DAY is its
# date as text, for the times of day the tests write out.
HOUR = (datetime.now(UTC) - timedelta(days=1)).replace(hour=10, minute=0, second=0,
                                                       microsecond=0)
DAY = f"{HOUR:%Y-%m-%d}"


def sha(n) -> str:
    return hashlib.sha256(f"args-{n}".encode()).hexdigest()


def event(n, *, outcome="allow", agent="bot", server="payroll", tool="read",
          timestamp=f"{DAY}T10:15:30.123456789Z", revision="3", grant=None,
          escalation_id=None, reason="granted", **extra) -> dict:
    """One event of the shape OPA's decision-log plugin sends, with Tollgate's MCP fields (and
    OPA's own top-level keys, which Tollgate ignores)."""
    doc = {
        "decision_id": f"d-{n}",
        "timestamp": timestamp,
        "path": "mcp/decision",
        "labels": {"id": "5b3c6e0a-gw", "version": "0.70.0", "region": "eu"},
        "bundles": {"tollgate": {"revision": revision}},
        "input": {
            "agent": agent,
            "principal": {"issuer": IDP, "subject": agent},
            "server": server,
            "tool": tool,
            "arguments_sha256": sha(n),
            "arguments": {"employee": "[redacted]", "amount": n},
            "call_id": f"call-{n}",
        },
        "result": {"outcome": outcome, "reason": reason},
        "requested_by": "10.0.0.7:51234",
        "metrics": {"timer_rego_query_eval_ns": 51234},
        "req_id": n,
        "erased": ["/input/arguments/ssn"],
        "masked": ["/input/arguments/employee"],
        "nd_builtin_cache": {},
    }
    if grant is not None:
        doc["result"]["grant"] = grant
    if escalation_id is not None:
        doc["result"]["escalation_id"] = str(escalation_id)
    doc.update(extra)
    return doc


def upload(token, body, *, gzipped=False, encoding=None, client=None):
    """POST a batch (a list, or raw bytes as given) to the gateway logs endpoint; ``gzipped``
    compresses it, ``encoding`` sets Content-Encoding (gzip when ``gzipped``)."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    extra = {}
    if gzipped:
        raw = gzip.compress(raw)
        encoding = encoding or "gzip"
    if encoding:
        extra["HTTP_CONTENT_ENCODING"] = encoding
    if token is not None:
        extra["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return (client or Client()).post(LOGS, raw, content_type="application/json", **extra)
