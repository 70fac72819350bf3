"""The SCIM endpoint: authentication, tenancy, Users and Groups CRUD, filters, paging and
errors in SCIM's error schema (nothing stored on a refusal)."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from governance.audit.models import AuditEvent
from governance.tenancy.models import ExternalIdentity
from scim.models import ScimGroup, ScimUser
from tests.factories import IDP, UserFactory
from tests.scim.conftest import (
    ERROR_SCHEMA,
    PATCH_SCHEMA,
    SCIM_JSON,
    ScimClient,
    group_body,
    patch_body,
    user_body,
)


def _error(response, status: int, scim_type: str | None = None) -> dict:
    assert response.status_code == status, response.body
    assert response["Content-Type"] == SCIM_JSON
    assert response.body["schemas"] == [ERROR_SCHEMA]
    assert response.body["status"] == str(status)
    if scim_type is not None:
        assert response.body["scimType"] == scim_type
    return response.body


def _filter(expression: str) -> str:
    return quote(expression)


# --- Authentication and tenancy ------------------------------------------------------------


@pytest.mark.parametrize("path", ["/Users", "/Groups", "/ServiceProviderConfig",
                                  "/ResourceTypes", "/Schemas"])
def test_no_or_a_wrong_token_gets_401_with_a_bearer_challenge(tenant_a, path, scim_token):
    for token in (None, "tgscim_wrong"):
        response = ScimClient("alpha", token).get(path)
        _error(response, 401)
        assert response["WWW-Authenticate"].startswith("Bearer")


def test_a_token_of_another_tenant_gets_404(tenant_a, tenant_b, scim_token):
    _, plaintext = scim_token
    _error(ScimClient("bravo", plaintext).get("/Users"), 404)
    _error(ScimClient("nowhere", plaintext).get("/Users"), 404)


def test_a_tenant_sees_only_its_own_resources(scim, tenant_b, oscar, scim_for):
    from governance.audit.services import Actor
    from scim import services

    created = scim.post("/Users", user_body("bjensen@example.com", "00u1")).body
    _, other = services.scim_token_create(tenant=tenant_b, actor=Actor.user(oscar),
                                          created_by=oscar, name="B")
    outsider = scim_for("bravo", other)
    assert outsider.get("/Users").body["totalResults"] == 0
    _error(outsider.get(f"/Users/{created['id']}"), 404)
    _error(outsider.delete(f"/Users/{created['id']}"), 404)
    assert ScimUser.objects.filter(tenant__slug="alpha").count() == 1


# --- Users ------------------------------------------------------------------------------------


def test_creating_a_user_ties_it_to_the_oidc_identity(scim, tenant_a, settings):
    response = scim.post("/Users", user_body("bjensen@example.com", "00u1"))
    assert response.status_code == 201
    assert response["Content-Type"] == SCIM_JSON
    body = response.body
    assert response["Location"].endswith(f"/scim/v2/alpha/Users/{body['id']}")
    assert body["userName"] == "bjensen@example.com" and body["active"] is True
    scim_user = ScimUser.objects.get(scim_id=body["id"])
    identity = ExternalIdentity.objects.get(subject="00u1")
    assert identity.issuer == settings.SCIM_IDENTITY_ISSUER and identity.user == scim_user.user
    assert scim_user.user.email == "bjensen@example.com"
    assert not scim_user.user.has_usable_password()
    actions = set(AuditEvent.objects.filter(tenant=tenant_a).values_list("action", flat=True))
    assert {"user.created", "scim.user_created"} <= actions


def test_an_existing_oidc_user_is_matched_by_issuer_and_subject(scim, settings, db):
    settings.SCIM_IDENTITY_ISSUER = IDP
    person = UserFactory(username="barbara")
    ExternalIdentity.objects.create(user=person, issuer=IDP, subject="00u9")
    body = scim.post("/Users", user_body("bjensen@example.com", "00u9")).body
    assert ScimUser.objects.get(scim_id=body["id"]).user == person


def test_a_password_is_never_stored(scim):
    body = user_body("bjensen@example.com", "00u1", password="hunter2-Secret")
    created = scim.post("/Users", body)
    assert created.status_code == 201 and "password" not in created.body
    assert "password" not in ScimUser.objects.get().document


def test_get_replace_and_delete_a_user(scim):
    created = scim.post("/Users", user_body("bjensen@example.com", "00u1")).body
    path = f"/Users/{created['id']}"
    assert scim.get(path).body["userName"] == "bjensen@example.com"
    replaced = scim.put(path, user_body("barbara@example.com", "00u1") | {"displayName": "B"})
    assert replaced.status_code == 200
    assert replaced.body["userName"] == "barbara@example.com"
    assert replaced.body["displayName"] == "B"
    assert scim.delete(path).status_code == 204
    _error(scim.get(path), 404)
    assert not ScimUser.objects.exists()


def test_filters_on_username_and_external_id(scim):
    for n in range(3):
        scim.post("/Users", user_body(f"user{n}@example.com", f"00u{n}"))
    found = scim.get("/Users", filter=_filter('userName eq "USER1@example.com"')).body
    assert found["totalResults"] == 1 and found["Resources"][0]["externalId"] == "00u1"
    found = scim.get("/Users", filter=_filter('externalId eq "00u2"')).body
    assert [r["userName"] for r in found["Resources"]] == ["user2@example.com"]
    assert scim.get("/Users", filter=_filter('externalId eq "nobody"')).body == {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
        "totalResults": 0, "startIndex": 1, "itemsPerPage": 0, "Resources": []}
    found = scim.get("/Users", filter=_filter('userName sw "user" and active eq true')).body
    assert found["totalResults"] == 3


def test_pagination_with_start_index_and_count(scim):
    for n in range(5):
        scim.post("/Users", user_body(f"user{n}@example.com", f"00u{n}"))
    page = scim.get("/Users", startIndex="2", count="2").body
    assert page["totalResults"] == 5 and page["startIndex"] == 2 and page["itemsPerPage"] == 2
    assert [r["userName"] for r in page["Resources"]] == ["user1@example.com",
                                                           "user2@example.com"]
    assert scim.get("/Users", count="0").body["Resources"] == []


def test_a_bad_filter_is_400_invalid_filter(scim):
    _error(scim.get("/Users", filter=_filter('userName eq')), 400, "invalidFilter")


def test_malformed_json_is_400_invalid_syntax_and_nothing_is_stored(scim):
    _error(scim.post("/Users", raw='{"userName": '), 400, "invalidSyntax")
    assert not ScimUser.objects.exists()


def test_a_user_without_username_is_400_invalid_value_and_nothing_is_stored(scim):
    body = user_body("x@example.com", "00u1")
    del body["userName"]
    _error(scim.post("/Users", body), 400, "invalidValue")
    _error(scim.post("/Users", user_body("x@example.com") | {"active": "perhaps"}), 400,
           "invalidValue")
    assert not ScimUser.objects.exists() and not ExternalIdentity.objects.exists()


def test_a_bad_patch_is_400_and_changes_nothing(scim):
    created = scim.post("/Users", user_body("bjensen@example.com", "00u1")).body
    path = f"/Users/{created['id']}"
    _error(scim.patch(path, {"schemas": [PATCH_SCHEMA], "Operations": "active=false"}), 400)
    _error(scim.patch(path, patch_body({"op": "explode", "path": "active"})), 400)
    _error(scim.patch(path, patch_body({"op": "replace", "path": "userName", "value": ""})),
           400)
    assert ScimUser.objects.get().active is True
    assert ScimUser.objects.get().user_name == "bjensen@example.com"


def test_uniqueness_is_409_and_nothing_is_stored(scim):
    scim.post("/Users", user_body("bjensen@example.com", "00u1"))
    _error(scim.post("/Users", user_body("BJensen@example.com", "00u2")), 409, "uniqueness")
    _error(scim.post("/Users", user_body("other@example.com", "00u1")), 409, "uniqueness")
    other = scim.post("/Users", user_body("other@example.com", "00u3")).body
    _error(scim.put(f"/Users/{other['id']}", user_body("bjensen@example.com", "00u3")), 409,
           "uniqueness")
    assert ScimUser.objects.count() == 2
    assert ScimUser.objects.get(scim_id=other["id"]).user_name == "other@example.com"
    scim.post("/Groups", group_body("engineering"))
    _error(scim.post("/Groups", group_body("engineering")), 409, "uniqueness")
    assert ScimGroup.objects.count() == 1


def test_an_unknown_resource_is_404(scim):
    _error(scim.get("/Users/6f1e2f4e-2a4c-4b8e-9b1a-000000000000"), 404)
    _error(scim.get("/Users/not-a-uuid"), 404)
    _error(scim.patch("/Groups/not-a-uuid", patch_body(
        {"op": "add", "path": "members", "value": [{"value": "x"}]})), 404)


# --- Groups -------------------------------------------------------------------------------------


def test_groups_with_members_and_a_display_name_filter(scim):
    a = scim.post("/Users", user_body("a@example.com", "00ua")).body["id"]
    b = scim.post("/Users", user_body("b@example.com", "00ub")).body["id"]
    created = scim.post("/Groups", group_body("engineering", a))
    assert created.status_code == 201
    gid = created.body["id"]
    assert [m["value"] for m in created.body["members"]] == [a]
    found = scim.get("/Groups", filter=_filter('displayName eq "Engineering"')).body
    assert [g["id"] for g in found["Resources"]] == [gid]
    scim.patch(f"/Groups/{gid}", patch_body(
        {"op": "add", "path": "members", "value": [{"value": b}]}))
    assert {m["value"] for m in scim.get(f"/Groups/{gid}").body["members"]} == {a, b}
    assert [g["display"] for g in scim.get(f"/Users/{b}").body["groups"]] == ["engineering"]
    scim.patch(f"/Groups/{gid}", patch_body(
        {"op": "remove", "path": f'members[value eq "{a}"]'}))
    assert [m["value"] for m in scim.get(f"/Groups/{gid}").body["members"]] == [b]
    # A deleted user leaves every group.
    scim.delete(f"/Users/{b}")
    assert "members" not in scim.get(f"/Groups/{gid}").body or \
        scim.get(f"/Groups/{gid}").body["members"] == []


def test_a_member_that_is_not_a_resource_of_the_tenant_is_400(scim):
    _error(scim.post("/Groups", group_body("engineering", "6f1e2f4e-2a4c-4b8e-9b1a-0000000000")),
           400, "invalidValue")
    _error(scim.post("/Groups", group_body("engineering", "nope")), 400, "invalidValue")
    assert not ScimGroup.objects.exists()


def test_the_first_oidc_sign_in_lands_on_the_provisioned_account(scim, settings, tenant_a):
    from governance.tenancy.services import identity_login

    body = scim.post("/Users", user_body("bjensen@example.com", "00u1")).body
    person = identity_login(issuer=settings.SCIM_IDENTITY_ISSUER, subject="00u1",
                            username="bjensen", email="bjensen@example.com", full_name="B J",
                            groups=[])
    assert ScimUser.objects.get(scim_id=body["id"]).user == person


def test_every_change_is_audited_with_the_scim_token_as_actor(scim, tenant_a):
    scim.post("/Users", user_body("bjensen@example.com", "00u1"))
    event = AuditEvent.objects.get(tenant=tenant_a, action="scim.user_created")
    assert event.actor_type == "token"
    assert event.actor_label.startswith("SCIM token Okta (tgscim_")
    assert event.after["user_name"] == "bjensen@example.com"


def test_a_page_is_never_larger_than_max_results(scim, settings):
    settings.SCIM_MAX_RESULTS = 2
    for n in range(3):
        scim.post("/Users", user_body(f"user{n}@example.com", f"00u{n}"))
    assert scim.get("/ServiceProviderConfig").body["filter"]["maxResults"] == 2
    page = scim.get("/Users", count="50").body
    assert page["totalResults"] == 3 and len(page["Resources"]) <= 2


def test_unknown_tokens_from_one_address_are_throttled(tenant_a, settings, redis_url):
    settings.TOKEN_FAILURE_LIMIT_PER_MINUTE = 2
    client = ScimClient("alpha", "tgscim_guess")
    statuses = [client.get("/Users").status_code for _ in range(4)]
    assert statuses[:2] == [401, 401] and statuses[-1] == 429
