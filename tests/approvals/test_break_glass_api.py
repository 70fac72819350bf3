"""The grants API says which grants are break-glass (read-only), as docs/api.md promises."""

from __future__ import annotations

from approvals import services as approvals
from tests.bundle_support import SYSTEM, payroll_world

API = "/api/v1/t/alpha"


def test_the_grant_api_flags_break_glass_grants_read_only(admin, tenant_a, alice, dave):
    world = payroll_world(tenant_a, owner=dave)
    glass = approvals.break_glass_grant(tenant=tenant_a, actor=SYSTEM, admin=alice,
                                        agent=world["bot"], scope=world["scope"],
                                        justification="incident 7", minutes=5)
    rows = {row["id"]: row for row in admin.get(f"{API}/grants/").json()["results"]}
    assert rows[glass.pk]["break_glass"] is True
    assert rows[world["grant"].pk]["break_glass"] is False
    assert admin.get(f"{API}/grants/{glass.pk}/").json()["break_glass"] is True
    listed = admin.get(f"{API}/break-glass/").json()["results"]
    assert [(r["id"], r["break_glass"], r["justification"]) for r in listed] == [
        (glass.pk, True, "incident 7")]
    # Read-only: it cannot be switched off (nor on) through the API.
    admin.patch(f"{API}/grants/{glass.pk}/", {"break_glass": False}, format="json")
    admin.patch(f"{API}/grants/{world['grant'].pk}/", {"break_glass": True}, format="json")
    glass.refresh_from_db()
    world["grant"].refresh_from_db()
    assert glass.break_glass is True and world["grant"].break_glass is False
