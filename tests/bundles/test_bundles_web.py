"""Gateway fleet, gateway tokens, signing keys and bundle history web pages."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from datetime import timedelta

import pytest
from django.utils import timezone

from bundles import publish, services
from bundles.models import Bundle, Gateway, GatewayToken, PublishState, SigningKey
from bundles.publish import bundle_publish
from governance.audit.models import AuditEvent
from governance.audit.services import Actor
from governance.tenancy.models import hash_token
from tests.bundle_support import payroll_world, publish_two_revisions

SYSTEM = Actor.system("test")
ROLES = ["alice", "bob", "audrey", "dave", "victor"]
NON_ADMINS = ["bob", "audrey", "dave", "victor"]
HTMX = {"HTTP_HX_REQUEST": "true"}
T = "/t/alpha"


def _body(response) -> str:
    return response.content.decode()


def _events(tenant, action):
    return list(AuditEvent.objects.filter(tenant=tenant, action=action).order_by("seq"))


def _messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


@pytest.fixture
def gateway(tenant_a):
    return services.gateway_create(tenant=tenant_a, actor=SYSTEM, name="edge-eu",
                                   description="Frankfurt cluster",
                                   labels={"env": "prod", "region": "eu-west-1"})


@pytest.fixture
def token(tenant_a, gateway):
    return services.gateway_token_issue(tenant=tenant_a, actor=SYSTEM, gateway=gateway,
                                        name="k8s secret")[0]


@pytest.fixture
def registry_world(tenant_a, dave):
    return payroll_world(tenant_a, owner=dave)


@pytest.fixture
def two_revisions(tenant_a, registry_world):
    """r1 as above; r2 after approving refund and raising the grant's limit."""
    return publish_two_revisions(tenant_a, registry_world)


# --- Every page, every role ----------------------------------------------------------------------


def _pages(gateway, bundle) -> list[str]:
    return [f"{T}/gateways/", f"{T}/gateways/{gateway.pk}/", f"{T}/signing-keys/",
            f"{T}/bundles/", f"{T}/bundles/compare/",
            f"{T}/bundles/compare/?to={bundle.revision_number}"]


@pytest.mark.parametrize("name", ROLES)
def test_every_page_renders_for_every_role(name, login, cast, gateway, token, two_revisions):
    client = login(cast[name])
    for url in _pages(gateway, two_revisions[1]):
        response = client.get(url)
        assert response.status_code == 200, url
        body = _body(response)
        assert 'href="/t/alpha/gateways/">Gateways</a>' in body
        assert 'href="/t/alpha/bundles/">Bundles</a>' in body


WRITE_MARKS = ["Register gateway", ">Edit<", ">Disable<", "Issue token", ">Revoke<",
               ">Rotate<", "Rotate immediately", "Publish now"]


def test_a_viewer_sees_no_write_buttons(login, victor, gateway, token, two_revisions):
    client = login(victor)
    body = "".join(_body(client.get(url)) for url in _pages(gateway, two_revisions[1]))
    for mark in WRITE_MARKS:
        assert mark not in body, mark


def test_an_admin_sees_the_write_buttons(login, alice, gateway, token, two_revisions):
    client = login(alice)
    body = "".join(_body(client.get(url)) for url in _pages(gateway, two_revisions[1]))
    for mark in WRITE_MARKS:
        assert mark in body, mark


@pytest.mark.parametrize("name", NON_ADMINS)
def test_only_admins_change_gateways_keys_and_bundles(name, login, cast, tenant_a, gateway,
                                                      token, two_revisions):
    client = login(cast[name])
    key = two_revisions[1].key
    posts = [
        (f"{T}/gateways/new/", {"name": "x"}),
        (f"{T}/gateways/{gateway.pk}/edit/", {"name": "renamed"}),
        (f"{T}/gateways/{gateway.pk}/status/", {"status": "disabled"}),
        (f"{T}/gateways/{gateway.pk}/tokens/", {"name": "mine"}),
        (f"{T}/gateway-tokens/{token.pk}/revoke/", {}),
        (f"{T}/signing-keys/rotate/", {"immediate": "0"}),
        (f"{T}/signing-keys/{key.pk}/activate/", {}),
        (f"{T}/signing-keys/{key.pk}/revoke/", {}),
        (f"{T}/bundles/publish/", {}),
    ]
    for url, data in posts:
        assert client.post(url, data).status_code == 403, url
        assert client.get(url).status_code == 403, url
    gateway.refresh_from_db()
    token.refresh_from_db()
    assert gateway.name == "edge-eu" and gateway.status == "active"
    assert token.revoked_at is None
    assert Gateway.objects.count() == 1 and GatewayToken.objects.count() == 1
    assert SigningKey.objects.count() == 1 and Bundle.objects.count() == 2


# --- The fleet -----------------------------------------------------------------------------------


def test_an_empty_fleet_says_what_to_do(login, alice, victor):
    admin = _body(login(alice).get(f"{T}/gateways/"))
    assert 'id="gateways-empty"' in admin and "Register a gateway" in admin
    assert "/api/v1/gateway/bundles/alpha" in admin
    viewer = _body(login(victor).get(f"{T}/gateways/"))
    assert "An admin of this tenant registers the gateways" in viewer


def test_the_fleet_shows_revision_lag_staleness_and_errors(login, victor, tenant_a,
                                                           two_revisions, settings):
    settings.GATEWAY_STALE_SECONDS = 600
    now = timezone.now()
    fresh = services.gateway_create(tenant=tenant_a, actor=SYSTEM, name="fresh",
                                    labels={"env": "prod"})
    services.gateway_record_status(gateway=fresh, now=now, report={
        "bundles": {"mcp": {"active_revision": "2"}}})
    behind = services.gateway_create(tenant=tenant_a, actor=SYSTEM, name="behind")
    services.gateway_record_status(gateway=behind, now=now - timedelta(hours=1), report={
        "bundles": {"mcp": {"active_revision": "1", "code": "bundle_error",
                            "message": "signature invalid"}}})
    silent = services.gateway_create(tenant=tenant_a, actor=SYSTEM, name="silent")
    Gateway.objects.filter(pk=silent.pk).update(created_at=now - timedelta(hours=1))
    services.gateway_create(tenant=tenant_a, actor=SYSTEM, name="new")  # still has time

    body = _body(login(victor).get(f"{T}/gateways/"))

    rows = {name: re.search(rf'<tr id="gateway-{gw.pk}"[^>]*>(.*?)</tr>', body, re.S)
            for name, gw in ((g.name, g) for g in Gateway.objects.all())}
    assert "env=prod" in rows["fresh"].group(1)
    assert "r2" in rows["fresh"].group(1) and "up to date" in rows["fresh"].group(1)
    assert "stale" not in rows["fresh"].group(0)
    assert "r1" in rows["behind"].group(1) and "1 behind" in rows["behind"].group(1)
    assert 'class="stale"' in rows["behind"].group(0)
    assert "bundle_error: signature invalid" in rows["behind"].group(1)
    assert "never" in rows["silent"].group(1) and 'class="stale"' in rows["silent"].group(0)
    assert "never" in rows["new"].group(1) and 'class="stale"' not in rows["new"].group(0)
    assert "2 active gateways stale." in body
    assert "Newest revision: <strong>r2</strong>" in body


def test_a_disabled_gateway_is_never_stale(login, victor, tenant_a, gateway):
    services.gateway_set_status(tenant=tenant_a, actor=SYSTEM, gateway=gateway,
                                status="disabled")
    body = _body(login(victor).get(f"{T}/gateways/"))
    assert "Disabled" in body and 'class="stale"' not in body


def test_the_fleet_answers_htmx_with_the_table_only_and_refreshes_itself(login, victor,
                                                                        gateway):
    client = login(victor)
    page = _body(client.get(f"{T}/gateways/"))
    assert 'hx-trigger="every 30s"' in page
    fragment = client.get(f"{T}/gateways/", **HTMX)
    assert "<html" not in _body(fragment) and 'id="gateways-table"' in _body(fragment)
    assert fragment["Vary"] == "HX-Request" or "HX-Request" in fragment["Vary"]


def test_the_fleet_is_paginated(login, victor, tenant_a):
    for n in range(30):
        services.gateway_create(tenant=tenant_a, actor=SYSTEM, name=f"gw-{n:02d}")
    client = login(victor)
    first = _body(client.get(f"{T}/gateways/"))
    assert "Page 1 of 2 (30 in all)" in first and "gw-24" in first and "gw-25" not in first
    assert "gw-29" in _body(client.get(f"{T}/gateways/?page=2"))


# --- Registering and editing gateways ------------------------------------------------------------


def test_admin_registers_a_gateway_with_labels(login, alice, tenant_a):
    response = login(alice).post(f"{T}/gateways/new/", {
        "name": "edge-us", "description": "Virginia",
        "labels": "env=prod\n\n region = us-east-1 \n# a comment\n",
    })
    gateway = Gateway.objects.get(tenant=tenant_a, name="edge-us")
    assert response.status_code == 302 and response["Location"] == f"{T}/gateways/{gateway.pk}/"
    assert gateway.labels == {"env": "prod", "region": "us-east-1"}
    assert gateway.created_by == alice and gateway.status == "active"
    (event,) = _events(tenant_a, "gateway.created")
    assert event.actor_type == "user" and event.actor_label == "alice"


def test_bad_label_lines_are_named_and_the_input_kept(login, alice, tenant_a):
    response = login(alice).post(f"{T}/gateways/new/", {
        "name": "edge-us", "labels": "env=prod\nregion\n=nokey\nenv=staging",
    })
    assert response.status_code == 400
    body = _body(response)
    assert "Line 2: write key=value, e.g. region=eu-west-1." in body
    assert "Line 3: a label name is 1–63 characters, before the =." in body
    assert "Line 4: env is given twice." in body
    assert "env=prod\nregion\n=nokey\nenv=staging" in body
    assert not Gateway.objects.exists()


def test_a_duplicate_name_is_reported_at_the_name(login, alice, gateway):
    response = login(alice).post(f"{T}/gateways/new/", {"name": "edge-eu"})
    assert response.status_code == 400
    assert re.search(r'name="name"[^>]*>\s*(<small[^<]*</small>)?\s*<p class="error">'
                     r"A gateway named edge-eu already exists.</p>", _body(response))


def test_admin_edits_a_gateway(login, alice, gateway, tenant_a):
    client = login(alice)
    form = _body(client.get(f"{T}/gateways/{gateway.pk}/edit/"))
    assert "env=prod\nregion=eu-west-1" in form
    response = client.post(f"{T}/gateways/{gateway.pk}/edit/", {
        "name": "edge-eu-1", "description": "", "labels": "env=staging"})
    assert response.status_code == 302
    gateway.refresh_from_db()
    assert gateway.name == "edge-eu-1" and gateway.labels == {"env": "staging"}
    (event,) = _events(tenant_a, "gateway.updated")
    assert event.before["labels"] == {"env": "prod", "region": "eu-west-1"}


# --- The gateway page and its tokens -------------------------------------------------------------


def test_the_gateway_page_shows_its_last_report(login, victor, tenant_a, gateway, two_revisions):
    services.gateway_record_status(gateway=gateway, report={
        "labels": {"id": "gw-1"},
        "bundles": {"mcp": {"active_revision": "1", "code": "bundle_error",
                            "message": "expired"}}})
    body = _body(login(victor).get(f"{T}/gateways/{gateway.pk}/"))
    assert "Frankfurt cluster" in body and "region=eu-west-1" in body
    assert "r1" in body and "(newest r2)" in body and "1 revision behind" in body
    assert "bundle_error: expired" in body
    assert 'id="status-report"' in body and "&quot;active_revision&quot;: &quot;1&quot;" in body


def test_an_issued_token_is_shown_once_and_stored_hashed(login, alice, tenant_a, gateway):
    client = login(alice)
    response = client.post(f"{T}/gateways/{gateway.pk}/tokens/", {"name": "helm"})
    assert response.status_code == 303
    assert response["Location"] == f"{T}/gateways/{gateway.pk}/"

    page = client.get(response["Location"])
    assert page["Cache-Control"] == "no-store"
    plaintext = re.search(r'<code class="secret" id="token-value">([^<]+)</code>',
                          _body(page)).group(1)
    assert plaintext.startswith("tgw_") and len(plaintext) >= 4 + 43
    assert "shown only this once" in _body(page)

    token = GatewayToken.objects.get(gateway=gateway)
    assert token.name == "helm" and token.created_by == alice
    assert token.token_hash == hash_token(plaintext) and token.prefix == plaintext[:12]
    assert plaintext not in json.dumps(list(GatewayToken.objects.values()), default=str)
    (event,) = _events(tenant_a, "gateway.token_issued")
    assert plaintext not in json.dumps(event.after)

    again = _body(client.get(f"{T}/gateways/{gateway.pk}/"))
    assert plaintext not in again and 'id="new-token"' not in again
    assert f"{token.prefix}…" in again


def test_a_token_shown_once_does_not_leak_to_another_gateways_page(login, alice, tenant_a,
                                                                   gateway):
    other = services.gateway_create(tenant=tenant_a, actor=SYSTEM, name="other")
    client = login(alice)
    client.post(f"{T}/gateways/{gateway.pk}/tokens/", {"name": "helm"})
    assert 'id="new-token"' not in _body(client.get(f"{T}/gateways/{other.pk}/"))


def test_a_token_needs_a_name(login, alice, gateway):
    response = login(alice).post(f"{T}/gateways/{gateway.pk}/tokens/", {"name": " "})
    assert response.status_code == 400
    assert "This field is required." in _body(response)
    assert not GatewayToken.objects.exists()


def test_a_token_of_a_disabled_gateway_comes_with_a_warning(login, alice, tenant_a, gateway):
    services.gateway_set_status(tenant=tenant_a, actor=SYSTEM, gateway=gateway,
                                status="disabled")
    response = login(alice).post(f"{T}/gateways/{gateway.pk}/tokens/", {"name": "helm"},
                                 follow=True)
    assert "edge-eu is disabled: the token is refused until you enable the gateway." in \
        _messages(response)


def test_revoking_a_token_asks_for_confirmation_first(login, alice, tenant_a, token):
    client = login(alice)
    confirm = client.get(f"{T}/gateway-tokens/{token.pk}/revoke/")
    assert confirm.status_code == 200
    assert f"Revoke token &#x27;k8s secret&#x27; ({token.prefix}…) of edge-eu?" in _body(confirm)
    token.refresh_from_db()
    assert token.revoked_at is None

    response = client.post(f"{T}/gateway-tokens/{token.pk}/revoke/", follow=True)
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert f"Revoked token 'k8s secret' ({token.prefix}…)." in _messages(response)
    assert response.redirect_chain[-1][0] == f"{T}/gateways/{token.gateway_id}/"
    (event,) = _events(tenant_a, "gateway.token_revoked")
    assert event.actor_label == "alice"


def test_revoking_with_htmx_replaces_the_row(login, alice, token):
    client = login(alice)
    page = _body(client.get(f"{T}/gateways/{token.gateway_id}/"))
    assert f'hx-post="{T}/gateway-tokens/{token.pk}/revoke/"' in page
    assert "hx-confirm=" in page
    response = client.post(f"{T}/gateway-tokens/{token.pk}/revoke/", **HTMX)
    assert response.status_code == 200
    body = _body(response)
    assert body.lstrip().startswith(f'<tr id="gateway-token-{token.pk}" class="state-revoked">')
    assert ">Revoke<" not in body


def test_admin_disables_and_enables_a_gateway_after_confirming(login, alice, tenant_a,
                                                                gateway):
    client = login(alice)
    confirm = _body(client.get(f"{T}/gateways/{gateway.pk}/status/?status=disabled"))
    assert "Disable gateway edge-eu?" in confirm and "refused from its next request" in confirm
    gateway.refresh_from_db()
    assert gateway.status == "active"

    response = client.post(f"{T}/gateways/{gateway.pk}/status/", {"status": "disabled"},
                           follow=True)
    gateway.refresh_from_db()
    assert gateway.status == "disabled"
    assert "Gateway edge-eu is now disabled." in _messages(response)
    assert ">Enable<" in _body(response)

    client.post(f"{T}/gateways/{gateway.pk}/status/", {"status": "active"})
    gateway.refresh_from_db()
    assert gateway.status == "active"
    assert [e.action for e in AuditEvent.objects.filter(
        tenant=tenant_a, action__in=["gateway.disabled", "gateway.enabled"]).order_by("seq")] \
        == ["gateway.disabled", "gateway.enabled"]


def test_an_unknown_gateway_status_is_refused(login, alice, gateway):
    client = login(alice)
    assert client.get(f"{T}/gateways/{gateway.pk}/status/?status=gone").status_code == 404
    response = client.post(f"{T}/gateways/{gateway.pk}/status/", {"status": "gone"}, follow=True)
    assert _messages(response) == ["Use one of active, disabled."]


# --- Signing keys --------------------------------------------------------------------------------


def _key(tenant, state):
    return SigningKey.objects.get(tenant=tenant, state=state)


def test_no_key_yet_says_the_first_bundle_creates_one(login, alice, victor):
    body = _body(login(alice).get(f"{T}/signing-keys/"))
    assert 'id="keys-empty"' in body and "publish now" in body
    assert "Rotate" not in body
    assert 'id="keys-empty"' in _body(login(victor).get(f"{T}/signing-keys/"))


def test_a_scheduled_rotation_publishes_a_pending_key(login, alice, tenant_a, two_revisions,
                                                      settings):
    settings.BUNDLE_KEY_PUBLISH_LEAD_SECONDS = 600
    client = login(alice)
    confirm = _body(client.get(f"{T}/signing-keys/rotate/"))
    assert "starts signing in 10 min" in confirm

    before = timezone.now()
    response = client.post(f"{T}/signing-keys/rotate/", {"immediate": "0"}, follow=True)
    pending = _key(tenant_a, "pending")
    assert pending.activate_after > before + timedelta(seconds=590)
    assert pending.created_by == alice
    assert f"Key {pending.kid} is published and starts signing at" in _messages(response)[0]
    body = _body(response)
    assert 'id="rotation-pending"' in body and ">Activate now<" in body
    assert ">Rotate<" not in body  # one rotation at a time
    assert _events(tenant_a, "bundle_key.rotated")[0].after["immediate"] is False

    again = client.post(f"{T}/signing-keys/rotate/", {"immediate": "0"}, follow=True)
    assert _messages(again)[0].startswith(f"A rotation is already under way: key {pending.kid}")
    assert SigningKey.objects.filter(tenant=tenant_a).count() == 2


def test_activating_a_pending_key_retires_the_active_one(login, alice, tenant_a,
                                                        two_revisions):
    old = _key(tenant_a, "active")
    pending = services.signing_key_rotate(tenant=tenant_a, actor=SYSTEM)
    client = login(alice)
    assert "Activate key" in _body(client.get(f"{T}/signing-keys/{pending.pk}/activate/"))
    response = client.post(f"{T}/signing-keys/{pending.pk}/activate/", follow=True)
    assert f"Key {pending.kid} signs from now on." in _messages(response)
    assert _key(tenant_a, "active") == pending and _key(tenant_a, "retired") == old

    again = client.post(f"{T}/signing-keys/{pending.pk}/activate/", follow=True)
    assert _messages(again) == ["Only a pending key can be activated; this one is active."]


def test_revoking_a_retired_key_after_confirming(login, alice, tenant_a, two_revisions):
    old = _key(tenant_a, "active")
    pending = services.signing_key_rotate(tenant=tenant_a, actor=SYSTEM)
    services.signing_key_activate(tenant=tenant_a, actor=SYSTEM, key=pending)
    publish.bundle_publish(tenant=tenant_a, trigger="test")  # re-signed by the new key
    client = login(alice)
    page = _body(client.get(f"{T}/signing-keys/"))
    assert f"{T}/signing-keys/{old.pk}/revoke/" in page
    confirm = _body(client.get(f"{T}/signing-keys/{old.pk}/revoke/"))
    assert "gateways then reject every bundle it signed" in confirm
    response = client.post(f"{T}/signing-keys/{old.pk}/revoke/", follow=True)
    old.refresh_from_db()
    assert old.state == "revoked" and old.revoked_at is not None
    assert f"Revoked key {old.kid}." in _messages(response)


def test_the_active_key_cannot_be_revoked(login, alice, tenant_a, two_revisions):
    active = _key(tenant_a, "active")
    client = login(alice)
    assert f"signing-keys/{active.pk}/revoke/" not in _body(client.get(f"{T}/signing-keys/"))
    response = client.post(f"{T}/signing-keys/{active.pk}/revoke/", follow=True)
    assert _messages(response)[0].startswith("The active key signs the current bundle: rotate")
    active.refresh_from_db()
    assert active.state == "active"


def test_an_immediate_rotation_needs_the_tenant_slug_typed(login, alice, tenant_a,
                                                          two_revisions):
    old = _key(tenant_a, "active")
    client = login(alice)
    confirm = _body(client.get(f"{T}/signing-keys/rotate/?immediate=1"))
    assert "For a compromised key." in confirm and "Type alpha to confirm." in confirm

    wrong = client.post(f"{T}/signing-keys/rotate/", {"immediate": "1", "confirm": "bravo"})
    assert wrong.status_code == 400
    assert "Type alpha exactly to rotate immediately." in _body(wrong)
    assert SigningKey.objects.filter(tenant=tenant_a).count() == 1

    response = client.post(f"{T}/signing-keys/rotate/", {"immediate": "1", "confirm": "alpha"},
                           follow=True)
    new = _key(tenant_a, "active")
    assert new != old and _key(tenant_a, "revoked") == old
    assert "revoked" in _messages(response)[0]
    assert _events(tenant_a, "bundle_key.rotated")[0].after["immediate"] is True


# --- Bundle history, publishing, compare, download -----------------------------------------------


def test_no_bundle_yet_says_how_one_comes(login, alice, victor):
    admin = _body(login(alice).get(f"{T}/bundles/"))
    assert 'id="bundles-empty"' in admin and "“Publish now” builds it" in admin
    viewer = _body(login(victor).get(f"{T}/bundles/"))
    assert 'id="bundles-empty"' in viewer and "Publish now" not in viewer
    assert 'id="compare-empty"' in _body(login(victor).get(f"{T}/bundles/compare/"))


def test_the_history_lists_revisions_newest_first(login, victor, two_revisions):
    first, second = two_revisions
    body = _body(login(victor).get(f"{T}/bundles/"))
    assert body.index('id="bundle-2"') < body.index('id="bundle-1"')
    row = re.search(r'<tr id="bundle-2">(.*?)</tr>', body, re.S).group(1)
    assert "current" in row and "registry change" in row
    assert "1 agent · 1 server · 2 tools · 1 scope · 1 grant" in row
    assert second.key.kid[:12] in row and f"{second.build_ms} ms" in row
    assert f"{T}/bundles/{second.pk}/download/" in row
    assert f"{T}/bundles/compare/?to=2" in row
    assert "current" not in re.search(r'<tr id="bundle-1">(.*?)</tr>', body, re.S).group(1)


def test_the_history_is_paginated_and_answers_htmx_with_the_table(login, victor, tenant_a):
    for _ in range(27):
        bundle_publish(tenant=tenant_a, trigger="test", force=True)
    client = login(victor)
    assert "Page 1 of 2 (27 in all)" in _body(client.get(f"{T}/bundles/"))
    fragment = _body(client.get(f"{T}/bundles/?page=2", **HTMX))
    assert "<html" not in fragment and 'id="bundle-1"' in fragment


def test_publish_now_makes_a_revision_as_the_admin(login, alice, tenant_a, registry_world):
    response = login(alice).post(f"{T}/bundles/publish/", follow=True)
    bundle = Bundle.objects.get(tenant=tenant_a)
    assert bundle.revision_number == 1 and bundle.trigger == "manual"
    assert "Published r1." in _messages(response)
    (event,) = _events(tenant_a, "bundle.published")
    assert event.actor_type == "user" and event.actor_label == "alice"


def test_publish_now_without_changes_says_so(login, alice, tenant_a, two_revisions):
    response = login(alice).post(f"{T}/bundles/publish/", follow=True)
    assert _messages(response) == ["Nothing changed since r2: no new revision was published."]
    assert Bundle.objects.filter(tenant=tenant_a).count() == 2


def test_a_failed_publish_is_shown_and_recorded(login, alice, tenant_a, settings):
    services.signing_key_rotate(tenant=tenant_a, actor=SYSTEM)  # the first key: active at once
    # The private key cannot be decrypted (the encryption key in the environment is wrong).
    settings.SECRET_ENCRYPTION_KEYS = ["b3RoZXItb3RoZXItb3RoZXItb3RoZXItb3RoZXItMTI="]
    client = login(alice)
    response = client.post(f"{T}/bundles/publish/", follow=True)
    assert _messages(response) == ["Nothing was published: The bundle signing key cannot be "
                                   "decrypted with SECRET_ENCRYPTION_KEYS."]
    assert 'id="publish-error"' in _body(response)
    assert PublishState.objects.get(tenant=tenant_a).last_error.startswith("The bundle signing")
    assert not Bundle.objects.exists()


def test_compare_defaults_to_the_newest_and_the_one_before(login, victor, two_revisions):
    body = _body(login(victor).get(f"{T}/bundles/compare/"))
    assert "r1 → r2" in body
    assert 'name="from" value="1"' in body and 'name="to" value="2"' in body
    tools = re.search(r'<div class="diff-section" id="diff-tools">(.*?)</div>\s*(?=<div '
                      r'class="diff-section"|$)', body, re.S).group(1)
    assert "+ payroll/refund" in tools and 'data-change="added"' in tools
    grants = body[body.index('id="diff-grants"'):]
    assert "~ bot → payroll:write (grant" in grants
    assert re.search(r"<td>calls_per_minute</td><td class=\"diff-del\"><code class=\"hash\">10"
                     r"</code></td><td class=\"diff-add\"><code class=\"hash\">20</code>", grants)
    assert 'id="diff-agents"' not in body  # unchanged sections are left out


def test_compare_to_the_first_revision_shows_everything_added(login, victor, two_revisions):
    body = _body(login(victor).get(f"{T}/bundles/compare/?to=1"))
    assert "r1 (the first revision: everything is new)" in body
    assert "+ bot" in body and "+ payroll/pay" in body and "+ payroll:write" in body


def test_compare_explicit_revisions_either_way(login, victor, two_revisions):
    body = _body(login(victor).get(f"{T}/bundles/compare/?from=2&to=1"))
    assert "r2 → r1" in body and "− payroll/refund" in body


def test_compare_of_a_reissue_says_nothing_changed(login, victor, tenant_a, two_revisions):
    bundle_publish(tenant=tenant_a, trigger="re-issue", force=True)
    body = _body(login(victor).get(f"{T}/bundles/compare/"))
    assert "r2 → r3" in body and 'id="no-changes"' in body


@pytest.mark.parametrize(("query", "message"), [
    ("from=9&to=2", "There is no revision 9."),
    ("to=7", "There is no revision 7."),
    ("from=2&to=2", "Choose two different revisions."),
    ("from=x", "Enter a whole number."),
    ("to=0", "Ensure this value is greater than or equal to 1."),
])
def test_compare_reports_bad_revisions(login, victor, two_revisions, query, message):
    response = login(victor).get(f"{T}/bundles/compare/?{query}")
    assert response.status_code == 400
    assert message in _body(response)


def test_download_sends_the_signed_tarball(login, victor, two_revisions):
    first, _ = two_revisions
    response = login(victor).get(f"{T}/bundles/{first.pk}/download/")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/gzip"
    assert response["Content-Disposition"] == 'attachment; filename="alpha-r1.tar.gz"'
    assert response["ETag"] == f'"{first.sha256}"'
    content = response.content
    assert hashlib.sha256(content).hexdigest() == first.sha256
    with tarfile.open(fileobj=io.BytesIO(content), mode="r:gz") as tar:
        names = tar.getnames()
        data = json.load(tar.extractfile("mcp/data.json"))
    assert ".signatures.json" in names and ".manifest" in names
    assert set(data["tools"]) == {"payroll/pay"}


def test_history_and_compare_say_who_changed_what(login, alice, audrey, victor, tenant_a,
                                                 two_revisions):
    """r2 took in two registry changes by "test" (the SYSTEM actor); the compare page lists
    them, linking to the audit trail for those who may read it."""
    body = _body(login(victor).get(f"{T}/bundles/"))
    row = re.search(r'<tr id="bundle-2">(.*?)</tr>', body, re.S).group(1)
    assert "2 changes by test" in row
    compare = _body(login(audrey).get(f"{T}/bundles/compare/?to=2"))
    changes = compare[compare.index('id="registry-changes"'):]
    assert "tool.approved" in changes and "grant.updated" in changes
    assert f"{T}/audit/" in changes
    assert f"{T}/audit/" not in _body(login(victor).get(f"{T}/bundles/compare/?to=2"))[
        compare.index('id="registry-changes"'):]
    bundle_publish(tenant=tenant_a, trigger="manual", force=True)  # r3: nothing new taken in
    assert 'id="no-registry-changes"' in _body(login(victor).get(f"{T}/bundles/compare/?to=3"))
