"""Row locks that cannot deadlock (PostgreSQL).

Found by CI: a gateway's status report locked its gateway row with ``select_related("tenant")``,
which on PostgreSQL also locks the joined tenant row FOR UPDATE. Every write in the tenant
inserts an audit event whose foreign key to the tenant is checked at commit (deferred) with a
KEY SHARE lock on that row, while holding the tenant's audit-chain lock the status report waits
for: a deadlock. Locks on joined rows are now limited to the row meant (``of=("self",)``).
"""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext

from bundles import services as bundle_services
from registry import services as registry
from tests.bundle_support import SYSTEM, make_gateway, payroll_world

pytestmark = pytest.mark.django_db(transaction=True)


def _report(revision: int = 1) -> dict:
    return {"bundles": {"alpha": {"active_revision": revision}}, "labels": {"id": "edge-1"}}


def _blocked(pid: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid])
        row = cursor.fetchone()
    return bool(row) and row[0] == "Lock"


def test_a_status_report_during_a_registry_write_does_not_deadlock(postgres_only, tenant_a):
    world = payroll_world(tenant_a)
    gateway, _ = make_gateway(tenant_a)
    outcome: dict = {}
    pid: dict = {}

    def report() -> None:
        try:
            pid["value"] = connections["default"].cursor().connection.info.backend_pid
            bundle_services.gateway_record_status(gateway=gateway, report=_report())
            outcome["report"] = "ok"
        except Exception as exc:  # noqa: BLE001 - the test reports it
            outcome["report"] = repr(exc)
        finally:
            connections.close_all()

    with transaction.atomic():
        # A registry write: holds the tenant's audit-chain lock until its commit, where the
        # deferred foreign keys of its audit event take a KEY SHARE lock on the tenant row.
        registry.grant_update(tenant=tenant_a, actor=SYSTEM, grant=world["grant"],
                              calls_per_minute=7)
        thread = threading.Thread(target=report)
        thread.start()
        deadline = time.monotonic() + 60
        while (time.monotonic() < deadline and thread.is_alive()
               and not ("value" in pid and _blocked(pid["value"]))):
            time.sleep(0.05)  # until the report waits for the audit-chain lock
    thread.join(timeout=60)
    assert outcome.get("report") == "ok", outcome
    gateway.refresh_from_db()
    assert gateway.active_revision == 1


@pytest.mark.parametrize("action", ["status report", "token revoke", "grant update"])
def test_locks_taken_with_a_join_lock_only_their_own_row(postgres_only, tenant_a, action):
    world = payroll_world(tenant_a)
    gateway, _ = make_gateway(tenant_a)
    token = gateway.tokens.first()
    calls = {
        "status report": lambda: bundle_services.gateway_record_status(gateway=gateway,
                                                                        report=_report()),
        "token revoke": lambda: bundle_services.gateway_token_revoke(
            tenant=tenant_a, actor=SYSTEM, token=token),
        "grant update": lambda: registry.grant_update(tenant=tenant_a, actor=SYSTEM,
                                                      grant=world["grant"], calls_per_day=9),
    }
    with CaptureQueriesContext(connection) as queries:
        calls[action]()
    locking = [q["sql"] for q in queries.captured_queries
               if "FOR UPDATE" in q["sql"] and " JOIN " in q["sql"]]
    assert locking, "the service takes a row lock over a join"
    for sql in locking:
        assert "FOR UPDATE OF" in sql, sql
