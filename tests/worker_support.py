"""A real Celery worker process for tests whose behaviour depends on one.

The worker must see the rows the test commits, so it runs against the test database; that is
only possible on PostgreSQL (SQLite test databases live in this process's memory), hence the
``postgres_only`` dependency — CI always runs these. Tests using it need ``transactional_db``
so that ``transaction.on_commit`` fires and the worker sees committed data.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from django.db import connection

from tests.e2e_support import stop_process

REPO = Path(__file__).resolve().parent.parent


class Worker:
    """A running ``celery worker``; ``log()`` is its output so far (for failure messages)."""

    def __init__(self, process: subprocess.Popen, log_file: Path) -> None:
        self.process = process
        self.log_file = log_file

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")[-4000:]

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 60.0) -> None:
        """Poll ``predicate`` until true; fail with the worker's log when it never is."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.process.poll() is not None:
                pytest.fail(f"the Celery worker exited ({self.process.returncode}):\n{self.log()}")
            time.sleep(0.2)
        pytest.fail(f"gave up waiting after {timeout} s; worker log:\n{self.log()}")


def start_worker(tmp_path: Path, **env_overrides: str) -> Worker:
    settings = connection.settings_dict
    database_url = (
        f"postgres://{settings['USER']}@{settings['HOST'] or '127.0.0.1'}:"
        f"{settings['PORT'] or 5432}/{settings['NAME']}"
    )
    # Loopback receivers, as in the test process (tests/conftest.py).
    env = os.environ | {"DATABASE_URL": database_url, "DEBUG": "false",
                        "OUTBOUND_ALLOWED_NETWORKS": "127.0.0.0/8,::1/128"} | env_overrides
    # One log per worker: a second worker in the same test must not wipe the first one's.
    log_file = tmp_path / f"worker-{len(list(tmp_path.glob('worker*.log')))}.log"
    with log_file.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "governance", "worker", "--pool", "solo",
             "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    worker = Worker(process, log_file)
    worker.wait_until(lambda: "ready." in log_file.read_text(errors="replace"), timeout=60)
    return worker


def stop_worker(worker: Worker) -> None:
    stop_process(worker.process)


@pytest.fixture
def celery_worker_process(postgres_only, transactional_db, tmp_path) -> Iterator[Callable]:
    """``start(**env)`` → a running worker (stopped after the test)."""
    started: list[Worker] = []

    def start(**env: str) -> Worker:
        worker = start_worker(tmp_path, **env)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        stop_worker(worker)


class BlockingReceiver:
    """An HTTP receiver on 127.0.0.1 whose FIRST request hangs until ``release`` (at most
    30 s), so a test can kill the sender mid-request; every later one is answered 200 with a
    body both webhooks and Splunk HEC accept. Records every request (headers, body, time)."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.first_in_flight = threading.Event()
        self.release = threading.Event()
        self.base = ""

    @property
    def url(self) -> str:
        return self.base + "/hook"


@pytest.fixture
def blocking_receiver() -> Iterator[BlockingReceiver]:
    rec = BlockingReceiver()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with lock:
                first = not rec.requests
                rec.requests.append({"headers": dict(self.headers), "body": body,
                                     "at": time.monotonic()})
            if first:
                rec.first_in_flight.set()
                rec.release.wait(timeout=30)
            answer = b'{"text":"Success","code":0}'
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
            except OSError:  # the sender died while we held its request
                pass

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rec.base = f"http://127.0.0.1:{server.server_address[1]}"
    yield rec
    rec.release.set()
    server.shutdown()
    server.server_close()
