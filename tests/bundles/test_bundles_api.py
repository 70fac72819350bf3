"""Gateways, gateway tokens, signing keys and bundles REST API (/api/v1/t/<tenant>/…) — per role,
with exact errors and audit events.

The tenancy contract (anonymous 401, outsider 404, other tenant's object 404, missing
capability 403) is proven for every URL here by tests/contract/test_contract_urls.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from datetime import timedelta

import pytest
from django.utils import timezone

from bundles import services
from bundles.models import Bundle, Gateway, GatewayToken, SigningKey
from governance.audit.services import Actor
from governance.tenancy.models import hash_token
from registry import services as registry
from tests.bundle_support import payroll_world, publish_two_revisions
from tests.factories import actions

SYSTEM = Actor.system("test")
API = "/api/v1/t/alpha"


@pytest.fixture
def gateway(tenant_a):
    return services.gateway_create(tenant=tenant_a, actor=SYSTEM, name="edge-eu",
                                   labels={"env": "prod"})


@pytest.fixture
def token(tenant_a, gateway):
    return services.gateway_token_issue(tenant=tenant_a, actor=SYSTEM, gateway=gateway,
                                        name="k8s")[0]


@pytest.fixture
def two_revisions(tenant_a, dave):
    world = payroll_world(tenant_a, owner=dave)
    first, second = publish_two_revisions(tenant_a, world)
    return first, second, world["grant"]


def no_write_for(client, method: str, url: str, body: dict | None = None) -> None:
    response = getattr(client, method)(url, body or {}, format="json")
    assert response.status_code == 403, (method, url, response.status_code)
    assert response.json()["code"] == "permission_denied"
    assert response.json()["message"].startswith("Your role (")


@pytest.mark.parametrize("name", ["bob", "audrey", "dave", "victor"])
def test_only_admins_write(name, as_user, cast, tenant_a, gateway, token, two_revisions):
    client = as_user(cast[name])
    key = two_revisions[1].key
    no_write_for(client, "post", f"{API}/gateways/", {"name": "x"})
    no_write_for(client, "patch", f"{API}/gateways/{gateway.pk}/", {"name": "y"})
    no_write_for(client, "post", f"{API}/gateways/{gateway.pk}/disable/")
    no_write_for(client, "post", f"{API}/gateways/{gateway.pk}/enable/")
    no_write_for(client, "post", f"{API}/gateway-tokens/", {"gateway": gateway.pk, "name": "n"})
    no_write_for(client, "post", f"{API}/gateway-tokens/{token.pk}/revoke/")
    no_write_for(client, "post", f"{API}/signing-keys/rotate/", {"immediate": True})
    no_write_for(client, "post", f"{API}/signing-keys/{key.pk}/activate/")
    no_write_for(client, "post", f"{API}/signing-keys/{key.pk}/revoke/")
    no_write_for(client, "post", f"{API}/bundles/publish/")
    # …and everyone reads.
    for url in (f"{API}/gateways/", f"{API}/gateways/{gateway.pk}/", f"{API}/gateway-tokens/",
                f"{API}/signing-keys/", f"{API}/bundles/", f"{API}/bundles/diff/",
                f"{API}/bundles/{key.bundles.first().pk}/download/"):
        assert client.get(url).status_code == 200, url
    assert Gateway.objects.get().status == "active" and GatewayToken.objects.get().state == \
        "active"


# --- Gateways --------------------------------------------------------------------------------


def test_an_admin_registers_changes_disables_and_enables_a_gateway(admin, tenant_a):
    created = admin.post(f"{API}/gateways/", {
        "name": "edge-us", "description": "Virginia",
        "labels": {"region": "us-east-1", "env": "prod"}}, format="json")
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["name"] == "edge-us" and body["status"] == "active"
    assert body["labels"] == {"env": "prod", "region": "us-east-1"}
    assert body["created_by"] == "alice"
    assert body["last_contact_at"] is None and body["stale"] is False  # time to connect
    assert body["active_revision"] is None and body["lag"] is None
    assert body["last_report"] is None
    pk = body["id"]

    changed = admin.patch(f"{API}/gateways/{pk}/", {"labels": {"env": "staging"}},
                          format="json")
    assert changed.status_code == 200
    assert changed.json()["labels"] == {"env": "staging"}
    assert changed.json()["name"] == "edge-us"

    disabled = admin.post(f"{API}/gateways/{pk}/disable/")
    assert disabled.status_code == 200
    assert disabled.json()["status"] == "disabled" and disabled.json()["stale"] is False
    enabled = admin.post(f"{API}/gateways/{pk}/enable/")
    assert enabled.json()["status"] == "active"
    assert actions(tenant_a, 4) == [("gateway.created", "token"), ("gateway.updated", "token"),
                                    ("gateway.disabled", "token"), ("gateway.enabled", "token")]


def test_gateway_errors_are_400_with_the_field(admin, gateway):
    duplicate = admin.post(f"{API}/gateways/", {"name": "edge-eu"}, format="json")
    assert duplicate.status_code == 400
    assert duplicate.json() == {"code": "invalid",
                                "message": "A gateway named edge-eu already exists.",
                                "errors": {"name": ["A gateway named edge-eu already exists."]}}
    bad_label = admin.post(f"{API}/gateways/", {"name": "x", "labels": {"k" * 64: "v"}},
                           format="json")
    assert bad_label.status_code == 400
    assert bad_label.json()["errors"] == {"labels": [f"Label name {'k' * 64!r}: 1–63 "
                                                     "characters."]}
    not_text = admin.post(f"{API}/gateways/", {"name": "x", "labels": ["env=prod"]},
                          format="json")
    assert not_text.status_code == 400 and "labels" in not_text.json()["errors"]
    unknown = admin.patch(f"{API}/gateways/{gateway.pk}/", {"status": "disabled"},
                          format="json")
    assert unknown.status_code == 400
    assert unknown.json()["errors"] == {
        "status": ["Unknown field; this takes name, description, labels."]}
    assert not Gateway.objects.filter(name="x").exists()


def test_the_fleet_list_shows_freshness(admin, tenant_a, two_revisions, settings):
    settings.GATEWAY_STALE_SECONDS = 600
    fresh = services.gateway_create(tenant=tenant_a, actor=SYSTEM, name="a-fresh")
    services.gateway_record_status(gateway=fresh, report={
        "bundles": {"mcp": {"active_revision": "2"}}})
    old = services.gateway_create(tenant=tenant_a, actor=SYSTEM, name="b-old")
    services.gateway_record_status(gateway=old, now=timezone.now() - timedelta(hours=2), report={
        "bundles": {"mcp": {"active_revision": "1", "code": "bundle_error",
                            "message": "signature invalid"}}})

    body = admin.get(f"{API}/gateways/").json()
    assert body["count"] == 2
    a, b = body["results"]
    assert (a["name"], a["active_revision"], a["newest_revision"], a["lag"], a["stale"]) == (
        "a-fresh", 2, 2, 0, False)
    assert (b["name"], b["active_revision"], b["lag"], b["stale"]) == ("b-old", 1, 1, True)
    assert b["last_error"] == "bundle_error: signature invalid"
    assert "last_report" not in b

    detail = admin.get(f"{API}/gateways/{old.pk}/").json()
    assert detail["last_report"]["bundles"]["mcp"]["message"] == "signature invalid"


def test_an_empty_fleet_is_an_empty_page(admin):
    assert admin.get(f"{API}/gateways/").json() == {"count": 0, "next": None,
                                                    "previous": None, "results": []}


# --- Gateway tokens --------------------------------------------------------------------------


def test_a_token_is_returned_once_and_stored_hashed(admin, tenant_a, gateway):
    created = admin.post(f"{API}/gateway-tokens/", {"gateway": gateway.pk, "name": "helm"},
                         format="json")
    assert created.status_code == 201, created.json()
    assert created["Cache-Control"] == "no-store"
    body = created.json()
    plaintext = body["token"]
    assert plaintext.startswith("tgw_") and body["prefix"] == plaintext[:12]
    assert (body["gateway"], body["gateway_name"], body["name"], body["state"],
            body["created_by"]) == (gateway.pk, "edge-eu", "helm", "active", "alice")

    stored = GatewayToken.objects.get(pk=body["id"])
    assert stored.token_hash == hash_token(plaintext)
    assert plaintext not in json.dumps(list(GatewayToken.objects.values()), default=str)

    again = admin.get(f"{API}/gateway-tokens/{stored.pk}/").json()
    assert "token" not in again and again["prefix"] == plaintext[:12]
    listed = admin.get(f"{API}/gateway-tokens/").json()["results"]
    assert all("token" not in row for row in listed)
    assert actions(tenant_a, 1) == [("gateway.token_issued", "token")]


def test_tokens_filter_by_gateway_and_state(admin, tenant_a, gateway, token):
    other = services.gateway_create(tenant=tenant_a, actor=SYSTEM, name="other")
    theirs, _ = services.gateway_token_issue(tenant=tenant_a, actor=SYSTEM, gateway=other,
                                             name="x")
    services.gateway_token_revoke(tenant=tenant_a, actor=SYSTEM, token=theirs)
    by_gateway = admin.get(f"{API}/gateway-tokens/?gateway={gateway.pk}").json()["results"]
    assert [t["id"] for t in by_gateway] == [token.pk]
    revoked = admin.get(f"{API}/gateway-tokens/?state=revoked").json()["results"]
    assert [t["id"] for t in revoked] == [theirs.pk]
    bad = admin.get(f"{API}/gateway-tokens/?state=lost")
    assert bad.status_code == 400 and "state" in bad.json()["errors"]


def test_a_token_for_another_tenants_gateway_is_refused(admin, tenant_b):
    theirs = services.gateway_create(tenant=tenant_b, actor=SYSTEM, name="bravo-gw")
    response = admin.post(f"{API}/gateway-tokens/", {"gateway": theirs.pk, "name": "n"},
                          format="json")
    assert response.status_code == 400
    assert response.json()["errors"] == {
        "gateway": [f"No gateway with id {theirs.pk} in this tenant."]}
    assert not GatewayToken.objects.exists()


def test_revoking_a_token(admin, tenant_a, token):
    response = admin.post(f"{API}/gateway-tokens/{token.pk}/revoke/")
    assert response.status_code == 200
    assert response.json()["state"] == "revoked" and response.json()["revoked_at"]
    again = admin.post(f"{API}/gateway-tokens/{token.pk}/revoke/")
    assert again.status_code == 200 and again.json()["revoked_at"] == response.json()[
        "revoked_at"]
    assert actions(tenant_a, 1) == [("gateway.token_revoked", "token")]


# --- Signing keys ----------------------------------------------------------------------------


def test_a_scheduled_rotation_then_early_activation(admin, tenant_a, two_revisions, settings):
    settings.BUNDLE_KEY_PUBLISH_LEAD_SECONDS = 600
    old = two_revisions[1].key
    rotated = admin.post(f"{API}/signing-keys/rotate/", {}, format="json")
    assert rotated.status_code == 201
    body = rotated.json()
    assert body["state"] == "pending" and body["activate_after"] is not None
    assert body["public_jwk"]["kid"] == body["kid"] and "d" not in body["public_jwk"]

    again = admin.post(f"{API}/signing-keys/rotate/", {"immediate": False}, format="json")
    assert again.status_code == 400
    assert again.json()["message"].startswith(f"A rotation is already under way: key "
                                              f"{body['kid']}")

    activated = admin.post(f"{API}/signing-keys/{body['id']}/activate/")
    assert activated.status_code == 200 and activated.json()["state"] == "active"
    assert admin.get(f"{API}/signing-keys/{old.pk}/").json()["state"] == "retired"
    twice = admin.post(f"{API}/signing-keys/{body['id']}/activate/")
    assert twice.status_code == 400
    assert twice.json()["message"] == "Only a pending key can be activated; this one is active."

    listed = admin.get(f"{API}/signing-keys/").json()["results"]
    assert [k["state"] for k in listed] == ["active", "retired"]


def test_an_immediate_rotation_and_revoking_the_old_key(admin, tenant_a, two_revisions):
    old = two_revisions[1].key
    rotated = admin.post(f"{API}/signing-keys/rotate/", {"immediate": True}, format="json")
    assert rotated.status_code == 201 and rotated.json()["state"] == "active"

    revoked = admin.post(f"{API}/signing-keys/{old.pk}/revoke/")
    assert revoked.status_code == 200
    assert revoked.json()["state"] == "revoked" and revoked.json()["revoked_at"]
    active = rotated.json()["id"]
    refused = admin.post(f"{API}/signing-keys/{active}/revoke/")
    assert refused.status_code == 400
    assert refused.json()["message"].startswith("The active key signs the current bundle")
    assert SigningKey.objects.get(pk=active).state == "active"


def test_rotate_refuses_unknown_fields(admin, two_revisions):
    response = admin.post(f"{API}/signing-keys/rotate/", {"now": True}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"] == {"now": ["Unknown field; this takes immediate."]}


# --- Bundles ---------------------------------------------------------------------------------


def test_bundles_list_newest_first_with_their_facts(admin, two_revisions):
    first, second, _ = two_revisions
    body = admin.get(f"{API}/bundles/").json()
    assert [b["revision_number"] for b in body["results"]] == [2, 1]
    newest = body["results"][0]
    assert newest == {
        "id": second.pk, "revision_number": 2, "sha256": second.sha256, "size": second.size,
        "created_at": newest["created_at"], "expires_at": newest["expires_at"],
        "kid": second.key.kid, "trigger": "registry change",
        "summary": {"agents": 1, "servers": 1, "tools": 2, "scopes": 1, "grants": 1},
        "build_ms": second.build_ms, "current": True,
    }
    assert body["results"][1]["current"] is False
    one = admin.get(f"{API}/bundles/{first.pk}/").json()
    assert one["revision_number"] == 1 and one["summary"]["tools"] == 1


def test_download_returns_the_tarball(admin, two_revisions):
    first = two_revisions[0]
    for accept in ("application/gzip", "*/*", "application/json"):
        response = admin.get(f"{API}/bundles/{first.pk}/download/", HTTP_ACCEPT=accept)
        assert response.status_code == 200, accept
        assert response["Content-Type"] == "application/gzip"
        assert response["Content-Disposition"] == 'attachment; filename="alpha-r1.tar.gz"'
        assert hashlib.sha256(response.content).hexdigest() == first.sha256
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
        manifest = json.load(tar.extractfile(".manifest"))
    assert manifest["metadata"]["revision_number"] == 1


def test_a_missing_bundle_is_a_json_404_even_when_a_tarball_is_asked_for(admin, two_revisions):
    response = admin.get(f"{API}/bundles/999999/download/", HTTP_ACCEPT="application/gzip")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_diff_defaults_to_the_newest_and_the_one_before(admin, two_revisions):
    grant = two_revisions[2]
    body = admin.get(f"{API}/bundles/diff/").json()
    assert (body["from_revision"], body["to_revision"], body["is_empty"]) == (1, 2, False)
    tools = body["sections"]["tools"]
    assert [e["key"] for e in tools["added"]] == ["payroll/refund"]
    assert tools["added"][0]["value"]["name"] == "refund"
    assert body["sections"]["grants"]["changed"] == [{
        "key": str(grant.pk), "label": f"bot → payroll:write (grant {grant.pk})",
        "fields": [{"field": "calls_per_minute", "before": 10, "after": 20}],
    }]
    assert body["sections"]["agents"] == {"label": "Agents", "added": [], "removed": [],
                                          "changed": []}
    assert set(body["sections"]) == {"agents", "servers", "tools", "scopes", "grants",
                                     "withheld_tools", "escalation"}


def test_diff_between_chosen_revisions(admin, two_revisions):
    body = admin.get(f"{API}/bundles/diff/?from=2&to=1").json()
    assert [e["key"] for e in body["sections"]["tools"]["removed"]] == ["payroll/refund"]
    first = admin.get(f"{API}/bundles/diff/?to=1").json()
    assert first["from_revision"] is None
    assert [e["key"] for e in first["sections"]["agents"]["added"]] == ["bot"]


@pytest.mark.parametrize(("query", "errors"), [
    ("from=9&to=2", {"from": ["There is no revision 9."]}),
    ("to=7", {"to": ["There is no revision 7."]}),
    ("from=1&to=1", {"to": ["Choose two different revisions."]}),
    ("from=x", {"from": ["A valid integer is required."]}),
])
def test_diff_reports_bad_revisions(admin, two_revisions, query, errors):
    response = admin.get(f"{API}/bundles/diff/?{query}")
    assert response.status_code == 400
    assert response.json()["errors"] == errors


def test_diff_without_bundles_says_so(admin):
    response = admin.get(f"{API}/bundles/diff/")
    assert response.status_code == 400
    assert response.json()["message"] == "No bundle has been published yet: nothing to compare."


def test_publish_makes_a_revision_then_reports_nothing_changed(admin, tenant_a, two_revisions):
    registry.agent_create(tenant=tenant_a, actor=SYSTEM, name="helper", owner=None)
    published = admin.post(f"{API}/bundles/publish/")
    assert published.status_code == 201
    body = published.json()
    assert body["published"] is True and body["message"] == "Published r3."
    assert body["bundle"]["revision_number"] == 3 and body["bundle"]["trigger"] == "manual"
    assert body["bundle"]["current"] is True
    assert actions(tenant_a, 1) == [("bundle.published", "token")]

    unchanged = admin.post(f"{API}/bundles/publish/")
    assert unchanged.status_code == 200
    assert unchanged.json()["published"] is False
    assert unchanged.json()["message"] == "Nothing changed since r3."
    assert unchanged.json()["bundle"]["revision_number"] == 3
    assert Bundle.objects.filter(tenant=tenant_a).count() == 3


def test_publish_without_a_usable_key_is_a_409(admin, tenant_a, settings):
    services.signing_key_rotate(tenant=tenant_a, actor=SYSTEM)  # the first key: active at once
    settings.SECRET_ENCRYPTION_KEYS = ["b3RoZXItb3RoZXItb3RoZXItb3RoZXItb3RoZXItMTI="]
    response = admin.post(f"{API}/bundles/publish/")
    assert response.status_code == 409
    assert response.json() == {"code": "key_unavailable", "message": "The bundle signing key "
                               "cannot be decrypted with SECRET_ENCRYPTION_KEYS."}
    assert not Bundle.objects.exists()
