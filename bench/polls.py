"""Sections 1 and 2 of ``make bench``: gateway polls.

1. Poll 304 throughput through the whole app against a bare async Django view in the same
   server and against nginx serving the same bundle file (wrk, 1 and 2 workers).
2. N concurrent long polls held, one bundle published, time until every client has the new
   ETag; the server's RSS while they are held (the client is bench/longpoll_client.py).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from bench import loadgen, procs
from bench.env import LOGS, MB, PYTHON, VAR, Config, quantile, say
from bench.procs import BenchError, Children
from bench.report import GOALS, fmt_s
from bench.stack import Fixtures, established, expect, rate_count

# --- 1. Poll 304 throughput ----------------------------------------------------------------------

def _pair(config: Config, server: procs.Child, targets: list[tuple[str, str, dict, int]],
          rounds: int, seconds: int, warmup: int) -> dict[str, dict]:
    """Alternate the targets for ``rounds`` rounds (order flipped every round, so that a drift
    of the machine's load hits both alike); each target's rounds combined."""
    found: dict[str, list[loadgen.WrkResult]] = {label: [] for label, *_ in targets}
    for label, url, headers, _ in targets:
        loadgen.wrk(config, f"{label} warm-up", url, headers, seconds=warmup, warmup=0)
    for r in range(rounds):
        for label, url, headers, answer_bytes in (targets if r % 2 == 0 else targets[::-1]):
            result = loadgen.wrk(config, label, url, headers, seconds=seconds, warmup=0,
                                 server_pid=server.pid)
            _check_wrk(result, answer_bytes)
            found[label].append(result)
    return {label: loadgen.combine(label, results) for label, results in found.items()}


def section_poll(config: Config, children: Children, fx: Fixtures) -> dict[str, Any]:
    from bench.urls import BARE_ETAG, BARE_GATEWAY_PATH, BARE_WEB_PATH

    rounds = 1 if config.quick else 3
    seconds = max(2, -(-config.wrk_seconds // rounds))
    say("\n== 1. Gateway poll (304) throughput ==")
    say(f"  wrk -t{config.wrk_threads} -c{config.wrk_connections}, {rounds} round(s) of "
        f"{seconds} s per target after {config.wrk_warmup} s of warm-up; wrk and the servers "
        f"share the machine's {os.cpu_count()} cores (load average before: "
        f"{_loadavg()})")
    say(f"  server: {SERVER_FLAGS}")
    slug = fx.poll.slug
    app_url = f"{config.base_url()}/api/v1/gateway/bundles/{slug}"
    bare_url = f"{config.base_url()}{BARE_GATEWAY_PATH}"
    web_url = f"{config.base_url()}{BARE_WEB_PATH}"
    auth = {"Authorization": f"Bearer {fx.poll_token}"}
    app_headers = auth | {"If-None-Match": f'"{fx.poll_pointer["sha256"]}"'}
    bare_headers = auth | {"If-None-Match": BARE_ETAG}
    runs: dict[str, Any] = {}
    profiles: dict[str, Any] = {}
    for workers in config.worker_counts:
        server = procs.start_uvicorn(children, config, workers=workers,
                                     name=f"uvicorn-poll-{workers}w")
        targets = [("app", app_url, app_headers,
                    _size(expect(app_url, app_headers, 304, "gateway poll"))),
                   ("bare", bare_url, bare_headers,
                    _size(expect(bare_url, bare_headers, 304, "bare view (gateway chain)"))),
                   ("bare-web", web_url, bare_headers,
                    _size(expect(web_url, bare_headers, 304, "bare view (web UI chain)")))]
        measured = _pair(config, server, targets, rounds, seconds, config.wrk_warmup)
        app, bare, web = measured["app"], measured["bare"], measured["bare-web"]
        ratio = app["requests_per_second"] / bare["requests_per_second"]
        cpu_ratio = app["requests_per_cpu_second"] / bare["requests_per_cpu_second"]
        runs[str(workers)] = {"app": app, "bare": bare, "bare_web_chain": web,
                              "app_over_bare": ratio, "app_over_bare_per_cpu": cpu_ratio}
        say(f"  uvicorn --workers {workers}: app {app['requests_per_second']:7.0f} req/s "
            f"({app['requests_per_cpu_second']:5.0f}/CPU-s)  bare "
            f"{bare['requests_per_second']:7.0f} req/s ({bare['requests_per_cpu_second']:5.0f}"
            f"/CPU-s)  app/bare {ratio:.2f} (per CPU-s {cpu_ratio:.2f})")
        say(f"      bare view behind the web UI's middleware: {web['requests_per_second']:7.0f} "
            f"req/s ({web['requests_per_cpu_second']:5.0f}/CPU-s)")
        say(f"      cores used by server / wrk / everything else: app "
            f"{app['server_cpu_share']:.2f} / {app['wrk_cpu_share']:.2f} / "
            f"{app['other_cpu_share']:.2f}, bare {bare['server_cpu_share']:.2f} / "
            f"{bare['wrk_cpu_share']:.2f} / {bare['other_cpu_share']:.2f}; latency p50 "
            f"{app['latency_p50_ms']:.1f} / {bare['latency_p50_ms']:.1f} ms")
        if (ratio < GOALS["poll_app_over_bare"] or config.profile) and not profiles:
            spy = 4 if config.quick else 8
            say(f"  profiling (py-spy --gil, {spy} s each, --workers {workers}) …")
            profiles = {
                "workers": workers,
                "app": loadgen.profile_during(config, server.pid, f"app {workers}w", app_url,
                                              app_headers, spy),
                "bare": loadgen.profile_during(config, server.pid, f"bare {workers}w", bare_url,
                                               bare_headers, spy),
            }
        children.stop(server)

    # nginx serving the very same tarball (its own ETag, sent back in If-None-Match).
    root = VAR / "nginx" / "www"
    root.mkdir(parents=True, exist_ok=True)
    bundle_file = root / "bundle.tar.gz"
    bundle_file.write_bytes(fx.bundle_bytes())
    bundle_file.chmod(0o644)
    nginx_url = f"http://{config.host}:{config.nginx_port}/bundle.tar.gz"
    nginx_runs = {}
    for workers in config.worker_counts:
        server = procs.start_nginx(children, config, root=root, workers=workers,
                                   name=f"nginx-{workers}w")
        etag = expect(nginx_url, {}, 200, "nginx")["etag"]
        headers = auth | {"If-None-Match": etag}
        size = _size(expect(nginx_url, headers, 304, "nginx If-None-Match"))
        result = _pair(config, server, [("nginx", nginx_url, headers, size)], 1,
                       config.wrk_seconds, config.wrk_warmup)["nginx"]
        nginx_runs[str(workers)] = result
        say(f"  nginx worker_processes {workers}: {result['requests_per_second']:8.0f} req/s "
            f"({result['requests_per_cpu_second']:6.0f}/CPU-s)")
        children.stop(server)

    best = max(runs, key=lambda w: runs[w]["app"]["requests_per_second"])
    for workers, run in runs.items():
        if workers in nginx_runs:
            run["app_over_nginx"] = (run["app"]["requests_per_second"]
                                     / nginx_runs[workers]["requests_per_second"])
    headline = runs[best]
    return {
        "headline_workers": int(best),
        "app_rps": headline["app"]["requests_per_second"],
        "bare_rps": headline["bare"]["requests_per_second"],
        "bare_web_chain_rps": headline["bare_web_chain"]["requests_per_second"],
        "nginx_rps": nginx_runs.get(best, {}).get("requests_per_second"),
        "app_over_bare": headline["app_over_bare"],
        "app_over_bare_per_cpu": headline["app_over_bare_per_cpu"],
        "app_over_nginx": headline.get("app_over_nginx"),
        "by_workers": runs,
        "nginx_by_workers": nginx_runs,
        "profile": profiles,
        "wrk": {"threads": config.wrk_threads, "connections": config.wrk_connections,
                "rounds": rounds, "seconds_per_round": seconds,
                "warmup_seconds": config.wrk_warmup},
        "server_flags": SERVER_FLAGS,
    }


SERVER_FLAGS = ("uvicorn governance.asgi:application --lifespan off --log-level warning "
                "--workers N (as scripts/run; loop and HTTP parser left to uvicorn's 'auto')")


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _size(headers: dict[str, str]) -> int:
    """Bytes of a bodiless answer with these headers (status line included)."""
    return 32 + sum(len(k) + len(v) + 4 for k, v in headers.items())


def _check_wrk(result: loadgen.WrkResult, answer_bytes: int) -> None:
    """Every answer was the expected 304 (wrk counts a 200 as a success too: check the size)."""
    if result.bad_responses or result.bytes_per_request > answer_bytes * 1.1 + 32:
        raise BenchError(f"{result.label}: {result.bad_responses} non-2xx/3xx answers, "
                         f"{result.bytes_per_request:.0f} bytes per answer — not the 304s "
                         f"expected (see {LOGS})")


# --- 2. Concurrent long polls --------------------------------------------------------------------

def section_longpoll(config: Config, children: Children, fx: Fixtures,
                     workers: int) -> dict[str, Any]:
    from bench import fixtures
    from bundles import publish

    n = config.longpoll_clients
    say(f"\n== 2. {n} concurrent long polls (Prefer: wait={config.longpoll_wait}), "
        f"uvicorn --workers {workers} ==")
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit < n + 500:
        raise BenchError(f"RLIMIT_NOFILE is {limit}; {n} long polls need more. Raise the hard "
                         "limit (ulimit -Hn) or lower BENCH_LONGPOLL_CLIENTS.")
    server = procs.start_uvicorn(children, config, workers=workers, name="uvicorn-longpoll")
    old = publish.current_pointer(fx.poll.slug)
    url = f"{config.base_url()}/api/v1/gateway/bundles/{fx.poll.slug}"
    # A fleet in its steady state: every token is in the hot store (one poll each, in turn).
    for _, token in fx.longpoll:
        expect(url, {"Authorization": f"Bearer {token}", "If-None-Match": f'"{old["sha256"]}"'},
               304, "token warm-up")
    gateway_ids = [g for g, _ in fx.longpoll]
    baseline = rate_count(config, gateway_ids)
    spec = {"host": config.host, "port": config.port,
            "path": f"/api/v1/gateway/bundles/{fx.poll.slug}", "etag": f'"{old["sha256"]}"',
            "wait": config.longpoll_wait, "clients": n, "tokens": [t for _, t in fx.longpoll],
            "connect_concurrency": 200, "retry_delay": 1.0,
            "deadline": 2 * config.longpoll_wait + 30}
    spec_path, result_path = LOGS / "longpoll-spec.json", LOGS / "longpoll-result.json"
    spec_path.write_text(json.dumps(spec))
    result_path.unlink(missing_ok=True)
    started = time.monotonic()
    client = children.start("longpoll-client", [PYTHON, "-m", "bench.longpoll_client",
                                                 str(spec_path), str(result_path)],
                            env=config.child_env(), log=False, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    lines = _LineReader(client)
    # Paced by the server: at most `window` requests sent but not yet authenticated (its rate
    # counters), as a fleet's polls arrive spread out rather than in one burst.
    window = 200
    # Clients whose wait runs out before all are held poll again (as gateways do), so holding
    # may take longer than one wait.
    deadline = started + (30.0 if config.quick else 120.0)
    inflight = authenticated = sockets = 0
    while time.monotonic() < deadline:
        authenticated = rate_count(config, gateway_ids) - baseline
        lines.allow(authenticated + window)
        inflight, _, _ = lines.inflight()
        if inflight >= n and authenticated >= n:
            sockets = established(config.port)
            if sockets >= n:
                break
        time.sleep(0.1)
    lines.final()  # clients not started by now never will be (the held count says so)
    time.sleep(1.0)
    inflight, errors_before, _ = lines.inflight()
    sockets = established(config.port)
    authenticated = rate_count(config, gateway_ids) - baseline
    rss = procs.tree_rss(server.pid)
    hold_seconds = time.monotonic() - started
    say(f"  held after {hold_seconds:.1f} s: {inflight} requests waiting (client side), "
        f"{sockets} established server sockets, {authenticated} requests authenticated "
        f"(server counters), {errors_before} errors while connecting; server RSS "
        f"{sum(rss.values()) / MB:.0f} MB")
    t_publish = time.monotonic()
    new = fixtures.publish_now(fx.poll)
    t0 = time.monotonic()
    if not lines.wait_done(spec["deadline"] + 30):
        raise BenchError("the long-poll client did not finish")
    client.process.wait(timeout=30)
    children.stop(client)
    data = json.loads(result_path.read_text())
    new_etag = f'"{new["sha256"]}"'
    got = [d["t"] - t0 for d in data["done"] if d["etag"] == new_etag]
    wrong = [d for d in data["done"] if d["etag"] != new_etag]
    errors_after: dict[str, int] = {}
    for e in data["errors"]:
        if e["t"] >= t0:
            errors_after[e["error"]] = errors_after.get(e["error"], 0) + 1
    errors_hold: dict[str, int] = {}
    for e in data["errors"]:
        if e["t"] < t0:
            errors_hold[e["error"]] = errors_hold.get(e["error"], 0) + 1
    server_errors = procs.server_errors(server)
    rss_after = procs.tree_rss(server.pid)
    children.stop(server)
    result = {
        "clients": n, "gateways": len(gateway_ids), "workers": workers,
        "held_inflight": inflight, "held_sockets": sockets,
        "authenticated_requests": authenticated, "seconds_to_hold": hold_seconds,
        "errors_while_connecting": errors_hold,
        "errors_after_publish": errors_after, "server_errors_logged": server_errors,
        "server_rss_during_hold_mb": sum(rss.values()) / MB,
        "server_rss_by_process_mb": {str(p): v / MB for p, v in rss.items()},
        "server_rss_after_mb": sum(rss_after.values()) / MB,
        "publish_seconds": t0 - t_publish,
        "clients_started": data["started"],
        "received_new_etag": len(got), "received_other_etag": len(wrong),
        "polls_sent": data["polls"],
        "time_to_receive_s": {"p50": quantile(got, 0.5), "p95": quantile(got, 0.95),
                              "p99": quantile(got, 0.99), "max": max(got) if got else None,
                              "min": min(got) if got else None},
        "clock": "from bundle_publish() returning (committed, pointer set, announced); clients "
                 "retry an error after 0.5-1.5 s, as a gateway would",
    }
    ttr = result["time_to_receive_s"]
    say(f"  published in {result['publish_seconds'] * 1000:.0f} ms; {len(got)}/{n} got the new "
        f"ETag; time to receive p50 {fmt_s(ttr['p50'])} p95 {fmt_s(ttr['p95'])} max "
        f"{fmt_s(ttr['max'])}; errors after the publish {errors_after or 'none'}")
    if server_errors:
        say(f"  server errors logged: {server_errors}")
    return result


class _LineReader:
    """The long-poll client's progress lines, read in the background."""

    def __init__(self, child: procs.Child) -> None:
        self.latest = (0, 0, 0)
        self.done = threading.Event()
        self._child = child
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in self._child.process.stdout:
            line = raw.decode().strip()
            if line.startswith("INFLIGHT"):
                self.latest = tuple(int(x) for x in line.split()[1:4])
            elif line == "DONE":
                self.done.set()
        self.done.set()

    def inflight(self) -> tuple[int, int, int]:
        return self.latest

    def allow(self, count: int) -> None:
        """Let the client have ``count`` clients started in all."""
        self._send(f"ALLOW {count}")

    def final(self) -> None:
        """No more clients: the client finishes once those it started are done."""
        self._send("FINAL")

    def _send(self, line: str) -> None:
        try:
            self._child.process.stdin.write(f"{line}\n".encode())
            self._child.process.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass

    def wait_done(self, timeout: float) -> bool:
        return self.done.wait(timeout)
