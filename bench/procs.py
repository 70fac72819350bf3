"""The processes the bench starts (uvicorn, the Celery worker, nginx, its own helpers) and how
they are stopped: each in a session of its own, so that stopping one stops its children (uvicorn
workers, Celery pool processes, nginx workers) and nothing that the bench did not start.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from bench.env import LOGS, PYTHON, REPO, Config
from governance.config import uvicorn_flags


class BenchError(RuntimeError):
    """A problem that stops the bench, said plainly (port taken, a server that did not start)."""


class Child:
    def __init__(self, name: str, process: subprocess.Popen, log: Path | None) -> None:
        self.name = name
        self.process = process
        self.log = log

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, chars: int = 3000) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return self.log.read_text(errors="replace")[-chars:]


class Children:
    """Every process the bench started; ``stop_all`` runs on any exit."""

    def __init__(self) -> None:
        self._children: list[Child] = []

    def start(self, name: str, argv: list[str], *, env: dict[str, str], log: bool = True,
              stdin: int | None = None, stdout: int | IO | None = None) -> Child:
        log_path = LOGS / f"{name}.log" if log else None
        out = stdout
        if log_path is not None:
            LOGS.mkdir(parents=True, exist_ok=True)
            out = log_path.open("w")
        process = subprocess.Popen(  # noqa: S603 - fixed argv built by the bench
            argv, cwd=REPO, env=env, stdin=stdin, stdout=out,
            stderr=subprocess.STDOUT if log_path is not None else None,
            start_new_session=True,
        )
        child = Child(name, process, log_path)
        self._children.append(child)
        return child

    def stop(self, child: Child, timeout: float = 15.0) -> None:
        if child in self._children:
            self._children.remove(child)
        if child.process.poll() is not None:
            return
        _signal_group(child.pid, signal.SIGTERM)
        try:
            child.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal_group(child.pid, signal.SIGKILL)
            child.process.wait(timeout=5)
        # Children of the stopped one (pool processes) may outlive it for a moment.
        _signal_group(child.pid, signal.SIGKILL)

    def stop_all(self) -> None:
        for child in reversed(list(self._children)):
            try:
                self.stop(child)
            except Exception as exc:  # keep stopping the others
                print(f"  (could not stop {child.name} [{child.pid}]: {exc})")


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def check_port_free(host: str, port: int, what: str, variable: str) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        raise BenchError(f"Port {port} on {host} (for {what}) is already in use: stop what runs "
                         f"there, or choose another with {variable}=…") from None
    finally:
        sock.close()


def wait_http(url: str, child: Child, timeout: float = 60.0) -> None:
    """Until ``url`` answers (any status); fail with the server's log if it died or never did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise BenchError(f"{child.name} exited ({child.process.returncode}) while starting:\n"
                             f"{child.tail()}")
        try:
            urllib.request.urlopen(url, timeout=1)  # noqa: S310 - loopback URL of the bench
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise BenchError(f"{child.name} did not answer {url} within {timeout:.0f} s:\n{child.tail()}")


def start_uvicorn(children: Children, config: Config, *, workers: int, name: str,
                  extra_env: dict[str, str] | None = None) -> Child:
    """The bench server: ``governance.asgi`` with bench.settings, flags as in scripts/run."""
    check_port_free(config.host, config.port, "the bench's uvicorn", "BENCH_PORT")
    argv = [PYTHON, "-m", "uvicorn", "governance.asgi:application", "--host", config.host,
            "--port", str(config.port), *uvicorn_flags(), "--log-level", "warning",
            "--workers", str(workers)]
    env = config.child_env(DJANGO_SETTINGS_MODULE="bench.settings", **(extra_env or {}))
    child = children.start(name, argv, env=env)
    wait_http(f"{config.base_url()}/healthz", child)
    if workers > 1:  # every worker has bound and answers (the supervisor starts them in turn)
        deadline = time.monotonic() + 30
        while len(tree_pids(child.pid)) < workers + 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
    return child


def start_worker(children: Children, config: Config) -> Child:
    """A Celery worker as scripts/run starts it (prefork, concurrency 2, Redis broker)."""
    argv = [PYTHON, "-m", "celery", "-A", "governance", "worker", "--loglevel", "INFO",
            "--concurrency", "2"]
    child = children.start("celery-worker", argv, env=config.child_env())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not child.alive():
            raise BenchError(f"the Celery worker exited ({child.process.returncode}):\n"
                             f"{child.tail()}")
        if "ready." in child.tail(100_000):
            return child
        time.sleep(0.2)
    raise BenchError(f"the Celery worker was not ready within 60 s:\n{child.tail()}")


def nginx_binary() -> str | None:
    for candidate in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def start_nginx(children: Children, config: Config, *, root: Path, workers: int,
                name: str) -> Child:
    """nginx serving ``root`` statically on BENCH_NGINX_PORT (the physical limit)."""
    check_port_free(config.host, config.nginx_port, "the bench's nginx", "BENCH_NGINX_PORT")
    binary = nginx_binary()
    if binary is None:
        raise BenchError("nginx is not installed: run `make bench` (it installs it) or "
                         "apt-get install nginx")
    prefix = (root.parent / "prefix").resolve()
    for sub in ("logs", "tmp"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    user = "user root root;\n" if os.geteuid() == 0 else ""  # workers must read var/bench
    conf = prefix / "nginx.conf"
    conf.write_text(f"""{user}worker_processes {workers};
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    types {{ application/gzip gz; }}
    server {{
        listen {config.host}:{config.nginx_port};
        location / {{ root {root.resolve()}; etag on; }}
    }}
}}
""")  # noqa: S108 - the temp paths are under var/bench/nginx/prefix, not /tmp
    child = children.start(name, [binary, "-p", str(prefix), "-c", str(conf), "-e",
                                  str(prefix / "logs" / "error.log")], env=dict(os.environ))
    wait_http(f"http://{config.host}:{config.nginx_port}/", child, timeout=15)
    return child


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_rss(pid: int) -> dict[int, int]:
    return {p: rss_bytes(p) for p in tree_pids(pid)}


def server_errors(child: Child) -> dict[str, int]:
    """Exceptions in the server's log (JSON lines), by their last line."""
    found: dict[str, int] = {}
    if child.log is None or not child.log.exists():
        return found
    for line in child.log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("level") not in ("ERROR", "CRITICAL"):
            continue
        trace = [t for t in str(entry.get("exc") or entry.get("message", "")).splitlines()
                 if t.strip()]
        key = trace[-1][:160] if trace else "error"
        found[key] = found.get(key, 0) + 1
    return found
