"""A real Tollgate web process for end-to-end tests: uvicorn started as scripts/run starts it
(the flags of scripts/uvicorn-flags, extra flags appended) against the test database and, when
given, the test's Redis; the caller stops or signals it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import requests
from django.db import connection

from governance.config import uvicorn_flags
from tests.e2e_support import free_port, stop_process

REPO = Path(__file__).resolve().parents[1]
# The web process takes its configuration from these only (not from the test's environment).
CONFIG_PREFIXES = ("DATABASE_URL", "REDIS_URL", "DEBUG", "SECRET_KEY", "OIDC_", "SECURE_",
                   "TOLLGATE_", "CELERY_", "DJANGO_SETTINGS_MODULE", "TRUSTED_PROXY_COUNT",
                   "LOGIN_", "TOKEN_FAILURE", "FORCE_SCRIPT_NAME", "BUNDLE_")


def database_url() -> str:
    s = connection.settings_dict
    return f"postgres://{s['USER']}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


class WebProcess:
    """``uvicorn governance.asgi:application`` on a free loopback port."""

    def __init__(self, workdir: Path, *, flags: tuple[str, ...] = (), health: str = "/healthz",
                 **env: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"web-{self.port}.log"
        clean = {k: v for k, v in os.environ.items() if not k.startswith(CONFIG_PREFIXES)}
        self.env = clean | {"DATABASE_URL": database_url(), "DEBUG": "true",
                            "TOLLGATE_VAR_DIR": str(workdir / f"var-{self.port}"), **env}
        self.flags = flags
        self.health = health
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> str:
        self.proc = subprocess.Popen(  # noqa: S603 - fixed argv
            [sys.executable, "-m", "uvicorn", "governance.asgi:application", "--host",
             "127.0.0.1", "--port", str(self.port), *uvicorn_flags(), "--log-level", "info",
             *self.flags],
            cwd=REPO, env=self.env, stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("uvicorn exited:\n" + self.output())
            try:
                if requests.get(self.base + self.health, timeout=5).status_code == 200:
                    return self.base
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"uvicorn did not answer within {timeout} s:\n"
                                     + self.output())
            time.sleep(0.2)

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def stop(self) -> None:
        stop_process(self.proc)
