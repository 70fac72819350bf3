"""RFC 7643/7644 compliance, judged by a checker nobody here wrote: ``scim2-tester`` (the
python-scim project's checker) run over HTTP against a live server (pytest-django's
``live_server``), with a SCIM token of a real tenant.

It discovers what ServiceProviderConfig, ResourceTypes and Schemas declare, then creates,
reads, lists, searches, replaces, patches (add, remove, replace on every attribute it can) and
deletes Users (with the enterprise extension) and Groups. Every check must pass or be skipped
for a feature Tollgate does not declare (bulk, sort, ETags, password change): no ERROR, no
CRITICAL, and no DEVIATION from the RFCs' SHOULDs either.
"""

from __future__ import annotations

import httpx2
import pytest
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import Status, check_server

from governance.audit.services import Actor
from scim import services
from tests.factories import MembershipFactory, TenantFactory, UserFactory

FAILED = {Status.ERROR, Status.CRITICAL, Status.DEVIATION}


@pytest.fixture
def scim_live(live_server, transactional_db):
    tenant = TenantFactory(slug="compliance", name="Compliance")
    admin = UserFactory(username="compliance-admin")
    MembershipFactory(tenant=tenant, user=admin, role="admin")
    _, plaintext = services.scim_token_create(tenant=tenant, actor=Actor.user(admin),
                                              created_by=admin, name="scim2-tester")
    with httpx2.Client(base_url=f"{live_server.url}/scim/v2/{tenant.slug}",
                       headers={"Authorization": f"Bearer {plaintext}"}, timeout=60) as http:
        yield SyncSCIMClient(http)


def test_scim2_tester_reports_no_failure(scim_live):
    results = check_server(scim_live)
    failed = [f"{r.resource_type or ''} {r.title}: {r.status.name} {r.reason}"
              for r in results if r.status in FAILED]
    assert not failed, "\n".join(failed)
    passed = [r for r in results if r.status == Status.SUCCESS]
    # The run really exercised both resource types, not only discovery.
    assert {r.resource_type for r in passed} >= {"User", "Group"}
    assert len(passed) > 30


def test_scim2_tester_sees_401_without_a_token(live_server, transactional_db):
    TenantFactory(slug="compliance", name="Compliance")
    with httpx2.Client(base_url=f"{live_server.url}/scim/v2/compliance") as http:
        response = http.get("/Users")
    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/scim+json"
    assert response.json()["status"] == "401"
