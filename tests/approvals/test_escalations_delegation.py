"""Delegation in escalations: a held call made on behalf of a person names them to the approver
(the gateway's request, the inbox, the detail page, the API) and is matched to a grant whose group
requirement the person meets."""

from __future__ import annotations

import pytest

from approvals.models import Escalation
from registry import services as registry
from tests.approvals import test_escalations as escalations
from tests.approvals.test_escalations import SYSTEM, _call, _post

world = escalations.world
token = escalations.token
ALICE = {"subject": "alice-1", "groups": ["hr-staff", "all"]}


def test_the_person_is_stored_shown_in_the_inbox_and_the_api(token, tenant_a, login, cast,
                                                             as_user):
    doc = _post(token, _call(on_behalf_of=ALICE)).json()
    escalation = Escalation.objects.get(pk=doc["id"])
    assert (escalation.on_behalf_of, escalation.on_behalf_of_groups) == (
        "alice-1", ["all", "hr-staff"])
    bob = login(cast["bob"])
    inbox = bob.get("/t/alpha/approvals/").content.decode()
    assert "On behalf of" in inbox and "alice-1" in inbox
    page = bob.get(f"/t/alpha/approvals/escalations/{doc['id']}/").content.decode()
    assert 'id="on-behalf-of"' in page and "alice-1" in page and "hr-staff" in page
    api = as_user(cast["bob"]).get(f"/api/v1/t/alpha/escalations/{doc['id']}/").json()
    assert (api["on_behalf_of"], api["on_behalf_of_groups"]) == ("alice-1", ["all", "hr-staff"])
    plain = _post(token, _call(call_id="call-2")).json()
    page = bob.get(f"/t/alpha/approvals/escalations/{plain['id']}/").content.decode()
    assert 'id="on-behalf-of"' not in page


def test_an_invisible_character_in_the_persons_name_is_made_visible(token, login, cast):
    doc = _post(token, _call(on_behalf_of={"subject": "ali\u202ece", "groups": []})).json()
    page = login(cast["bob"]).get(f"/t/alpha/approvals/escalations/{doc['id']}/")
    assert "\u202e" not in page.content.decode()


@pytest.mark.parametrize("person", [
    "alice", {"groups": ["x"]}, {"subject": ""}, {"subject": "a" * 501},
    {"subject": "a", "groups": "hr-staff"}, {"subject": "a", "groups": [1]},
    {"subject": "nul\x00"},
])
def test_a_malformed_person_is_400_and_nothing_is_queued(token, person):
    response = _post(token, _call(on_behalf_of=person))
    assert response.status_code == 400 and "on_behalf_of" in response.json()["message"]
    assert not Escalation.objects.exists()


def test_a_grant_for_a_group_asks_only_for_its_members(token, tenant_a, world):
    registry.grant_update(tenant=tenant_a, actor=SYSTEM, grant=world["grant"],
                          on_behalf_of_group="hr-staff")
    outsider = _post(token, _call(on_behalf_of={"subject": "bob-2", "groups": ["sales"]}))
    assert outsider.status_code == 400 and "deny the call" in outsider.json()["message"]
    alone = _post(token, _call(call_id="call-2"))
    assert alone.status_code == 400
    member = _post(token, _call(call_id="call-3", on_behalf_of=ALICE))
    assert member.status_code == 201, member.json()
