"""A gateway status report's ``active_revision`` is a revision number (OPA sends it as a string):
any other type is a 400 and nothing is stored. A revision ahead of the newest one this control
plane published (a restore from backup, a gateway pointed at another control plane) is stored
as reported but flagged as a revision conflict: the fleet never shows a negative lag
(tests/bundles/test_revision_conflicts.py covers what the control plane then does).
"""

from __future__ import annotations

import json
import re

import pytest
from django.test import Client

from bundles.models import Gateway
from bundles.publish import bundle_publish
from governance.audit.models import AuditEvent
from tests.bundle_support import make_gateway, payroll_world

API = "/api/v1/t/alpha"
MESSAGE = ('bundles.mcp.active_revision: must be a revision number as a string of digits '
           '(e.g. "12"), or "" before the first bundle.')


def report(revision) -> str:
    return json.dumps({"labels": {"id": "edge-1"},
                       "bundles": {"mcp": {"name": "mcp", "active_revision": revision}}})


def send(token: str, body: str):
    return Client().post("/api/v1/gateway/status", body, content_type="application/json",
                         HTTP_AUTHORIZATION=f"Bearer {token}")


@pytest.fixture
def published(tenant_a, dave):
    payroll_world(tenant_a, owner=dave)
    return bundle_publish(tenant=tenant_a, trigger="test")


@pytest.mark.parametrize("revision", [
    1, 2**63, 1.0, True, None, ["1"], {"r": 1}, "abc", "-1", "+1", "1.0", " 1", "0",
    "9223372036854775808", "99999999999999999999", "1" * 5000, "١",
])
def test_a_revision_that_is_not_a_revision_number_is_a_400(tenant_a, published, revision):
    gateway, token = make_gateway(tenant_a)
    response = send(token, report(revision))
    assert response.status_code == 400
    assert response.json() == {"code": "invalid", "message": MESSAGE}
    gateway.refresh_from_db()
    assert (gateway.active_revision, gateway.last_status_at, gateway.last_report) == (
        None, None, None)
    assert not AuditEvent.objects.filter(action="gateway.activated_revision").exists()


@pytest.mark.parametrize(("revision", "stored"), [("", None), ("1", 1), ("01", 1)])
def test_a_revision_number_or_none_yet_is_accepted(tenant_a, published, revision, stored):
    gateway, token = make_gateway(tenant_a)
    assert send(token, report(revision)).status_code == 204
    gateway.refresh_from_db()
    assert gateway.active_revision == stored and gateway.last_status_at is not None


def test_a_revision_ahead_of_the_newest_is_flagged_never_a_negative_lag(
        tenant_a, published, admin, login, victor):
    assert published.revision_number == 1
    gateway, token = make_gateway(tenant_a)
    assert send(token, report("7")).status_code == 204
    gateway.refresh_from_db()
    assert gateway.active_revision == 7  # as reported, and audited as such

    row = admin.get(f"{API}/gateways/{gateway.pk}/").json()
    assert (row["active_revision"], row["newest_revision"], row["lag"],
            row["unknown_revision"], row["revision_conflict"]) == (7, 1, None, True, "ahead")
    listed = admin.get(f"{API}/gateways/").json()["results"][0]
    assert (listed["lag"], listed["unknown_revision"]) == (None, True)

    client = login(victor)
    fleet = client.get("/t/alpha/gateways/").content.decode()
    row = re.search(rf'<tr id="gateway-{gateway.pk}"[^>]*>(.*?)</tr>', fleet, re.S).group(1)
    cells = re.findall(r"<td>(.*?)</td>", row, re.S)
    assert cells[4] == 'r7 <span class="muted">of r1</span>'
    assert cells[5].startswith('<span class="error" title="r7 is ahead of this control '
                               "plane's newest revision (r1): its database")
    assert cells[5].endswith('">revision conflict</span>')
    detail = client.get(f"/t/alpha/gateways/{gateway.pk}/").content.decode()
    lag = re.search(r"<dt>Lag</dt><dd>(.*?)</dd>", detail).group(1)
    assert lag == '<span class="error" id="revision-conflict">revision conflict</span>'



def test_a_revision_before_any_bundle_is_unknown_too(tenant_a, admin):
    gateway, token = make_gateway(tenant_a)
    assert send(token, report("3")).status_code == 204
    row = admin.get(f"{API}/gateways/{gateway.pk}/").json()
    assert (row["newest_revision"], row["lag"], row["unknown_revision"],
            row["revision_conflict"]) == (None, None, True, "ahead")


def test_a_gateway_on_the_newest_or_behind_is_not_flagged(tenant_a, published, admin):
    gateway, token = make_gateway(tenant_a)
    assert send(token, report("1")).status_code == 204
    row = admin.get(f"{API}/gateways/{gateway.pk}/").json()
    assert (row["lag"], row["unknown_revision"], row["revision_conflict"]) == (0, False, "")
    assert Gateway.objects.get(pk=gateway.pk).active_revision == 1
