"""The client process of section 6 (bench/mixed.py): ``python -m bench.mixed_client SPEC
RESULT``. Raw asyncio HTTP/1.1, no Django: it plays the fleet, its approvers and the admin
against the server stack for the spec's duration and writes what it saw (latency per route
template, errors, the decisions it was told were recorded) to RESULT.

* Gateways: most long-poll their tenant's bundle like OPA (``If-None-Match`` + ``Prefer:
  wait``), the others poll plainly; each posts status reports and small decision-log batches,
  and now and then escalates a held call, waits for the decision and spends an approval.
* Approvers (personal API tokens of members with the approver role) list the escalations and
  access requests waiting for them, decide some (1 in 5 denied) and race each other for them.
* The admin edits the registry through the API and asks for access.

It prints ``PROGRESS`` lines while it runs and ``DONE`` at the end (the orchestrator reads them).
"""

# ruff: noqa: S311 - random only paces the synthetic load

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import random
import resource
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any


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


if __name__ == "__main__":
    if len(sys.argv) == 3:
        client(sys.argv[1], sys.argv[2])
    else:
        raise SystemExit("usage: python -m bench.mixed_client SPEC.json RESULT.json")
