"""End to end, with real processes: uvicorn serving the ASGI app, a Celery worker, PostgreSQL and
Redis. A gateway long-polls over HTTP; a registry change made through the service layer is built
by the worker (debounced, on commit), announced over Redis pub/sub, and wakes the poll with a
bundle that the reference verifier accepts against the JWKS fetched over HTTP. Revoking the
gateway's token mid-poll ends the poll with 401."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bundles import publish, services
from gateway.verify import verify_bundle
from governance.config import uvicorn_flags
from registry import services as registry
from tests.bundle_support import SYSTEM, make_gateway, small_registry
from tests.e2e_support import free_port
from tests.worker_support import REPO

pytestmark = pytest.mark.e2e


def _database_url() -> str:
    from django.db import connection

    s = connection.settings_dict
    return f"postgres://{s['USER']}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


@pytest.fixture
def web(postgres_only, transactional_db, settings, tmp_path):
    """uvicorn on a free port, against the test database and the suite's Redis."""
    if not os.environ.get("REDIS_URL"):
        pytest.skip("needs REDIS_URL (the worker, the web process and this test share Redis)")
    port = free_port()
    env = os.environ | {
        "DATABASE_URL": _database_url(), "DEBUG": "false", "ALLOWED_HOSTS": "127.0.0.1",
        "SECURE_SSL_REDIRECT": "false", "BUNDLE_LOCAL_DIR": str(tmp_path / "web-bundles"),
    }
    log = (tmp_path / "web.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "governance.asgi:application", "--host", "127.0.0.1",
         "--port", str(port), *uvicorn_flags(), "--log-level", "warning"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{base}/healthz", timeout=1)  # noqa: S310 - local test URL
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("uvicorn did not start:\n" + Path(log.name).read_text())
            time.sleep(0.2)
    yield base
    proc.terminate()
    proc.wait(timeout=15)


def _get(url, token, **headers):
    request = urllib.request.Request(  # noqa: S310 - a local http://127.0.0.1 URL
        url, headers={"Authorization": f"Bearer {token}", **headers})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def test_a_registry_change_reaches_a_long_polling_gateway(web, tenant_a, celery_worker_process):
    world = small_registry(tenant_a)
    gateway, token = make_gateway(tenant_a)
    publish.bundle_publish(tenant=tenant_a, trigger="test")
    celery_worker_process()
    status, headers, body = _get(f"{web}/api/v1/gateway/bundles/alpha", token)
    assert status == 200
    first = verify_bundle(body, jwks=json.loads(_get(f"{web}/api/v1/gateway/keys/alpha",
                                                     token)[2]), tenant="alpha")

    result = {}

    def poll():
        result["response"] = _get(f"{web}/api/v1/gateway/bundles/alpha", token,
                                  **{"If-None-Match": headers["ETag"], "Prefer": "wait=60"})
        result["at"] = time.monotonic()

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.5)  # the poll is being held
    registry.grant_revoke(tenant=tenant_a, actor=SYSTEM, grant=world["grant"], reason="e2e")
    changed_at = time.monotonic()
    poller.join(timeout=60)
    status, new_headers, body = result["response"]
    assert status == 200
    assert new_headers["Content-Type"] == "application/vnd.openpolicyagent.bundles"
    assert new_headers["ETag"] != headers["ETag"]
    jwks = json.loads(_get(f"{web}/api/v1/gateway/keys/alpha", token)[2])
    second = verify_bundle(body, jwks=jwks, tenant="alpha", last_revision=first.revision_number)
    assert second.data["grants"] == []
    assert result["at"] - changed_at < 30

    # Revoking the token while it waits ends the poll at once with 401.
    def poll_again():
        result["again"] = _get(f"{web}/api/v1/gateway/bundles/alpha", token,
                               **{"If-None-Match": new_headers["ETag"], "Prefer": "wait=60"})
        result["again_at"] = time.monotonic()

    poller = threading.Thread(target=poll_again)
    poller.start()
    time.sleep(0.5)
    services.gateway_token_revoke(tenant=tenant_a, actor=SYSTEM, token=gateway.tokens.get())
    revoked_at = time.monotonic()
    poller.join(timeout=60)
    assert result["again"][0] == 401
    assert result["again_at"] - revoked_at < 30
