"""The approvals admin surfaces: policies with object-permission stages and alternate approvers
(form and API), who holds the approve permission on a scope or server, and break-glass (page and
API). Exact messages, audit events, outsider 404 and under-privileged 403 for each."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone
from guardian.shortcuts import get_user_perms

from approvals import selectors, services
from approvals.models import ApprovalPolicy
from governance.audit.models import AuditEvent
from governance.tenancy.models import Membership
from notifications import services as notifications
from notifications.models import Delivery
from registry.models import Grant, McpServer, ToolScope
from tests.bundle_support import SYSTEM

API = "/api/v1/t/alpha/"
NOBODY_ALTERNATE = ("Nobody is an alternate approver today: name a role or group that has "
                    "members.")


def _url(*parts):
    return "/t/alpha/approvals/" + "".join(f"{p}/" for p in parts if p != "")


def _member(tenant, user) -> Membership:
    return Membership.objects.for_tenant(tenant).get(user=user)


def _give(tenant, user, obj):
    services.approver_permission_grant(tenant=tenant, actor=SYSTEM, user=user, obj=obj)


# --- Policies: object-permission stages and alternates -----------------------------------------


def test_a_policy_with_permission_holders_and_alternates_is_saved_from_the_form(
        tenant_a, world, cast, login):
    _give(tenant_a, cast["victor"], world["scope"])
    client = login(cast["alice"])
    response = client.post(_url("policies", "new"), {
        "applies_to": "scope", "scope": world["scope"].pk, "decision_hours": 4,
        "stage0_approvals": 1, "stage0_object_permission": "on",
        "alternate_roles": ["admin"], "alternate_idp_group": "",
    })
    assert response.status_code == 302, response.content.decode()
    policy = ApprovalPolicy.objects.get(scope=world["scope"])
    stage = policy.stages.get()
    assert stage.object_permission is True and stage.roles == [] and stage.idp_group == ""
    assert policy.alternate_roles == ["admin"] and policy.alternate_idp_group == ""
    listing = client.get(_url("policies")).content.decode()
    assert "1 of approvers of the scope or its server" in listing
    assert "1 of Admin within another 4 h, then denied" in listing
    edit = client.get(_url("policies", policy.pk, "edit")).content.decode()
    assert 'name="stage0_object_permission" id="id_stage0_object_permission" checked' in edit
    assert 'name="alternate_roles" value="admin" id="id_alternate_roles_0" checked' in edit
    # Requests made under it carry both, frozen.
    rules = selectors.policy_rules(tenant_a, world["scope"])
    assert rules.stages[0]["object_permission"] is True
    assert rules.alternates["roles"] == ["admin"]


def test_the_form_shows_the_services_refusals(tenant_a, world, cast, login):
    client = login(cast["alice"])
    nobody_holds = client.post(_url("policies", "new"), {
        "applies_to": "scope", "scope": world["scope"].pk, "decision_hours": 4,
        "stage0_approvals": 1, "stage0_object_permission": "on"})
    assert nobody_holds.status_code == 400
    assert ("Stage 1 needs 1 approval(s) but only 0 member(s) are eligible today: no request "
            "could ever pass it.") in nobody_holds.content.decode()
    no_alternate = client.post(_url("policies", "new"), {
        "applies_to": "default", "decision_hours": 4, "stage0_approvals": 1,
        "stage0_roles": ["approver"], "alternate_idp_group": "night-shift"})
    assert no_alternate.status_code == 400
    assert NOBODY_ALTERNATE in no_alternate.content.decode()
    assert not ApprovalPolicy.objects.exists()


def test_policy_api_takes_permission_holders_and_alternates(tenant_a, world, cast, admin,
                                                            as_user):
    url = API + "approval-policies/"
    refused = admin.post(url, {"scope": world["scope"].pk, "stages": [
        {"approvals_required": 1, "object_permission": True}]}, format="json")
    assert refused.status_code == 400
    assert refused.json()["message"] == ("Stage 1 needs 1 approval(s) but only 0 member(s) are "
                                         "eligible today: no request could ever pass it.")
    _give(tenant_a, cast["victor"], world["server"])
    created = admin.post(url, {"scope": world["scope"].pk, "decision_hours": 2, "stages": [
        {"approvals_required": 1, "object_permission": True}],
        "alternate_roles": ["approver"]}, format="json")
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["stages"] == [{"approvals_required": 1, "roles": [], "idp_group": "",
                               "object_permission": True}]
    assert body["alternate_roles"] == ["approver"] and body["alternate_idp_group"] == ""
    policy_url = url + f"{body['id']}/"
    # A PATCH that leaves the stages and the alternates out keeps them.
    patched = admin.patch(policy_url, {"decision_hours": 6}, format="json")
    assert patched.status_code == 200
    assert patched.json()["stages"][0]["object_permission"] is True
    assert patched.json()["alternate_roles"] == ["approver"]
    bad = admin.patch(policy_url, {"alternate_roles": [], "alternate_idp_group": "night-shift"},
                      format="json")
    assert bad.status_code == 400 and bad.json()["message"] == NOBODY_ALTERNATE
    cleared = admin.patch(policy_url, {"alternate_roles": []}, format="json")
    assert cleared.status_code == 200 and cleared.json()["alternate_roles"] == []
    assert as_user(cast["victor"]).get(policy_url).json()["stages"][0]["object_permission"]


# --- Approver permissions ----------------------------------------------------------------------


def test_approver_permission_is_granted_and_revoked_with_an_audit_event(tenant_a, world, cast):
    victor, scope, server = cast["victor"], world["scope"], world["server"]
    services.approver_permission_grant(tenant=tenant_a, actor=SYSTEM, user=victor, obj=scope)
    assert get_user_perms(victor, scope).filter(codename="approve_access").exists()
    assert victor.pk in selectors.object_approvers(tenant_a, scope.pk)
    with pytest.raises(ValidationError, match="victor already approves for scope payroll:write"):
        services.approver_permission_grant(tenant=tenant_a, actor=SYSTEM, user=victor, obj=scope)
    services.approver_permission_grant(tenant=tenant_a, actor=SYSTEM, user=victor, obj=server)
    granted = AuditEvent.objects.filter(tenant=tenant_a, action="approver_permission.granted")
    assert [e.after["object"] for e in granted.order_by("seq")] == [
        "scope payroll:write", "server payroll"]
    assert granted.first().after["user"] == "victor"
    services.approver_permission_revoke(tenant=tenant_a, actor=SYSTEM, user=victor, obj=scope)
    assert not get_user_perms(victor, scope).exists()
    revoked = AuditEvent.objects.get(tenant=tenant_a, action="approver_permission.revoked")
    assert revoked.before == {"user": "victor", "permission": "approve_access",
                              "object": "scope payroll:write"}
    with pytest.raises(ValidationError, match="victor does not approve for scope payroll:write"):
        services.approver_permission_revoke(tenant=tenant_a, actor=SYSTEM, user=victor,
                                            obj=scope)


def test_approver_permission_is_for_members_and_objects_of_the_tenant(tenant_a, tenant_b, world,
                                                                      cast):
    with pytest.raises(ValidationError, match="oscar is not a member of this tenant"):
        services.approver_permission_grant(tenant=tenant_a, actor=SYSTEM, user=cast["oscar"],
                                           obj=world["scope"])
    foreign = ToolScope.objects.create(tenant=tenant_b, name="b:scope")
    with pytest.raises(ValidationError, match="does not belong to this tenant"):
        services.approver_permission_grant(tenant=tenant_a, actor=SYSTEM, user=cast["victor"],
                                           obj=foreign)
    with pytest.raises(ValidationError, match="on a scope or on a server"):
        services.approver_permission_grant(tenant=tenant_a, actor=SYSTEM, user=cast["victor"],
                                           obj=world["bot"])
    assert not AuditEvent.objects.filter(action__startswith="approver_permission.").exists()


def test_admins_manage_approvers_on_the_page(tenant_a, world, cast, login):
    client = login(cast["alice"])
    page = client.get(_url("approvers"))
    assert page.status_code == 200 and 'id="approvers-empty"' in page.content.decode()
    victor = _member(tenant_a, cast["victor"])
    response = client.post(_url("approvers"), {"member": victor.pk,
                                               "server": world["server"].pk})
    assert response.status_code == 302
    body = client.get(_url("approvers")).content.decode()
    assert "victor now approves for server payroll." in body
    row = f'id="approver-server-{world["server"].pk}-{cast["victor"].pk}"'
    assert row in body
    remove = _url("approvers", "servers", world["server"].pk, "members", victor.pk, "remove")
    assert remove in body
    # Both or neither target, and a second grant of the same: said on the form.
    both = client.post(_url("approvers"), {"member": victor.pk, "server": world["server"].pk,
                                           "scope": world["scope"].pk})
    assert both.status_code == 400
    assert "Choose a scope or a server (one of them)." in both.content.decode()
    again = client.post(_url("approvers"), {"member": victor.pk, "server": world["server"].pk})
    assert again.status_code == 400
    assert "victor already approves for server payroll." in again.content.decode()
    # Remove: confirm, then gone (and audited).
    confirm = client.get(remove)
    assert confirm.status_code == 200
    assert "Stop victor approving for server payroll?" in confirm.content.decode()
    assert client.post(remove).status_code == 302
    assert not get_user_perms(cast["victor"], world["server"]).exists()
    assert AuditEvent.objects.filter(action="approver_permission.revoked").count() == 1
    assert "victor no longer approves for server payroll." in client.get(
        _url("approvers")).content.decode()
    twice = client.post(remove, follow=True)
    assert "victor does not approve for server payroll." in twice.content.decode()


def test_approver_pages_are_admin_only_and_tenant_bound(tenant_a, tenant_b, world, cast, login):
    victor = _member(tenant_a, cast["victor"])
    _give(tenant_a, cast["victor"], world["scope"])
    remove = _url("approvers", "scopes", world["scope"].pk, "members", victor.pk, "remove")
    for name in ("bob", "dave", "audrey", "victor"):
        client = login(cast[name])
        assert client.get(_url("approvers")).status_code == 403
        assert client.post(_url("approvers"), {"member": victor.pk,
                                               "scope": world["scope"].pk}).status_code == 403
        assert client.post(remove).status_code == 403
    oscar = login(cast["oscar"])
    assert oscar.get(_url("approvers")).status_code == 404
    assert oscar.post(remove).status_code == 404
    # Tenant B's admin under B's slug, naming A's scope and membership: 404, nothing changes.
    assert oscar.post(remove.replace("/t/alpha/", "/t/bravo/")).status_code == 404
    other = McpServer.objects.create(tenant=tenant_b, name="b-server", transport="stdio")
    b_member = _member(tenant_b, cast["oscar"])
    assert login(cast["alice"]).post(_url("approvers", "servers", other.pk, "members",
                                          b_member.pk, "remove")).status_code == 404
    # A foreign member or scope id in the add form is a form error, not a grant.
    response = login(cast["alice"]).post(_url("approvers"), {"member": b_member.pk,
                                                             "scope": world["scope"].pk})
    assert response.status_code == 400
    assert get_user_perms(cast["victor"], world["scope"]).exists()
    assert not get_user_perms(cast["oscar"], world["scope"]).exists()


def test_a_permission_holder_becomes_eligible_and_stops_being_when_removed(tenant_a, world,
                                                                           cast, login):
    _give(tenant_a, cast["bob"], world["scope"])
    services.approval_policy_save(tenant=tenant_a, actor=SYSTEM, scope=world["scope"],
                                  stages=[{"approvals_required": 1, "object_permission": True}])
    request = services.access_request_create(
        tenant=tenant_a, actor=SYSTEM, requester=cast["dave"], agent=world["bot"],
        scope=world["scope"], duration_minutes=60, justification="month end")
    assert cast["bob"].pk in selectors.eligible_for(tenant_a, request)
    client = login(cast["alice"])
    client.post(_url("approvers", "scopes", world["scope"].pk, "members",
                     _member(tenant_a, cast["bob"]).pk, "remove"))
    assert cast["bob"].pk not in selectors.eligible_for(tenant_a, request)
    with pytest.raises(ValidationError):
        services.access_request_decide(tenant=tenant_a, actor=SYSTEM, request=request,
                                       approver=cast["bob"], outcome="approve")


# --- Break-glass -------------------------------------------------------------------------------


def _alert_channel(tenant):
    notifications.channel_create(tenant=tenant, actor=SYSTEM, name="admins", kind="email",
                                 to_recipients=True, events=["break_glass.used"])


def test_an_admin_breaks_the_glass_on_the_page(tenant_a, world, cast, login, settings):
    settings.BREAK_GLASS_MAX_MINUTES = 60
    _alert_channel(tenant_a)
    client = login(cast["alice"])
    page = client.get(_url("break-glass")).content.decode()
    assert "Every admin is alerted, and the grant is flagged as break-glass in the audit" in page
    assert "At most 60 minutes." in page and 'id="break-glass-empty"' in page
    response = client.post(_url("break-glass"), {
        "agent": world["bot"].pk, "scope": world["scope"].pk, "minutes": 15,
        "justification": "incident 42: payroll stuck"})
    assert response.status_code == 302 and response["Location"] == _url("break-glass")
    grant = Grant.objects.get(break_glass=True)
    assert grant.justification == "incident 42: payroll stuck"
    assert grant.created_by == cast["alice"]
    assert timedelta(minutes=14) < grant.expires_at - timezone.now() <= timedelta(minutes=15)
    event = AuditEvent.objects.get(tenant=tenant_a, action="grant.break_glass")
    assert event.after["justification"] == "incident 42: payroll stuck"
    assert event.actor_id == str(cast["alice"].pk)
    delivery = Delivery.objects.get(event="break_glass.used")
    assert delivery.subject == ("Break-glass: alice granted payroll:write to agent bot for 15 "
                                "minutes")
    assert delivery.payload["recipients"] == ["alice@example.com"]
    listing = client.get(_url("break-glass")).content.decode()
    assert "Every admin has been alerted." in listing
    assert f'id="grant-{grant.pk}"' in listing and "incident 42: payroll stuck" in listing
    assert f"/t/alpha/grants/{grant.pk}/revoke/" in listing
    grants = client.get("/t/alpha/grants/").content.decode()
    assert 'class="badge break-glass"' in grants


def test_break_glass_validation_messages_are_on_the_form(tenant_a, world, cast, login,
                                                         settings):
    settings.BREAK_GLASS_MAX_MINUTES = 60
    client = login(cast["alice"])
    base = {"agent": world["bot"].pk, "scope": world["scope"].pk}
    too_long = client.post(_url("break-glass"), {**base, "minutes": 61,
                                                 "justification": "incident"})
    assert too_long.status_code == 400
    assert "Between 1 and 60 minutes." in too_long.content.decode()
    no_reason = client.post(_url("break-glass"), {**base, "minutes": 5, "justification": " "})
    assert no_reason.status_code == 400
    assert "Say why this cannot wait for an approval." in no_reason.content.decode()
    no_scope = client.post(_url("break-glass"), {"agent": world["bot"].pk, "minutes": 5,
                                                 "justification": "incident"})
    assert no_scope.status_code == 400 and "This field is required." in no_scope.content.decode()
    assert not Grant.objects.filter(break_glass=True).exists()
    assert not AuditEvent.objects.filter(action="grant.break_glass").exists()


def test_break_glass_is_admin_only_and_tenant_bound(tenant_a, world, cast, login):
    body = {"agent": world["bot"].pk, "scope": world["scope"].pk, "minutes": 5,
            "justification": "incident"}
    for name in ("bob", "dave", "audrey", "victor"):
        client = login(cast[name])
        assert client.get(_url("break-glass")).status_code == 403
        assert client.post(_url("break-glass"), body).status_code == 403
    assert login(cast["oscar"]).get(_url("break-glass")).status_code == 404
    assert login(cast["oscar"]).post(_url("break-glass"), body).status_code == 404
    # Tenant B's admin on B's page naming A's agent and scope: a form error, no grant.
    response = login(cast["oscar"]).post("/t/bravo/approvals/break-glass/", body)
    assert response.status_code == 400
    assert not Grant.objects.filter(break_glass=True).exists()


def test_break_glass_api(tenant_a, world, cast, admin, as_user, api, token_for, settings):
    settings.BREAK_GLASS_MAX_MINUTES = 60
    _alert_channel(tenant_a)
    url = API + "break-glass/"
    body = {"agent": world["bot"].pk, "scope": world["scope"].pk, "minutes": 10,
            "justification": "incident 9"}
    refused = admin.post(url, {**body, "minutes": 90}, format="json")
    assert refused.status_code == 400 and refused.json()["code"] == "invalid"
    assert refused.json()["message"] == "Between 1 and 60 minutes."
    blank = admin.post(url, {**body, "justification": ""}, format="json")
    assert blank.status_code == 400
    assert blank.json()["message"] == "Say why this cannot wait for an approval."
    created = admin.post(url, body, format="json")
    assert created.status_code == 201, created.json()
    grant = created.json()
    assert grant["break_glass"] is True and grant["justification"] == "incident 9"
    assert grant["created_by"] == "alice" and grant["in_force"] is True
    assert grant["agent_name"] == "bot" and grant["scope_name"] == "payroll:write"
    assert AuditEvent.objects.filter(action="grant.break_glass").count() == 1
    assert Delivery.objects.filter(event="break_glass.used").count() == 1
    listed = admin.get(url).json()
    assert [g["id"] for g in listed["results"]] == [grant["id"]]
    for name in ("bob", "dave", "audrey", "victor"):
        assert as_user(cast[name]).get(url).status_code == 403
        assert as_user(cast[name]).post(url, body, format="json").status_code == 403
    assert api(token_for(cast["oscar"], cast["oscar"].memberships.get().tenant)).get(
        url).status_code == 404
    foreign = api(token_for(cast["oscar"], cast["oscar"].memberships.get().tenant)).post(
        "/api/v1/t/bravo/break-glass/", body, format="json")
    assert foreign.status_code == 400
    assert Grant.objects.filter(break_glass=True).count() == 1


def test_the_schema_documents_break_glass(admin):
    paths = admin.get("/api/v1/schema/", HTTP_ACCEPT="application/json").json()["paths"]
    create = paths["/api/v1/t/{tenant_slug}/break-glass/"]["post"]
    assert {"201", "400", "403", "404"} <= set(create["responses"])
