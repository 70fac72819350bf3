"""A grant's status in an evidence pack is as of when the pack was generated: a grant past its
expiry is ``expired`` even before the per-minute sweep has recorded it."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from approvals import services as approvals
from registry import services as registry
from registry.models import Grant
from tests.bundle_support import SYSTEM, payroll_world
from tests.evidence.test_evidence import _by, _csv, _files, _json, _pack


def test_a_grant_expired_but_not_yet_swept_is_expired_in_the_pack(tenant_a, alice, dave):
    world = payroll_world(tenant_a, owner=dave)
    glass = approvals.break_glass_grant(tenant=tenant_a, actor=SYSTEM, admin=alice,
                                        agent=world["bot"], scope=world["scope"],
                                        justification="incident 7", minutes=5)
    lapsed = registry.grant_create(tenant=tenant_a, actor=SYSTEM, agent=world["bot"],
                                   scope=world["scope"],
                                   expires_at=timezone.now() + timedelta(hours=1))
    # Time passes: both expiries are behind us, and the sweep has not run yet.
    Grant.objects.filter(pk__in=[glass.pk, lapsed.pk]).update(
        expires_at=timezone.now() - timedelta(seconds=5))
    assert set(Grant.objects.filter(pk__in=[glass.pk, lapsed.pk])
               .values_list("status", flat=True)) == {"active"}

    files = _files(_pack(tenant_a))
    grants = _by(_json(files, "grants.json"), "grant_id")
    assert grants[str(glass.pk)]["status"] == "expired"
    assert grants[str(lapsed.pk)]["status"] == "expired"
    assert grants[str(world["grant"].pk)]["status"] == "active"  # no expiry
    assert _by(_csv(files, "grants.csv")[1], "grant_id")[str(lapsed.pk)]["status"] == "expired"
    [glass_row] = _json(files, "break_glass.json")
    assert glass_row["status"] == "expired"


def test_status_at_derives_expiry_and_keeps_revocation(tenant_a, dave):
    world = payroll_world(tenant_a, owner=dave)
    grant = world["grant"]
    now = timezone.now()
    grant.expires_at = now
    assert grant.status_at(now - timedelta(seconds=1)) == "active"
    assert grant.status_at(now) == "expired"
    grant.status = Grant.Status.REVOKED
    assert grant.status_at(now + timedelta(days=1)) == "revoked"
