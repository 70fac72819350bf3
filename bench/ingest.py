"""Section 5 of ``make bench``: decision-log ingestion through the real endpoint.

Realistic OPA decision-log batches (gzip, ``BENCH_INGEST_BATCH`` events each, generated and
compressed before the clock starts) are POSTed to ``/api/v1/gateway/logs`` of the project's
ASGI server, started as the other sections start it (uvicorn, DEBUG off, PostgreSQL, Redis), by
2 and then 4 client threads (one gateway token each), every batch once. Printed: events/s and
its ratio to the 20,000 events/s goal, request latency, where the CPU went (server processes,
the client, everything else: PostgreSQL and other load on the machine), then the rate at which
a re-sent batch (all duplicates) is answered. Afterwards the rows are counted: each event must
be stored exactly once and the hourly roll-up must add up to the rows.

Before that, the three ways ``decisions_store`` can put a batch into PostgreSQL (COPY into a
staging table + INSERT … SELECT, ``unnest`` of column arrays, multi-row VALUES) are timed in
this process on the same data, database work only: why the service uses COPY.

Knobs: BENCH_INGEST_BATCH (events per upload, default 2500), BENCH_INGEST_EVENTS (events per
run, default 300,000; 60,000 with BENCH_QUICK=1), BENCH_INGEST_CLIENTS (default "2,4").
"""

# ruff: noqa: S311 - random only shapes synthetic benchmark data

from __future__ import annotations

import gzip
import http.client
import os
import random
import resource
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from bench import loadgen, procs
from bench.env import Config, env_int, quantile, say
from bench.procs import BenchError, Children

GOAL_EVENTS_PER_SECOND = 20_000
SECTION = "5"
PATH = "/api/v1/gateway/logs"


# --- Realistic events ----------------------------------------------------------------------------

AGENTS = [f"agent-{i:03d}" for i in range(200)]
SERVERS = ["payroll", "ehr", "refunds", "trading", "crm", "tickets", "wiki", "billing"]
TOOLS = ["read", "search", "list", "get_record", "update", "pay", "refund", "export", "create",
         "delete"]
REASONS = {"allow": "granted by grant {g}", "deny": "no grant covers this tool",
           "escalate": "grant {g} requires approval for amount > 1000"}


def make_event(rng: random.Random, now: datetime, gateway: str) -> dict[str, Any]:
    """One event as the reference gateway's OPA-compatible decision logger writes it."""
    outcome = rng.choices(("allow", "deny", "escalate"), weights=(85, 10, 5))[0]
    agent = rng.choice(AGENTS)
    grant = rng.randint(1, 50_000)
    when = now - timedelta(seconds=rng.uniform(0, 3600))
    arguments = {"employee_id": f"E{rng.randint(10_000, 99_999)}", "amount": rng.randint(1, 5000),
                 "currency": "EUR", "note": "[redacted]"}
    result: dict[str, Any] = {"outcome": outcome, "reason": REASONS[outcome].format(g=grant)}
    if outcome != "deny":
        result["grant"] = grant
    if outcome == "escalate":
        result["escalation_id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    return {
        "decision_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "timestamp": when.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z",  # OPA: nanoseconds
        "path": "mcp/decision",
        "labels": {"id": gateway, "version": "tollgate-gateway/1.0", "region": "eu-west-1"},
        "bundles": {"tollgate": {"revision": "17"}},
        "input": {
            "agent": agent,
            "principal": {"issuer": "https://idp.bench.example", "subject": agent},
            "server": rng.choice(SERVERS), "tool": rng.choice(TOOLS),
            "arguments_sha256": f"{rng.getrandbits(256):064x}",
            "arguments": arguments,
            "call_id": f"call-{rng.getrandbits(48):x}",
        },
        "result": result,
        "requested_by": "10.1.2.3:50412",
        "metrics": {"timer_rego_query_eval_ns": rng.randint(20_000, 90_000)},
        "req_id": rng.randint(1, 10**9),
    }


def make_batches(events: int, batch: int, seed: int = 11) -> tuple[list[bytes], int, int]:
    """Gzipped batches (as OPA sends them); (batches, raw bytes, gzip bytes)."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    gateway = str(uuid.uuid4())
    out, raw_total = [], 0
    for start in range(0, events, batch):
        raw = orjson.dumps([make_event(rng, now, gateway)
                            for _ in range(min(batch, events - start))])
        raw_total += len(raw)
        out.append(gzip.compress(raw, 6))
    return out, raw_total, sum(len(b) for b in out)


# --- HTTP load -----------------------------------------------------------------------------------

def _send(config: Config, token: str, batches: list[bytes], answers: list, errors: list) -> None:
    conn = http.client.HTTPConnection(config.host, config.port, timeout=120)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
               "Content-Encoding": "gzip"}
    try:
        for body in batches:
            started = time.monotonic()
            try:
                conn.request("POST", PATH, body=body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
            except OSError as exc:
                errors.append(str(exc))
                conn.close()
                conn = http.client.HTTPConnection(config.host, config.port, timeout=120)
                continue
            took = time.monotonic() - started
            if response.status != 200:
                errors.append(f"{response.status}: {payload[:200]!r}")
                continue
            answers.append((took, orjson.loads(payload)))
    finally:
        conn.close()


def drive(config: Config, server: procs.Child, tokens: list[str], batches: list[bytes],
          events: int) -> dict[str, Any]:
    """Send every batch once, spread over one thread per token; events/s and where CPU went."""
    shares = [batches[i::len(tokens)] for i in range(len(tokens))]
    answers: list = []
    errors: list = []
    threads = [threading.Thread(target=_send, args=(config, token, share, answers, errors),
                                daemon=True) for token, share in zip(tokens, shares, strict=True)]
    busy, server_cpu = loadgen.machine_busy(), loadgen.cpu_seconds(server.pid)
    own = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    own_after = resource.getrusage(resource.RUSAGE_SELF)
    busy = loadgen.machine_busy() - busy
    server_cpu = loadgen.cpu_seconds(server.pid) - server_cpu
    client_cpu = (own_after.ru_utime + own_after.ru_stime) - (own.ru_utime + own.ru_stime)
    latencies = [took for took, _ in answers]
    accepted = sum(a["accepted"] for _, a in answers)
    duplicates = sum(a["duplicates"] for _, a in answers)
    return {
        "clients": len(tokens), "batches": len(batches), "events": events,
        "seconds": elapsed, "events_per_second": events / elapsed,
        "accepted": accepted, "duplicates": duplicates, "errors": errors[:20],
        "error_count": len(errors),
        "latency_s": {"p50": quantile(latencies, 0.5), "p95": quantile(latencies, 0.95),
                      "max": max(latencies) if latencies else None},
        "cpu_share": {"server": server_cpu / elapsed, "client": client_cpu / elapsed,
                      "everything_else": max(0.0, busy - server_cpu - client_cpu) / elapsed},
    }


def _stored(tenant) -> tuple[int, int]:
    from django.db.models import Sum

    from decision_logs.models import DecisionLog, DecisionRollup

    rows = DecisionLog.objects.for_tenant(tenant).count()
    rolled = DecisionRollup.objects.for_tenant(tenant).aggregate(n=Sum("count"))["n"] or 0
    return rows, rolled


# --- The three insert methods, database work only ------------------------------------------------

def compare_methods(batch: int, rounds: int) -> dict[str, Any]:
    from decision_logs import services
    from governance.audit.services import Actor
    from governance.tenancy.services import tenant_create

    tenant = tenant_create(actor=Actor.system("bench"), slug="bench-ingest-methods",
                           name="Bench ingest methods")
    rng = random.Random(5)
    now = datetime.now(UTC)
    found: dict[str, list[float]] = {"copy": [], "unnest": [], "values": []}
    for _ in range(rounds):
        for method in found:
            events = services.validate_events(
                orjson.loads(orjson.dumps([make_event(rng, now, "m") for _ in range(batch)])))
            started = time.perf_counter()
            result = services.decisions_store(tenant_id=tenant.pk, gateway_id=None,
                                              events=events, method=method)
            found[method].append(time.perf_counter() - started)
            if result.accepted != batch:
                raise BenchError(f"{method}: stored {result.accepted} of {batch}")
    return {method: {"best_events_per_second": batch / min(times),
                     "median_events_per_second": batch / sorted(times)[len(times) // 2]}
            for method, times in found.items()}


# --- The section ---------------------------------------------------------------------------------

def section_ingest(config: Config, children: Children, workers: int) -> dict[str, Any]:
    from bench import fixtures
    from governance.audit.services import Actor
    from governance.tenancy.services import tenant_create

    batch = env_int("BENCH_INGEST_BATCH", 2500)
    total = env_int("BENCH_INGEST_EVENTS", 60_000 if config.quick else 300_000)
    clients = [int(c) for c in os.environ.get("BENCH_INGEST_CLIENTS", "2,4").split(",")
               if c.strip()]
    say(f"\n== 5. Decision-log ingestion: POST {PATH}, gzip batches of {batch} events, "
        f"uvicorn --workers {workers}, PostgreSQL ==")

    methods = compare_methods(min(batch, 2500), 2 if config.quick else 4)
    say("  insert methods, database work only (one process, best of rounds): " + ", ".join(
        f"{m} {r['best_events_per_second']:,.0f} ev/s" for m, r in methods.items()))

    started = time.monotonic()
    batches, raw_bytes, gz_bytes = make_batches(total, batch)
    say(f"  {len(batches)} batches, {total:,} events generated in "
        f"{time.monotonic() - started:.1f} s: {raw_bytes / total:.0f} bytes/event as JSON, "
        f"{gz_bytes / len(batches) / 1024:.0f} KiB per gzipped batch "
        f"(×{raw_bytes / gz_bytes:.1f})")

    server = procs.start_uvicorn(children, config, workers=workers, name="uvicorn-ingest")
    runs: dict[str, Any] = {}
    tenants = {}
    for count in clients:
        tenant = tenant_create(actor=Actor.system("bench"), slug=f"bench-ingest-{count}c",
                               name=f"Bench ingest {count} clients")
        tokens = [t for _, t in fixtures.gateways_with_tokens(tenant, count, "ingest")]
        tenants[count] = (tenant, tokens)
        # Warm-up: each token in the hot store, each worker's first connection made.
        warm = make_batches(count * 2 * workers, 1, seed=count)[0]
        drive(config, server, tokens, warm, len(warm))
        run = drive(config, server, tokens, batches, total)
        rows, rolled = _stored(tenant)
        run["rows_stored"] = rows - len(warm)
        run["rollup_total"] = rolled - len(warm)
        run["each_event_once"] = (run["rows_stored"] == total == run["accepted"]
                                  and run["rollup_total"] == total and not run["error_count"])
        runs[str(count)] = run
        lat, cpu = run["latency_s"], run["cpu_share"]
        say(f"  {count} clients: {run['events_per_second']:8,.0f} events/s "
            f"({run['events_per_second'] / GOAL_EVENTS_PER_SECOND:.2f} × the 20,000 goal) in "
            f"{run['seconds']:.1f} s; per batch p50 {lat['p50'] * 1000:.0f} ms, p95 "
            f"{lat['p95'] * 1000:.0f} ms; cores busy: server {cpu['server']:.2f}, client "
            f"{cpu['client']:.2f}, PostgreSQL + rest of machine {cpu['everything_else']:.2f}")
        say(f"      stored {run['rows_stored']:,} rows, roll-up {run['rollup_total']:,}, "
            f"errors {run['error_count']}{': ' + run['errors'][0] if run['errors'] else ''}"
            f" → {'each event once' if run['each_event_once'] else 'MISMATCH'}")

    # Re-send what the last run stored: every event a duplicate.
    count = clients[-1]
    tenant, tokens = tenants[count]
    again = batches[: max(1, len(batches) // 2)]
    sent = sum(min(batch, total - i * batch) for i in range(len(again)))
    resend = drive(config, server, tokens, again, sent)
    rows, _ = _stored(tenant)
    resend["rows_added"] = rows - runs[str(count)]["rows_stored"] - 2 * count * workers
    say(f"  re-send of {sent:,} stored events ({count} clients): "
        f"{resend['events_per_second']:,.0f} events/s answered, accepted {resend['accepted']}, "
        f"duplicates {resend['duplicates']:,}, rows added {resend['rows_added']}")
    server_errors = procs.server_errors(server)
    children.stop(server)
    best = max(runs, key=lambda c: runs[c]["events_per_second"])
    return {
        "batch": batch, "events_per_run": total, "workers": workers,
        "json_bytes_per_event": raw_bytes / total, "gzip_bytes_per_batch": gz_bytes / len(batches),
        "methods": methods, "runs": runs, "resend": resend, "headline_clients": int(best),
        "events_per_second": runs[best]["events_per_second"],
        "ratio_to_goal": runs[best]["events_per_second"] / GOAL_EVENTS_PER_SECOND,
        "server_errors_logged": server_errors,
        "conn_max_age": os.environ.get("CONN_MAX_AGE", "0 (default: a connection per request)"),
    }


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for the bench's summary table."""
    def row(name: str, value: Any, goal: str = "", ok: bool | None = None) -> dict[str, Any]:
        return {"figure": name, "value": value, "goal": goal,
                "result": "" if ok is None else ("PASS" if ok else "FAIL")}

    eps = result["events_per_second"]
    once = all(r["each_event_once"] for r in result["runs"].values())
    rows = [row(f"decision-log ingestion events/s ({result['headline_clients']} clients, "
                f"--workers {result['workers']})", f"{eps:,.0f} (×{result['ratio_to_goal']:.2f})",
                "≥ 20,000 events/s, each once", eps >= GOAL_EVENTS_PER_SECOND and once)]
    for clients, run in result["runs"].items():
        rows.append(row(f"  {clients} clients: events/s / batch p95",
                        f"{run['events_per_second']:,.0f} / "
                        f"{run['latency_s']['p95'] * 1000:.0f} ms"))
    rows.append(row("  re-send (all duplicates) events/s",
                    f"{result['resend']['events_per_second']:,.0f}"))
    rows.append(row("  insert methods ev/s: copy / unnest / values", " / ".join(
        f"{result['methods'][m]['best_events_per_second']:,.0f}"
        for m in ("copy", "unnest", "values"))))
    return rows
