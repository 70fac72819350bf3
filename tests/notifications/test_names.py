"""Exporter and notification channel names are one line of visible text: a line break, a
control or an invisible formatting character is refused on the ``name`` field by the web form
and the API alike (one core helper, governance.names.clean_name), and nothing is stored."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from exports.models import Exporter
from governance.audit.models import AuditEvent
from governance.names import clean_name
from notifications.models import Channel

API = "/api/v1/t/alpha"
BAD_NAMES = [
    "siem\nBcc: evil@example.com",  # line feed
    "siem\rX",  # carriage return
    "tab\there",
    "esc\x1b[31mred",  # terminal escape
    "del\x7f",
    "c1\x85next line",  # NEL
    "ls\u2028sep",  # Unicode line separator
    "bidi\u202egnp.exe",  # right-to-left override
    "zero\u200bwidth",
]
REFUSAL = "A name is one line of visible text"


@pytest.mark.parametrize("name", BAD_NAMES)
def test_the_helper_refuses_line_breaks_and_control_characters(name):
    with pytest.raises(ValidationError) as caught:
        clean_name(name, noun="channel")
    assert REFUSAL in caught.value.message_dict["name"][0]


def test_the_helper_keeps_ordinary_names_and_trims_them():
    assert clean_name("  #sécurité · SOC pager (EU) ", noun="channel") == (
        "#sécurité · SOC pager (EU)")
    assert clean_name("Zoë's 日本 channel", noun="channel") == "Zoë's 日本 channel"
    with pytest.raises(ValidationError, match="1–100 characters"):
        clean_name("   ", noun="channel")
    with pytest.raises(ValidationError, match="1–100 characters"):
        clean_name("x" * 101, noun="exporter")


def _nothing_stored(tenant) -> None:
    assert not Channel.objects.exists() and not Exporter.objects.exists()
    assert not AuditEvent.objects.filter(
        tenant=tenant, action__regex=r"^(exporter|notification)").exists()


@pytest.mark.parametrize("name", ["siem\nBcc: evil", "ring\x07",
                                  "bidi\u202eexe"])
def test_the_channel_form_refuses_the_name_on_its_field(login, alice, tenant_a, name):
    response = login(alice).post("/t/alpha/notifications/new/", {
        "name": f"siem {name}", "kind": "email", "enabled": "on",
        "addresses": "sec@example.com"})
    assert response.status_code == 400
    assert response.context["form"].errors["name"][0].startswith(REFUSAL)
    _nothing_stored(tenant_a)


@pytest.mark.parametrize("name", ["siem\nBcc: evil", "ring\x07", "bidi\u202eexe"])
def test_the_exporter_form_refuses_the_name_on_its_field(login, alice, tenant_a, name):
    response = login(alice).post("/t/alpha/exports/new/", {
        "name": f"x {name}", "kind": "jsonl", "stream": "audit", "start": "beginning",
        "enabled": "on", "path": "audit.jsonl"})
    assert response.status_code == 400
    assert response.context["form"].errors["name"][0].startswith(REFUSAL)
    _nothing_stored(tenant_a)


def test_the_api_refuses_such_names_on_create_and_update(admin, tenant_a):
    channel = admin.post(f"{API}/notification-channels/", {
        "name": "mail\nBcc: evil@example.com", "kind": "email",
        "addresses": ["sec@example.com"]}, format="json")
    assert channel.status_code == 400
    assert channel.json()["errors"]["name"][0].startswith(REFUSAL)
    exporter = admin.post(f"{API}/exporters/", {
        "name": "f\r\nx", "kind": "jsonl", "stream": "audit", "path": "a.jsonl"}, format="json")
    assert exporter.status_code == 400
    assert exporter.json()["errors"]["name"][0].startswith(REFUSAL)
    _nothing_stored(tenant_a)

    good = admin.post(f"{API}/notification-channels/", {
        "name": "mail", "kind": "email", "addresses": ["sec@example.com"]}, format="json")
    assert good.status_code == 201
    pk = good.json()["id"]
    renamed = admin.patch(f"{API}/notification-channels/{pk}/", {"name": "m\u2028ail"},
                          format="json")
    assert renamed.status_code == 400 and "name" in renamed.json()["errors"]
    assert Channel.objects.get(pk=pk).name == "mail"
    exp = admin.post(f"{API}/exporters/", {"name": "file", "kind": "jsonl", "stream": "audit",
                                           "path": "a.jsonl"}, format="json")
    assert exp.status_code == 201
    bad = admin.patch(f"{API}/exporters/{exp.json()['id']}/", {"name": "file\tx"},
                      format="json")
    assert bad.status_code == 400 and bad.json()["errors"]["name"][0].startswith(REFUSAL)
    assert Exporter.objects.get().name == "file"
