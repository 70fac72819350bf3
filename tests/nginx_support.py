"""Debian's nginx for tests: the binary (a missing one fails with the command that installs
it, never a skip), a main configuration around an http-context file such as the one
``manage.py deploy_config nginx`` renders, and a foreground nginx with its own prefix, pid and
temporary directories, stopped by its process id only.

As root the workers run as ``www-data`` (Debian's default; ``nobody`` where it does not exist),
so files nginx sends must really be readable by that user, as in production.
"""

from __future__ import annotations

import grp
import os
import pwd
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx")
MIME_TYPES = Path("/etc/nginx/mime.types")


def nginx_binary() -> str:
    for candidate in CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("nginx is not installed: run `make test-deps` (installs Debian's nginx-light) "
                "or `apt-get install nginx-light`")
    raise AssertionError("unreachable")


def worker_user() -> pwd.struct_passwd | None:
    """The user nginx's workers run as (None: not root, they run as this user)."""
    if os.geteuid() != 0:
        return None
    for name in ("www-data", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    pytest.fail("running as root without a www-data or nobody user for nginx's workers")
    raise AssertionError("unreachable")


def main_conf(prefix: Path, include: Path) -> Path:
    """``prefix/nginx.conf``: a foreground nginx (one worker) whose http block includes
    ``include``; its pid, logs and temporary directories under ``prefix``."""
    for sub in ("logs", "tmp"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    user = worker_user()
    user_line = f"user {user.pw_name} {grp.getgrgid(user.pw_gid).gr_name};" if user else ""
    mime = f"include {MIME_TYPES};" if MIME_TYPES.exists() else ""
    tmp = prefix / "tmp"
    conf = prefix / "nginx.conf"
    conf.write_text(f"""{user_line}
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log info;
events {{ worker_connections 512; }}
http {{
    {mime}
    default_type application/octet-stream;
    access_log {prefix}/logs/access.log;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {include};
}}
""")
    return conf


def check_conf(conf: Path) -> subprocess.CompletedProcess:
    """``nginx -t`` of ``conf`` (returncode 0: valid)."""
    prefix = conf.parent
    return subprocess.run(
        [nginx_binary(), "-t", "-p", str(prefix), "-c", str(conf), "-e",
         str(prefix / "logs" / "error.log")], capture_output=True, text=True, timeout=60)


class Nginx:
    """A foreground nginx (its own session) serving ``conf``."""

    def __init__(self, conf: Path) -> None:
        self.conf = conf
        self.prefix = conf.parent
        self.proc: subprocess.Popen | None = None

    def start(self, ready_url: str, timeout: float = 60) -> None:
        self.proc = subprocess.Popen(
            [nginx_binary(), "-p", str(self.prefix), "-c", str(self.conf), "-e",
             str(self.prefix / "logs" / "error.log")],
            stdout=(self.prefix / "logs" / "stdout.log").open("w"), stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"nginx exited ({self.proc.returncode}):\n{self.error_log()}")
            try:
                requests.get(ready_url, timeout=5)
                return
            except requests.RequestException:
                if time.monotonic() > deadline:
                    pytest.fail(f"nginx did not answer within {timeout} s:\n{self.error_log()}")
                time.sleep(0.2)

    def error_log(self) -> str:
        path = self.prefix / "logs" / "error.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""

    def worker_uids(self) -> set[int]:
        """Real uids of the master's children (the workers)."""
        uids = set()
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        for pid in children.read_text().split():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("Uid:"):
                    uids.add(int(line.split()[1]))
        return uids

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGQUIT)  # graceful: workers finish, then exit
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
