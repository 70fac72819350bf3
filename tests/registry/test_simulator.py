"""The policy simulator (issue 19 §5): one call → the decision function's outcome and reason,
against the draft (registry as it stands) or the published bundle; web page and API; field
errors for bad input; admins and auditors only; linked from a held call."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlencode

import pytest
from django.utils import timezone

from approvals import selectors as approval_selectors
from approvals.models import Escalation
from bundles.publish import bundle_publish
from registry import services as registry
from tests.bundle_support import SYSTEM, make_gateway, small_registry

pytestmark = pytest.mark.django_db

WEB = "/t/alpha/policy/simulator/"
API = "/api/v1/t/alpha/policy-simulations/"


@pytest.fixture
def world(tenant_a):
    return small_registry(tenant_a)


def simulate_web(client, **params):
    return client.get(WEB + "?" + urlencode({"policy": "draft", "agent": "bot",
                                             "server": "payroll", "tool": "read",
                                             "arguments": "{}"} | params))


def test_it_allows_a_granted_call_against_the_draft(world, login, cast):
    response = simulate_web(login(cast["audrey"]))
    assert response.status_code == 200
    body = response.content.decode()
    assert 'id="sim-outcome">Allowed<' in body
    assert f"grant {world['grant'].pk}" in body
    assert "the registry as it stands (draft)" in body


def test_the_draft_and_the_bundle_can_disagree(world, tenant_a, as_user, cast):
    bundle = bundle_publish(tenant=tenant_a, trigger="test")
    registry.grant_revoke(tenant=tenant_a, actor=SYSTEM, grant=world["grant"])
    client = as_user(cast["alice"])
    call = {"agent": "bot", "server": "payroll", "tool": "read", "arguments": {"a": 1}}
    draft = client.post(API, call, format="json")
    assert draft.status_code == 200, draft.json()
    assert (draft.json()["outcome"], draft.json()["reason"]) == (
        "deny", "no grant of bot covers payroll/read")
    published = client.post(API, call | {"policy": "bundle"}, format="json")
    assert published.status_code == 200
    out = published.json()
    assert (out["outcome"], out["grant"], out["bundle_revision"]) == (
        "allow", str(world["grant"].pk), bundle.revision_number)
    assert out["principal"] == ["https://idp.example", "bot"]
    assert any("Rates and quotas" in note for note in out["notes"])


def test_an_approval_grant_escalates_and_the_time_is_used(world, tenant_a, as_user, cast):
    registry.grant_update(tenant=tenant_a, actor=SYSTEM, grant=world["grant"],
                          expires_at=timezone.now() + timedelta(days=1))
    other = registry.grant_create(tenant=tenant_a, actor=SYSTEM, agent=world["agent"],
                                  scope=world["scope"], approval_mode="always")
    client = as_user(cast["audrey"])
    later = (timezone.now() + timedelta(days=2)).isoformat()
    response = client.post(API, {"agent": "bot", "server": "payroll", "tool": "pay",
                                 "at": later}, format="json")
    assert response.status_code == 200
    assert response.json()["outcome"] == "escalate"
    assert response.json()["reason"] == f"grant {other.pk} requires approval (always)"


def test_no_published_bundle_is_a_field_error(world, as_user, cast):
    response = as_user(cast["alice"]).post(
        API, {"agent": "bot", "server": "payroll", "tool": "read", "policy": "bundle"},
        format="json")
    assert response.status_code == 400
    assert "No bundle is published yet" in response.json()["errors"]["policy"][0]


@pytest.mark.parametrize(("body", "field", "text"), [
    ({"agent": "ghost"}, "agent", "No agent named 'ghost'"),
    ({"server": "nope"}, "server", "No MCP server named 'nope'"),
    ({"tool": "nope"}, "tool", "Server 'payroll' has no tool named 'nope'"),
    ({"arguments": [1, 2]}, "arguments", "must be a JSON object"),
    ({"arguments": "x"}, "arguments", "Not valid JSON"),
    ({"at": "yesterday"}, "at", "Datetime has wrong format"),
    ({"policy": "tomorrow"}, "policy", "is not a valid choice"),
    ({"colour": "red"}, "colour", "Unknown field"),
])
def test_bad_api_input_is_a_field_error(world, as_user, cast, body, field, text):
    call = {"agent": "bot", "server": "payroll", "tool": "read"} | body
    response = as_user(cast["alice"]).post(API, call, format="json")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert text in response.json()["errors"][field][0]


@pytest.mark.parametrize(("params", "text"), [
    ({"agent": "ghost"}, "No agent named &#x27;ghost&#x27;"),
    ({"tool": "nope"}, "has no tool named"),
    ({"arguments": "[1]"}, "must be a JSON object"),
    ({"arguments": "{bad"}, "Not valid JSON"),
    ({"at": "not a time"}, "Enter a valid date/time."),
])
def test_bad_web_input_is_a_field_error(world, login, cast, params, text):
    response = simulate_web(login(cast["alice"]), **params)
    assert response.status_code == 400
    body = response.content.decode()
    assert text in body
    assert 'id="simulation"' not in body


def test_an_empty_form_simulates_nothing(world, login, cast):
    response = login(cast["audrey"]).get(WEB)
    assert response.status_code == 200
    assert 'id="simulation"' not in response.content.decode()
    assert 'id="nav-simulator"' in response.content.decode()


@pytest.mark.parametrize("name", ["bob", "dave", "victor"])
def test_members_without_view_audit_get_403(world, login, as_user, cast, name):
    assert simulate_web(login(cast[name])).status_code == 403
    response = as_user(cast[name]).post(
        API, {"agent": "bot", "server": "payroll", "tool": "read"}, format="json")
    assert response.status_code == 403


def test_another_tenant_gets_404(world, login, api, token_for, cast, tenant_b):
    assert simulate_web(login(cast["oscar"])).status_code == 404
    response = api(token_for(cast["oscar"], tenant_b)).post(
        API, {"agent": "bot", "server": "payroll", "tool": "read"}, format="json")
    assert response.status_code == 404


def test_a_held_call_links_to_the_simulator_prefilled(world, tenant_a, login, cast):
    bundle_publish(tenant=tenant_a, trigger="test")
    gateway, _ = make_gateway(tenant_a)
    arguments = {"amount": 7}
    escalation = Escalation.objects.create(
        tenant=tenant_a, gateway=gateway, call_id="c-1", agent=world["agent"],
        scope=world["scope"], server="payroll", tool="pay", arguments=arguments,
        arguments_sha256="0" * 64, stages=approval_selectors.BUILT_IN_STAGES,
        deadline=timezone.now() + timedelta(minutes=15))
    client = login(cast["alice"])
    page = client.get(f"/t/alpha/approvals/escalations/{escalation.pk}/").content.decode()
    query = approval_selectors.simulator_query(escalation)
    assert f'{WEB}?{query}'.replace("&", "&amp;") in page
    result = client.get(f"{WEB}?{query}")
    assert result.status_code == 200
    body = result.content.decode()
    assert 'id="sim-outcome">Allowed<' in body
    assert "&quot;amount&quot;: 7" in body
    # An approver without VIEW_AUDIT sees no link to a page they may not open.
    assert 'id="simulate-call"' not in login(cast["bob"]).get(
        f"/t/alpha/approvals/escalations/{escalation.pk}/").content.decode()
