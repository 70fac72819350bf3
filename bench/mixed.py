"""Section 6 of ``make bench``: mixed load — a fleet, its approvers and an admin at once.

The server stack as the other sections start it (uvicorn ``--workers 2``, DEBUG off, the bench
PostgreSQL database, Redis db 11) plus a real Celery worker (it builds the debounced bundles and
delivers the notifications). No beat: nothing here waits on a periodic task. Against it, one
client process (bench/mixed_client.py: ``python -m bench.mixed_client SPEC RESULT``, raw asyncio
HTTP/1.1, no Django) runs for ``BENCH_MIXED_SECONDS`` (300; 30 with BENCH_QUICK=1):

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
supervisor and workers, the Celery worker and its pool) is sampled every 2 s (bench/memory.py).

Latency is recorded per route template. A long poll that ran out (304) is reported as the time
*beyond* its hold (answer time minus the wait asked for); a woken long poll (200) and a held
escalation read have no meaningful latency (they wait for a person or a publish): their count
and errors are reported, their latency columns show how long they were held.
"""

# ruff: noqa: S311 - random only paces the synthetic load

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

from bench.env import env_int, quantile, say
from bench.memory import SHORT_RUN_SECONDS, MemorySampler, memory_verdict

SECTION = "6"


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

    from bench.stack import expect

    jobs = [(f"{config.base_url()}/api/v1/gateway/bundles/{t['slug']}", gw["token"], t["etag"])
            for t in tenants for gw in t["gateways"]]

    def one(job: tuple[str, str, str]) -> None:
        url, token, etag = job
        expect(url, {"Authorization": f"Bearer {token}", "If-None-Match": etag}, 304,
               "token warm-up")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, jobs))


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
    client_proc = children.start("mixed-client", [PYTHON, "-m", "bench.mixed_client",
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
    server_errors = _grouped(procs.server_errors(server))
    worker_errors = _grouped(procs.server_errors(worker))
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
