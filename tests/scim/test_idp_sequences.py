"""The request sequences Okta and Microsoft Entra ID send when they provision and deprovision,
replayed against the endpoint with the bodies their documentation shows.

Sources (the shapes, not copied text):
- Okta: "SCIM 2.0 protocol reference" (developer.okta.com/docs/api/openapi/okta-scim/guides/
  scim-20/) and "Build a SCIM provisioning integration"
  (developer.okta.com/docs/guides/scim-provisioning-integration-prepare/): user lookup by
  ``userName eq`` with ``startIndex=1&count=100``, POST /Users with ``externalId`` (the Okta
  user id), ``groups: []`` and a ``password``; PUT for profile updates; deactivation as
  ``{"op": "replace", "value": {"active": false}}`` (no path); Push Groups as POST /Groups,
  rename with a path-less replace of ``{"id", "displayName"}``, members added with
  ``{"op": "add", "path": "members", "value": [...]}`` and removed with
  ``members[value eq "…"]``; DELETE /Groups/<id>.
- Entra: "Tutorial: Develop and plan provisioning for a SCIM endpoint in Microsoft Entra ID"
  (learn.microsoft.com/entra/identity/app-provisioning/use-scim-to-provision-users-and-
  groups), its "Request and response" section, and "Known issues and resolutions with SCIM
  2.0 protocol compliance" (…/application-provisioning-config-problem-scim-compatibility):
  capitalised ``"op": "Replace"`` / ``"Add"`` / ``"Remove"``, the enterprise extension on
  users, ``meta.resourceType`` in request bodies, ``active`` as the string ``"False"``,
  path-less value objects, ``emails[type eq "work"].value`` paths, member removal as
  ``path: members`` with a value list and ``"$ref": null``; groups created without members
  and looked up with ``excludedAttributes=members``.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest

from governance.tenancy.models import ExternalIdentity, Membership
from governance.tenancy.roles import Role
from scim.models import ScimGroup, ScimUser
from tests.factories import GroupMappingFactory, make_token
from tests.scim.conftest import GROUP_SCHEMA, PATCH_SCHEMA, USER_SCHEMA

ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


def q(expression: str) -> str:
    return quote(expression)


@pytest.fixture
def mappings(tenant_a):
    GroupMappingFactory(tenant=tenant_a, group="Tollgate Developers", role=Role.DEVELOPER)
    GroupMappingFactory(tenant=tenant_a, group="Tollgate Approvers", role=Role.APPROVER)


def _membership(tenant, scim_id: str) -> Membership | None:
    user = ScimUser.objects.get(scim_id=scim_id).user
    return Membership.objects.for_tenant(tenant).filter(user=user).first()


def test_okta_provisioning_and_deprovisioning(scim, tenant_a, mappings, login, api, settings):
    # 1. Okta checks whether the user exists.
    lookup = scim.get("/Users", filter=q('userName eq "test.user@okta.local"'),
                      startIndex="1", count="100")
    assert lookup.status_code == 200 and lookup.body["totalResults"] == 0

    # 2. Create.
    created = scim.post("/Users", {
        "schemas": [USER_SCHEMA],
        "userName": "test.user@okta.local",
        "name": {"givenName": "Test", "familyName": "User"},
        "emails": [{"primary": True, "value": "test.user@okta.local", "type": "work"}],
        "displayName": "Test User",
        "locale": "en-US",
        "externalId": "00ujl29u0le5T6Aj10h7",
        "groups": [],
        "password": "1mz050nq",
        "active": True,
    })
    assert created.status_code == 201, created.body
    user_id = created.body["id"]
    assert "password" not in created.body
    identity = ExternalIdentity.objects.get(subject="00ujl29u0le5T6Aj10h7")
    assert identity.issuer == settings.SCIM_IDENTITY_ISSUER

    # 3. Okta reads it back, and finds it by filter from now on.
    assert scim.get(f"/Users/{user_id}").body["userName"] == "test.user@okta.local"
    found = scim.get("/Users", filter=q('userName eq "test.user@okta.local"'),
                     startIndex="1", count="100").body
    assert [r["id"] for r in found["Resources"]] == [user_id]

    # 4. A profile update is a PUT of the whole user.
    updated = scim.put(f"/Users/{user_id}", {
        "schemas": [USER_SCHEMA], "id": user_id, "userName": "test.user@okta.local",
        "name": {"givenName": "Another", "familyName": "User"},
        "emails": [{"primary": True, "value": "test.user@okta.local", "type": "work"}],
        "displayName": "Another User", "externalId": "00ujl29u0le5T6Aj10h7",
        "active": True, "groups": [], "meta": {"resourceType": "User"},
    })
    assert updated.status_code == 200 and updated.body["name"]["givenName"] == "Another"

    # 5. Push Groups: create, rename, add the member, remove the member.
    group = scim.post("/Groups", {"schemas": [GROUP_SCHEMA], "displayName": "Test SCIMv2",
                                  "members": []})
    assert group.status_code == 201
    group_id = group.body["id"]
    renamed = scim.patch(f"/Groups/{group_id}", {"schemas": [PATCH_SCHEMA], "Operations": [
        {"op": "replace", "value": {"id": group_id, "displayName": "Tollgate Developers"}}]})
    assert renamed.status_code == 200 and renamed.body["displayName"] == "Tollgate Developers"
    added = scim.patch(f"/Groups/{group_id}", {"schemas": [PATCH_SCHEMA], "Operations": [
        {"op": "add", "path": "members",
         "value": [{"value": user_id, "display": "test.user@okta.local"}]}]})
    assert added.status_code == 200
    assert _membership(tenant_a, user_id).role == Role.DEVELOPER
    listed = scim.get("/Groups", startIndex="1", count="100",
                      excludedAttributes="members").body
    assert [g["displayName"] for g in listed["Resources"]] == ["Tollgate Developers"]
    assert "members" not in listed["Resources"][0]

    # The person signs in and makes a personal token.
    person = ScimUser.objects.get(scim_id=user_id).user
    browser = login(person)
    assert browser.get("/t/alpha/").status_code == 200
    _, plaintext = make_token(tenant_a, user=person, role=Role.DEVELOPER)

    # 6. Deactivation: access ends within this request.
    deactivated = scim.patch(f"/Users/{user_id}", {"schemas": [PATCH_SCHEMA], "Operations": [
        {"op": "replace", "value": {"active": False}}]})
    assert deactivated.status_code == 200 and deactivated.body["active"] is False
    assert browser.get("/t/alpha/").status_code == 302
    assert api(plaintext).get("/api/v1/t/alpha/servers/").status_code == 401
    assert _membership(tenant_a, user_id) is None

    # 7. Group member removal and group deletion.
    removed = scim.patch(f"/Groups/{group_id}", {"schemas": [PATCH_SCHEMA], "Operations": [
        {"op": "remove", "path": f'members[value eq "{user_id}"]'}]})
    assert removed.status_code == 200 and not removed.body.get("members")
    assert scim.delete(f"/Groups/{group_id}").status_code == 204
    assert not ScimGroup.objects.exists()


def test_entra_provisioning_and_deprovisioning(scim, tenant_a, mappings, login, api):
    # 1. Entra matches on userName first.
    lookup = scim.get("/Users", filter=q('userName eq "Test_User_dfeef4c5@contoso.com"'))
    assert lookup.body["totalResults"] == 0

    # 2. Create, with the enterprise extension and meta.resourceType in the body.
    created = scim.post("/Users", {
        "schemas": [USER_SCHEMA, ENTERPRISE],
        "externalId": "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef",
        "userName": "Test_User_dfeef4c5@contoso.com",
        "active": True,
        "emails": [{"primary": True, "type": "work", "value": "Test_User_2@contoso.com"}],
        "meta": {"resourceType": "User"},
        "name": {"formatted": "givenName familyName", "familyName": "familyName",
                 "givenName": "givenName"},
        "roles": [],
        ENTERPRISE: {"employeeNumber": "701984", "department": "Tour Operations"},
    })
    assert created.status_code == 201, created.body
    user_id = created.body["id"]
    assert created.body[ENTERPRISE]["department"] == "Tour Operations"

    # 3. Found by filter, then attributes changed with capitalised ops and filtered paths.
    found = scim.get("/Users", filter=q('userName eq "Test_User_dfeef4c5@contoso.com"')).body
    assert found["totalResults"] == 1
    changed = scim.patch(f"/Users/{user_id}", {"schemas": [PATCH_SCHEMA], "Operations": [
        {"op": "Replace", "path": 'emails[type eq "work"].value',
         "value": "updatedEmail@microsoft.com"},
        {"op": "Replace", "path": "name.familyName", "value": "updatedFamilyName"},
        # A filter that matches no entry yet: Entra expects the entry to be created.
        {"op": "Replace", "path": 'phoneNumbers[type eq "mobile"].value',
         "value": "+1 425 555 0100"}]})
    assert changed.status_code == 200, changed.body
    assert changed.body["emails"][0]["value"] == "updatedEmail@microsoft.com"
    assert changed.body["name"]["familyName"] == "updatedFamilyName"
    assert changed.body["phoneNumbers"] == [{"value": "+1 425 555 0100", "type": "mobile"}]

    # 4. Groups: created without members, looked up without members, members added.
    group = scim.post("/Groups", {"schemas": [GROUP_SCHEMA],
                                  "externalId": "8aa1a0c0-c4c3-4bc0-b4a5-2ef676900159",
                                  "displayName": "Tollgate Approvers",
                                  "meta": {"resourceType": "Group"}})
    assert group.status_code == 201
    group_id = group.body["id"]
    found = scim.get("/Groups", filter=q('displayName eq "Tollgate Approvers"'),
                     excludedAttributes="members").body
    assert [g["id"] for g in found["Resources"]] == [group_id]
    added = scim.patch(f"/Groups/{group_id}", {"schemas": [PATCH_SCHEMA], "Operations": [
        {"op": "Add", "path": "members", "value": [{"$ref": None, "value": user_id}]}]})
    assert added.status_code == 200, added.body
    assert _membership(tenant_a, user_id).role == Role.APPROVER

    person = ScimUser.objects.get(scim_id=user_id).user
    browser = login(person)
    assert browser.get("/t/alpha/").status_code == 200
    _, plaintext = make_token(tenant_a, user=person, role=Role.APPROVER)

    # 5. Disable: "active" as the string "False", in a path-less value object.
    disabled = scim.patch(f"/Users/{user_id}", {"schemas": [PATCH_SCHEMA], "Operations": [
        {"op": "Replace", "value": {"active": "False"}}]})
    assert disabled.status_code == 200, disabled.body
    assert disabled.body["active"] is False
    assert browser.get("/t/alpha/").status_code == 302
    assert api(plaintext).get("/api/v1/t/alpha/servers/").status_code == 401
    assert _membership(tenant_a, user_id) is None

    # Enable again with a path and the string "True": the role comes back from the group.
    enabled = scim.patch(f"/Users/{user_id}", {"schemas": [PATCH_SCHEMA], "Operations": [
        {"op": "Replace", "path": "active", "value": "True"}]})
    assert enabled.status_code == 200 and enabled.body["active"] is True
    assert _membership(tenant_a, user_id).role == Role.APPROVER

    # 6. Member removal as Entra sends it, then deletion of the user and the group.
    removed = scim.patch(f"/Groups/{group_id}", {"schemas": [PATCH_SCHEMA], "Operations": [
        {"op": "Remove", "path": "members", "value": [{"$ref": None, "value": user_id}]}]})
    assert removed.status_code == 200, removed.body
    assert _membership(tenant_a, user_id) is None
    assert scim.delete(f"/Users/{user_id}").status_code == 204
    assert scim.get(f"/Users/{user_id}").status_code == 404
    assert scim.delete(f"/Groups/{group_id}").status_code == 204
