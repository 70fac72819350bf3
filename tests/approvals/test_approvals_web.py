"""Approvals web pages: the approver's inbox (inline and bulk decisions, htmx polling), a request
with its bundle diff preview, the requester's pages, the policies, and the navigation counter."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from approvals import selectors, services
from approvals.models import AccessRequest, ApprovalDecision
from governance.audit.models import AuditEvent
from governance.tenancy.models import ExternalIdentity
from registry import services as registry
from tests.bundle_support import SYSTEM
from tests.factories import ScopeFactory


@pytest.fixture
def world(tenant_a, world):
    """The approvals world (tests/approvals/conftest.py) and a low-risk scope payroll:read
    holding personal data."""
    world["low"] = ScopeFactory(tenant=tenant_a, name="payroll:read", risk_level="low",
                                data_classes=["pii"], tools=[world["tools"]["pay"]])
    return world


def _request(tenant, world, requester, scope=None, **kwargs):
    terms = {"duration_minutes": 60, "justification": "month-end payroll run"} | kwargs
    return services.access_request_create(tenant=tenant, actor=SYSTEM, requester=requester,
                                          agent=world["bot"], scope=scope or world["scope"],
                                          **terms)


def _url(*parts):
    return "/t/alpha/approvals/" + "".join(f"{p}/" for p in parts if p != "")


def _status(request) -> str:
    return AccessRequest.objects.get(pk=request.pk).status


# --- Inbox ---------------------------------------------------------------------------------------


def test_inbox_shows_only_what_the_approver_may_decide_now(tenant_a, world, cast, login):
    by_dave = _request(tenant_a, world, cast["dave"])
    by_alice = _request(tenant_a, world, cast["alice"], scope=world["low"])
    bob_page = login(cast["bob"]).get(_url(""))
    assert bob_page.status_code == 200
    body = bob_page.content.decode()
    assert f'id="access_request-{by_dave.pk}"' in body
    assert f'id="access_request-{by_alice.pk}"' in body
    assert "month-end payroll run" in body and "Stage</dt><dd>1 of 1" in body
    assert "Medium risk" in body and "Low risk" in body and ">pii<" in body
    # alice never sees her own request; dave (owner, developer) may not open the inbox at all.
    alice_body = login(cast["alice"]).get(_url("")).content.decode()
    assert f'id="access_request-{by_dave.pk}"' in alice_body
    assert f'id="access_request-{by_alice.pk}"' not in alice_body
    assert login(cast["dave"]).get(_url("")).status_code == 403
    # Once bob decided (a stage needing two), the item leaves his inbox but stays in alice's.
    services.approval_policy_save(tenant=tenant_a, actor=SYSTEM, scope=world["low"],
                                  stages=[{"approvals_required": 2,
                                           "roles": ["approver", "admin"]}])
    services.access_request_cancel(tenant=tenant_a, actor=SYSTEM, request=by_alice,
                                   by=cast["alice"])
    two = _request(tenant_a, world, cast["dave"], scope=world["low"])
    services.access_request_decide(tenant=tenant_a, actor=SYSTEM, request=two,
                                   approver=cast["bob"], outcome="approve")
    assert [r.pk for r in selectors.inbox_requests(tenant_a, cast["bob"])] == [by_dave.pk]
    assert two.pk in [r.pk for r in selectors.inbox_requests(tenant_a, cast["alice"])]


def test_inbox_follows_the_stage_eligibility_of_the_services(tenant_a, world, cast):
    ExternalIdentity.objects.create(user=cast["audrey"], issuer="https://idp", subject="a",
                                    last_groups=["security-leads"])
    services.approval_policy_save(tenant=tenant_a, actor=SYSTEM, scope=world["scope"],
                                  stages=[{"approvals_required": 1, "roles": [],
                                           "idp_group": "security-leads"}])
    request = _request(tenant_a, world, cast["dave"])
    eligible = selectors.eligible_user_ids(tenant_a, request.stages[0])
    for user in (cast["alice"], cast["bob"], cast["audrey"], cast["victor"]):
        shown = request.pk in [r.pk for r in selectors.inbox_requests(tenant_a, user)]
        assert shown == (user.pk in eligible), user
    assert eligible == {cast["audrey"].pk}


def test_the_inbox_fragment_is_polled_with_htmx(tenant_a, world, cast, login):
    client = login(cast["bob"])
    page = client.get(_url(""))
    assert 'hx-trigger="every 10s"' in page.content.decode()
    assert 'id="inbox-empty"' in page.content.decode()
    request = _request(tenant_a, world, cast["dave"])
    fragment = client.get(_url(""), HTTP_HX_REQUEST="true")
    assert fragment.status_code == 200 and "HX-Request" in fragment["Vary"]
    body = fragment.content.decode()
    assert "<html" not in body and f'id="access_request-{request.pk}"' in body


def test_an_approver_approves_inline_and_sees_what_happened(tenant_a, world, cast, login):
    request = _request(tenant_a, world, cast["dave"])
    response = login(cast["bob"]).post(_url("requests", request.pk, "decide"),
                                       {"outcome": "approve"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    body = response.content.decode()
    assert "Approved: payroll:write granted to bot until" in body
    assert 'name="outcome"' not in body  # nothing left to decide
    assert _status(request) == "approved"
    again = login(cast["alice"]).post(_url("requests", request.pk, "decide"),
                                      {"outcome": "approve"}, HTTP_HX_REQUEST="true")
    assert "Nothing to do: this request is already approved." in again.content.decode()


def test_a_deny_without_a_reason_is_refused_inline(tenant_a, world, cast, login):
    request = _request(tenant_a, world, cast["dave"])
    client = login(cast["bob"])
    response = client.post(_url("requests", request.pk, "decide"),
                           {"outcome": "deny", "reason": "  "}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    body = response.content.decode()
    assert "Say why the request is denied." in body and 'name="outcome"' in body
    assert _status(request) == "pending"
    assert not ApprovalDecision.objects.filter(request=request).exists()
    # Without htmx: a flash message and back to the page.
    response = client.post(_url("requests", request.pk, "decide"), {"outcome": "deny"},
                           follow=True)
    assert "Say why the request is denied." in response.content.decode()
    client.post(_url("requests", request.pk, "decide"),
                {"outcome": "deny", "reason": "not this month"})
    assert AccessRequest.objects.get(pk=request.pk).deny_reason == "not this month"


def test_self_approval_through_the_ui_is_refused(tenant_a, world, cast, login):
    own = _request(tenant_a, world, cast["alice"])
    response = login(cast["alice"]).post(_url("requests", own.pk, "decide"),
                                         {"outcome": "approve"}, follow=True)
    assert "You requested this access: someone else must decide." in response.content.decode()
    assert _status(own) == "pending"


def test_one_approver_cannot_pass_two_stages_through_the_ui(tenant_a, world, cast, login):
    services.approval_policy_save(tenant=tenant_a, actor=SYSTEM, scope=world["scope"], stages=[
        {"approvals_required": 1, "roles": ["approver"]},
        {"approvals_required": 1, "roles": ["admin", "approver"]}])
    request = _request(tenant_a, world, cast["dave"])
    bob = login(cast["bob"])
    url = _url("requests", request.pk, "decide")
    first = bob.post(url, {"outcome": "approve"}, HTTP_HX_REQUEST="true").content.decode()
    assert "Stage 1 passed; stage 2 decides next." in first
    # The inbox and the page no longer offer him the decision ...
    assert f'id="access_request-{request.pk}"' not in bob.get(_url("")).content.decode()
    assert 'name="outcome"' not in bob.get(_url("requests", request.pk)).content.decode()
    # ... and a forged post is refused with the rule.
    again = bob.post(url, {"outcome": "approve"}, follow=True).content.decode()
    assert ("You already decided stage 1 of this request: one approver counts once, so "
            "someone else must decide stage 2.") in again
    assert _status(request) == "pending"
    assert ApprovalDecision.objects.filter(request=request).count() == 1
    login(cast["alice"]).post(url, {"outcome": "approve"})
    assert _status(request) == "approved"


def test_bulk_approve_decides_each_low_risk_item_and_skips_the_others(tenant_a, world, cast,
                                                                       login):
    low = _request(tenant_a, world, cast["dave"], scope=world["low"])
    medium = _request(tenant_a, world, cast["dave"])
    page = login(cast["bob"]).get(_url("")).content.decode()
    assert f'name="request" value="{low.pk}"' in page
    assert f'name="request" value="{medium.pk}"' not in page  # no box for medium risk
    response = login(cast["bob"]).post(_url("approve-low-risk"),
                                       {"request": [low.pk, medium.pk]}, follow=True)
    body = response.content.decode()
    assert "Approved 1: payroll:read for bot." in body
    assert "Skipped 1: payroll:write for bot (not low risk: decide it on its own)." in body
    assert _status(low) == "approved" and _status(medium) == "pending"
    assert AuditEvent.objects.filter(tenant=tenant_a, action="access_request.approved",
                                     object_id=str(low.pk)).count() == 1


def test_bulk_approve_reports_refusals_one_by_one(tenant_a, world, cast, login):
    own = _request(tenant_a, world, cast["alice"], scope=world["low"])
    response = login(cast["alice"]).post(_url("approve-low-risk"), {"request": [own.pk]},
                                         follow=True)
    assert "Refused 1: payroll:read for bot: You requested this access" in (
        response.content.decode())
    assert _status(own) == "pending"


# --- A request -----------------------------------------------------------------------------------


def test_the_request_page_previews_the_grant_approval_would_add(tenant_a, world, cast, login):
    request = _request(tenant_a, world, cast["dave"], ticket="CHG-7")
    response = login(cast["bob"]).get(_url("requests", request.pk))
    assert response.status_code == 200
    body = response.content.decode()
    assert 'id="bundle-preview"' in body and 'id="diff-grants"' in body
    assert "+ bot → payroll:write (grant new)" in body
    assert body.count('data-change="added"') == 1 and 'data-change="removed"' not in body
    assert "CHG-7" in body and 'id="agent-grants"' in body
    assert 'name="outcome" value="deny"' in body  # bob may decide from here
    assert not AuditEvent.objects.filter(tenant=tenant_a, action__startswith="grant").exclude(
        object_id=str(world["grant"].pk)).exists()  # a GET writes nothing


def test_the_preview_grant_has_the_shape_the_compiler_gives_the_real_one(tenant_a, world, cast):
    from django.utils import timezone

    from registry.compiler import compile_data

    request = _request(tenant_a, world, cast["dave"])
    preview = selectors.preview_grant_document(request, at=timezone.now())
    services.access_request_decide(tenant=tenant_a, actor=SYSTEM, request=request,
                                   approver=cast["bob"], outcome="approve")
    request.refresh_from_db()
    real = next(g for g in compile_data(tenant_a, at=timezone.now())["grants"]
                if g["id"] == str(request.grant_id))
    assert preview.keys() == real.keys()
    assert {k: v for k, v in preview.items() if k not in ("id", "expires_at")} == {
        k: v for k, v in real.items() if k not in ("id", "expires_at")}


def test_who_may_see_a_request(tenant_a, world, cast, login):
    request = _request(tenant_a, world, cast["dave"])
    for name, code in (("dave", 200), ("bob", 200), ("alice", 200), ("audrey", 200),
                       ("victor", 403), ("oscar", 404)):
        assert login(cast[name]).get(_url("requests", request.pk)).status_code == code, name


def test_the_requester_cancels_after_confirming(tenant_a, world, cast, login):
    request = _request(tenant_a, world, cast["dave"])
    client = login(cast["dave"])
    confirm = client.get(_url("requests", request.pk, "cancel"))
    assert "Cancel the request" in confirm.content.decode()
    response = client.post(_url("requests", request.pk, "cancel"), follow=True)
    assert "Cancelled." in response.content.decode()
    assert _status(request) == "cancelled"


# --- Requester pages -----------------------------------------------------------------------------


def test_a_developer_requests_access_for_an_agent_they_own(tenant_a, world, cast, login):
    other = registry.agent_create(tenant=tenant_a, actor=SYSTEM, name="someone-elses",
                                  owner=cast["alice"])
    client = login(cast["dave"])
    form = client.get(_url("requests", "new")).content.decode()
    assert ">bot<" in form and other.name not in form
    bad = client.post(_url("requests", "new"), {
        "agent": world["bot"].pk, "scope": world["low"].pk, "duration": 2, "unit": "hours",
        "justification": "  ", "ticket": ""})
    assert bad.status_code == 400 and "Say why the agent needs this access." in (
        bad.content.decode())
    response = client.post(_url("requests", "new"), {
        "agent": world["bot"].pk, "scope": world["low"].pk, "duration": 2, "unit": "hours",
        "justification": "reconcile", "ticket": "CHG-9"})
    request = AccessRequest.objects.get(requester=cast["dave"])
    assert response.status_code == 302
    assert response["Location"] == _url("requests", request.pk)
    assert request.duration_minutes == 120 and request.ticket == "CHG-9"
    assert login(cast["bob"]).get(_url("requests", "new")).status_code == 403


def test_my_requests_lists_mine_with_a_status_filter(tenant_a, world, cast, login):
    client = login(cast["dave"])
    assert 'id="my-requests-empty"' in client.get(_url("requests")).content.decode()
    pending = _request(tenant_a, world, cast["dave"])
    cancelled = _request(tenant_a, world, cast["dave"], scope=world["low"])
    services.access_request_cancel(tenant=tenant_a, actor=SYSTEM, request=cancelled,
                                   by=cast["dave"])
    not_mine = _request(tenant_a, world, cast["alice"], scope=world["low"])
    body = client.get(_url("requests")).content.decode()
    assert f"/approvals/requests/{pending.pk}/" in body
    assert f"/approvals/requests/{cancelled.pk}/" in body
    assert f"/approvals/requests/{not_mine.pk}/" not in body
    filtered = client.get(_url("requests"), {"status": "pending"}).content.decode()
    assert f"/approvals/requests/{pending.pk}/" in filtered
    assert f"/approvals/requests/{cancelled.pk}/" not in filtered


# --- Policies ------------------------------------------------------------------------------------


def test_an_unpassable_policy_is_refused_on_the_form(tenant_a, world, cast, login):
    client = login(cast["alice"])
    response = client.post(_url("policies", "new"), {
        "applies_to": "risk", "risk_level": "high", "decision_hours": 4,
        "stage0_approvals": 2, "stage0_roles": ["approver"],
    })
    assert response.status_code == 400
    assert ("Stage 1 needs 2 approval(s) but only 1 member(s) are eligible today: no request "
            "could ever pass it.") in response.content.decode()
    response = client.post(_url("policies", "new"), {
        "applies_to": "risk", "risk_level": "high", "decision_hours": 4,
        "stage0_approvals": 1, "stage0_roles": ["approver"],
        "stage1_approvals": 1, "stage1_roles": ["admin"],
    })
    assert response.status_code == 302
    listing = client.get(_url("policies")).content.decode()
    assert "High risk scopes" in listing and "1 of Approver" in listing and "1 of Admin" in listing
    assert login(cast["victor"]).get(_url("policies")).status_code == 200
    assert login(cast["bob"]).get(_url("policies", "new")).status_code == 403


def test_editing_a_policy_keeps_its_target(tenant_a, world, cast, login):
    policy = services.approval_policy_save(tenant=tenant_a, actor=SYSTEM, scope=world["scope"],
                                           stages=[{"approvals_required": 1,
                                                    "roles": ["approver"]}])
    client = login(cast["alice"])
    assert client.get(_url("policies", policy.pk, "edit")).status_code == 200
    response = client.post(_url("policies", policy.pk, "edit"), {
        "applies_to": "default", "decision_hours": 8, "stage0_approvals": 1,
        "stage0_roles": ["admin"]})
    assert response.status_code == 302
    policy.refresh_from_db()
    assert policy.scope_id == world["scope"].pk and policy.decision_hours == 8
    assert list(policy.stages.values_list("roles", flat=True)) == [["admin"]]
    client.post(_url("policies", policy.pk, "delete"))
    assert not type(policy).objects.filter(pk=policy.pk).exists()


# --- Navigation ----------------------------------------------------------------------------------


def test_the_navigation_counts_what_waits_in_three_queries(tenant_a, world, cast, login):
    _request(tenant_a, world, cast["dave"])
    _request(tenant_a, world, cast["dave"], scope=world["low"])
    body = login(cast["bob"]).get("/t/alpha/servers/").content.decode()
    assert 'id="nav-approvals-count" aria-label="2 waiting">2<' in body
    with CaptureQueriesContext(connection) as queries:
        assert selectors.inbox_count(tenant_a, cast["bob"]) == 2
    assert len(queries) <= 3  # role + groups, requests, escalations
    dave_nav = login(cast["dave"]).get("/t/alpha/servers/").content.decode()
    assert 'id="nav-approvals"' not in dave_nav and 'id="nav-my-requests"' in dave_nav
    victor_nav = login(cast["victor"]).get("/t/alpha/servers/").content.decode()
    assert 'id="nav-approvals"' not in victor_nav and 'id="nav-my-requests"' not in victor_nav
