"""A revision number never names two bundles (issue 20): a gateway reporting a revision this
control plane did not issue under that number — ahead of its newest (a restore from an older
backup), a number it has no bundle of, or another bundle hash under the same number — makes the
control plane raise its revision counter to that number (never lower it), audit
``bundle.revision_conflict``, raise the ``revision_conflict`` alert and publish the next bundle
above it even when nothing changed. The fleet page and API show the conflict, never "up to
date"; the alert resolves once the gateway runs a bundle issued here.
"""

from __future__ import annotations

import json
import re

import pytest
from django.test import Client

from alerts import services as alerts
from alerts.models import Alert, Kind
from bundles import publish
from bundles.models import Bundle, Gateway, PublishState
from bundles.publish import bundle_publish
from bundles.services import MAX_REVISION_JUMP
from bundles.tasks import build_bundle
from governance.audit.models import AuditEvent
from tests.bundle_support import make_gateway

API = "/api/v1/t/alpha"
OTHER = "b" * 64
ABSENT = object()


def report(revision: str, sha256=ABSENT, code: str = "") -> str:
    entry = {"name": "alpha", "active_revision": revision}
    if sha256 is not ABSENT:
        entry["active_sha256"] = sha256
    if code:
        entry |= {"code": code, "message": "x", "errors": [{"code": code, "message": "x"}]}
    return json.dumps({"labels": {"id": "edge-1"}, "bundles": {"alpha": entry}})


def send(token: str, body: str):
    return Client().post("/api/v1/gateway/status", body, content_type="application/json",
                         HTTP_AUTHORIZATION=f"Bearer {token}")


@pytest.fixture
def scheduled(monkeypatch):
    """The builds the status reports enqueue (after commit), as (args, countdown)."""
    enqueued: list = []
    monkeypatch.setattr(build_bundle, "apply_async",
                        lambda args, countdown: enqueued.append((args, countdown)))
    publish.clear_schedule(0)
    return enqueued


def state_of(tenant) -> PublishState:
    return PublishState.objects.select_related("current").get(tenant=tenant)


def conflicts() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action="bundle.revision_conflict").order_by("seq"))


def test_a_revision_ahead_is_learned_and_the_next_bundle_goes_above_it(
        world, tenant_a, scheduled, django_capture_on_commit_callbacks):
    first = bundle_publish(tenant=tenant_a, trigger="test")
    gateway, token = make_gateway(tenant_a)
    publish.clear_schedule(tenant_a.pk)
    with django_capture_on_commit_callbacks(execute=True):
        assert send(token, report("30", OTHER)).status_code == 204

    state = state_of(tenant_a)
    assert (state.last_revision, state.conflict_revision, state.current_id) == (30, 30, first.pk)
    assert scheduled == [([tenant_a.pk, "revision conflict"], 0.2)]
    [event] = conflicts()
    assert (event.actor_type, event.object_id) == ("gateway", str(gateway.pk))
    assert event.before == {"last_revision": 1, "conflict_revision": 0}
    assert event.after == {
        "last_revision": 30, "conflict_revision": 30, "reason": "ahead", "gateway": "edge-1",
        "reported_revision": 30, "reported_sha256": OTHER, "our_sha256": None,
        "newest_revision": 1}
    alert = Alert.objects.get(rule_kind=Kind.REVISION_CONFLICT)
    assert (alert.key, alert.status, alert.severity) == (f"gateway:{gateway.pk}", "open",
                                                         "warning")
    assert alert.subject == ("Gateway edge-1 runs r30, ahead of this control plane's newest r1: "
                             "the next bundle is published above r30")
    assert [why for _, why in publish.tenants_due(first.created_at)] == ["revision conflict"]

    # Nothing changed in the registry, yet the build publishes — above everything seen.
    bundle = bundle_publish(tenant=tenant_a, trigger="revision conflict")
    assert bundle.revision_number == 31
    assert bundle.content_sha256 == first.content_sha256
    assert bundle_publish(tenant=tenant_a, trigger="registry change") is None
    assert publish.tenants_due(bundle.created_at) == []


def test_the_same_report_again_is_not_a_new_conflict(world, tenant_a, scheduled):
    bundle_publish(tenant=tenant_a, trigger="test")
    _, token = make_gateway(tenant_a)
    for _ in range(3):
        assert send(token, report("30", OTHER)).status_code == 204
    assert len(conflicts()) == 1
    assert Alert.objects.get(rule_kind=Kind.REVISION_CONFLICT).occurrences == 1


def test_another_bundle_under_the_current_number_is_a_conflict(
        world, tenant_a, scheduled, django_capture_on_commit_callbacks, admin):
    bundle_publish(tenant=tenant_a, trigger="test")
    second = bundle_publish(tenant=tenant_a, trigger="test", force=True)
    gateway, token = make_gateway(tenant_a)
    with django_capture_on_commit_callbacks(execute=True):
        assert send(token, report("2", OTHER)).status_code == 204

    state = state_of(tenant_a)
    assert (state.last_revision, state.conflict_revision) == (2, 2)
    assert scheduled and scheduled[-1][0] == [tenant_a.pk, "revision conflict"]
    [event] = conflicts()
    assert (event.after["reason"], event.after["our_sha256"]) == ("different", second.blob_id)
    row = admin.get(f"{API}/gateways/{gateway.pk}/").json()
    assert (row["active_revision"], row["newest_revision"], row["lag"], row["unknown_revision"],
            row["revision_conflict"]) == (2, 2, None, False, "different")

    assert bundle_publish(tenant=tenant_a, trigger="revision conflict").revision_number == 3


def test_our_own_bundle_under_its_number_is_no_conflict(world, tenant_a, scheduled, admin):
    bundle = bundle_publish(tenant=tenant_a, trigger="test")
    gateway, token = make_gateway(tenant_a)
    assert send(token, report("1", bundle.blob_id.upper())).status_code == 204
    assert conflicts() == [] and scheduled == []
    assert state_of(tenant_a).conflict_revision == 0
    row = admin.get(f"{API}/gateways/{gateway.pk}/").json()
    assert (row["lag"], row["revision_conflict"]) == (0, "")


def test_an_old_gateway_without_a_hash_is_judged_by_its_number(world, tenant_a, scheduled):
    bundle_publish(tenant=tenant_a, trigger="test")
    bundle_publish(tenant=tenant_a, trigger="test", force=True)
    _, token = make_gateway(tenant_a)
    assert send(token, report("2")).status_code == 204  # ours, as far as anyone can tell
    assert send(token, report("1")).status_code == 204  # behind
    assert conflicts() == []
    assert send(token, report("9")).status_code == 204  # ahead: never issued here
    assert [e.after["reason"] for e in conflicts()] == ["ahead"]
    assert state_of(tenant_a).last_revision == 9


def test_a_gateway_refusing_ours_as_a_conflict_is_one_too(world, tenant_a, scheduled):
    """A gateway that reports no hash but refuses our bundle under its number."""
    bundle_publish(tenant=tenant_a, trigger="test")
    _, token = make_gateway(tenant_a)
    assert send(token, report("1", code="revision_conflict")).status_code == 204
    assert [e.after["reason"] for e in conflicts()] == ["refused"]
    assert state_of(tenant_a).conflict_pending


def test_the_revision_counter_is_never_lowered(world, tenant_a, scheduled):
    for _ in range(3):
        bundle_publish(tenant=tenant_a, trigger="test", force=True)
    gateway, token = make_gateway(tenant_a)
    # r2 on the gateway is not ours (r2 here has another hash): audited and alerted, but the
    # current r3 is above it already, so nothing is lowered and no build is needed.
    assert send(token, report("2", OTHER)).status_code == 204
    state = state_of(tenant_a)
    assert (state.last_revision, state.conflict_revision, state.conflict_pending) == (3, 2, False)
    assert [e.after["reason"] for e in conflicts()] == ["different"]
    assert scheduled == []
    assert bundle_publish(tenant=tenant_a, trigger="registry change") is None
    assert Gateway.objects.get(pk=gateway.pk).active_revision == 2


def test_one_report_raises_the_counter_by_a_bounded_step(world, tenant_a, scheduled):
    """A token holder reporting 2^63 − 1 cannot exhaust the revision numbers in one go."""
    bundle_publish(tenant=tenant_a, trigger="test")
    _, token = make_gateway(tenant_a)
    assert send(token, report(str(2**63 - 1))).status_code == 204
    state = state_of(tenant_a)
    assert state.last_revision == state.conflict_revision == 1 + MAX_REVISION_JUMP
    assert bundle_publish(tenant=tenant_a, trigger="x").revision_number == 2 + MAX_REVISION_JUMP


@pytest.mark.parametrize("sha", ["abc", "g" * 64, "a" * 63, "a" * 65, "a" * 64 + "\n", 7, None,
                                 ["a" * 64]])
def test_a_malformed_active_sha256_is_a_400_and_nothing_is_stored(world, tenant_a, sha):
    bundle_publish(tenant=tenant_a, trigger="test")
    gateway, token = make_gateway(tenant_a)
    response = send(token, report("5", sha))
    assert response.status_code == 400
    assert response.json() == {
        "code": "invalid",
        "message": "bundles.alpha.active_sha256: must be the SHA-256 of the active bundle's "
                   'tarball as 64 hexadecimal digits, or "" before the first bundle.'}
    gateway.refresh_from_db()
    assert (gateway.active_revision, gateway.last_report) == (None, None)
    assert state_of(tenant_a).last_revision == 1
    assert conflicts() == []


def test_an_empty_active_sha256_before_the_first_bundle_is_accepted(world, tenant_a):
    _, token = make_gateway(tenant_a)
    assert send(token, report("", "")).status_code == 204


def test_the_fleet_page_explains_the_conflict_until_the_gateway_runs_ours(
        world, tenant_a, scheduled, login, victor):
    bundle_publish(tenant=tenant_a, trigger="test")
    gateway, token = make_gateway(tenant_a)
    assert send(token, report("30", OTHER)).status_code == 204
    client = login(victor)

    fleet = client.get("/t/alpha/gateways/").content.decode()
    assert re.search(r'<p class="error" id="conflict-count">1 gateway runs a revision this '
                     r"control plane did not issue under that number: its database was "
                     r"probably restored from an older backup \(or rolled back\)\.", fleet)
    row = re.search(rf'<tr id="gateway-{gateway.pk}"[^>]*>(.*?)</tr>', fleet, re.S).group(1)
    assert ">revision conflict</span>" in row and "up to date" not in row
    detail = client.get(f"/t/alpha/gateways/{gateway.pk}/").content.decode()
    explained = re.search(r'<p class="error" id="revision-conflict-explained">(.*?)</p>',
                          detail, re.S).group(1)
    assert explained == (
        "r30 is ahead of this control plane's newest revision (r1): its database was probably "
        "restored from an older backup (or rolled back). The gateway keeps enforcing its own "
        "r30; the control plane now numbers its bundles above r30 and publishes the next one "
        "at once, which the gateway accepts as a normal update (until then, changes made here "
        "do not reach it).")

    # Published above it, but the gateway still runs its r30 (a number with no bundle here).
    ours = bundle_publish(tenant=tenant_a, trigger="revision conflict")
    alerts.alerts_evaluate_tenant(tenant=tenant_a)
    assert Alert.objects.get(rule_kind=Kind.REVISION_CONFLICT).status == "open"
    fleet = client.get("/t/alpha/gateways/").content.decode()
    assert 'id="conflict-count"' in fleet

    # The gateway activates it: the page says up to date and the alert resolves itself.
    assert send(token, report("31", ours.blob_id)).status_code == 204
    fleet = client.get("/t/alpha/gateways/").content.decode()
    assert 'id="conflict-count"' not in fleet and '<span class="ok">up to date</span>' in fleet
    alerts.alerts_evaluate_tenant(tenant=tenant_a)
    alert = Alert.objects.get(rule_kind=Kind.REVISION_CONFLICT)
    assert alert.status == "resolved"
    assert alert.resolution.startswith("Condition cleared: the gateway runs a revision")
    assert Bundle.objects.filter(tenant=tenant_a).count() == 2


def test_the_alert_links_to_the_gateway(world, tenant_a, scheduled, login, alice):
    bundle_publish(tenant=tenant_a, trigger="test")
    gateway, token = make_gateway(tenant_a)
    assert send(token, report("30", OTHER)).status_code == 204
    alert = Alert.objects.get(rule_kind=Kind.REVISION_CONFLICT)
    page = login(alice).get(f"/t/alpha/alerts/{alert.pk}/").content.decode()
    assert f'href="/t/alpha/gateways/{gateway.pk}/"' in page


def test_a_rule_switched_off_raises_no_alert_but_the_counter_still_rises(
        world, tenant_a, scheduled):
    bundle_publish(tenant=tenant_a, trigger="test")
    rule = alerts.alert_rules_for(tenant_a)[Kind.REVISION_CONFLICT]
    alerts.alert_rule_update(tenant=tenant_a, actor=alerts.SYSTEM, rule=rule, enabled=False)
    _, token = make_gateway(tenant_a)
    assert send(token, report("30", OTHER)).status_code == 204
    assert not Alert.objects.filter(rule_kind=Kind.REVISION_CONFLICT).exists()
    assert state_of(tenant_a).last_revision == 30 and len(conflicts()) == 1
