"""`make bench`: figures and ratios measured in one run on this machine. Not a test: it prints.

1. Gateway poll 304 throughput through the whole app (uvicorn + governance.asgi, DEBUG off,
   PostgreSQL, Redis, a real gateway token, If-None-Match = current ETag) against a bare async
   Django view answering 304 in the same server (bench.settings: same flags, same middleware)
   and against nginx serving the same bundle file (the physical limit). wrk, 1 and 2 workers.
2. N concurrent long polls (``Prefer: wait=60``) held, one bundle published, time until every
   client has the new ETag; the server's RSS while they are held.
3. Compile + sign for synthetic tenants of 1/100, 1/10 and the full size (10k agents, 1k
   servers, 20k tools, 2k scopes, 50k grants), each measured in fresh processes.
4. Registry write (service layer, another process) → the Celery worker builds (debounced) →
   a long-polling gateway has the new ETag: latency over ~30 writes.
5. Decision-log ingestion (bench/ingest.py): gzip batches POSTed to /api/v1/gateway/logs by 2
   and 4 clients, events/s against the 20,000/s goal, each event stored once; re-send rate.
6. Mixed load (bench/mixed.py; only when BENCH_SECTIONS names 6): 1,000 gateways polling,
   reporting, escalating and uploading logs, 50 approvers deciding, an admin editing the
   registry, for BENCH_MIXED_SECONDS (300); per-endpoint p50/p95/p99, server RSS over time,
   and at the end: everything decided and in the DB, every gateway on the current revision.

Sections 1 and 2 live in bench/polls.py, 3 and 4 in bench/builds.py, 5 in bench/ingest.py and 6
in bench/mixed.py; bench/stack.py prepares and reads the stack they measure, bench/report.py
holds the goals and prints the summary. This module runs the sections in order.

Everything it starts (uvicorn, a Celery worker, nginx, its helpers) it stops, also on Ctrl-C.
It owns the database ``tollgate_bench`` (dropped and re-created) and Redis db 11 (flushed).
Results: the summary printed at the end and var/bench/results.json. ``BENCH_QUICK=1``: a smoke
run of a minute or two. Other knobs: BENCH_* in bench/env.py.
"""

from __future__ import annotations

import atexit
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from typing import Any

from bench import ingest, mixed, procs
from bench.builds import section_compile, section_write_to_etag
from bench.env import LOGS, REPO, VAR, Config, say
from bench.polls import section_longpoll, section_poll
from bench.procs import BenchError, Children
from bench.report import GOALS, print_profile, print_summary, summary, trim_pstats
from bench.stack import Fixtures, flush_redis, prepare_database, raise_file_limit, setup_django


def code_state() -> dict[str, Any]:
    """The commit measured (other people may commit to this checkout while the bench runs)."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,  # noqa: S603,S607
                              check=False)
        return done.stdout.strip()

    changed = [line[3:] for line in git("status", "--porcelain", "--", "governance", "registry",
                                        "gateway", "requirements.txt").splitlines()]
    return {"head": git("rev-parse", "--short", "HEAD"), "uncommitted": changed}


def machine() -> dict[str, Any]:
    import django

    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "django": django.get_version(), "platform": platform.platform(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)}


# --- Main ----------------------------------------------------------------------------------------

def main() -> int:
    config = Config.from_env()
    children = Children()
    atexit.register(children.stop_all)

    def on_signal(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    results: dict[str, Any] = {"quick": config.quick, "started_at": time.strftime(
        "%Y-%m-%dT%H:%M:%S%z")}
    started = time.monotonic()
    status = 0
    results["code"] = code_state()
    try:
        LOGS.mkdir(parents=True, exist_ok=True)
        limit = raise_file_limit(max(65_536, 2 * config.longpoll_clients + 2_000))
        say(f"Tollgate bench ({'quick' if config.quick else 'full'}) at {results['code']['head']}"
            f"{' + uncommitted changes' if results['code']['uncommitted'] else ''}; "
            f"RLIMIT_NOFILE {limit}; logs in {LOGS}")
        procs.check_port_free(config.host, config.port, "the bench's uvicorn", "BENCH_PORT")
        procs.check_port_free(config.host, config.nginx_port, "the bench's nginx",
                              "BENCH_NGINX_PORT")
        seconds = prepare_database(config)
        flush_redis(config)
        setup_django(config)
        say(f"database {config.database_name} created and migrated in {seconds:.1f} s; "
            f"Redis {config.redis_url} flushed")
        fx = Fixtures(config)
        results["machine"] = machine()
        workers = config.worker_counts[-1]

        def section(number: str, key: str, run: Any, *args: Any) -> None:
            """One section; a failure is reported and the next section still runs."""
            nonlocal status
            if number not in config.sections:
                return
            try:
                results[key] = run(*args)
            except BenchError as exc:
                say(f"  section {number} failed: {exc}")
                results.setdefault("errors", {})[key] = str(exc)
                status = 1
            except Exception as exc:  # a bug in one section must not cost the others
                say(f"  section {number} failed:\n{traceback.format_exc()}")
                results.setdefault("errors", {})[key] = f"{type(exc).__name__}: {exc}"
                status = 1
            finally:
                children.stop_all()

        section("1", "poll", section_poll, config, children, fx)
        if "poll" in results:
            workers = results["poll"]["headline_workers"]
            print_profile(results["poll"].get("profile") or {})
        section("2", "longpoll", section_longpoll, config, children, fx, workers)
        section("4", "write_to_etag", section_write_to_etag, config, children, fx, workers)
        section("3", "compile", section_compile, config)
        if results.get("compile", {}).get("cprofile"):
            say("\ncProfile of bundle_publish (largest size), by cumulative time:")
            say(trim_pstats(results["compile"]["cprofile"]["cumulative"]))
            say("by own time:")
            say(trim_pstats(results["compile"]["cprofile"]["tottime"]))
        section(ingest.SECTION, "ingest", ingest.section_ingest, config, children, workers)
        section(mixed.SECTION, "mixed", mixed.section_mixed, config, children, workers)
    except BenchError as exc:
        say(f"\nbench stopped: {exc}")
        results["error"] = str(exc)
        status = 1
    except KeyboardInterrupt:
        say("\nbench interrupted")
        results["error"] = "interrupted"
        status = 130
    finally:
        children.stop_all()
    results["code_after"] = code_state()
    if results["code_after"] != results["code"]:
        say(f"\nNOTE: the code changed while the bench ran ({results['code']} → "
            f"{results['code_after']}): the figures may mix versions.")
    results["goals"] = GOALS
    results["elapsed_seconds"] = round(time.monotonic() - started, 1)
    rows = summary(results, config)
    results["summary"] = rows
    print_summary(rows)
    out = VAR / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    say(f"results: {out}  ({results['elapsed_seconds']} s)")
    return status


if __name__ == "__main__":
    sys.exit(main())
