"""Delegation in the registry: an agent known by its OAuth client id (principal kind
``client``), and a grant that holds only on behalf of members of an IdP group
(``on_behalf_of_group``) — API and web form, validation, audit, and the bundle they compile to.
"""

from __future__ import annotations

import pytest

from governance.audit.models import AuditEvent
from governance.audit.services import Actor
from registry import services
from registry.compiler import compile_data
from registry.models import AgentPrincipal, Grant
from tests.factories import actions
from tests.registry import test_registry_api as registry_api
from tests.registry.test_registry_api import API, no_write_for

SYSTEM = Actor.system("test")
IDP = "https://idp.example"
# The registry API tests' fixtures: server payroll, tools pay and refund in scope payroll:write,
# agent payroll-bot owned by dave.
server = registry_api.server
tools = registry_api.tools
scope = registry_api.scope
daves_agent = registry_api.daves_agent


def test_an_owner_adds_an_oauth_client_id_and_the_bundle_knows_it(as_user, dave, tenant_a,
                                                                  daves_agent):
    client = as_user(dave)
    created = client.post(f"{API}/principals/", {
        "agent": daves_agent.pk, "issuer": IDP, "subject": "payroll-client", "kind": "client",
    }, format="json")
    assert created.status_code == 201, created.json()
    assert created.json()["kind"] == "client"
    plain = client.post(f"{API}/principals/", {
        "agent": daves_agent.pk, "issuer": IDP, "subject": "payroll-sub"}, format="json")
    assert plain.json()["kind"] == "subject"
    assert client.get(f"{API}/agents/{daves_agent.pk}/").json()["principals"] == [
        {"id": created.json()["id"], "issuer": IDP, "subject": "payroll-client",
         "kind": "client"},
        {"id": plain.json()["id"], "issuer": IDP, "subject": "payroll-sub", "kind": "subject"}]
    assert AuditEvent.objects.filter(tenant=tenant_a, action="agent.principal_added").order_by(
        "seq").first().after == {"issuer": IDP, "subject": "payroll-client", "kind": "client"}
    data = compile_data(tenant_a, at=daves_agent.created_at)
    assert data["clients"] == {IDP: {"payroll-client": "payroll-bot"}}
    assert data["principals"] == {IDP: {"payroll-sub": "payroll-bot"}}
    assert data["agents"]["payroll-bot"]["clients"] == [[IDP, "payroll-client"]]
    assert data["agents"]["payroll-bot"]["principals"] == [[IDP, "payroll-sub"]]
    # A client id and a subject share one namespace per issuer: one value, one agent.
    dup = client.post(f"{API}/principals/", {
        "agent": daves_agent.pk, "issuer": IDP, "subject": "payroll-client"}, format="json")
    assert dup.status_code == 400 and list(dup.json()["errors"]) == ["subject"]


def test_a_tenant_without_client_ids_gets_the_bundle_it_always_had(tenant_a, daves_agent):
    services.agent_principal_add(tenant=tenant_a, actor=SYSTEM, agent=daves_agent, issuer=IDP,
                                 subject="s")
    data = compile_data(tenant_a, at=daves_agent.created_at)
    assert "clients" not in data and "clients" not in data["agents"]["payroll-bot"]
    assert data["schema_version"] == 1


def test_an_unknown_principal_kind_is_a_field_error(as_user, dave, daves_agent):
    response = as_user(dave).post(f"{API}/principals/", {
        "agent": daves_agent.pk, "issuer": IDP, "subject": "x", "kind": "spiffe"},
        format="json")
    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["kind"]
    assert not AgentPrincipal.objects.exists()


def test_a_grant_for_members_of_a_group_is_created_changed_audited_and_compiled(
        admin, tenant_a, scope, daves_agent):
    created = admin.post(f"{API}/grants/", {"agent": daves_agent.pk, "scope": scope.pk,
                                            "on_behalf_of_group": " hr-staff "}, format="json")
    assert created.status_code == 201, created.json()
    assert created.json()["on_behalf_of_group"] == "hr-staff"
    pk = created.json()["id"]
    assert AuditEvent.objects.get(tenant=tenant_a, action="grant.created").after[
        "on_behalf_of_group"] == "hr-staff"
    data = compile_data(tenant_a, at=Grant.objects.get(pk=pk).created_at)
    assert data["grants"][0]["on_behalf_of_group"] == "hr-staff"
    assert data["schema_version"] == 3  # a gateway that cannot check it refuses the bundle

    changed = admin.patch(f"{API}/grants/{pk}/", {"on_behalf_of_group": ""}, format="json")
    assert changed.status_code == 200, changed.json()
    event = AuditEvent.objects.get(tenant=tenant_a, action="grant.updated")
    assert (event.before["on_behalf_of_group"], event.after["on_behalf_of_group"]) == (
        "hr-staff", "")
    data = compile_data(tenant_a, at=Grant.objects.get(pk=pk).created_at)
    assert "on_behalf_of_group" not in data["grants"][0] and data["schema_version"] == 1


@pytest.mark.parametrize(("group", "message"), [
    ("hr\u200bstaff", "Control and invisible characters are not allowed in a group name."),
    ("line\nbreak", "Control and invisible characters are not allowed in a group name."),
    ("x" * 201, "Ensure this field has no more than 200 characters."),
    (["hr-staff"], "Not a valid string."),
])
def test_a_bad_group_is_a_field_error_and_nothing_is_stored(admin, scope, daves_agent, group,
                                                            message):
    response = admin.post(f"{API}/grants/", {"agent": daves_agent.pk, "scope": scope.pk,
                                             "on_behalf_of_group": group}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"] == {"on_behalf_of_group": [message]}
    assert not Grant.objects.exists()


def test_the_grant_form_sets_and_shows_the_group(client, alice, tenant_a, scope, daves_agent):
    client.force_login(alice)
    url = f"/t/{tenant_a.slug}/grants/new/"
    form = {"agent": daves_agent.pk, "scope": scope.pk, "window_tz": "UTC",
            "approval_mode": "never", "on_behalf_of_group": "hr-staff"}
    response = client.post(url, form)
    assert response.status_code == 302, response.content.decode()[:2000]
    grant = Grant.objects.get()
    assert grant.on_behalf_of_group == "hr-staff"
    page = client.get(response["Location"]).content.decode()
    assert "only members of <code>hr-staff</code>" in page
    bad = client.post(url, {**form, "on_behalf_of_group": "a\tb", "scope": scope.pk})
    assert bad.status_code == 400
    assert "Control and invisible characters are not allowed" in bad.content.decode()
    assert Grant.objects.count() == 1
    assert actions(tenant_a, 1) == [("grant.created", "user")]


def test_only_registry_managers_set_the_group(as_user, victor, tenant_a, scope, daves_agent):
    grant = services.grant_create(tenant=tenant_a, actor=SYSTEM, agent=daves_agent, scope=scope)
    no_write_for(as_user(victor), "patch", f"{API}/grants/{grant.pk}/",
                 {"on_behalf_of_group": "hr-staff"})
    grant.refresh_from_db()
    assert grant.on_behalf_of_group == ""


def test_the_agent_page_adds_a_client_id_and_shows_what_it_matches(client, dave, tenant_a,
                                                                    daves_agent):
    client.force_login(dave)
    url = f"/t/{tenant_a.slug}/agents/{daves_agent.pk}/principals/"
    response = client.post(url, {"issuer": IDP, "subject": "payroll-client", "kind": "client"})
    assert response.status_code == 302
    assert AgentPrincipal.objects.get().kind == "client"
    page = client.get(f"/t/{tenant_a.slug}/agents/{daves_agent.pk}/").content.decode()
    assert "OAuth client id (azp / client_id)" in page
    bad = client.post(url, {"issuer": IDP, "subject": "other", "kind": "spiffe"})
    assert bad.status_code == 400
    assert "Select a valid choice." in bad.content.decode()
    assert AgentPrincipal.objects.count() == 1
