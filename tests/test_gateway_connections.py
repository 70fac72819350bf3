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

from governance.bundles.publish import bundle_publish
from tests.bundle_support import make_gateway, payroll_world

pytestmark = pytest.mark.django_db(transaction=True)
HELD = 8


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
    tokens = [make_gateway(tenant_a, name=f"edge-{i}")[1] for i in range(HELD)]
    etag = f'"{bundle.blob_id}"'
    baseline = _server_connections()
    answers: list[int] = []

    def poll(token: str) -> None:
        request = urllib.request.Request(  # noqa: S310 - the live server on loopback
            f"{live_server.url}/api/v1/gateway/bundles/{tenant_a.slug}",
            headers={"Authorization": f"Bearer {token}", "If-None-Match": etag,
                     "Prefer": "wait=4"})
        try:
            urllib.request.urlopen(request, timeout=30)  # noqa: S310
        except urllib.error.HTTPError as exc:
            answers.append(exc.code)

    threads = [threading.Thread(target=poll, args=(t,)) for t in tokens]
    for thread in threads:
        thread.start()
    time.sleep(2)  # every poll has looked its cold token up and is now held
    during = _server_connections()
    for thread in threads:
        thread.join(timeout=30)
    assert answers == [304] * HELD  # held to the end, nothing changed
    assert during - baseline < HELD // 2, (baseline, during)
