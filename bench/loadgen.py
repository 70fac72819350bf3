"""wrk runs (a Lua script sets the headers) and py-spy profiles of the server while wrk runs."""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench.env import LOGS, PYDEPS, Config, median
from bench.procs import BenchError


@dataclass
class WrkResult:
    label: str
    requests_per_second: float
    requests: int
    seconds: float
    bad_responses: int
    socket_errors: int
    bytes_per_request: float
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    server_cpu_seconds: float | None = None
    wrk_cpu_seconds: float | None = None
    machine_busy_seconds: float | None = None  # CPU-seconds of every process on the machine

    @property
    def requests_per_cpu_second(self) -> float | None:
        if not self.server_cpu_seconds:
            return None
        return self.requests / self.server_cpu_seconds

    def as_dict(self) -> dict:
        return dict(self.__dict__, requests_per_cpu_second=self.requests_per_cpu_second)


def combine(label: str, results: list[WrkResult]) -> dict:
    """Rounds of one target: median req/s, and requests per server CPU-second over all rounds
    (the figure that a busy neighbour on the machine disturbs least)."""
    cpu = sum(r.server_cpu_seconds or 0 for r in results)
    requests = sum(r.requests for r in results)
    elapsed = sum(r.seconds for r in results)
    others = sum((r.machine_busy_seconds or 0) - (r.server_cpu_seconds or 0)
                 - (r.wrk_cpu_seconds or 0) for r in results)
    return {
        "label": label,
        "requests_per_second": median([r.requests_per_second for r in results]),
        "rounds_requests_per_second": [round(r.requests_per_second, 1) for r in results],
        "requests": requests,
        "server_cpu_seconds": cpu,
        "server_cpu_share": cpu / elapsed if elapsed else None,
        "wrk_cpu_share": sum(r.wrk_cpu_seconds or 0 for r in results) / elapsed
        if elapsed else None,
        # Everything else that ran meanwhile (other people's work on a shared machine included).
        "other_cpu_share": others / elapsed if elapsed else None,
        "requests_per_cpu_second": requests / cpu if cpu else None,
        "latency_p50_ms": median([r.latency_p50_ms for r in results
                                  if r.latency_p50_ms is not None]),
        "bad_responses": sum(r.bad_responses for r in results),
        "bytes_per_request": max(r.bytes_per_request for r in results),
    }


def machine_busy() -> float:
    """CPU-seconds spent by the whole machine so far (all cores; /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its descendants, in seconds."""
    from bench.procs import tree_pids

    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in tree_pids(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def _lua(headers: dict[str, str]) -> str:
    lines = ['wrk.method = "GET"']
    for name, value in headers.items():
        lines.append(f"wrk.headers[{_lua_string(name)}] = {_lua_string(value)}")
    return "\n".join(lines) + "\n"


def _lua_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


_UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"us": 0.001, "ms": 1, "s": 1000, "m": 60_000}[unit]


def parse(label: str, output: str) -> WrkResult:
    rps = re.search(r"Requests/sec:\s*([\d.]+)", output)
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+), ([\d.]+)(\w+) read", output)
    if not rps or not total:
        raise BenchError(f"could not read wrk's output for {label}:\n{output}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                     output)
    p50 = re.search(r"^\s*50%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s*99%\s+(\S+)", output, re.MULTILINE)
    requests = int(total.group(1))
    read = float(total.group(4)) * _UNITS.get(total.group(5).lower(), 1)
    return WrkResult(
        label=label,
        requests_per_second=float(rps.group(1)),
        requests=requests,
        seconds=_ms(total.group(2) + total.group(3)) / 1000,
        bad_responses=int(bad.group(1)) if bad else 0,
        socket_errors=sum(int(g) for g in sock.groups()) if sock else 0,
        bytes_per_request=read / requests if requests else 0.0,
        latency_p50_ms=_ms(p50.group(1)) if p50 else None,
        latency_p99_ms=_ms(p99.group(1)) if p99 else None,
    )


def wrk(config: Config, label: str, url: str, headers: dict[str, str], *,
        seconds: int | None = None, warmup: int | None = None,
        server_pid: int | None = None) -> WrkResult:
    """Warm up, then measure ``url`` with -t/-c from the config; the parsed result, with the CPU
    time the server (``server_pid`` and its children) spent meanwhile."""
    binary = shutil.which("wrk")
    if binary is None:
        raise BenchError("wrk is not installed: run `make bench` (it installs it) or "
                         "apt-get install wrk")
    LOGS.mkdir(parents=True, exist_ok=True)
    script = LOGS / f"wrk-{re.sub(r'[^a-z0-9]+', '-', label.lower())}.lua"
    script.write_text(_lua(headers))
    base = [binary, "-t", str(config.wrk_threads), "-c", str(config.wrk_connections),
            "-s", str(script)]
    warmup = config.wrk_warmup if warmup is None else warmup
    if warmup:
        _run([*base, "-d", f"{warmup}s", url])
    cpu_before = cpu_seconds(server_pid) if server_pid else None
    busy_before = machine_busy()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    output = _run([*base, "-d", f"{seconds or config.wrk_seconds}s", "--latency", url])
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = parse(label, output)
    result.machine_busy_seconds = machine_busy() - busy_before
    result.wrk_cpu_seconds = (children_after.ru_utime + children_after.ru_stime
                              - children_before.ru_utime - children_before.ru_stime)
    if server_pid and cpu_before is not None:
        result.server_cpu_seconds = cpu_seconds(server_pid) - cpu_before
    with (LOGS / f"{script.stem}.out").open("a") as log:
        log.write(output)
    return result


def _run(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)  # noqa: S603 - fixed argv built here, no shell
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return done.stdout


# --- Profiles -----------------------------------------------------------------------------------

def py_spy() -> str | None:
    found = PYDEPS / "bin" / "py-spy"
    return str(found) if found.exists() else shutil.which("py-spy")


def profile_during(config: Config, pid: int, label: str, url: str,
                   headers: dict[str, str], seconds: int) -> dict | None:
    """py-spy samples ``pid`` while wrk loads ``url``; a summary of where the samples fell."""
    binary = py_spy()
    if binary is None:
        return None
    out = LOGS / f"profile-{re.sub(r'[^a-z0-9]+', '-', label.lower())}.txt"
    load = threading.Thread(target=wrk, args=(config, f"{label} (profiled)", url, headers),
                            kwargs={"seconds": seconds + 2, "warmup": 0}, daemon=True)
    load.start()
    done = subprocess.run(  # noqa: S603 - fixed argv built here, no shell
        [binary, "record", "--gil", "--subprocesses", "-p", str(pid), "-d", str(seconds),
         "-r", "250", "-f", "raw", "-o", str(out)],
        capture_output=True, text=True, timeout=seconds + 60, check=False)
    load.join(timeout=seconds + 30)
    if done.returncode != 0 or not out.exists():
        return {"error": (done.stderr or done.stdout)[-500:]}
    return summarise(out)


# Where a sample's innermost frame lies, most specific first.
BUCKETS = [
    ("gateway view (bundles)", "bundles/"),
    ("gateway view (bundles)", "/bundles/"),
    ("bench bare view", "bench/urls.py"),
    ("project middleware (governance/tenancy, context, logging)", "governance/"),
    ("project middleware (governance/tenancy, context, logging)", "/tenancy/"),
    ("redis client (redis-py asyncio)", "/redis/"),
    ("asgiref sync_to_async / thread hops", "/asgiref/"),
    ("uvicorn protocol", "/uvicorn/"),
    ("uvicorn protocol", "/protocols/"),
    ("django request/response/middleware", "/django/"),
    ("django request/response/middleware", "/handlers/"),
    ("django request/response/middleware", "/urls/"),
    ("django request/response/middleware", "/dispatch/"),
    ("django request/response/middleware", "/utils/"),
    ("redis client (redis-py asyncio)", "/redis/"),
    ("asgiref sync_to_async / thread hops", "/asgiref/"),
    ("concurrent.futures / threading", "/concurrent/"),
    ("threading", "threading.py"),
    ("HTTP parsing (h11)", "/h11/"),
    ("HTTP parsing (httptools)", "/httptools/"),
    ("uvloop", "/uvloop/"),
    ("uvicorn protocol", "/uvicorn/"),
    ("whitenoise", "/whitenoise/"),
    ("axes", "/axes/"),
    ("django_htmx", "/django_htmx/"),
    ("django request/response/middleware", "/django/"),
    ("asyncio event loop", "/asyncio/"),
    ("json", "/json/"),
    ("http.cookies / email / urllib (stdlib)", "/http/"),
]


def _frame_file(frame: str) -> str:
    match = re.search(r"\((.*?):\d+\)$", frame.strip())
    return match.group(1) if match else frame


def _bucket(path: str) -> str:
    for name, needle in BUCKETS:
        if needle in path:
            return name
    return "other: " + path.rsplit("/", 1)[-1]


def summarise(path: Path, top: int = 15) -> dict:
    """Self time per area and per function, inclusive time of the interesting functions."""
    self_area: Counter = Counter()
    self_fn: Counter = Counter()
    inclusive: Counter = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        leaf = frames[-1]
        if leaf.startswith("process "):
            leaf = "(no Python frame) (native:0)"
        self_area[_bucket("/" + _frame_file(leaf))] += count
        self_fn[_short(leaf)] += count
        for frame in set(frames):
            if any(key in frame for key in _INCLUSIVE):
                inclusive[_short(frame)] += count
    def share(counter: Counter) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in counter.most_common(top)]
    return {"samples": total, "self_by_area_pct": share(self_area),
            "self_by_function_pct": share(self_fn), "inclusive_pct": share(inclusive),
            "raw": str(path)}


# Functions whose inclusive share explains the gap between the app and the bare view.
_INCLUSIVE = ("gateway_api.py", "hot.py", "sync_to_async", "SyncToAsync", "MiddlewareMixin",
              "__acall__", "handle_uncaught", "get_response_async", "bare_304",
              "hash_token", "run_asgi", "h11_impl.py", "middleware.py")


def _short(frame: str) -> str:
    match = re.match(r"(.*?) \((.*?):(\d+)\)$", frame.strip())
    if not match:
        return frame.strip()
    func, file, _ = match.groups()
    parts = file.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else file
    return f"{func} ({short})"
