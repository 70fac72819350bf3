"""`make run`'s stack for real: uvicorn + Celery worker + Celery beat + the demo gateway.

Each test starts the stack in a temporary var directory on free ports, in a session of its own,
and stops it the way people do: Ctrl-C typed into the terminal `make run` runs in (a
pseudo-terminal whose foreground process group gets the SIGINT), SIGINT to `scripts/run` started
in the background of a non-interactive shell (where it starts with SIGINT ignored), or one of
the processes dying. Every process of the session must then be gone. Waits are on conditions,
with timeouts generous enough for a loaded machine.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
CONFIG_PREFIXES = ("DATABASE_URL", "REDIS_URL", "DEBUG", "SECRET_KEY", "OIDC_", "SECURE_",
                   "TOLLGATE_", "CELERY_", "DJANGO_SETTINGS_MODULE")
MAKE_VARIABLES = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")
START, STOP = 180, 120  # seconds: starting the stack (migrations included), stopping it
# What `ps` shows for each process scripts/run starts.
PROCESSES = {"web": "uvicorn governance.asgi:application", "worker": "celery -A governance worker",
             "beat": "celery -A governance beat", "gateway": "-m gateway run"}
# Becomes the controlling terminal's session leader, then `make run`.
WITH_TERMINAL = ("import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
                 "os.execvp(sys.argv[1], sys.argv[1:])")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return bool(condition())


class Output:
    """Collects a process's output in a thread (a pipe, or a pseudo-terminal's master side)."""

    def __init__(self, read) -> None:
        self.chunks: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(read,), daemon=True)
        self._thread.start()

    def _pump(self, read) -> None:
        while True:
            try:
                chunk = read()
            except OSError:  # EIO: the terminal's last user is gone
                return
            if not chunk:
                return
            self.chunks.append(chunk)

    def wait_for(self, pattern: str, timeout: float) -> bool:
        return wait_until(lambda: re.search(pattern, self.text()) is not None, timeout)

    def text(self) -> str:
        return "".join(self.chunks)

    def tail(self) -> str:
        return "\n".join(self.text().splitlines()[-80:])


def session(sid: int) -> list[str]:
    """Every process of session ``sid``, as "pid args"."""
    result = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "-s", str(sid)], capture_output=True,
                            text=True, check=False)
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def kill_session(sid: int) -> None:
    for line in session(sid):
        try:
            os.kill(int(line.split()[0]), signal.SIGKILL)
        except ProcessLookupError:
            pass


def started(sid: int) -> list[str]:
    """The processes of session ``sid`` that scripts/supervise.py started: not the supervisor,
    whose own argument list names every one of them."""
    return [line for line in session(sid) if "scripts/supervise.py" not in line]


def running(sid: int) -> set[str]:
    commands = started(sid)
    return {name for name, args in PROCESSES.items() if any(args in line for line in commands)}


class Stack:
    def __init__(self, tmp_path: Path) -> None:
        self.port, self.gateway_port = _free_port(), _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.gateway = f"http://127.0.0.1:{self.gateway_port}/mcp"
        self.var = tmp_path / "var"
        self.var.mkdir()
        # Not the configuration of the suite (nor of the `make test` that may run it).
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(CONFIG_PREFIXES) and k not in MAKE_VARIABLES}
        self.env.update(TOLLGATE_VAR_DIR=str(tmp_path / "var"), PORT=str(self.port),
                        PYTHONUNBUFFERED="1", GATEWAY_PORT=str(self.gateway_port))
        self.proc: subprocess.Popen | None = None
        self.output: Output | None = None
        self.master: int | None = None

    def in_terminal(self) -> None:
        """`make run` in a pseudo-terminal, as the foreground job of its own session."""
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WITH_TERMINAL, "make", "-s", "-o", ".venv/.installed", "run"],
            cwd=ROOT, env=self.env | {"TERM": "dumb"}, stdin=slave, stdout=slave, stderr=slave,
            start_new_session=True,
        )
        os.close(slave)
        master = self.master
        self.output = Output(lambda: os.read(master, 65536).decode(errors="replace"))

    def in_background_of_a_shell(self) -> int:
        """`scripts/run &` in a non-interactive shell; the pid of scripts/run."""
        self.proc = subprocess.Popen(
            ["sh", "-c", "scripts/run & echo \"scripts/run is $!\"; wait $!"], cwd=ROOT,
            env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        stdout = self.proc.stdout
        self.output = Output(stdout.readline)
        assert self.output.wait_for(r"scripts/run is \d+", 60), self.output.tail()
        return int(re.search(r"scripts/run is (\d+)", self.output.text()).group(1))

    def wait_running(self) -> None:
        assert self.output.wait_for(r"Tollgate is running", START), self.output.tail()
        if not wait_until(lambda: running(self.proc.pid) == set(PROCESSES), 60):
            missing = set(PROCESSES) - running(self.proc.pid)
            pytest.fail(f"not running: {sorted(missing)}\nsession:\n"
                        + "\n".join(session(self.proc.pid)) + "\noutput:\n" + self.output.tail(),
                        pytrace=False)

    def assert_all_gone(self) -> None:
        self.proc.wait(timeout=STOP)
        assert wait_until(lambda: session(self.proc.pid) == [], STOP), (
            session(self.proc.pid), self.output.tail())

    def close(self) -> None:
        if self.proc is not None:
            kill_session(self.proc.pid)
            self.proc.wait(timeout=STOP)
        if self.master is not None:
            os.close(self.master)


@pytest.fixture
def stack(tmp_path):
    started = Stack(tmp_path)
    try:
        yield started
    finally:
        started.close()


def test_make_run_serves_signs_in_runs_tasks_and_stops_on_ctrl_c(stack):
    stack.in_terminal()
    stack.wait_running()
    output = stack.output
    assert f"Tollgate is running: {stack.url}/" in output.text()
    assert ("Demo logins (password: tollgate-demo): admin, approver, auditor, developer, viewer"
            in output.text())
    session_ = requests.Session()
    page = session_.get(f"{stack.url}/login/", timeout=30)
    assert page.status_code == 200
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    response = session_.post(f"{stack.url}/login/", timeout=30, allow_redirects=True, data={
        "csrfmiddlewaretoken": csrf, "username": "admin", "password": "tollgate-demo"})
    assert response.status_code == 200
    assert "Choose a tenant" in response.text and "Acme Corp" in response.text

    # The worker really consumes from the embedded broker.
    subprocess.run(
        [".venv/bin/python", "manage.py", "shell", "-c",
         "from governance.audit.tasks import verify_audit_chains; verify_audit_chains.delay()"],
        cwd=ROOT, env=stack.env | {"DEBUG": "true"}, check=True, timeout=120,
    )
    assert output.wait_for(r"audit chain verified: tenant acme: OK", 120), output.tail()
    assert output.wait_for(r"beat: Starting", 60), output.tail()
    # The reference gateway runs in front of the demo server and wants an agent's credential.
    assert output.wait_for(r"Tollgate gateway: agents connect to", 60), output.tail()
    anonymous = requests.post(stack.gateway, json={}, timeout=30)
    assert anonymous.status_code == 401, anonymous.text
    # It lists the demo server's tools and reports them (the control plane runs no stdio
    # command: seed_demo bound the demo gateway to acme-hr).
    assert output.wait_for(r"acme-hr.* recorded: 3 tools", 120), output.tail()
    # The embedded broker keeps its exchange tables under the var directory, not in the
    # directory make run was started from.
    assert (stack.var / "celery" / "control" / "celery.exchange").exists()

    os.write(stack.master, b"\x03")  # Ctrl-C: SIGINT to the terminal's foreground group
    stack.assert_all_gone()
    assert "Stopping Tollgate" in output.text()


def test_scripts_run_in_the_background_of_a_shell_stops_on_sigint(stack):
    pid = stack.in_background_of_a_shell()  # so it starts with SIGINT ignored
    stack.wait_running()
    os.kill(pid, signal.SIGINT)
    stack.assert_all_gone()
    assert stack.proc.returncode == 0
    assert "Stopping Tollgate" in stack.output.text()


def test_sigint_during_the_set_up_stops_it_too(stack):
    pid = stack.in_background_of_a_shell()  # SIGINT ignored on entry, as above
    assert wait_until(lambda: any("manage.py migrate" in line for line in session(
        stack.proc.pid)), START), (session(stack.proc.pid), stack.output.tail())
    os.kill(pid, signal.SIGINT)
    stack.assert_all_gone()
    assert stack.proc.returncode == 130
    assert "Stopped before Tollgate started." in stack.output.text()
    assert "Tollgate is running" not in stack.output.text()


def test_one_process_dying_stops_all_of_them(stack):
    stack.in_background_of_a_shell()
    stack.wait_running()
    beat = next(line for line in started(stack.proc.pid) if PROCESSES["beat"] in line)
    os.kill(int(beat.split()[0]), signal.SIGKILL)
    stack.assert_all_gone()
    assert stack.proc.returncode == 137
    assert "A Tollgate process (beat) exited (status 137); stopping the others." in (
        stack.output.text())
