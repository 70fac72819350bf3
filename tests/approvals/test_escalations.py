"""Runtime escalations (DESIGN.md §5): a gateway asks for a human decision on one held call,
long-polls it, receives a receipt bound to the call, and spends it exactly once. Plus the policy
rules they share with access requests (alternates, object-permission approvers), break-glass
and grant expiry."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.test import Client
from django.utils import timezone
from guardian.shortcuts import assign_perm

from approvals import services
from approvals.models import Escalation
from bundles import publish
from bundles.publish import bundle_publish
from gateway.receipts import ReceiptRejected, arguments_sha256, verify_receipt
from governance.audit.models import AuditEvent
from governance.tenancy.models import Membership
from notifications import services as notifications
from notifications.models import Delivery
from registry import services as registry
from registry.models import Grant
from tests.bundle_support import (
    SYSTEM,
    data_of,
    jwks_of,
    make_gateway,
    payroll_world,
    tar_files,
)

ESCALATIONS = "/api/v1/gateway/escalations"
ARGS = {"employee": "e-17", "amount": 1200}


@pytest.fixture
def world(tenant_a, dave):
    """The approvals world without the rest of the cast (dave is the only member until a test
    adds the approvers it needs), its grant changed to need approval on every call."""
    world = payroll_world(tenant_a, owner=dave)
    registry.grant_update(tenant=tenant_a, actor=SYSTEM, grant=world["grant"],
                          approval_mode="always")
    return world


@pytest.fixture
def token(world, tenant_a):
    _, plaintext = make_gateway(tenant_a)
    return plaintext


def _auth(token, **headers):
    extra = {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items()}
    if token is not None:
        extra["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return extra


def _call(**overrides):
    body = {"call_id": "call-1", "agent": "bot", "server": "payroll", "tool": "pay",
            "arguments": ARGS, "arguments_sha256": arguments_sha256(ARGS),
            "bundle_revision": 3, "reason": "grant requires approval (always)"}
    return body | overrides


def _post(token, body, path=ESCALATIONS):
    return Client().post(path, data=json.dumps(body), content_type="application/json",
                         **_auth(token))


def _get(token, escalation_id, **headers):
    return Client().get(f"{ESCALATIONS}/{escalation_id}", **_auth(token, **headers))


def _consume(token, escalation_id):
    return Client().post(f"{ESCALATIONS}/{escalation_id}/consume", **_auth(token))


def _decide(tenant, escalation_id, approver, outcome="approve", **kwargs):
    escalation = Escalation.objects.get(pk=escalation_id)
    return services.escalation_decide(tenant=tenant, actor=SYSTEM, escalation=escalation,
                                      approver=approver, outcome=outcome, **kwargs)


# --- Create: idempotent on (gateway, call_id) --------------------------------------------------

def test_create_is_idempotent_on_the_gateways_call_id(token, tenant_a):
    first = _post(token, _call())
    assert first.status_code == 201, first.content
    doc = first.json()
    assert doc["status"] == "pending" and doc["expires_at"].endswith("Z")
    again = _post(token, _call())
    assert again.status_code == 200 and again.json()["id"] == doc["id"]
    assert Escalation.objects.count() == 1
    escalation = Escalation.objects.get()
    assert escalation.arguments == ARGS and escalation.bundle_revision == 3
    assert escalation.scope.name == "payroll:write" and escalation.stages
    event = AuditEvent.objects.get(action="escalation.created")
    assert event.actor_label.startswith("gateway") or "edge-1" in event.actor_label


def test_a_call_id_reused_for_another_call_is_409(token):
    assert _post(token, _call()).status_code == 201
    other = _post(token, _call(arguments_sha256="0" * 64))
    assert other.status_code == 409 and "call_id" in other.json()["message"]


@pytest.mark.parametrize("body, field", [
    ({"call_id": ""}, "call_id"),
    ({"arguments_sha256": "abc"}, "arguments_sha256"),
    ({"arguments": [1, 2]}, "arguments"),
    ({"bundle_revision": "7"}, "bundle_revision"),
    ({"agent": "ghost"}, "agent"),
    ({"tool": "nope"}, "tool"),
])
def test_malformed_or_unknown_calls_are_400_naming_the_field(token, body, field):
    response = _post(token, _call(**body))
    assert response.status_code == 400 and field in response.json()["message"]
    assert not Escalation.objects.exists()


def test_nothing_to_approve_without_a_grant_asking_for_approval(token, tenant_a, world):
    registry.grant_update(tenant=tenant_a, actor=SYSTEM, grant=world["grant"],
                          approval_mode="never")
    response = _post(token, _call())
    assert response.status_code == 400 and "deny the call" in response.json()["message"]


def test_a_body_that_is_not_an_object_and_missing_tokens(token):
    assert _post(token, [1]).status_code == 400
    assert _post(None, _call()).status_code == 401
    assert _post("tgw_nope", _call()).status_code == 401
    assert Client().get(ESCALATIONS, **_auth(token)).status_code == 405


def test_another_tenants_gateway_sees_404(token, tenant_b):
    doc = _post(token, _call()).json()
    _, other = make_gateway(tenant_b, name="bravo-edge")
    assert _get(other, doc["id"]).status_code == 404
    assert _consume(other, doc["id"]).status_code == 404
    assert _get(token, "00000000-0000-0000-0000-000000000000").status_code == 404


# --- Decide, receipt, consume once ------------------------------------------------------------

def test_approved_escalation_carries_a_receipt_bound_to_the_call(token, tenant_a, bob):
    doc = _post(token, _call()).json()
    outcome = _decide(tenant_a, doc["id"], bob)
    assert outcome.changed and outcome.request.status == "approved"
    answer = _get(token, doc["id"]).json()
    assert answer["status"] == "approved" and answer["consumed"] is False
    jwks = jwks_of(tenant_a)
    claims = verify_receipt(answer["receipt"], jwks, tenant="alpha", escalation_id=doc["id"],
                            agent="bot", tool="pay", server="payroll",
                            arguments_hash=arguments_sha256(ARGS))
    assert claims["exp"] - claims["iat"] == 120
    # Bound to this call: other arguments, another tool or another tenant do not verify.
    for wrong in ({"arguments_hash": arguments_sha256({"amount": 999999})}, {"tool": "refund"},
                  {"tenant": "bravo"}, {"escalation_id": "other"}):
        params = {"tenant": "alpha", "escalation_id": doc["id"], "agent": "bot", "tool": "pay",
                  "arguments_hash": arguments_sha256(ARGS)} | wrong
        with pytest.raises(ReceiptRejected) as rejected:
            verify_receipt(answer["receipt"], jwks, **params)
        assert rejected.value.code == "wrong_call"
    with pytest.raises(ReceiptRejected) as rejected:
        verify_receipt(answer["receipt"], jwks, tenant="alpha", escalation_id=doc["id"],
                       agent="bot", tool="pay", arguments_hash=arguments_sha256(ARGS),
                       now=claims["exp"] + 60)
    assert rejected.value.code == "expired"

    first = _consume(token, doc["id"])
    assert first.status_code == 200 and first.json()["consumed"] is True
    replay = _consume(token, doc["id"])
    assert replay.status_code == 409 and "already used" in replay.json()["message"]
    after = _get(token, doc["id"]).json()
    assert after["consumed"] is True and "receipt" not in after
    assert AuditEvent.objects.filter(action="escalation.consumed").count() == 1


def test_a_bundle_signature_is_not_a_receipt(token, tenant_a, bob):
    bundle_publish(tenant=tenant_a, trigger="test")
    tarball = Client().get("/api/v1/gateway/bundles/alpha", **_auth(token)).content
    signature = json.loads(tar_files(tarball)[".signatures.json"])
    with pytest.raises(ReceiptRejected) as rejected:
        verify_receipt(signature["signatures"][0], jwks_of(tenant_a), tenant="alpha",
                       escalation_id="x", agent="bot", tool="pay", arguments_hash="0" * 64)
    assert rejected.value.code == "bad_receipt"


def test_denied_escalation_says_why_and_cannot_be_consumed(token, tenant_a, bob):
    doc = _post(token, _call()).json()
    with pytest.raises(ValidationError):
        _decide(tenant_a, doc["id"], bob, "deny")  # a deny needs a reason
    _decide(tenant_a, doc["id"], bob, "deny", reason="amount above the monthly cap")
    answer = _get(token, doc["id"]).json()
    assert answer["status"] == "denied" and answer["reason"] == "amount above the monthly cap"
    assert "receipt" not in answer
    assert _consume(token, doc["id"]).status_code == 409
    late = _decide(tenant_a, doc["id"], bob, reason="again")
    assert not late.changed and "already denied" in late.message


def test_pending_escalation_cannot_be_consumed(token):
    doc = _post(token, _call()).json()
    response = _consume(token, doc["id"])
    assert response.status_code == 409 and "pending" in response.json()["message"]


def test_the_owner_and_the_ineligible_never_decide(token, tenant_a, dave, victor, bob):
    doc = _post(token, _call()).json()
    with pytest.raises(ValidationError, match="own this agent"):
        _decide(tenant_a, doc["id"], dave)
    with pytest.raises(ValidationError, match="not an eligible approver"):
        _decide(tenant_a, doc["id"], victor)
    Membership.objects.filter(tenant=tenant_a, user=bob).delete()  # removed mid-request
    with pytest.raises(ValidationError, match="not an eligible approver"):
        _decide(tenant_a, doc["id"], bob)
    assert Escalation.objects.get().status == "pending"


# --- Deadline ---------------------------------------------------------------------------------

def test_undecided_past_the_deadline_is_expired(token, tenant_a, bob):
    doc = _post(token, _call()).json()
    Escalation.objects.filter(pk=doc["id"]).update(deadline=timezone.now() - timedelta(seconds=1))
    answer = _get(token, doc["id"]).json()
    assert answer["status"] == "expired" and "denied automatically" in answer["reason"]
    event = AuditEvent.objects.get(action="escalation.expired")
    assert event.actor_type == "system"
    late = _decide(tenant_a, doc["id"], bob)
    assert not late.changed and "already expired" in late.message


def test_the_deadline_comes_from_the_tenants_escalation_settings(token, tenant_a):
    tenant_a.settings = {"escalation": {"decision_timeout_seconds": 60}}
    tenant_a.save()
    before = timezone.now()
    _post(token, _call())
    after = timezone.now()
    escalation = Escalation.objects.get()
    # However long the request took: 60 s after the moment it was escalated.
    assert before + timedelta(seconds=59) <= escalation.deadline <= after + timedelta(seconds=61)


# --- Long poll --------------------------------------------------------------------------------

def _later(seconds, fn):
    def run():
        time.sleep(seconds)
        try:
            fn()
        finally:
            connection.close()
    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.django_db(transaction=True)
def test_long_poll_wakes_on_the_decision(tenant_a, dave, bob):
    world = payroll_world(tenant_a, owner=dave)
    registry.grant_update(tenant=tenant_a, actor=SYSTEM, grant=world["grant"],
                          approval_mode="always")
    _, token = make_gateway(tenant_a)
    doc = _post(token, _call()).json()
    thread = _later(0.5, lambda: _decide(tenant_a, doc["id"], bob))
    started = time.monotonic()
    answer = _get(token, doc["id"], prefer="wait=20")
    thread.join()
    assert answer.status_code == 200 and answer.json()["status"] == "approved"
    assert answer.json()["receipt"]
    assert time.monotonic() - started < 10


@pytest.mark.django_db(transaction=True)
def test_long_poll_returns_pending_after_the_wait(tenant_a, dave):
    world = payroll_world(tenant_a, owner=dave)
    registry.grant_update(tenant=tenant_a, actor=SYSTEM, grant=world["grant"],
                          approval_mode="always")
    _, token = make_gateway(tenant_a)
    doc = _post(token, _call()).json()
    started = time.monotonic()
    answer = _get(token, doc["id"], prefer="wait=1")
    assert answer.json()["status"] == "pending" and time.monotonic() - started >= 0.9


@pytest.mark.django_db(transaction=True)
def test_long_poll_wakes_through_redis_pubsub(tenant_a, dave, bob, redis_url, settings):
    settings.REDIS_URL = redis_url
    world = payroll_world(tenant_a, owner=dave)
    registry.grant_update(tenant=tenant_a, actor=SYSTEM, grant=world["grant"],
                          approval_mode="always")
    _, token = make_gateway(tenant_a)
    doc = _post(token, _call()).json()
    thread = _later(1.5, lambda: _decide(tenant_a, doc["id"], bob))
    answer = _get(token, doc["id"], prefer="wait=20")
    thread.join()
    assert answer.json()["status"] == "approved"


# --- Floods -----------------------------------------------------------------------------------

def test_a_flood_is_refused_with_429_and_one_alert(token, tenant_a, alice, settings):
    settings.ESCALATION_RATE_LIMIT_PER_MINUTE = 3
    notifications.channel_create(tenant=tenant_a, actor=SYSTEM, name="sec", kind="webhook",
                                 url="http://127.0.0.1:9/hook", secret="s3cret-s3cret-s3cret",
                                 events=["escalation.flood"])
    for i in range(3):
        assert _post(token, _call(call_id=f"c{i}")).status_code == 201
    for i in range(3, 6):
        refused = _post(token, _call(call_id=f"c{i}"))
        assert refused.status_code == 429 and refused["Retry-After"] == "60"
        assert "refused, not queued" in refused.json()["message"]
    assert Escalation.objects.count() == 3
    assert AuditEvent.objects.filter(action="escalation.flood").count() == 1
    assert Delivery.objects.filter(event="escalation.flood").count() == 1
    # A retry of an existing call re-attaches: it is not a new escalation and not refused.
    assert _post(token, _call(call_id="c0")).status_code == 200


# --- Policy: alternates, object permission ----------------------------------------------------

def test_alternates_get_the_item_at_the_deadline_then_the_system_denies(
        token, tenant_a, alice, bob, audrey):
    services.approval_policy_save(
        tenant=tenant_a, actor=SYSTEM, decision_hours=1,
        stages=[{"approvals_required": 1, "roles": ["approver"]}],
        alternate_roles=["auditor"])
    doc = _post(token, _call()).json()
    escalation = Escalation.objects.get()
    assert escalation.alternates["roles"] == ["auditor"]
    with pytest.raises(ValidationError):
        _decide(tenant_a, doc["id"], audrey)  # not yet: alternates only after the deadline
    first_deadline = escalation.deadline
    services.deadlines_due(now=first_deadline)
    escalation.refresh_from_db()
    assert escalation.status == "pending" and escalation.on_alternates
    assert escalation.deadline == first_deadline + (first_deadline - escalation.created_at)
    assert AuditEvent.objects.filter(action="escalation.to_alternates").exists()
    with pytest.raises(ValidationError, match="alternates"):
        _decide(tenant_a, doc["id"], bob, now=first_deadline)
    outcome = _decide(tenant_a, doc["id"], audrey, now=first_deadline)
    assert outcome.request.status == "approved"

    second = _post(token, _call(call_id="call-2")).json()
    row = Escalation.objects.get(pk=second["id"])
    services.deadlines_due(now=row.deadline)
    services.deadlines_due(now=row.deadline + (row.deadline - row.created_at))
    row.refresh_from_db()
    assert row.status == "expired" and row.on_alternates


def test_a_policy_with_alternates_nobody_holds_is_refused(tenant_a, bob):
    with pytest.raises(ValidationError, match="alternate"):
        services.approval_policy_save(tenant=tenant_a, actor=SYSTEM, stages=[
            {"roles": ["approver"]}], alternate_idp_group="nobody-here")


def test_holders_of_the_object_permission_approve_their_scope(token, tenant_a, world, victor):
    with pytest.raises(ValidationError, match="only 0"):
        services.approval_policy_save(tenant=tenant_a, actor=SYSTEM, scope=world["scope"],
                                      stages=[{"object_permission": True}])
    assign_perm("registry.approve_access", victor, world["server"])
    services.approval_policy_save(tenant=tenant_a, actor=SYSTEM, scope=world["scope"],
                                  stages=[{"object_permission": True}])
    doc = _post(token, _call()).json()
    assert _decide(tenant_a, doc["id"], victor).request.status == "approved"


def test_one_approver_cannot_pass_two_stages_of_an_escalation(token, tenant_a, api, token_for,
                                                              cast):
    services.approval_policy_save(tenant=tenant_a, actor=SYSTEM, stages=[
        {"approvals_required": 1, "roles": ["approver"]},
        {"approvals_required": 1, "roles": ["admin", "approver"]}])
    doc = _post(token, _call()).json()
    bob = api(token_for(cast["bob"], tenant_a))
    url = f"/api/v1/t/alpha/escalations/{doc['id']}/decide/"
    first = bob.post(url, {"outcome": "approve"}, format="json").json()
    assert first["message"] == "Stage 1 passed; stage 2 decides next."
    assert bob.get("/api/v1/t/alpha/escalations/?waiting=true").json()["results"] == []
    second = bob.post(url, {"outcome": "approve"}, format="json")
    assert second.status_code == 400
    assert second.json()["message"] == (
        "You already decided stage 1 of this escalation: one approver counts once, so someone "
        "else must decide stage 2.")
    with pytest.raises(ValidationError, match="one approver counts once"):
        _decide(tenant_a, doc["id"], cast["bob"])
    assert _get(token, doc["id"]).json()["status"] == "pending"
    _decide(tenant_a, doc["id"], cast["alice"])
    assert _get(token, doc["id"]).json()["status"] == "approved"


# --- Break-glass and grant expiry -------------------------------------------------------------

def test_break_glass_is_short_flagged_audited_and_alerted(tenant_a, world, alice, bob, settings):
    notifications.channel_create(tenant=tenant_a, actor=SYSTEM, name="admins", kind="email",
                                 to_recipients=True, events=["break_glass.used"])
    with pytest.raises(ValidationError, match="admin"):
        services.break_glass_grant(tenant=tenant_a, actor=SYSTEM, admin=bob, agent=world["bot"],
                                   scope=world["scope"], justification="x", minutes=5)
    with pytest.raises(ValidationError):
        services.break_glass_grant(tenant=tenant_a, actor=SYSTEM, admin=alice,
                                   agent=world["bot"], scope=world["scope"], justification="",
                                   minutes=5)
    with pytest.raises(ValidationError, match="Between 1 and 60"):
        services.break_glass_grant(tenant=tenant_a, actor=SYSTEM, admin=alice,
                                   agent=world["bot"], scope=world["scope"],
                                   justification="incident 7", minutes=61)
    grant = services.break_glass_grant(tenant=tenant_a, actor=SYSTEM, admin=alice,
                                       agent=world["bot"], scope=world["scope"],
                                       justification="incident 7: payroll stuck", minutes=30)
    assert grant.break_glass and grant.justification.startswith("incident 7")
    assert timedelta(minutes=29) < grant.expires_at - timezone.now() <= timedelta(minutes=30)
    event = AuditEvent.objects.get(action="grant.break_glass")
    assert event.after["break_glass"] is True
    delivery = Delivery.objects.get(event="break_glass.used")
    assert "alice" in delivery.subject
    bundle_publish(tenant=tenant_a, trigger="test")
    _, token = make_gateway(tenant_a)
    data = data_of(Client().get("/api/v1/gateway/bundles/alpha", **_auth(token)).content)
    assert any(g["id"] == str(grant.pk) for g in data["grants"])


def test_expired_grants_are_marked_and_published_away(tenant_a, world):
    grant = registry.grant_create(tenant=tenant_a, actor=SYSTEM, agent=world["bot"],
                                  scope=world["scope"],
                                  expires_at=timezone.now() + timedelta(minutes=5))
    assert services.grants_expire_due() == 0
    later = timezone.now() + timedelta(minutes=6)
    assert services.grants_expire_due(now=later) == 1
    grant.refresh_from_db()
    assert grant.status == Grant.Status.EXPIRED
    assert AuditEvent.objects.filter(action="grant.expired").count() == 1
    assert services.grants_expire_due(now=later) == 0  # idempotent
    # The expiry is a bundle-affecting change: the publisher builds a bundle without it.
    assert AuditEvent.objects.filter(publish.bundle_action_q(), action="grant.expired").exists()
    bundle_publish(tenant=tenant_a, trigger="test")
    _, token = make_gateway(tenant_a)
    data = data_of(Client().get("/api/v1/gateway/bundles/alpha", **_auth(token)).content)
    assert str(grant.pk) not in {g["id"] for g in data["grants"]}


def test_reminders_go_once_when_a_fifth_of_the_wait_is_left(token, tenant_a, bob):
    notifications.channel_create(tenant=tenant_a, actor=SYSTEM, name="approvers",
                                 kind="email", to_recipients=True,
                                 events=["approval.reminder"])
    _post(token, _call())
    escalation = Escalation.objects.get()
    assert services.reminders_due(now=escalation.created_at + timedelta(seconds=60)) == 0
    near = escalation.deadline - timedelta(seconds=60)
    assert services.reminders_due(now=near) == 1
    assert services.reminders_due(now=near) == 0
    reminder = Delivery.objects.get(event="approval.reminder")
    assert reminder.payload["recipients"] == ["bob@example.com"]


# --- The approver's pages and API -------------------------------------------------------------

def test_the_inbox_lists_held_calls_for_eligible_approvers_only(token, tenant_a, login, cast):
    doc = _post(token, _call()).json()
    inbox = login(cast["bob"]).get("/t/alpha/approvals/").content.decode()
    assert f'id="escalation-{doc["id"]}"' in inbox and "payroll/pay" in inbox
    assert "e-17" in inbox  # the arguments as sent
    assert 'aria-label="1 waiting"' in inbox
    # The agent's owner never sees it to decide; a viewer has no inbox at all.
    assert login(cast["dave"]).get("/t/alpha/approvals/").status_code == 403
    assert login(cast["victor"]).get("/t/alpha/approvals/").status_code == 403


def test_the_detail_page_says_whether_the_arguments_are_whole(token, tenant_a, login, cast):
    whole = _post(token, _call()).json()
    redacted = _post(token, _call(call_id="call-2", arguments={"employee": "[redacted]"})).json()
    hash_only = _post(token, _call(call_id="call-3", arguments=None)).json()
    bob = login(cast["bob"])
    page = bob.get(f"/t/alpha/approvals/escalations/{whole['id']}/").content.decode()
    assert 'id="arguments-verified"' in page and arguments_sha256(ARGS) in page
    assert 'id="approve-escalation"' in page
    page = bob.get(f"/t/alpha/approvals/escalations/{redacted['id']}/").content.decode()
    assert 'id="arguments-redacted"' in page and "[redacted]" in page
    page = bob.get(f"/t/alpha/approvals/escalations/{hash_only['id']}/").content.decode()
    assert "sent only the hash" in page
    # Auditors read, without a decision form; developers and viewers may not look.
    audit_page = login(cast["audrey"]).get(f"/t/alpha/approvals/escalations/{whole['id']}/")
    assert audit_page.status_code == 200 and b'id="approve-escalation"' not in audit_page.content
    for name in ("dave", "victor"):
        assert login(cast[name]).get(
            f"/t/alpha/approvals/escalations/{whole['id']}/").status_code == 403
        assert login(cast[name]).get("/t/alpha/approvals/escalations/").status_code == 403
    listing = login(cast["audrey"]).get("/t/alpha/approvals/escalations/?status=pending")
    assert listing.status_code == 200 and listing.content.decode().count("payroll/pay") == 3


def test_deciding_inline_with_htmx_wakes_nothing_twice(token, tenant_a, login, cast):
    doc = _post(token, _call()).json()
    bob = login(cast["bob"])
    url = f"/t/alpha/approvals/escalations/{doc['id']}/decide/"
    refused = bob.post(url, {"outcome": "deny", "reason": ""}, HTTP_HX_REQUEST="true")
    assert refused.status_code == 200 and "Say why" in refused.content.decode()
    assert Escalation.objects.get().status == "pending"
    done = bob.post(url, {"outcome": "approve"}, HTTP_HX_REQUEST="true").content.decode()
    assert "the gateway may now run pay once" in done
    again = bob.post(url, {"outcome": "approve"}, HTTP_HX_REQUEST="true").content.decode()
    assert "Nothing to do: this escalation is already approved" in again
    assert AuditEvent.objects.filter(action="escalation.approved").count() == 1
    # The owner through the page: refused with the rule, nothing recorded.
    second = _post(token, _call(call_id="call-2")).json()
    owner = login(cast["dave"]).post(f"/t/alpha/approvals/escalations/{second['id']}/decide/",
                                     {"outcome": "approve"})
    assert owner.status_code == 403  # developers cannot decide at all


def test_the_escalation_api_lists_and_decides(token, tenant_a, api, token_for, cast):
    doc = _post(token, _call()).json()
    bob = api(token_for(cast["bob"], tenant_a))
    listed = bob.get("/api/v1/t/alpha/escalations/?waiting=true").json()
    assert [e["id"] for e in listed["results"]] == [doc["id"]]
    assert listed["results"][0]["arguments_complete"] is True
    refused = bob.post(f"/api/v1/t/alpha/escalations/{doc['id']}/decide/", {"outcome": "deny"},
                       format="json")
    assert refused.status_code == 400
    decided = bob.post(f"/api/v1/t/alpha/escalations/{doc['id']}/decide/",
                       {"outcome": "approve"}, format="json").json()
    assert decided["changed"] and decided["escalation"]["status"] == "approved"
    assert _get(token, doc["id"]).json()["status"] == "approved"
    dave = api(token_for(cast["dave"], tenant_a))
    assert dave.get("/api/v1/t/alpha/escalations/").status_code == 403
    auditor = api(token_for(cast["audrey"], tenant_a))
    assert auditor.get(f"/api/v1/t/alpha/escalations/{doc['id']}/").json()["decisions"][0][
        "approver"] == "bob"
