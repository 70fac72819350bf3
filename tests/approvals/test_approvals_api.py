"""Access requests and approval policies through the admin API: the services' rules reach the
client as 400 ``invalid`` with their message; the role as 403; another tenant as 404."""

from __future__ import annotations

import pytest

from approvals import services
from approvals.models import AccessRequest, ApprovalPolicy
from governance.audit.models import AuditEvent
from registry import services as registry
from tests.bundle_support import SYSTEM
from tests.factories import ScopeFactory

BASE = "/api/v1/t/alpha/"


@pytest.fixture
def world(tenant_a, world):
    """The approvals world (tests/approvals/conftest.py) and a low-risk scope payroll:read."""
    world["low"] = ScopeFactory(tenant=tenant_a, name="payroll:read", risk_level="low",
                                tools=[world["tools"]["pay"]])
    return world


def _create(client, world, scope=None, **body):
    return client.post(BASE + "access-requests/", {
        "agent": world["bot"].pk, "scope": (scope or world["scope"]).pk,
        "duration_minutes": 90, "justification": "month-end run", **body}, format="json")


def test_an_owner_requests_and_an_approver_decides(tenant_a, world, cast, as_user):
    created = _create(as_user(cast["dave"]), world, ticket="CHG-1")
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["status"] == "pending" and body["requester"] == "dave"
    assert body["current_stage"] == 1 and body["risk_level"] == "medium"
    assert body["stages"] == [{"approvals_required": 1, "roles": ["approver", "admin"],
                               "idp_group": ""}]
    decided = as_user(cast["bob"]).post(BASE + f"access-requests/{body['id']}/decide/",
                                        {"outcome": "approve"}, format="json")
    assert decided.status_code == 200
    result = decided.json()
    assert result["changed"] is True and result["message"].startswith("Approved: payroll:write")
    assert result["request"]["status"] == "approved" and result["request"]["grant"]
    assert result["request"]["decisions"][0]["approver"] == "bob"
    late = as_user(cast["alice"]).post(BASE + f"access-requests/{body['id']}/decide/",
                                       {"outcome": "approve"}, format="json")
    assert late.status_code == 200 and late.json() | {"request": None} == {
        "request": None, "changed": False,
        "message": "Nothing to do: this request is already approved."}


def test_self_approval_is_a_400_with_the_services_message(tenant_a, world, cast, as_user):
    own = _create(as_user(cast["alice"]), world).json()
    response = as_user(cast["alice"]).post(BASE + f"access-requests/{own['id']}/decide/",
                                           {"outcome": "approve"}, format="json")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert response.json()["message"] == "You requested this access: someone else must decide."
    assert AccessRequest.objects.get(pk=own["id"]).status == "pending"


def test_an_ineligible_approver_and_a_reasonless_deny_are_refused(tenant_a, world, cast,
                                                                  as_user):
    services.approval_policy_save(tenant=tenant_a, actor=SYSTEM, scope=world["scope"],
                                  stages=[{"approvals_required": 1, "roles": ["admin"]}])
    created = _create(as_user(cast["dave"]), world).json()
    url = BASE + f"access-requests/{created['id']}/decide/"
    response = as_user(cast["bob"]).post(url, {"outcome": "approve"}, format="json")
    assert response.status_code == 400
    assert response.json()["message"] == ("You are not an eligible approver for stage 1 "
                                          "(admin).")
    response = as_user(cast["alice"]).post(url, {"outcome": "deny"}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"] == {"reason": ["Say why the request is denied."]}
    # Roles that cannot decide at all: 403; another tenant: 404.
    assert as_user(cast["dave"]).post(url, {"outcome": "approve"},
                                      format="json").status_code == 403
    assert as_user(cast["audrey"]).post(url, {"outcome": "approve"},
                                        format="json").status_code == 403


def test_one_approver_cannot_pass_two_stages_through_the_api(tenant_a, world, cast, as_user):
    services.approval_policy_save(tenant=tenant_a, actor=SYSTEM, scope=world["scope"], stages=[
        {"approvals_required": 1, "roles": ["approver"]},
        {"approvals_required": 1, "roles": ["admin", "approver"]}])
    created = _create(as_user(cast["dave"]), world).json()
    url = BASE + f"access-requests/{created['id']}/decide/"
    bob = as_user(cast["bob"])
    first = bob.post(url, {"outcome": "approve"}, format="json")
    assert first.status_code == 200 and first.json()["request"]["current_stage"] == 2
    second = bob.post(url, {"outcome": "approve"}, format="json")
    assert second.status_code == 400
    assert second.json()["code"] == "invalid"
    assert second.json()["message"] == (
        "You already decided stage 1 of this request: one approver counts once, so someone "
        "else must decide stage 2.")
    assert AccessRequest.objects.get(pk=created["id"]).status == "pending"
    # Not offered to him either: his list (his requests and what waits for him) leaves it out.
    waiting = bob.get(BASE + "access-requests/").json()["results"]
    assert created["id"] not in [r["id"] for r in waiting]
    done = as_user(cast["alice"]).post(url, {"outcome": "approve"}, format="json").json()
    assert done["request"]["status"] == "approved"
    assert [d["approver"] for d in done["request"]["decisions"]] == ["bob", "alice"]


def test_service_tokens_do_not_decide(tenant_a, world, cast, api):
    from tests.factories import make_token

    created = _create(api(make_token(tenant_a, user=cast["dave"], role="developer")[1]),
                      world).json()
    _, plaintext = make_token(tenant_a, user=None, role="admin", kind="service")
    response = api(plaintext).post(BASE + f"access-requests/{created['id']}/decide/",
                                   {"outcome": "approve"}, format="json")
    assert response.status_code == 403
    assert "needs a person" in response.json()["message"]


def test_lists_filter_and_show_each_caller_what_concerns_them(tenant_a, world, cast, as_user):
    mine = _create(as_user(cast["dave"]), world).json()
    admins = _create(as_user(cast["alice"]), world, scope=world["low"]).json()
    services.access_request_cancel(tenant=tenant_a, actor=SYSTEM,
                                   request=AccessRequest.objects.get(pk=admins["id"]),
                                   by=cast["alice"])

    def ids(client, query=""):
        response = client.get(BASE + "access-requests/" + query)
        assert response.status_code == 200
        return [r["id"] for r in response.json()["results"]]

    assert set(ids(as_user(cast["alice"]))) == {mine["id"], admins["id"]}
    assert set(ids(as_user(cast["audrey"]))) == {mine["id"], admins["id"]}
    assert ids(as_user(cast["dave"])) == [mine["id"]]
    assert ids(as_user(cast["bob"])) == [mine["id"]]  # waiting for him
    assert ids(as_user(cast["victor"])) == []
    assert ids(as_user(cast["alice"]), "?status=cancelled") == [admins["id"]]
    assert ids(as_user(cast["alice"]), "?mine=true") == [admins["id"]]
    assert ids(as_user(cast["alice"]), f"?scope={world['scope'].pk}") == [mine["id"]]
    assert ids(as_user(cast["alice"]), f"?agent={world['bot'].pk}&status=pending") == [
        mine["id"]]
    assert as_user(cast["victor"]).get(
        BASE + f"access-requests/{mine['id']}/").status_code == 403
    assert as_user(cast["bob"]).get(BASE + f"access-requests/{mine['id']}/").status_code == 200


def test_creating_needs_ownership_and_a_justification(tenant_a, world, cast, as_user):
    response = _create(as_user(cast["dave"]), world, justification=" ")
    assert response.status_code == 400
    assert response.json()["errors"] == {"justification": ["Say why the agent needs this "
                                                           "access."]}
    other = registry.agent_create(tenant=tenant_a, actor=SYSTEM, name="other",
                                  owner=cast["alice"])
    response = as_user(cast["dave"]).post(BASE + "access-requests/", {
        "agent": other.pk, "scope": world["scope"].pk, "duration_minutes": 5,
        "justification": "x"}, format="json")
    assert response.status_code == 400
    assert response.json()["message"] == ("Only the agent's owner or an admin can request "
                                          "access for it.")
    assert _create(as_user(cast["bob"]), world).status_code == 403


def test_the_requester_cancels(tenant_a, world, cast, as_user):
    created = _create(as_user(cast["dave"]), world).json()
    url = BASE + f"access-requests/{created['id']}/cancel/"
    response = as_user(cast["dave"]).post(url)
    assert response.status_code == 200 and response.json()["message"] == "Cancelled."
    assert response.json()["request"]["status"] == "cancelled"
    assert as_user(cast["dave"]).post(url).json()["changed"] is False
    assert AuditEvent.objects.filter(tenant=tenant_a, action="access_request.cancelled").count(
    ) == 1


def test_policies_are_created_updated_and_refused_when_unpassable(tenant_a, world, cast,
                                                                  admin, as_user):
    url = BASE + "approval-policies/"
    refused = admin.post(url, {"risk_level": "high", "stages": [
        {"approvals_required": 3, "roles": ["approver"]}]}, format="json")
    assert refused.status_code == 400
    assert refused.json()["message"] == ("Stage 1 needs 3 approval(s) but only 1 member(s) are "
                                         "eligible today: no request could ever pass it.")
    created = admin.post(url, {"scope": world["scope"].pk, "decision_hours": 4, "stages": [
        {"approvals_required": 1, "roles": ["approver"]},
        {"approvals_required": 1, "roles": ["admin"]}]}, format="json")
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["scope_name"] == "payroll:write" and body["decision_hours"] == 4
    assert [s["roles"] for s in body["stages"]] == [["approver"], ["admin"]]
    patched = admin.patch(url + f"{body['id']}/", {"decision_hours": 8}, format="json")
    assert patched.status_code == 200
    assert patched.json()["decision_hours"] == 8 and len(patched.json()["stages"]) == 2
    assert as_user(cast["victor"]).get(url).json()["count"] == 1
    assert as_user(cast["bob"]).patch(url + f"{body['id']}/", {"decision_hours": 2},
                                      format="json").status_code == 403
    assert admin.delete(url + f"{body['id']}/").status_code == 204
    assert not ApprovalPolicy.objects.filter(pk=body["id"]).exists()


def test_the_schema_documents_the_endpoints(admin):
    schema = admin.get("/api/v1/schema/", HTTP_ACCEPT="application/json").json()
    paths = schema["paths"]
    decide = paths["/api/v1/t/{tenant_slug}/access-requests/{id}/decide/"]["post"]
    assert {"200", "400", "403", "404"} <= set(decide["responses"])
    assert "/api/v1/t/{tenant_slug}/approval-policies/" in paths
