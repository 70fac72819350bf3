"""Helpers for end-to-end tests: the test OpenID Connect provider (tests/idp) and Chromium.

Nothing here is a fixture, so test modules decide the scope; see tests/e2e/test_e2e_oidc.py.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.db import connections
from playwright.sync_api import Browser, sync_playwright

REPO_ROOT = Path(__file__).resolve().parent.parent
IDP_DIR = REPO_ROOT / "tests" / "idp"
ARTIFACTS_DIR = REPO_ROOT / "test-artifacts"

CHROMIUM = "/usr/bin/chromium"
# Playwright cannot download its own browser here: it drives the system Chromium.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

IDP_READY_TIMEOUT = 60.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(proc: subprocess.Popen | None, timeout: float = 60) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` s; nothing if it is gone."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def require_e2e_tools() -> None:
    """Fail (never skip) with the command that fixes a missing end-to-end dependency."""
    if shutil.which("node") is None:
        pytest.fail("node is not on PATH: the end-to-end tests need Node.js for tests/idp")
    if not (IDP_DIR / "node_modules" / "oidc-provider").is_dir():
        pytest.fail(
            f"{IDP_DIR / 'node_modules'} is missing: run `make test-deps` "
            "(or `npm ci --prefix tests/idp`) before the end-to-end tests"
        )
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: run `make test-deps` (installs Chromium)")


def require_chromium() -> None:
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: run `make test-deps` (installs Chromium)")


@contextmanager
def chromium_browser() -> Iterator[Browser]:
    """The system Chromium under Playwright's sync API, for tests that read the database."""
    require_chromium()
    with pytest.MonkeyPatch.context() as mp:
        # The sync API runs an event loop in this thread, and the tests read the database here.
        mp.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
            )
            try:
                yield chromium
            finally:
                # While that loop runs, Django keeps this thread's connections in context-local
                # storage, apart from the ones pytest-django set up. Close them now: once the
                # loop has stopped they are out of reach, and on PostgreSQL an open one stops
                # the test database from being dropped at the end of the session.
                connections.close_all()
                chromium.close()


class TestIdp:
    """One running `node tests/idp/server.js`, its users file and its stderr."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(self, *, workdir: Path, client_id: str, client_secret: str,
                 redirect_uris: list[str], post_logout_redirect_uris: list[str],
                 backchannel_logout_uri: str = "", refresh_tokens: bool = False,
                 extra_env: dict[str, str] | None = None) -> None:
        self.backchannel_logout_uri = backchannel_logout_uri
        self.refresh_tokens = refresh_tokens
        self.client_id = client_id
        self.extra_env = dict(extra_env or {})  # IDP_EXTRA_CLIENTS, IDP_RESOURCE_SERVERS …
        self.client_secret = client_secret
        self.redirect_uris = redirect_uris
        self.post_logout_redirect_uris = post_logout_redirect_uris
        self.users_file = workdir / "idp-users.json"
        self.stderr_file = workdir / "idp-stderr.log"
        self.users_file.write_text("{}")
        self.issuer = ""
        self._proc: subprocess.Popen[str] | None = None

    # --- users ---------------------------------------------------------------------------

    def set_users(self, users: dict[str, dict]) -> None:
        """Rewrite the users file; the IdP reads it again at every login and userinfo call."""
        tmp = self.users_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(users))
        tmp.replace(self.users_file)  # atomic: the IdP never reads half a file

    # --- process -------------------------------------------------------------------------

    def stderr(self) -> str:
        try:
            return self.stderr_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self, attempts: int = 3, port: int | None = None) -> str:
        """Start the IdP on a free port (or ``port``: a restart keeps the issuer) and wait for
        `IDP READY`; returns the issuer URL."""
        fixed = port
        for attempt in range(1, attempts + 1):
            port = fixed or free_port()
            proc = self._spawn(port)
            line, problem = self._wait_ready(proc)
            if line is not None:
                self._proc = proc
                self.issuer = line.removeprefix("IDP READY ").strip()
                expected = f"http://127.0.0.1:{port}"
                if self.issuer != expected:
                    self.stop()
                    pytest.fail(f"test IdP announced {self.issuer!r}, expected {expected!r}")
                return self.issuer
            _terminate(proc)
            port_taken = "cannot listen" in self.stderr()
            if not (port_taken and attempt < attempts):
                pytest.fail(
                    f"test IdP (node tests/idp/server.js) did not start: {problem}\n"
                    f"--- IdP stderr ---\n{self.stderr()}"
                )
        raise AssertionError("unreachable")

    def _spawn(self, port: int) -> subprocess.Popen[str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": str(self.users_file.parent),
            "NODE_ENV": "test",
            "IDP_PORT": str(port),
            "IDP_CLIENT_ID": self.client_id,
            "IDP_CLIENT_SECRET": self.client_secret,
            "IDP_REDIRECT_URIS": ",".join(self.redirect_uris),
            "IDP_POST_LOGOUT_REDIRECT_URIS": ",".join(self.post_logout_redirect_uris),
            "IDP_USERS_FILE": str(self.users_file),
            **self.extra_env,
        }
        if self.backchannel_logout_uri:
            env["IDP_BACKCHANNEL_LOGOUT_URI"] = self.backchannel_logout_uri
        if self.refresh_tokens:
            env["IDP_REFRESH_TOKENS"] = "1"
        with self.stderr_file.open("w") as stderr:
            return subprocess.Popen(
                ["node", str(IDP_DIR / "server.js")],
                cwd=IDP_DIR, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=stderr, text=True,
            )

    @staticmethod
    def _wait_ready(proc: subprocess.Popen[str]) -> tuple[str | None, str]:
        lines: queue.Queue[str] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            with proc.stdout:  # drains stdout until the process ends, then closes it
                for out in proc.stdout:
                    lines.put(out)

        threading.Thread(target=pump, name="idp-stdout", daemon=True).start()
        deadline = time.monotonic() + IDP_READY_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None, f"no `IDP READY` line within {IDP_READY_TIMEOUT:.0f} s"
            try:
                out = lines.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                if proc.poll() is not None and lines.empty():
                    return None, f"it exited with code {proc.returncode}"
                continue
            if out.startswith("IDP READY "):
                return out, ""

    def stop(self) -> None:
        if self._proc is not None:
            _terminate(self._proc)
            self._proc = None


def _terminate(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=60)
