"""Real processes for the outage tests (tests/faults/test_faults_outage.py): a Redis server and a
PostgreSQL cluster of their own, on free ports in a temporary directory (never the machine's
shared ones, which other tests use), and the control plane as a separate uvicorn process pointed
at them, started as ``scripts/run`` starts it.

Each process runs in a session of its own and is stopped by its process group id only.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import requests
from cryptography.fernet import Fernet

from governance.config import uvicorn_flags

REPO = Path(__file__).resolve().parent.parent
PYTHON = str(REPO / ".venv" / "bin" / "python")
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
PG_BINDIRS = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
# The server under test gets only these variables from the test's own environment.
KEEP_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def missing_binaries() -> str | None:
    """Why these tests cannot run here (None: they can)."""
    if not os.access(REDIS_SERVER, os.X_OK):
        return "redis-server is not installed"
    if not PG_BINDIRS or not os.access(f"{PG_BINDIRS[0]}/initdb", os.X_OK):
        return "PostgreSQL server binaries (initdb, pg_ctl) are not installed"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a postgres OS user (initdb refuses root)"
    return None


def _stop_group(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    except ProcessLookupError:
        pass


class RedisServer:
    """``redis-server`` on a free port, no persistence: a restart starts empty."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = workdir / "redis.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(  # noqa: S603 - fixed argv
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=self.log.open("a"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            _stop_group(self.proc)
            self.proc = None


class PostgresCluster:
    """A throwaway cluster (initdb, trust auth) on a free port; ``stop``/``start`` restart it.
    As root, the cluster belongs to (and runs as) the ``postgres`` OS user."""

    def __init__(self, workdir: Path) -> None:
        self.bin = PG_BINDIRS[0]
        self.workdir = workdir
        self.data = workdir / "pgdata"
        self.port = free_port()
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/tollgate"

    def _run(self, *argv: str, timeout: float = 60) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        result = subprocess.run(  # noqa: S603 - fixed argv
            [*prefix, *argv], capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {result.stdout}{result.stderr}")

    def init(self) -> None:
        self._run(f"{self.bin}/initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "-N", "-E", "UTF8")
        self.start()
        self._run(f"{self.bin}/createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U",
                  "postgres", "tollgate")

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c full_page_writes=off")
        self._run(f"{self.bin}/pg_ctl", "-D", str(self.data), "-o", options, "-l",
                  str(self.workdir / "postgres.log"), "-w", "start")

    def stop(self) -> None:
        self._run(f"{self.bin}/pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()


class ControlPlane:
    """Tollgate's web process (uvicorn, as scripts/run starts it; DEBUG off) on its own PG and
    Redis, with the demo tenant seeded. ``manage`` runs a management command in its
    environment."""

    def __init__(self, workdir: Path, database_url: str, redis_url: str) -> None:
        self.workdir = workdir
        self.var = workdir / "var"
        self.var.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "uvicorn.log"
        self.env = {k: os.environ[k] for k in KEEP_ENV if k in os.environ} | {
            "DATABASE_URL": database_url, "REDIS_URL": redis_url, "DEBUG": "false",
            "SECRET_KEY": Fernet.generate_key().decode() * 2,
            "SECRET_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
            "ALLOWED_HOSTS": "127.0.0.1", "TOLLGATE_VAR_DIR": str(self.var),
            "TOLLGATE_BASE_URL": "https://tollgate.example.test", "SECURE_COOKIES": "false",
            "SECURE_SSL_REDIRECT": "false", "PYTHONUNBUFFERED": "1",
        }
        self.proc: subprocess.Popen | None = None

    def manage(self, *args: str, timeout: float = 120) -> str:
        result = subprocess.run(  # noqa: S603 - fixed argv
            [PYTHON, "manage.py", *args], cwd=REPO, env=self.env, capture_output=True,
            text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"manage.py {args[0]} failed:\n{result.stdout}{result.stderr}")
        return result.stdout

    def script(self, code: str, timeout: float = 120) -> dict:
        """Run ``code`` in ``manage.py shell``; it prints one JSON object as its last line."""
        return json.loads(self.manage("shell", "-c", code, timeout=timeout).splitlines()[-1])

    def start(self) -> None:
        self.proc = subprocess.Popen(  # noqa: S603 - fixed argv
            [PYTHON, "-m", "uvicorn", "governance.asgi:application", "--host", "127.0.0.1",
             "--port", str(self.port), *uvicorn_flags(), "--log-level", "warning"],
            cwd=REPO, env=self.env, stdout=self.log.open("a"), stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"uvicorn exited:\n{self.output()}")
            try:
                requests.get(f"{self.url}/healthz", timeout=1)
                return
            except requests.RequestException:
                time.sleep(0.2)
        raise RuntimeError(f"uvicorn did not answer:\n{self.output()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is not None:
            _stop_group(self.proc)
            self.proc = None


def make_workdir() -> Path:
    """A directory the postgres OS user may own (pytest's tmp_path is private to root)."""
    workdir = Path(tempfile.mkdtemp(prefix="tollgate-outage-"))
    if os.geteuid() == 0:
        os.chmod(workdir, 0o755)  # noqa: S103 - postgres must reach its data directory
        shutil.chown(workdir, "postgres")
    return workdir
