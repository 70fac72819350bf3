"""One log format: everything a web process writes (uvicorn's own lines, the application's access
line, Django's warnings) is a JSON object per line, when uvicorn runs with the flags of
scripts/uvicorn-flags, as scripts/run, the bench and the deployment docs run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from governance.config import uvicorn_flags
from tests.e2e_support import free_port

REPO = Path(__file__).resolve().parents[2]


def _serve_and_stop(tmp_path: Path, *extra: str) -> list[str]:
    """Start uvicorn like the stack does (at INFO, so its own start and stop lines are there),
    make a few requests, stop it with SIGTERM; every line it wrote on stdout and stderr."""
    port = free_port()
    env = os.environ | {"TOLLGATE_VAR_DIR": str(tmp_path / "var"), "PYTHONUNBUFFERED": "1",
                        "BUNDLE_LOCAL_DIR": str(tmp_path / "bundles"), "LOG_LEVEL": "INFO"}
    out, err = tmp_path / "stdout.log", tmp_path / "stderr.log"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(  # noqa: S603 - fixed argv
            [sys.executable, "-m", "uvicorn", "governance.asgi:application", "--host",
             "127.0.0.1", "--port", str(port), *uvicorn_flags(), "--log-level", "info", *extra],
            cwd=REPO, env=env, stdout=stdout, stderr=stderr)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    requests.get(f"{base}/healthz", timeout=10)
                    break
                except requests.RequestException:  # not listening yet, or slow on a busy machine
                    if proc.poll() is not None or time.monotonic() > deadline:
                        pytest.fail("uvicorn did not start:\n" + err.read_text())
                    time.sleep(0.2)
            assert requests.get(f"{base}/api/v1/no-such-thing/", timeout=10).status_code == 404
            assert requests.post(f"{base}/login/", timeout=10).status_code == 403  # no CSRF
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    return [line for path in (out, err) for line in path.read_text().splitlines()
            if line.strip()]


@pytest.mark.parametrize("extra", [(), ("--workers", "2")], ids=["one-process", "workers"])
def test_every_line_a_web_process_writes_is_json(tmp_path, extra):
    lines = _serve_and_stop(tmp_path, *extra)
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}\n--- all output:\n" + "\n".join(lines))
    assert all({"ts", "level", "logger", "message"} <= set(r) for r in records)
    loggers = {r["logger"] for r in records}
    # uvicorn's own lines (started, shutting down) came through the same formatter …
    assert "uvicorn.error" in loggers
    assert any(r["message"].startswith("Finished server process") for r in records)
    # … and the access line is the application's one (with its request id), not uvicorn's.
    assert "uvicorn.access" not in loggers
    access = [r for r in records if r["logger"] == "governance.access"]
    assert {(r["method"], r["path"], r["status"]) for r in access} >= {
        ("GET", "/healthz", 200), ("GET", "/api/v1/no-such-thing/", 404),
        ("POST", "/login/", 403)}
    assert all(r.get("request_id") for r in access)


def _celery_lines(tmp_path: Path, *argv: str, ready: str) -> list[str]:
    """Start ``celery -A governance <argv>`` as the stack does, wait for ``ready`` in its
    output, stop it with SIGTERM; every line it wrote on stdout and stderr."""
    env = os.environ | {"TOLLGATE_VAR_DIR": str(tmp_path / "var"), "PYTHONUNBUFFERED": "1",
                        "LOG_LEVEL": "INFO"}
    out, err = tmp_path / "celery-stdout.log", tmp_path / "celery-stderr.log"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(  # noqa: S603 - fixed argv
            [sys.executable, "-m", "celery", "-A", "governance", *argv, "--loglevel", "INFO"],
            cwd=REPO, env=env, stdout=stdout, stderr=stderr)
        try:
            deadline = time.monotonic() + 90
            while ready not in err.read_text() + out.read_text():
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"celery {argv[0]} did not start:\n" + err.read_text())
                time.sleep(0.2)
        finally:
            proc.terminate()
            proc.wait(timeout=90)
    return [line for path in (out, err) for line in path.read_text().splitlines()
            if line.strip()]


@pytest.mark.parametrize("argv,ready,said", [
    (("worker", "--concurrency", "1", "--pool", "solo"), "ready.", ("starting", "warm shutdown")),
    (("beat", "--schedule", "{tmp}/beat-schedule"), "beat: Starting", ("starting",)),
], ids=["worker", "beat"])
def test_every_line_a_celery_process_writes_is_json(tmp_path, argv, ready, said):
    """Celery's ASCII-art banner and its shutdown line went to stdout as plain text; the worker
    and beat now say both in JSON lines (governance.celery.QuietWorker / QuietBeat)."""
    argv = tuple(arg.format(tmp=tmp_path) for arg in argv)
    lines = _celery_lines(tmp_path, *argv, ready=ready)
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}\n--- all output:\n" + "\n".join(lines))
    ours = [r["message"] for r in records if r["logger"] == "governance.celery"]
    for phrase in said:
        assert any(phrase in message for message in ours), ours
