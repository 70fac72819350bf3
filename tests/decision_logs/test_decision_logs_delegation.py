"""Delegation in decision logs: ``input.on_behalf_of`` ({subject, groups}) is stored with the
decision by each insert method, shown on the list and the detail page and in the API, and a
malformed one refuses the batch naming the field."""

from __future__ import annotations

import pytest

from decision_logs import services
from decision_logs.models import DecisionLog
from tests.bundle_support import make_gateway
from tests.decision_support import event, upload

ALICE = {"subject": "alice-1", "groups": ["hr-staff", "all", "hr-staff"]}


@pytest.fixture
def token(tenant_a):
    return make_gateway(tenant_a)[1]


def delegated(n, person=ALICE, **kwargs):
    doc = event(n, **kwargs)
    doc["input"]["on_behalf_of"] = person
    return doc


@pytest.mark.parametrize("method", ["copy", "unnest", "values"])
def test_the_person_is_stored_by_every_insert_method(tenant_a, method, postgres_only):
    events = services.validate_events([delegated(1), event(2)])
    services.decisions_store(tenant_id=tenant_a.pk, gateway_id=None, events=events,
                             method=method)
    rows = dict(DecisionLog.objects.values_list("decision_id", "on_behalf_of"))
    assert rows == {"d-1": "alice-1", "d-2": ""}
    assert DecisionLog.objects.get(decision_id="d-1").on_behalf_of_groups == ["all", "hr-staff"]
    assert DecisionLog.objects.get(decision_id="d-2").on_behalf_of_groups == []


def test_an_upload_names_the_person_on_the_pages_and_in_the_api(tenant_a, token, login, cast,
                                                                as_user):
    assert upload(token, [delegated(1, outcome="deny", reason="grant 4: alice-1 is not in "
                                                              "group payroll")]).status_code == 200
    row = DecisionLog.objects.get()
    auditor = login(cast["audrey"])
    listing = auditor.get("/t/alpha/decisions/").content.decode()
    assert "for alice-1" in listing
    page = auditor.get(f"/t/alpha/decisions/{row.pk}/").content.decode()
    assert 'id="decision-on-behalf-of"' in page and "hr-staff" in page
    api = as_user(cast["audrey"]).get(f"/api/v1/t/alpha/decision-logs/{row.pk}/").json()
    assert (api["on_behalf_of"], api["on_behalf_of_groups"]) == ("alice-1", ["all", "hr-staff"])


@pytest.mark.parametrize(("person", "message"), [
    ("alice", "input.on_behalf_of: must be an object {subject, groups}"),
    ({"groups": []}, "input.on_behalf_of.subject: must be a non-empty string"),
    ({"subject": "a" * 501}, "input.on_behalf_of.subject: must be at most 500 characters, "
                             "without NUL"),
    ({"subject": "a", "groups": "x"}, "input.on_behalf_of.groups: must be a list of at most "
                                      "1000 strings of at most 200 characters"),
    ({"subject": "a", "groups": [None]}, "input.on_behalf_of.groups: must be a list of at most "
                                         "1000 strings of at most 200 characters"),
])
def test_a_malformed_person_refuses_the_batch(token, person, message):
    response = upload(token, [event(1), delegated(2, person)])
    assert response.status_code == 400
    assert response.json()["message"] == f"event 1 (decision_id d-2): {message}"
    assert not DecisionLog.objects.exists()
