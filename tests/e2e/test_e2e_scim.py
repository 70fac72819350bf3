"""End to end: a person signed in through the real OIDC provider (oidc-provider) in a real
browser is deprovisioned by SCIM over HTTP, and loses their browser session and personal API
token within that request.

The SCIM user's externalId is the IdP's subject for carol, so SCIM and the sign-in reach the
same account; the group SCIM pushes gives the role the sign-in lands with.
"""

from __future__ import annotations

import httpx2
import pytest

from governance.audit.models import AuditEvent
from governance.audit.services import Actor
from governance.tenancy.models import ExternalIdentity, Membership
from governance.tenancy.roles import Role
from scim import services as scim_services
from tests.e2e import test_e2e_oidc as oidc
from tests.factories import make_token

pytestmark = pytest.mark.e2e

# The OIDC end-to-end test's fixtures: the live server, the IdP, Chromium, tenant acme.
base_url, idp, oidc_settings, browser, acme = (
    oidc.base_url, oidc.idp, oidc.oidc_settings, oidc.browser, oidc.acme)
carol, login_page_url, sso_login = oidc.carol, oidc.login_page_url, oidc.sso_login

PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


def test_scim_deactivation_ends_the_browser_session_and_the_token_at_once(
    oidc_settings, acme, idp, browser, base_url, settings
):
    settings.SCIM_IDENTITY_ISSUER = idp.issuer
    _, secret = scim_services.scim_token_create(tenant=acme, actor=Actor.system("e2e"),
                                                created_by=None, name="IdP")
    scim = httpx2.Client(base_url=f"{base_url}/scim/v2/acme", timeout=30,
                         headers={"Authorization": f"Bearer {secret}",
                                  "Content-Type": "application/scim+json"})
    with scim:
        # The IdP provisions carol (its subject as externalId) and puts her in acme-approvers.
        created = scim.post("/Users", json={
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": "carol@example.com", "externalId": "carol-sub-1", "active": True,
            "emails": [{"value": "carol@example.com", "primary": True}]})
        assert created.status_code == 201, created.text
        user_id = created.json()["id"]
        group = scim.post("/Groups", json={
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
            "displayName": "acme-approvers", "members": [{"value": user_id}]})
        assert group.status_code == 201, group.text

        # carol signs in through the IdP: the same account, with the role SCIM gave.
        idp.set_users(carol(["acme-approvers"]))
        page = sso_login(browser, base_url, idp, landing="/t/acme/")
        identity = ExternalIdentity.objects.get(issuer=idp.issuer, subject="carol-sub-1")
        membership = Membership.objects.get(tenant=acme, user=identity.user)
        assert membership.role == Role.APPROVER
        _, token = make_token(acme, user=identity.user, role=Role.APPROVER)
        api = httpx2.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"})
        with api:
            assert api.get("/api/v1/t/acme/servers/").status_code == 200

            # The IdP deactivates her.
            answer = scim.patch(f"/Users/{user_id}", json={
                "schemas": [PATCH], "Operations": [{"op": "replace", "value": {"active": False}}]})
            assert answer.status_code == 200, answer.text

            # Her next request, in the browser and with the token, finds nothing.
            page.goto(f"{base_url}/t/acme/")
            page.wait_for_url(login_page_url(base_url))
            assert api.get("/api/v1/t/acme/servers/").status_code == 401

    ended = AuditEvent.objects.get(tenant=acme, action="user.access_ended")
    assert ended.after["sessions_ended"] >= 1 and ended.after["tokens_revoked"] == 1
    assert not Membership.objects.filter(tenant=acme, user=identity.user).exists()
    page.context.close()
