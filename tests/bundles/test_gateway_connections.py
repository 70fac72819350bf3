"""Held gateway requests do not hold database connections (PostgreSQL + Redis).

Found by the mixed-load benchmark (``make bench``, section 6): a gateway whose token or pointer
is not in the hot store yet (a new fleet, or Redis restarted empty) is looked up in the
database, and Django keeps that connection until the request ends — for a long poll, a minute.
1,000 such polls exhausted PostgreSQL's 100 connections and every other request got 503.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request

import pytest
from django.db import connection

from bundles import hot
from bundles.publish import bundle_publish
from tests.bundle_support import make_gateway, payroll_world

pytestmark = pytest.mark.django_db(transaction=True)
HELD = 8
HOLD = 15  # seconds each poll is held: far longer than starting them takes on a loaded machine


def _wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return bool(condition())


def _server_connections() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND pid <> pg_backend_pid()")
        return cursor.fetchone()[0]


def test_held_long_polls_with_cold_tokens_give_their_connections_back(
        postgres_only, live_server, settings, redis_url, tenant_a):
    settings.REDIS_URL = redis_url
    payroll_world(tenant_a)
    bundle = bundle_publish(tenant=tenant_a, trigger="test")
    gateways = [make_gateway(tenant_a, name=f"edge-{i}") for i in range(HELD)]
    tokens = [token for _, token in gateways]
    token_ids = [gateway.tokens.get().pk for gateway, _ in gateways]
    etag = f'"{bundle.blob_id}"'
    baseline = _server_connections()
    answers: list[int] = []

    def poll(token: str) -> None:
        request = urllib.request.Request(  # noqa: S310 - the live server on loopback
            f"{live_server.url}/api/v1/gateway/bundles/{tenant_a.slug}",
            headers={"Authorization": f"Bearer {token}", "If-None-Match": etag,
                     "Prefer": f"wait={HOLD}"})
        try:
            urllib.request.urlopen(request, timeout=30)  # noqa: S310
        except urllib.error.HTTPError as exc:
            answers.append(exc.code)

    threads = [threading.Thread(target=poll, args=(t,)) for t in tokens]
    for thread in threads:
        thread.start()
    # Every poll has looked its cold token up (and counted the request) ...
    assert _wait_until(lambda: len(hot.token_use_times(token_ids)) == HELD, HOLD)
    # ... and, still held, gives its connection back.
    assert _wait_until(lambda: _server_connections() - baseline < HELD // 2, HOLD / 2), (
        baseline, _server_connections())
    assert answers == []  # none had ended yet
    for thread in threads:
        thread.join(timeout=HOLD + 60)
    assert answers == [304] * HELD  # held to the end, nothing changed
