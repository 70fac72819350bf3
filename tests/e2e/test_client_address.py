"""Client addresses over real HTTP: the web process started exactly as scripts/run starts it
(uvicorn with the flags of scripts/uvicorn-flags) believes X-Forwarded-For only as far as
TRUSTED_PROXY_COUNT says, for sign-in lockouts, token brute-force limits and audit IPs alike.

The regression: uvicorn's own proxy-header handling trusted X-Forwarded-For from 127.0.0.1 (its
default --forwarded-allow-ips), so with TRUSTED_PROXY_COUNT=0 a locked-out user signed in by
sending a new X-Forwarded-For with each try, and the audit trail recorded the forged address.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from django.contrib.auth.hashers import make_password
from django.db import connection

from governance.audit.models import AuditEvent
from governance.config import uvicorn_flags
from tests.factories import UserFactory

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery staple"
FAILURE_LIMIT = 3
CONFIG_PREFIXES = ("DATABASE_URL", "DEBUG", "SECRET_KEY", "OIDC_", "SECURE_", "TOLLGATE_",
                   "CELERY_", "DJANGO_SETTINGS_MODULE", "TRUSTED_PROXY_COUNT", "LOGIN_",
                   "TOKEN_FAILURE")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _database_url() -> str:
    s = connection.settings_dict
    return f"postgres://{s['USER']}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


@pytest.fixture
def serve(postgres_only, transactional_db, tmp_path):
    """``serve(**env)`` starts the web process as scripts/run does (DEBUG on, the flags of
    scripts/uvicorn-flags) against the test database, waits until it answers, and returns its
    base URL; every one started is stopped at the end."""
    procs = []

    def start(**extra: str) -> str:
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(CONFIG_PREFIXES)}
        env |= {"DATABASE_URL": _database_url(), "DEBUG": "true",
                "TOLLGATE_VAR_DIR": str(tmp_path / f"var-{port}"),
                "LOGIN_FAILURE_LIMIT": str(FAILURE_LIMIT), "TOKEN_FAILURE_LIMIT_PER_MINUTE": "2",
                **extra}
        log = tmp_path / f"web-{port}.log"
        proc = subprocess.Popen(  # noqa: S603 - fixed argv
            [sys.executable, "-m", "uvicorn", "governance.asgi:application", "--host",
             "127.0.0.1", "--port", str(port), *uvicorn_flags(), "--log-level", "warning"],
            cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        procs.append(proc)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail("uvicorn exited:\n" + log.read_text())
            try:
                if requests.get(f"{base}/healthz", timeout=5).status_code == 200:
                    return base
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail("uvicorn did not answer within 180 s:\n" + log.read_text())
            time.sleep(0.2)

    yield start
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=60)


@pytest.fixture
def person(transactional_db, settings):
    """A user whose password the web process can check (its own hashers, not the suite's)."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    user = UserFactory(username="victor")
    user.password = make_password(PASSWORD)
    user.save(update_fields=["password"])
    return user


def _sign_in(base: str, password: str, forwarded: str | None = None) -> int:
    """One password sign-in over HTTP (with its CSRF token); the status it gets."""
    session = requests.Session()
    page = session.get(f"{base}/login/", timeout=60)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    response = session.post(f"{base}/login/", data={
        "username": "victor", "password": password, "csrfmiddlewaretoken": token,
    }, headers=headers, allow_redirects=False, timeout=120)
    return response.status_code


def _failure_ips() -> list[str | None]:
    return list(AuditEvent.objects.filter(action="auth.login_failed").order_by("seq")
                .values_list("ip", flat=True))


def test_the_flags_are_the_ones_scripts_run_and_the_deployment_docs_use():
    flags = uvicorn_flags()
    assert "--no-proxy-headers" in flags
    run = (REPO / "scripts" / "run").read_text()
    assert "scripts/uvicorn-flags" in run and '"${UVICORN_FLAGS[@]}"' in run
    operations = (REPO / "docs" / "operations.md").read_text()
    [command] = [line for line in operations.splitlines()
                 if line.startswith("uvicorn governance.asgi:application")]
    assert " ".join(flags) in command


def test_forged_forwarded_for_neither_unlocks_a_sign_in_nor_reaches_the_audit(serve, person):
    base = serve()  # TRUSTED_PROXY_COUNT unset: no proxy is trusted
    statuses = [_sign_in(base, "wrong", forwarded=f"203.0.113.{i + 1}")
                for i in range(FAILURE_LIMIT)]
    # Every failure counted for the TCP peer (the last one locks), and the audit says so.
    assert statuses == [400] * (FAILURE_LIMIT - 1) + [429]
    assert set(_failure_ips()) == {"127.0.0.1"}
    assert _sign_in(base, PASSWORD) == 429
    for forged in ("198.51.100.9", "10.0.0.1", "198.51.100.9, 10.0.0.2", "::1"):
        assert _sign_in(base, PASSWORD, forwarded=forged) == 429, forged
    # Unknown bearer tokens are counted for the peer too, whatever address each one claims:
    # a burst of three (the limit is two a minute) ends in 429. A burst that straddles the turn
    # of a minute may not, so up to three bursts are tried; forged addresses never get one.
    url = f"{base}/api/v1/t/alpha/agents/"
    for burst in range(3):
        statuses = [requests.get(url, timeout=60, headers={
            "Authorization": f"Bearer tg_guess{burst}{i}",
            "X-Forwarded-For": f"203.0.113.{10 * burst + i + 50}"}).status_code
            for i in range(3)]
        if statuses[-1] == 429:
            break
    assert statuses[-1] == 429, statuses


def test_with_one_trusted_proxy_the_forwarded_address_is_the_client(serve, person):
    base = serve(TRUSTED_PROXY_COUNT="1")
    # The client wrote the first entry (a new one each time); the trusted proxy appended the
    # second, the client's real address.
    statuses = [_sign_in(base, "wrong", forwarded=f"6.6.6.{i}, 198.51.100.7")
                for i in range(FAILURE_LIMIT)]
    assert statuses == [400] * (FAILURE_LIMIT - 1) + [429]
    assert set(_failure_ips()) == {"198.51.100.7"}
    assert _sign_in(base, PASSWORD, forwarded="198.51.100.7") == 429
    assert _sign_in(base, PASSWORD, forwarded="6.6.6.7, 198.51.100.7") == 429
    # Another client behind the same proxy is not locked out by that one's failures.
    assert _sign_in(base, PASSWORD, forwarded="198.51.100.8") == 302


@pytest.mark.parametrize(("proxies", "forwarded", "expected"), [
    (0, "203.0.113.5", "10.0.0.1"),  # no proxy trusted: the peer
    (1, "203.0.113.5", "203.0.113.5"),
    (1, "6.6.6.6, 203.0.113.5", "203.0.113.5"),  # the client's own entry is never believed
    (2, "6.6.6.6, 203.0.113.5, 10.0.0.9", "203.0.113.5"),
    (2, "203.0.113.5", "10.0.0.1"),  # fewer entries than proxies: the nearest proxy
    (1, "not-an-address", "10.0.0.1"),  # malformed: the nearest proxy, never the text
    (1, "6.6.6.6,", "10.0.0.1"),
    (1, "2001:db8::7", "2001:db8::7"),
])
def test_client_ip_believes_exactly_the_trusted_hops(rf, settings, proxies, forwarded, expected):
    from governance.tenancy.middleware import client_ip

    settings.TRUSTED_PROXY_COUNT = proxies
    request = rf.get("/", REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR=forwarded)
    assert client_ip(request) == expected
