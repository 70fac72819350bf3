"""The escalation decision timeout on the tenant settings page and API (issue 19 §5): shown
with its value in force, validated (nothing stored on a bad value), audited, carried into the
next bundle and used for the next escalation's deadline."""

from __future__ import annotations

import pytest

from governance.audit.models import AuditEvent
from governance.tenancy.models import Tenant
from registry.compiler import compile_data

pytestmark = pytest.mark.django_db

WEB = "/t/alpha/settings/"
API = "/api/v1/t/alpha/settings/"
FORM = {"registry_resync_minutes": "60", "decision_log_retention_days": "90"}


def _timeout(tenant) -> int:
    return Tenant.objects.get(pk=tenant.pk).escalation_settings()["decision_timeout_seconds"]


def test_the_page_shows_the_default_and_saves_a_new_timeout(tenant_a, login, cast):
    client = login(cast["alice"])
    page = client.get(WEB).content.decode()
    assert 'name="escalation_decision_timeout_seconds"' in page and 'value="900"' in page
    response = client.post(WEB, FORM | {"escalation_decision_timeout_seconds": "1800"})
    assert response.status_code == 302
    assert _timeout(tenant_a) == 1800
    event = AuditEvent.objects.get(tenant=tenant_a, action="tenant.settings_changed")
    assert event.before["escalation_decision_timeout_seconds"] == 900
    assert event.after["escalation_decision_timeout_seconds"] == 1800
    assert compile_data(Tenant.objects.get(pk=tenant_a.pk), at=event.created_at)["escalation"][
        "decision_timeout_seconds"] == 1800
    assert 'value="1800"' in client.get(WEB).content.decode()


@pytest.mark.parametrize("value", ["59", "604801", "-5", "abc"])
def test_the_page_refuses_a_bad_timeout_and_stores_nothing(tenant_a, login, cast, value):
    response = login(cast["alice"]).post(
        WEB, FORM | {"registry_resync_minutes": "5",
                     "escalation_decision_timeout_seconds": value})
    assert response.status_code == 400
    assert _timeout(tenant_a) == 900
    assert Tenant.objects.get(pk=tenant_a.pk).registry_resync_minutes == 60
    assert not AuditEvent.objects.filter(action="tenant.settings_changed").exists()


def test_an_empty_timeout_leaves_it_unchanged(tenant_a, login, cast):
    response = login(cast["alice"]).post(
        WEB, FORM | {"registry_resync_minutes": "5", "escalation_decision_timeout_seconds": ""})
    assert response.status_code == 302
    assert _timeout(tenant_a) == 900
    event = AuditEvent.objects.get(tenant=tenant_a, action="tenant.settings_changed")
    assert "escalation_decision_timeout_seconds" not in event.after


def test_the_api_reads_and_patches_the_timeout(tenant_a, as_user, cast):
    client = as_user(cast["alice"])
    assert client.get(API).json() == {"registry_resync_minutes": 60,
                                      "decision_log_retention_days": 90,
                                      "escalation_decision_timeout_seconds": 900}
    response = client.patch(API, {"escalation_decision_timeout_seconds": 120}, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["escalation_decision_timeout_seconds"] == 120
    assert _timeout(tenant_a) == 120
    # The other escalation settings are kept.
    assert Tenant.objects.get(pk=tenant_a.pk).escalation_settings()["hold_seconds"] == 60
    assert AuditEvent.objects.filter(tenant=tenant_a, action="tenant.settings_changed").count() \
        == 1


@pytest.mark.parametrize("body", [
    {"escalation_decision_timeout_seconds": 30},
    {"escalation_decision_timeout_seconds": 10**9},
    {"escalation_decision_timeout_seconds": "soon"},
    {"escalation_decision_timeout_seconds": True},
    {"escalation_decision_timeout_seconds": 600, "registry_resync_minutes": -1},
    {"hold_seconds": 5},
])
def test_the_api_refuses_bad_values_and_stores_nothing(tenant_a, as_user, cast, body):
    response = as_user(cast["alice"]).patch(API, body, format="json")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert set(response.json()["errors"]) <= set(body) | {"non_field_errors"}
    assert _timeout(tenant_a) == 900
    assert Tenant.objects.get(pk=tenant_a.pk).registry_resync_minutes == 60
    assert not AuditEvent.objects.filter(action="tenant.settings_changed").exists()


@pytest.mark.parametrize("name", ["bob", "audrey", "dave", "victor"])
def test_members_who_do_not_manage_the_registry_get_403(tenant_a, as_user, login, cast, name):
    assert as_user(cast[name]).get(API).status_code == 403
    assert as_user(cast[name]).patch(
        API, {"escalation_decision_timeout_seconds": 120}, format="json").status_code == 403
    assert login(cast[name]).post(
        WEB, FORM | {"escalation_decision_timeout_seconds": "120"}).status_code == 403
    assert _timeout(tenant_a) == 900


def test_another_tenant_gets_404(tenant_a, tenant_b, api, token_for, login, cast):
    client = api(token_for(cast["oscar"], tenant_b))
    assert client.get(API).status_code == 404
    assert client.patch(API, {"escalation_decision_timeout_seconds": 120},
                        format="json").status_code == 404
    assert login(cast["oscar"]).post(
        WEB, FORM | {"escalation_decision_timeout_seconds": "120"}).status_code == 404
    assert _timeout(tenant_a) == 900
