"""`make run`'s stack for real: uvicorn + Celery worker + Celery beat on the embedded default.

Starts scripts/run in a temporary var directory, signs in over HTTP, has the worker run a task,
then presses Ctrl-C and checks that every process is gone.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
CONFIG_PREFIXES = ("DATABASE_URL", "REDIS_URL", "DEBUG", "SECRET_KEY", "OIDC_", "SECURE_",
                   "TOLLGATE_", "CELERY_", "DJANGO_SETTINGS_MODULE")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Output:
    """Collects a process's output lines in a thread; ``wait_for`` polls for a pattern."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream) -> None:
        for line in stream:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(re.search(pattern, line) for line in list(self.lines)):
                return True
            time.sleep(0.2)
        return False

    def text(self) -> str:
        return "".join(self.lines[-80:])


@pytest.fixture
def stack(tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(CONFIG_PREFIXES)}
    gateway_port = _free_port()
    env.update(TOLLGATE_VAR_DIR=str(tmp_path / "var"), PORT=str(port), PYTHONUNBUFFERED="1",
               GATEWAY_PORT=str(gateway_port))
    proc = subprocess.Popen(
        ["scripts/run"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )
    output = Output(proc.stdout)
    try:
        assert output.wait_for(r"Tollgate is running", 120), output.text()
        yield {"proc": proc, "output": output, "url": f"http://127.0.0.1:{port}",
               "env": env, "gateway": f"http://127.0.0.1:{gateway_port}/mcp"}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _children(pgid: int) -> list[str]:
    result = subprocess.run(["ps", "-o", "pid=,args=", "-g", str(pgid)], capture_output=True,
                            text=True)
    return [line for line in result.stdout.splitlines() if line.strip()]


def test_make_run_serves_signs_in_runs_tasks_and_stops_on_ctrl_c(stack):
    url, output, proc = stack["url"], stack["output"], stack["proc"]
    session = requests.Session()
    page = session.get(f"{url}/login/", timeout=10)
    assert page.status_code == 200
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    response = session.post(f"{url}/login/", timeout=10, allow_redirects=True, data={
        "csrfmiddlewaretoken": csrf, "username": "admin", "password": "tollgate-demo"})
    assert response.status_code == 200
    assert "Choose a tenant" in response.text and "Acme Corp" in response.text

    # The worker really consumes from the embedded broker.
    subprocess.run(
        [".venv/bin/python", "manage.py", "shell", "-c",
         "from governance.audit.tasks import verify_audit_chains; verify_audit_chains.delay()"],
        cwd=ROOT, env=stack["env"] | {"DEBUG": "true"}, check=True, timeout=60,
    )
    assert output.wait_for(r"audit chain verified: tenant acme: OK", 60), output.text()
    assert output.wait_for(r"beat: Starting", 5), output.text()
    # The reference gateway runs in front of the demo server and wants an agent's credential.
    assert output.wait_for(r"Tollgate gateway: agents connect to", 30), output.text()
    anonymous = requests.post(stack["gateway"], json={}, timeout=10)
    assert anonymous.status_code == 401, anonymous.text

    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 20
    while _children(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _children(proc.pid) == []
