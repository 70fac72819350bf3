"""Section 6 of ``make bench``: mixed load — a fleet, its approvers and an admin at once.

The server stack as the other sections start it (uvicorn ``--workers 2``, DEBUG off, the bench
PostgreSQL database, Redis db 11) plus a real Celery worker (it builds the debounced bundles and
delivers the notifications). No beat: nothing here waits on a periodic task. Against it, one
client process (``python -m bench.mixed client SPEC RESULT``, raw asyncio HTTP/1.1, no Django)
runs for ``BENCH_MIXED_SECONDS`` (300; 30 with BENCH_QUICK=1):

* 1,000 gateways over ``BENCH_MIXED_TENANTS`` tenants (10). 90 % long-poll their tenant's bundle
  like OPA (``If-None-Match`` + ``Prefer: wait=BENCH_MIXED_WAIT``), 10 % poll plainly every 10 s;
  each posts a status report about once a minute, a small decision-log batch (10 events) about
  every two minutes, and now and then escalates a held call (``POST escalations``), waits for
  the decision (``GET escalations/<id>`` with ``Prefer: wait=30``) and spends an approval.
* 50 approvers (5 per tenant, personal API tokens of members with the approver role): every
  ~10 s (as the web inbox refreshes) list the escalations waiting for them and the pending access
  requests, decide up to 5 of each (1 in 5 denied); 5 approvers race for the same items, the
  losers get 200 ``changed: false``.
* 1 admin (an admin of every tenant, one personal token each) edits the registry through the
  API: create / update / revoke grants, change a scope's tools, and asks for access (which the
  approvers decide; an approval creates a grant). Every write triggers a publish.

Then the writes stop, the approvers empty their queues, the gateways keep polling until the
bundles are stable, and the section checks: no escalation or access request left pending, every
decision the approvers were told was recorded is in the database, every gateway's last
revision equals its tenant's current one. Meanwhile the RSS of every server process (uvicorn
supervisor and workers, the Celery worker and its pool) is sampled every 2 s.

Latency is recorded per route template. A long poll that ran out (304) is reported as the time
*beyond* its hold (answer time minus the wait asked for); a woken long poll (200) and a held
escalation read have no meaningful latency (they wait for a person or a publish): their count
and errors are reported, their latency columns show how long they were held.
"""

# ruff: noqa: S311 - random only paces the synthetic load

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import random
import resource
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.env import env_int, quantile, say

SECTION = "6"
MB = 1024 * 1024


# =================================================================================================
# The client process (no Django)
# =================================================================================================

class Conn:
    """One keep-alive HTTP/1.1 connection (reconnects after an error or ``Connection: close``).

    Like any well-behaved client (Go's ``IdleConnTimeout``, urllib3's pool), a connection idle
    for ``IDLE_SECONDS`` is not reused: uvicorn closes idle keep-alive connections after 5 s
    (``--timeout-keep-alive``), and a request written into a socket the server is closing at that
    moment fails with nothing read — an artefact of the client, not an error of the server."""

    IDLE_SECONDS = 4.0

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.rw: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.last_used = 0.0

    def close(self) -> None:
        if self.rw is not None:
            self.rw[1].close()
            self.rw = None

    async def request(self, method: str, path: str, headers: dict[str, str],
                      body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        if self.rw is not None and time.monotonic() - self.last_used > self.IDLE_SECONDS:
            self.close()
        if self.rw is None:
            self.rw = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.rw
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                 "User-Agent: tollgate-bench-mixed"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if body or method in ("POST", "PATCH", "PUT"):
            lines.append(f"Content-Length: {len(body)}")
        try:
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            parts = head.decode("latin-1").split("\r\n")
            status = int(parts[0].split()[1])
            got = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in parts[1:] if line)}
            payload = b""
            if got.get("transfer-encoding", "").lower() == "chunked":
                chunks = []
                while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                    chunks.append((await reader.readexactly(size + 2))[:-2])
                await reader.readuntil(b"\r\n")
                payload = b"".join(chunks)
            elif length := int(got.get("content-length", "0")):
                payload = await reader.readexactly(length)
        except BaseException:
            self.close()
            raise
        self.last_used = time.monotonic()
        if got.get("connection", "").lower() == "close":
            self.close()
        return status, got, payload


class Recorder:
    """Per endpoint: latencies of the answers as expected, and every error."""

    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = {}
        self.errors: dict[str, dict[str, int]] = {}
        self.error_samples: list[dict[str, Any]] = []
        self.recording = True
        self.busy = 0  # calls under way other than bundle polls (the drain waits for 0)

    def ok(self, endpoint: str, seconds: float) -> None:
        if self.recording:
            self.latency.setdefault(endpoint, []).append(seconds)

    def error(self, endpoint: str, what: str, detail: str = "") -> None:
        bucket = self.errors.setdefault(endpoint, {})
        bucket[what] = bucket.get(what, 0) + 1
        if len(self.error_samples) < 50:
            self.error_samples.append({"endpoint": endpoint, "error": what,
                                       "detail": detail[:300], "t": time.time()})

    async def call(self, conn: Conn, endpoint: str, method: str, path: str,
                   headers: dict[str, str], body: bytes = b"",
                   expected: tuple[int, ...] = (200,)) -> tuple[int, dict[str, str], bytes,
                                                                float] | None:
        """The answer (and seconds taken), or None after recording an error."""
        started = time.monotonic()
        poll = endpoint.startswith("GET /api/v1/gateway/bundles")
        self.busy += 0 if poll else 1
        try:
            status, got, payload = await conn.request(method, path, headers, body)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError, IndexError) as exc:
            self.error(endpoint, f"connection: {type(exc).__name__}", str(exc))
            return None
        finally:
            self.busy -= 0 if poll else 1
        took = time.monotonic() - started
        if status not in expected:
            self.error(endpoint, str(status), payload[:300].decode(errors="replace"))
            return None
        return status, got, payload, took


class Shared:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.rec = Recorder()
        self.phase = "run"  # run → drain (no new work, queues emptied) → end
        self.created: list[dict[str, Any]] = []  # escalations answered 201
        self.decisions: list[dict[str, Any]] = []  # decide calls answered changed: true
        self.unchanged = 0  # decide calls answered changed: false (another approver won)
        self.requests_created: list[dict[str, Any]] = []
        self.writes: dict[str, int] = {}
        self.last_revision: dict[str, int] = {}  # gateway name → last X-Bundle-Revision
        self.last_poll_end: dict[str, float] = {}
        self.consumed = 0

    @property
    def running(self) -> bool:
        return self.phase == "run"


def _json(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


async def _sleep_unless_end(shared: Shared, seconds: float) -> bool:
    """Sleep; False once the phase is ``end``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if shared.phase == "end":
            return False
        await asyncio.sleep(min(0.5, deadline - time.monotonic()))
    return shared.phase != "end"


async def _poller(shared: Shared, tenant: dict[str, Any], gw: dict[str, Any], plain: bool,
                  start_delay: float) -> None:
    spec = shared.spec
    await asyncio.sleep(start_delay)
    conn = Conn(spec["host"], spec["port"])
    path = f"/api/v1/gateway/bundles/{tenant['slug']}"
    etag = tenant["etag"]
    shared.last_revision[gw["name"]] = tenant["revision"]
    wait = spec["wait"]
    auth = {"Authorization": f"Bearer {gw['token']}"}
    while shared.phase != "end":
        headers = auth | {"If-None-Match": etag}
        if not plain:
            headers["Prefer"] = f"wait={wait}"
        task = asyncio.ensure_future(shared.rec.call(conn, _bundle_endpoint(plain, None), "GET",
                                                     path, headers, expected=(200, 304)))
        # A held poll is abandoned at the end (the server sees a disconnect).
        while not task.done():
            if shared.phase == "end":
                task.cancel()
                conn.close()
                return
            await asyncio.sleep(0.2)
        answer = task.result()
        if answer is None:  # an error: retry after a second or so, as OPA does
            await _sleep_unless_end(shared, 0.5 + random.random())
            continue
        status, got, _, took = answer
        shared.last_poll_end[gw["name"]] = time.time()
        if status == 200:
            etag = got.get("etag", etag)
            shared.last_revision[gw["name"]] = int(got.get("x-bundle-revision", "0"))
            shared.rec.ok(_bundle_endpoint(plain, 200), took)
        elif plain:
            shared.rec.ok(_bundle_endpoint(plain, 304), took)
        else:  # ran out: what matters is how long beyond the hold it took
            shared.rec.ok(_bundle_endpoint(plain, 304), max(0.0, took - wait))
        if plain and not await _sleep_unless_end(shared, spec["plain_interval"]
                                                 * (0.8 + 0.4 * random.random())):
            return
    conn.close()


def _bundle_endpoint(plain: bool, status: int | None) -> str:
    base = "GET /api/v1/gateway/bundles/{tenant}"
    if plain:
        return f"{base} plain" + ("" if status is None else f" ({status})")
    if status is None:
        return f"{base} long poll"
    return f"{base} long poll " + ("woken 200 (held time)" if status == 200
                                   else "304 (time beyond the hold)")


def _events(rng: random.Random, gw: dict[str, Any], tenant: dict[str, Any],
            count: int) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    out = []
    for _ in range(count):
        outcome = rng.choices(("allow", "deny", "escalate"), weights=(85, 10, 5))[0]
        out.append({
            "decision_id": str(uuid.uuid4()),
            "timestamp": (now - timedelta(seconds=rng.uniform(0, 60))).isoformat()
            .replace("+00:00", "Z"),
            "labels": {"id": gw["name"], "version": "tollgate-bench"},
            "bundles": {"tollgate": {"revision": str(tenant["revision"])}},
            "input": {"agent": "bot", "server": "payroll", "tool": rng.choice(["read", "pay"]),
                      "arguments_sha256": f"{rng.getrandbits(256):064x}",
                      "arguments": {"amount": rng.randint(1, 5000)},
                      "call_id": f"call-{rng.getrandbits(48):x}"},
            "result": {"outcome": outcome, "reason": "bench"},
        })
    return out


async def _side(shared: Shared, tenant: dict[str, Any], gw: dict[str, Any],
                start_delay: float) -> None:
    """A gateway's other calls: status reports, decision logs, escalations."""
    spec = shared.spec
    rng = random.Random(gw["name"])
    conn = Conn(spec["host"], spec["port"])
    auth = {"Authorization": f"Bearer {gw['token']}", "Content-Type": "application/json"}
    rec = shared.rec
    await asyncio.sleep(start_delay)
    now = time.monotonic()
    next_status = now + rng.uniform(0, spec["status_interval"])
    next_logs = now + rng.uniform(0, spec["logs_interval"])
    next_escalation = now + rng.expovariate(1 / spec["escalation_interval"])
    while shared.running:
        now = time.monotonic()
        if now >= next_status:
            next_status = now + spec["status_interval"] * (0.8 + 0.4 * rng.random())
            revision = str(shared.last_revision.get(gw["name"], tenant["revision"]))
            stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            report = {"labels": {"id": gw["name"], "version": "tollgate-bench"},
                      "bundles": {"tollgate": {"active_revision": revision,
                                               "last_successful_download": stamp,
                                               "last_successful_activation": stamp}}}
            answer = await rec.call(conn, "POST /api/v1/gateway/status", "POST",
                                    "/api/v1/gateway/status", auth, _json(report), (204,))
            if answer:
                rec.ok("POST /api/v1/gateway/status", answer[3])
        elif now >= next_logs:
            next_logs = now + spec["logs_interval"] * (0.8 + 0.4 * rng.random())
            body = gzip.compress(_json(_events(rng, gw, tenant, spec["log_batch"])), 6)
            answer = await rec.call(conn, "POST /api/v1/gateway/logs", "POST",
                                    "/api/v1/gateway/logs", auth | {"Content-Encoding": "gzip"},
                                    body, (200,))
            if answer:
                rec.ok("POST /api/v1/gateway/logs", answer[3])
        elif now >= next_escalation:
            await _escalate(shared, tenant, gw, conn, auth, rng)
            next_escalation = time.monotonic() + rng.expovariate(1 / spec["escalation_interval"])
        else:
            await asyncio.sleep(min(1.0, max(0.05, min(next_status, next_logs, next_escalation)
                                             - now)))
    conn.close()


async def _escalate(shared: Shared, tenant: dict[str, Any], gw: dict[str, Any], conn: Conn,
                    auth: dict[str, str], rng: random.Random) -> None:
    rec = shared.rec
    arguments = {"amount": rng.randint(1000, 9000), "employee": f"E{rng.randint(1, 99999)}"}
    sha = hashlib.sha256(json.dumps(arguments, sort_keys=True, separators=(",", ":"))
                         .encode()).hexdigest()
    body = {"call_id": f"{gw['name']}-{uuid.uuid4().hex[:12]}",
            "agent": rng.choice(tenant["escalating_agents"]), "server": "payroll",
            "tool": "pay", "arguments": arguments, "arguments_sha256": sha,
            "bundle_revision": shared.last_revision.get(gw["name"], 1),
            "reason": "amount over the limit (bench)"}
    endpoint = "POST /api/v1/gateway/escalations"
    answer = await rec.call(conn, endpoint, "POST", "/api/v1/gateway/escalations", auth,
                            _json(body), (201,))
    if answer is None:
        return
    rec.ok(endpoint, answer[3])
    doc = json.loads(answer[2])
    shared.created.append({"id": doc["id"], "tenant": tenant["slug"], "t": time.time()})
    # Wait for the human, as the gateway holding the call does (bounded: the bench moves on).
    endpoint = "GET /api/v1/gateway/escalations/{id} wait (held time)"
    status = doc["status"]
    for _ in range(3):
        if status != "pending" or shared.phase == "end":
            break
        got = await rec.call(conn, endpoint, "GET", f"/api/v1/gateway/escalations/{doc['id']}",
                             {"Authorization": auth["Authorization"], "Prefer": "wait=30"})
        if got is None:
            return
        rec.ok(endpoint, got[3])
        status = json.loads(got[2])["status"]
    if status == "approved":
        endpoint = "POST /api/v1/gateway/escalations/{id}/consume"
        got = await rec.call(conn, endpoint, "POST",
                             f"/api/v1/gateway/escalations/{doc['id']}/consume", auth)
        if got is not None:
            rec.ok(endpoint, got[3])
            shared.consumed += 1


async def _approver(shared: Shared, tenant: dict[str, Any], person: dict[str, Any],
                    start_delay: float) -> None:
    spec = shared.spec
    rng = random.Random(person["username"])
    conn = Conn(spec["host"], spec["port"])
    rec = shared.rec
    api = f"/api/v1/t/{tenant['slug']}"
    auth = {"Authorization": f"Bearer {person['token']}", "Accept": "application/json"}
    await asyncio.sleep(start_delay)
    empty_rounds = 0
    while shared.phase != "end":
        if shared.phase == "drain" and empty_rounds >= 2:
            await asyncio.sleep(0.5)
            continue
        found = 0
        for kind, listing in (("escalations", "escalations/?waiting=true&page_size=50"),
                              ("access-requests", "access-requests/?status=pending"
                                                  "&page_size=50")):
            endpoint = f"GET /api/v1/t/{{t}}/{listing.split('?')[0]}?{listing.split('?')[1]}"
            answer = await rec.call(conn, endpoint, "GET", f"{api}/{listing}", auth)
            if answer is None:
                continue
            rec.ok(endpoint, answer[3])
            page = json.loads(answer[2])
            items = [i for i in page.get("results", page if isinstance(page, list) else [])
                     if i.get("status") == "pending"]
            rng.shuffle(items)
            found += len(items)
            for item in items[:5]:
                deny = rng.random() < 0.2
                decision = {"outcome": "deny" if deny else "approve"}
                if deny:
                    decision["reason"] = "bench: denied"
                endpoint = f"POST /api/v1/t/{{t}}/{kind}/{{id}}/decide/"
                got = await rec.call(conn, endpoint, "POST", f"{api}/{kind}/{item['id']}/decide/",
                                     auth | {"Content-Type": "application/json"},
                                     _json(decision))
                if got is None:
                    continue
                rec.ok(endpoint, got[3])
                result = json.loads(got[2])
                if result.get("changed"):
                    shared.decisions.append({"kind": kind, "id": str(item["id"]),
                                             "approver": person["username"],
                                             "outcome": decision["outcome"],
                                             "tenant": tenant["slug"]})
                else:
                    shared.unchanged += 1
        empty_rounds = empty_rounds + 1 if found == 0 else 0
        pause = spec["approver_interval"] * (0.5 + rng.random())
        if shared.phase == "drain":
            pause = 0.5
        if not await _sleep_unless_end(shared, pause):
            break
    conn.close()


async def _admin(shared: Shared) -> None:
    """One person editing the registry of every tenant in turn through the admin API."""
    spec = shared.spec
    rng = random.Random(17)
    conn = Conn(spec["host"], spec["port"])
    rec = shared.rec
    tenants = spec["tenants"]
    grants: dict[str, list[int]] = {t["slug"]: [] for t in tenants}
    toggled: dict[str, bool] = {t["slug"]: False for t in tenants}
    turn = 0
    await asyncio.sleep(2.0)
    while shared.running:
        tenant = tenants[turn % len(tenants)]
        turn += 1
        slug, api = tenant["slug"], f"/api/v1/t/{tenant['slug']}"
        auth = {"Authorization": f"Bearer {tenant['admin_token']}",
                "Content-Type": "application/json", "Accept": "application/json"}
        roll = rng.random()
        live = grants[slug]
        if roll < 0.35 or not live:
            action, method, path, expected = "POST /api/v1/t/{t}/grants/", "POST", \
                f"{api}/grants/", (201,)
            body = {"agent": rng.choice(tenant["edit_agents"]), "scope": tenant["edit_scope"],
                    "calls_per_minute": rng.choice([10, 60, 600])}
        elif roll < 0.55:
            action, method, path, expected = "PATCH /api/v1/t/{t}/grants/{id}/", "PATCH", \
                f"{api}/grants/{rng.choice(live)}/", (200,)
            body = {"calls_per_minute": rng.randint(1, 1000)}
        elif roll < 0.70:
            gid = live.pop(rng.randrange(len(live)))
            action, method, path, expected = "POST /api/v1/t/{t}/grants/{id}/revoke/", "POST", \
                f"{api}/grants/{gid}/revoke/", (200,)
            body = {"reason": "bench"}
        elif roll < 0.85:
            toggled[slug] = not toggled[slug]
            tools = tenant["edit_tools"] if toggled[slug] else tenant["edit_tools"][:1]
            action, method, path, expected = "PATCH /api/v1/t/{t}/scopes/{id}/", "PATCH", \
                f"{api}/scopes/{tenant['edit_scope']}/", (200,)
            body = {"tools": tools, "description": f"edited {turn}"}
        else:
            action, method, path, expected = "POST /api/v1/t/{t}/access-requests/", "POST", \
                f"{api}/access-requests/", (201,)
            body = {"agent": tenant["request_agents"][turn % len(tenant["request_agents"])],
                    "scope": tenant["edit_scope"], "duration_minutes": 60,
                    "justification": "bench: needs it"}
        answer = await rec.call(conn, action, method, path, auth, _json(body), expected)
        if answer is not None:
            rec.ok(action, answer[3])
            shared.writes[action] = shared.writes.get(action, 0) + 1
            doc = json.loads(answer[2]) if answer[2] else {}
            if action == "POST /api/v1/t/{t}/grants/":
                live.append(doc["id"])
            elif action == "POST /api/v1/t/{t}/access-requests/":
                shared.requests_created.append({"id": str(doc["id"]), "tenant": slug})
        await _sleep_unless_end(shared, spec["admin_interval"] * (0.5 + rng.random()))
    conn.close()


async def _client_main(spec: dict[str, Any], result_path: str) -> None:
    shared = Shared(spec)
    loop = asyncio.get_running_loop()

    def read_commands() -> None:
        for line in sys.stdin:
            command = line.strip()
            if command in ("drain", "end"):
                loop.call_soon_threadsafe(setattr, shared, "phase", command)
            if command == "end":
                return

    threading.Thread(target=read_commands, daemon=True).start()
    tasks = []
    ramp = spec["ramp_seconds"]
    for tenant in spec["tenants"]:
        for i, gw in enumerate(tenant["gateways"]):
            delay = random.uniform(0, ramp)
            plain = i % 10 == 9
            tasks.append(asyncio.create_task(_poller(shared, tenant, gw, plain, delay)))
            tasks.append(asyncio.create_task(_side(shared, tenant, gw, delay + 1.0)))
        for person in tenant["approvers"]:
            tasks.append(asyncio.create_task(_approver(shared, tenant, person,
                                                       random.uniform(0, 3))))
    tasks.append(asyncio.create_task(_admin(shared)))
    started = time.monotonic()
    while shared.phase != "end":
        await asyncio.sleep(1.0)
        count = sum(len(v) for v in shared.rec.latency.values())
        errors = sum(sum(v.values()) for v in shared.rec.errors.values())
        print(f"PROGRESS {time.monotonic() - started:.0f} {count} {errors} {len(shared.created)}"
              f" {len(shared.decisions)} {shared.phase} {shared.rec.busy}", flush=True)
    await asyncio.wait(tasks, timeout=10)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    with open(result_path, "w") as handle:
        json.dump({"latency": shared.rec.latency, "errors": shared.rec.errors,
                   "error_samples": shared.rec.error_samples, "created": shared.created,
                   "decisions": shared.decisions, "unchanged_decisions": shared.unchanged,
                   "requests_created": shared.requests_created, "writes": shared.writes,
                   "last_revision": shared.last_revision, "last_poll_end": shared.last_poll_end,
                   "consumed": shared.consumed}, handle)
    print("DONE", flush=True)


def client(spec_path: str, result_path: str) -> None:
    with open(spec_path) as handle:
        spec = json.load(handle)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4 * sum(len(t["gateways"]) for t in spec["tenants"]) + 1000
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(_client_main(spec, result_path))


# =================================================================================================
# The orchestrator (the bench process: Django set up)
# =================================================================================================

def build_fixtures(tenants: int, gateways: int, approvers: int) -> list[dict[str, Any]]:
    """The tenants, through the services: the small registry of the other sections plus agents
    whose grant always asks for approval, a scope and agents for the admin to edit, members
    (one admin for all, ``approvers`` approvers each) with personal tokens, and gateways."""
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from bench import fixtures
    from governance.tenancy.models import ApiToken
    from governance.tenancy.services import api_token_create, membership_create
    from registry import services as registry
    from registry.models import Tool

    system = fixtures.SYSTEM
    users = get_user_model()
    admin = users.objects.create_user(username="mixed-admin")
    expires = timezone.now() + timedelta(days=7)
    out = []
    per_tenant = [gateways // tenants + (1 if i < gateways % tenants else 0)
                  for i in range(tenants)]
    per_approvers = [approvers // tenants + (1 if i < approvers % tenants else 0)
                     for i in range(tenants)]
    for i in range(tenants):
        slug = f"bench-mixed-{i:02d}"
        small = fixtures.small_tenant(slug)
        tenant = small.tenant
        escalating = []
        for k in range(5):
            agent = registry.agent_create(tenant=tenant, actor=system, name=f"esc-{k}",
                                          owner=None)
            registry.grant_create(tenant=tenant, actor=system, agent=agent, scope=small.scope,
                                  approval_mode="always")
            escalating.append(agent.name)
        read_tool = Tool.objects.for_tenant(tenant).get(name="read")
        pay_tool = Tool.objects.for_tenant(tenant).get(name="pay")
        edit_scope = registry.scope_create(tenant=tenant, actor=system, name="edit:scope",
                                           tools=[read_tool])
        edit_agents = [registry.agent_create(tenant=tenant, actor=system, name=f"edit-{k}",
                                             owner=None).pk for k in range(10)]
        request_agents = [registry.agent_create(tenant=tenant, actor=system, name=f"req-{k}",
                                                owner=None).pk for k in range(30)]
        membership_create(tenant=tenant, actor=system, user=admin, role="admin")
        _, admin_token = api_token_create(tenant=tenant, actor=system, created_by=admin,
                                          kind=ApiToken.Kind.PERSONAL, name="bench admin",
                                          role="admin", expires_at=expires, owner=admin)
        people = []
        for k in range(per_approvers[i]):
            user = users.objects.create_user(username=f"{slug}-approver-{k}")
            membership_create(tenant=tenant, actor=system, user=user, role="approver")
            _, token = api_token_create(tenant=tenant, actor=system, created_by=user,
                                        kind=ApiToken.Kind.PERSONAL, name="bench approver",
                                        role="approver", expires_at=expires, owner=user)
            people.append({"username": user.username, "token": token})
        fleet = fixtures.gateways_with_tokens(tenant, per_tenant[i], "mx")
        pointer = fixtures.publish_now(tenant)
        out.append({
            "slug": slug, "tenant_id": tenant.pk,
            "gateways": [{"id": gid, "token": token, "name": f"{slug}/mx-{n:03d}"}
                         for n, (gid, token) in enumerate(fleet)],
            "approvers": people, "admin_token": admin_token,
            "escalating_agents": escalating, "edit_scope": edit_scope.pk,
            "edit_tools": [read_tool.pk, pay_tool.pk], "edit_agents": edit_agents,
            "request_agents": request_agents,
            "etag": f'"{pointer["sha256"]}"', "revision": pointer["revision"],
        })
    return out


def _warm_tokens(config, tenants: list[dict[str, Any]]) -> None:
    """One plain poll per gateway, a few at a time: the fleet's steady state (every token in
    the hot store). BENCH_MIXED_COLD=1 skips it: 1,000 gateways then arrive with cold tokens."""
    from concurrent.futures import ThreadPoolExecutor

    from bench.run import expect

    jobs = [(f"{config.base_url()}/api/v1/gateway/bundles/{t['slug']}", gw["token"], t["etag"])
            for t in tenants for gw in t["gateways"]]

    def one(job: tuple[str, str, str]) -> None:
        url, token, etag = job
        expect(url, {"Authorization": f"Bearer {token}", "If-None-Match": etag}, 304,
               "token warm-up")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, jobs))


class MemorySampler:
    """RSS of every process of the server stack (uvicorn supervisor + workers, Celery worker +
    pool) every ``interval`` seconds, from /proc (psutil is not installed)."""

    def __init__(self, roots: dict[str, int], interval: float = 2.0,
                 database_url: str = "", database: str = "") -> None:
        self.roots = roots
        self.database_url, self.database = database_url, database
        self._pg = None
        self.interval = interval
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.t0 = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self._pg is not None:
            self._pg.close()

    def sample(self) -> dict[str, Any]:
        from bench.procs import tree_rss

        by_process: dict[str, float] = {}
        for name, pid in self.roots.items():
            for p, rss in tree_rss(pid).items():
                by_process[f"{name}:{p}" if p != pid else f"{name}:{p} (parent)"] = rss / MB
        return {"t": time.monotonic() - self.t0, "total_mb": sum(by_process.values()),
                "by_process_mb": by_process, "pg_connections": self._pg_connections()}

    def _pg_connections(self) -> int | None:
        """Connections to the bench database now (pg_stat_activity), from a connection of its
        own (counted, and subtracted)."""
        if not self.database_url:
            return None
        try:
            import psycopg

            if self._pg is None:
                self._pg = psycopg.connect(self.database_url.replace(
                    "postgres://", "postgresql://", 1), autocommit=True, connect_timeout=5)
            row = self._pg.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                                   (self.database,)).fetchone()
            return int(row[0]) - 1
        except Exception:
            self._pg = None
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.sample())
            self._stop.wait(self.interval)


def slope_mb_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB) in MB per minute."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    den = sum((t - mx) ** 2 for t, _ in points)
    if not den:
        return None
    return sum((t - mx) * (v - my) for t, v in points) / den * 60


# Below this, the second half of the run is still warm-up (caches, connection pools, the first
# compile of every template): the verdict is printed but not part of the section's pass/fail.
SHORT_RUN_SECONDS = 120


def memory_verdict(samples: list[dict[str, Any]], load_seconds: float) -> dict[str, Any]:
    """Start, end, max and the slope over the second half of the load phase. Rule: "growing"
    when that slope exceeds max(2 MB/min, 0.5 % of the mean RSS per minute); else "stable"."""
    loaded = [s for s in samples if s["t"] <= load_seconds + 1]
    half = [(s["t"], s["total_mb"]) for s in loaded if s["t"] >= load_seconds / 2]
    slope = slope_mb_per_min(half)
    # Not part of the rule, printed to tell a step from a sustained climb.
    last_third = slope_mb_per_min([(s["t"], s["total_mb"]) for s in loaded
                                   if s["t"] >= 2 * load_seconds / 3])
    mean = sum(v for _, v in half) / len(half) if half else 0.0
    limit = max(2.0, 0.005 * mean)
    per_process: dict[str, dict[str, float | None]] = {}
    for key in (loaded[-1]["by_process_mb"] if loaded else {}):
        series = [(s["t"], s["by_process_mb"][key]) for s in loaded
                  if key in s["by_process_mb"] and s["t"] >= load_seconds / 2]
        first = next((s["by_process_mb"][key] for s in loaded if key in s["by_process_mb"]),
                     None)
        per_process[key] = {"start_mb": first, "end_mb": loaded[-1]["by_process_mb"][key],
                            "slope_second_half_mb_per_min": slope_mb_per_min(series)}
    short = load_seconds < SHORT_RUN_SECONDS
    return {
        "short_run": short,
        "start_mb": loaded[0]["total_mb"] if loaded else None,
        "end_mb": loaded[-1]["total_mb"] if loaded else None,
        "max_mb": max(s["total_mb"] for s in loaded) if loaded else None,
        "slope_second_half_mb_per_min": slope,
        "growing_above_mb_per_min": limit,
        "slope_last_third_mb_per_min": last_third,
        "verdict": "n/a" if slope is None else ("growing" if slope > limit else "stable"),
        "rule": "growing when the least-squares slope of the summed RSS over the second half of "
                "the load exceeds max(2 MB/min, 0.5 % of its mean per minute)",
        "samples": len(samples),
        "by_process": per_process,
    }


def _table(latency: dict[str, list[float]], errors: dict[str, dict[str, int]],
           seconds: float) -> dict[str, dict[str, Any]]:
    table = {}
    for endpoint in sorted(set(latency) | set(errors)):
        values = latency.get(endpoint, [])
        errs = errors.get(endpoint, {})
        table[endpoint] = {
            "count": len(values), "per_second": len(values) / seconds if seconds else None,
            "errors": sum(errs.values()), "errors_by_kind": errs,
            "p50_ms": _ms(quantile(values, 0.5)), "p95_ms": _ms(quantile(values, 0.95)),
            "p99_ms": _ms(quantile(values, 0.99)), "max_ms": _ms(max(values) if values else None),
        }
    return table


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def _print_table(table: dict[str, dict[str, Any]]) -> None:
    width = max((len(k) for k in table), default=20)
    say(f"  {'endpoint':<{width}} {'count':>7} {'err':>5} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p99 ms':>8} {'max ms':>9}")
    for endpoint, row in table.items():
        cells = [("-" if row[k] is None else f"{row[k]:.1f}")
                 for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")]
        say(f"  {endpoint:<{width}} {row['count']:>7} {row['errors']:>5} {cells[0]:>8} "
            f"{cells[1]:>8} {cells[2]:>8} {cells[3]:>9}")


def _check(result: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """What the database says once the load is over."""
    from approvals.models import AccessRequest, ApprovalDecision, Escalation
    from bundles import publish
    from bundles.models import Bundle

    tenant_ids = [t["tenant_id"] for t in spec["tenants"]]
    created_ids = [c["id"] for c in result["created"]]
    found = dict(Escalation.objects.filter(pk__in=created_ids).values_list("pk", "status"))
    missing = [i for i in created_ids if uuid.UUID(i) not in found]
    pending_escalations = Escalation.objects.filter(tenant_id__in=tenant_ids,
                                                    status="pending").count()
    pending_requests = AccessRequest.objects.filter(tenant_id__in=tenant_ids,
                                                    status="pending").count()
    decided_missing, status_mismatch = [], []
    want_status = {"approve": "approved", "deny": "denied"}
    for d in result["decisions"]:
        key = "escalation_id" if d["kind"] == "escalations" else "request_id"
        row = ApprovalDecision.objects.filter(**{key: d["id"]}, approver__username=d["approver"],
                                              outcome=d["outcome"]).exists()
        if not row:
            decided_missing.append(d)
        model = Escalation if d["kind"] == "escalations" else AccessRequest
        status = model.objects.filter(pk=d["id"]).values_list("status", flat=True).first()
        if status != want_status[d["outcome"]]:
            status_mismatch.append({**d, "status": status})
    behind = {}
    revisions = {}
    for tenant in spec["tenants"]:
        pointer = publish.current_pointer(tenant["slug"])
        revisions[tenant["slug"]] = {
            "start": tenant["revision"], "current": pointer["revision"],
            "published": Bundle.objects.filter(tenant_id=tenant["tenant_id"],
                                               revision_number__gt=tenant["revision"]).count()}
        for gw in tenant["gateways"]:
            seen = result["last_revision"].get(gw["name"])
            if seen != pointer["revision"]:
                behind[gw["name"]] = {"seen": seen, "current": pointer["revision"]}
    return {
        "escalations_created": len(created_ids), "escalations_missing": len(missing),
        "escalations_pending_at_end": pending_escalations,
        "access_requests_created": len(result["requests_created"]),
        "access_requests_pending_at_end": pending_requests,
        "decisions_recorded_by_clients": len(result["decisions"]),
        "decisions_missing_in_db": decided_missing[:20],
        "decisions_missing_count": len(decided_missing),
        "status_mismatch": status_mismatch[:20], "status_mismatch_count": len(status_mismatch),
        "gateways_behind": dict(list(behind.items())[:20]), "gateways_behind_count": len(behind),
        "revisions": revisions,
        "publishes": sum(r["published"] for r in revisions.values()),
    }


def _grouped(errors: dict[str, int]) -> dict[str, int]:
    """Error lines with ids and UUIDs replaced by {id}: one line per route and cause."""
    import re

    found: dict[str, int] = {}
    for key, count in errors.items():
        key = re.sub(r"/[0-9a-f]{8}-[0-9a-f-]{27}|/\d+(?=/)", "/{id}", key)
        key = re.sub(r"/t/[a-z0-9-]+/", "/t/{t}/", key)
        key = re.sub(r"/bundles/[a-z0-9-]+$", "/bundles/{tenant}", key)
        found[key] = found.get(key, 0) + count
    return found


def _deadlocks(database: str) -> int:
    """Deadlocks PostgreSQL has detected in the bench database so far (pg_stat_database)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = %s", [database])
        row = cursor.fetchone()
    return int(row[0]) if row else 0


def section_mixed(config, children, workers: int) -> dict[str, Any]:
    from approvals.models import AccessRequest, Escalation
    from bench import loadgen, procs
    from bench.env import LOGS, PYTHON
    from bench.procs import BenchError
    from bench.run import _server_errors
    from bundles import publish

    seconds = env_int("BENCH_MIXED_SECONDS", 30 if config.quick else 300)
    n_gateways = env_int("BENCH_MIXED_GATEWAYS", 1000)
    n_tenants = env_int("BENCH_MIXED_TENANTS", 10)
    n_approvers = env_int("BENCH_MIXED_APPROVERS", 50)
    wait = env_int("BENCH_MIXED_WAIT", 20 if config.quick else 60)
    say(f"\n== 6. Mixed load for {seconds} s: {n_gateways} gateways ({n_tenants} tenants; "
        f"long polls wait={wait}), {n_approvers} approvers, 1 admin; uvicorn --workers "
        f"{workers} + Celery worker ==")
    started = time.monotonic()
    tenants = build_fixtures(n_tenants, n_gateways, n_approvers)
    say(f"  fixtures (through the services) in {time.monotonic() - started:.1f} s")
    worker = procs.start_worker(children, config)
    server = procs.start_uvicorn(children, config, workers=workers, name="uvicorn-mixed",
                                 extra_env={"ESCALATION_RATE_LIMIT_PER_MINUTE": "100000"})
    cold = os.environ.get("BENCH_MIXED_COLD", "") not in ("", "0")
    if not cold:
        started = time.monotonic()
        _warm_tokens(config, tenants)
        say(f"  every gateway token polled once (in the hot store, as in a running fleet) in "
            f"{time.monotonic() - started:.1f} s")
    spec = {
        "host": config.host, "port": config.port, "wait": wait, "tenants": tenants,
        "ramp_seconds": 5.0 if config.quick else 15.0, "plain_interval": 10.0,
        "status_interval": float(env_int("BENCH_MIXED_STATUS_EVERY", 60)),
        "logs_interval": float(env_int("BENCH_MIXED_LOGS_EVERY", 120)), "log_batch": 10,
        # Mean seconds between escalations of one gateway: 1,000 gateways → ~2 a second.
        "escalation_interval": float(env_int("BENCH_MIXED_ESCALATION_EVERY", 500)),
        # Like the web inbox, which refreshes every 10 s.
        "approver_interval": float(env_int("BENCH_MIXED_APPROVER_EVERY", 10)),
        "admin_interval": float(env_int("BENCH_MIXED_ADMIN_EVERY_MS", 2000)) / 1000,
    }
    spec_path, result_path = LOGS / "mixed-spec.json", LOGS / "mixed-result.json"
    spec_path.write_text(json.dumps(spec))
    result_path.unlink(missing_ok=True)
    memory = MemorySampler({"uvicorn": server.pid, "celery": worker.pid},
                           database_url=config.database_url, database=config.database_name)
    memory.start()
    client_proc = children.start("mixed-client", [PYTHON, "-m", "bench.mixed", "client",
                                                  str(spec_path), str(result_path)],
                                 env=config.child_env(), log=False, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE)
    progress: dict[str, Any] = {"line": "", "done": threading.Event()}

    def read() -> None:
        for raw in client_proc.process.stdout:
            line = raw.decode().strip()
            if line.startswith("PROGRESS"):
                progress["line"] = line
            elif line == "DONE":
                progress["done"].set()
        progress["done"].set()

    threading.Thread(target=read, daemon=True).start()

    def send(command: str) -> None:
        try:
            client_proc.process.stdin.write(f"{command}\n".encode())
            client_proc.process.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass

    load_started = time.monotonic()
    deadlocks_before = _deadlocks(config.database_name)
    cpu_before = (loadgen.machine_busy(), loadgen.cpu_seconds(server.pid),
                  loadgen.cpu_seconds(worker.pid), loadgen.cpu_seconds(client_proc.pid))
    next_report = load_started + (10 if config.quick else 30)
    while time.monotonic() - load_started < seconds:
        if not client_proc.alive():
            raise BenchError("the mixed-load client exited early")
        if not server.alive() or not worker.alive():
            raise BenchError(f"a server process died:\n{server.tail()}\n{worker.tail()}")
        if time.monotonic() >= next_report:
            parts = progress["line"].split()
            if len(parts) >= 6:
                last = memory.samples[-1]["total_mb"] if memory.samples else 0
                say(f"  {time.monotonic() - load_started:4.0f} s: {parts[2]} answers, {parts[3]} "
                    f"errors, {parts[4]} escalations, {parts[5]} decisions; server RSS "
                    f"{last:.0f} MB")
            next_report += 10 if config.quick else 30
        time.sleep(0.5)
    load_seconds = time.monotonic() - memory.t0
    elapsed = time.monotonic() - load_started
    busy, srv, cel, cli = (loadgen.machine_busy() - cpu_before[0],
                           loadgen.cpu_seconds(server.pid) - cpu_before[1],
                           loadgen.cpu_seconds(worker.pid) - cpu_before[2],
                           loadgen.cpu_seconds(client_proc.pid) - cpu_before[3])
    cpu = {"server": srv / elapsed, "celery": cel / elapsed, "client": cli / elapsed,
           "other": max(0.0, busy - srv - cel - cli) / elapsed}
    # Drain: no new work; approvers empty their queues; the last builds reach the gateways.
    send("drain")
    drain_started = time.monotonic()
    ids = [t["tenant_id"] for t in tenants]
    stable_since, last_revs = time.monotonic(), None
    while time.monotonic() - drain_started < 90:
        pending = (Escalation.objects.filter(tenant_id__in=ids, status="pending").count()
                   + AccessRequest.objects.filter(tenant_id__in=ids, status="pending").count())
        revs = [(publish.current_pointer(t["slug"]) or {}).get("revision") for t in tenants]
        if revs != last_revs:
            last_revs, stable_since = revs, time.monotonic()
        # Stable for 3 s (15 × the debounce) and two plain-poll intervals at least.
        parts = progress["line"].split()
        busy = int(parts[7]) if len(parts) >= 8 and parts[6] == "drain" else 1
        if not pending and not busy and time.monotonic() - stable_since >= max(
                3.0, 2 * spec["plain_interval"] + 1):
            break
        time.sleep(0.5)
    drain_seconds = time.monotonic() - drain_started
    deadlocks = _deadlocks(config.database_name) - deadlocks_before
    send("end")
    if not progress["done"].wait(60):
        raise BenchError("the mixed-load client did not finish")
    memory.stop()
    children.stop(client_proc)
    result = json.loads(result_path.read_text())
    server_errors = _grouped(_server_errors(server))
    worker_errors = _grouped(_server_errors(worker))
    children.stop(server)
    children.stop(worker)
    table = _table(result["latency"], result["errors"], seconds)
    check = _check(result, spec)
    mem = memory_verdict(memory.samples, load_seconds)
    total_errors = sum(r["errors"] for r in table.values())
    say(f"  load {seconds} s + drain {drain_seconds:.1f} s; per endpoint (long polls: see "
        "bench/mixed.py docstring):")
    _print_table(table)
    say(f"  errors: {total_errors}" + (f" — e.g. {result['error_samples'][:3]}"
                                       if total_errors else ""))
    say(f"  server RSS (uvicorn + Celery trees) start {mem['start_mb']:.0f} MB, end "
        f"{mem['end_mb']:.0f} MB, max {mem['max_mb']:.0f} MB; slope over the second half "
        f"{(mem['slope_second_half_mb_per_min'] or 0):+.2f} MB/min → {mem['verdict']} (growing "
        f"above {mem['growing_above_mb_per_min']:.1f} MB/min; last third "
        f"{(mem['slope_last_third_mb_per_min'] or 0):+.2f} MB/min)"
        + (f"; a run under {SHORT_RUN_SECONDS} s is mostly warm-up: not judged"
           if mem["short_run"] else ""))
    connections = [s["pg_connections"] for s in memory.samples
                   if s.get("pg_connections") is not None]
    pg_max = max(connections) if connections else None
    say(f"  PostgreSQL connections to the bench database (sampled every 2 s): max {pg_max}, "
        f"median {quantile(connections, 0.5)}; deadlocks detected during the run: {deadlocks}")
    say(f"  CPU: server {cpu['server']:.2f} cores, Celery {cpu['celery']:.2f}, load client "
        f"{cpu['client']:.2f}, everything else (PostgreSQL, Redis, others) {cpu['other']:.2f}")
    say(f"  escalations created {check['escalations_created']} (missing "
        f"{check['escalations_missing']}, pending at the end "
        f"{check['escalations_pending_at_end']}), access requests "
        f"{check['access_requests_created']} (pending {check['access_requests_pending_at_end']});"
        f" decisions {check['decisions_recorded_by_clients']} (not in the DB "
        f"{check['decisions_missing_count']}, wrong status {check['status_mismatch_count']}; "
        f"{result['unchanged_decisions']} answered 'already decided'); approvals consumed "
        f"{result['consumed']}")
    say(f"  publishes during the run {check['publishes']}; gateways not on their tenant's "
        f"current revision at the end: {check['gateways_behind_count']}"
        f"/{sum(len(t['gateways']) for t in tenants)}")
    if server_errors or worker_errors:
        say(f"  server errors logged: {server_errors} worker: {worker_errors}")
    ok = (total_errors == 0 and not check["escalations_missing"]
          and not check["escalations_pending_at_end"]
          and not check["access_requests_pending_at_end"]
          and not check["decisions_missing_count"] and not check["status_mismatch_count"]
          and not check["gateways_behind_count"] and not server_errors
          and (mem["verdict"] == "stable" or mem["short_run"]))
    return {
        "seconds": seconds, "drain_seconds": drain_seconds, "gateways": n_gateways,
        "tenants": n_tenants, "approvers": n_approvers, "wait": wait, "workers": workers,
        "endpoints": table, "errors": total_errors, "error_samples": result["error_samples"],
        "cpu_cores": cpu, "memory": mem, "pg_connections_max": pg_max,
        "pg_deadlocks": deadlocks, "cold_tokens": cold,
        "memory_samples": [{"t": round(s["t"], 1), "total_mb": round(s["total_mb"], 1)}
                           for s in memory.samples],
        "check": check, "admin_writes": result["writes"], "consumed": result["consumed"],
        "unchanged_decisions": result["unchanged_decisions"],
        "server_errors_logged": server_errors, "worker_errors_logged": worker_errors,
        "spec": {k: v for k, v in spec.items() if k != "tenants"},
        "long_poll_latency": "304 answers of long polls: seconds beyond the wait asked for; "
                             "woken 200s and escalation reads: the time held",
        "ok": ok,
    }


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    def row(name: str, value: Any, goal: str = "", ok: bool | None = None) -> dict[str, Any]:
        return {"figure": name, "value": value, "goal": goal,
                "result": "" if ok is None else ("PASS" if ok else "FAIL")}

    mem, check = result["memory"], result["check"]
    rows = [row(f"mixed load {result['seconds']} s ({result['gateways']} gateways, "
                f"{result['approvers']} approvers, 1 admin): errors",
                result["errors"], "0 errors, all decided, all current, memory stable",
                result["ok"])]
    for endpoint, r in result["endpoints"].items():
        if "held time" in endpoint or not r["count"]:
            continue
        p99 = "-" if r["p99_ms"] is None else f"{r['p99_ms']:.0f} ms"
        rows.append(row(f"  {endpoint}: count / p99", f"{r['count']} / {p99}"))
    rows.append(row("  server RSS start / end / max, slope (2nd half)",
                    f"{mem['start_mb']:.0f} / {mem['end_mb']:.0f} / {mem['max_mb']:.0f} MB, "
                    f"{(mem['slope_second_half_mb_per_min'] or 0):+.1f} MB/min {mem['verdict']}"
                    + (" (short run)" if mem["short_run"] else "")))
    rows.append(row("  escalations created / decisions / left pending / behind gateways",
                    f"{check['escalations_created']} / {check['decisions_recorded_by_clients']}"
                    f" / {check['escalations_pending_at_end']} / "
                    f"{check['gateways_behind_count']}"))
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "client":
        client(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit("usage: python -m bench.mixed client SPEC.json RESULT.json")
