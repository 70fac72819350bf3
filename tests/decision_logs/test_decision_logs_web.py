"""Decision-log search and detail pages and the read-only decision-logs API: filters narrowing
each, invalid filters kept with a message, keyset pages, links from a decision to its bundle
revision, grant and escalation (only when they exist in the tenant), outsider 404 and
under-privileged 403."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from approvals.models import Escalation
from approvals.selectors import BUILT_IN_STAGES
from bundles.publish import bundle_publish
from decision_logs import services, views
from decision_logs.models import DecisionLog
from tests.bundle_support import make_gateway, payroll_world
from tests.decision_support import DAY, HOUR, event

PAGE = "/t/alpha/decisions/"
API = "/api/v1/t/alpha/decision-logs/"


def ts(minute: int) -> str:
    return (HOUR + timedelta(minutes=minute)).isoformat()


@pytest.fixture
def logged(tenant_a, tenant_b, cast):
    """Tenant A: gateways edge-1 and edge-2 with decisions of several agents, tools, outcomes
    and times; tenant B: decisions with the same ids and agents."""
    edge1, _ = make_gateway(tenant_a, "edge-1")
    edge2, _ = make_gateway(tenant_a, "edge-2")
    b_edge, _ = make_gateway(tenant_b, "b-edge")
    services.decisions_ingest(tenant_id=tenant_a.pk, gateway_id=edge1.pk, events=[
        event(1, agent="bot", tool="read", timestamp=ts(0)),
        event(2, agent="bot", tool="pay", outcome="deny", timestamp=ts(10)),
        event(3, agent="intern", tool="read", outcome="escalate", timestamp=ts(20)),
    ])
    services.decisions_ingest(tenant_id=tenant_a.pk, gateway_id=edge2.pk, events=[
        event(4, agent="bot", server="ehr", tool="read", timestamp=ts(30)),
        event(5, agent="intern", tool="pay", outcome="deny", timestamp=ts(40)),
    ])
    services.decisions_ingest(tenant_id=tenant_b.pk, gateway_id=b_edge.pk, events=[
        event(n, agent="bot", tool="read") for n in range(1, 4)])
    return {"edge1": edge1, "edge2": edge2, "b_edge": b_edge}


def ids(response) -> list[str]:
    return [d.decision_id for d in response.context["rows"]]


# --- Search page ---------------------------------------------------------------------------------

def test_the_page_lists_the_tenants_decisions_newest_first(logged, cast, login):
    for name in ("audrey", "alice"):
        response = login(cast[name]).get(PAGE)
        assert response.status_code == 200
        assert ids(response) == ["d-5", "d-4", "d-3", "d-2", "d-1"]
    body = response.content.decode()
    assert 'id="decisions-table"' in body and "edge-2" in body
    assert 'type="datetime-local"' in body


@pytest.mark.parametrize(("query", "expected"), [
    ({"agent": "intern"}, ["d-5", "d-3"]),
    ({"tool": "pay"}, ["d-5", "d-2"]),
    ({"server": "ehr"}, ["d-4"]),
    ({"outcome": "deny"}, ["d-5", "d-2"]),
    ({"decision_id": "d-3"}, ["d-3"]),
    ({"since": f"{DAY}T10:10", "until": f"{DAY}T10:30"}, ["d-3", "d-2"]),
    ({"since": f"{DAY}T10:35"}, ["d-5"]),
    ({"until": f"{DAY}T10:05"}, ["d-1"]),
    ({"agent": "bot", "tool": "read", "outcome": "allow"}, ["d-4", "d-1"]),
    ({"agent": "nobody"}, []),
])
def test_each_filter_narrows_the_results(logged, cast, login, query, expected):
    response = login(cast["audrey"]).get(PAGE, query)
    assert response.status_code == 200
    assert ids(response) == expected
    if not expected:
        assert "No decisions match these filters." in response.content.decode()


def test_the_gateway_filter_offers_only_this_tenants_gateways(logged, cast, login):
    client = login(cast["audrey"])
    response = client.get(PAGE, {"gateway": logged["edge2"].pk})
    assert ids(response) == ["d-5", "d-4"]
    body = response.content.decode()
    assert "edge-1" in body and "b-edge" not in body
    refused = client.get(PAGE, {"gateway": logged["b_edge"].pk, "agent": "bot"})
    assert refused.status_code == 400
    assert "No such gateway in this tenant; pick one from the list." in refused.content.decode()
    assert refused.context["rows"] == []


@pytest.mark.parametrize(("query", "message", "kept"), [
    ({"since": "yesterday", "agent": "bot"}, "Enter a valid date/time.",
     ['name="since" value="yesterday"', 'name="agent" value="bot"']),
    ({"since": f"{DAY}T11:00", "until": f"{DAY}T10:00"},
     "“From” must be before “To”.",
     [f'value="{DAY}T11:00"', f'value="{DAY}T10:00"']),
    ({"outcome": "maybe", "tool": "pay"},
     "Select a valid choice. maybe is not one of the available choices.",
     ['name="tool" value="pay"']),
    ({"decision_id": "x" * 101}, "Ensure this value has at most 100 characters (it has 101).",
     ['value="' + "x" * 101 + '"']),
])
def test_an_invalid_filter_says_why_and_keeps_the_input(logged, cast, login, query, message,
                                                        kept):
    response = login(cast["audrey"]).get(PAGE, query)
    assert response.status_code == 400
    body = response.content.decode()
    assert message in body
    assert response.context["rows"] == []
    for fragment in kept:
        assert fragment in body


def test_htmx_gets_the_results_fragment(logged, cast, login):
    client = login(cast["audrey"])
    fragment = client.get(PAGE, {"agent": "bot"}, HTTP_HX_REQUEST="true")
    assert fragment.status_code == 200 and "HX-Request" in fragment["Vary"]
    body = fragment.content.decode()
    assert "<html" not in body and 'id="decisions-table"' in body
    bad = client.get(PAGE, {"since": "nope"}, HTTP_HX_REQUEST="true")
    assert bad.status_code == 200 and "Enter a valid date/time." in bad.content.decode()


def test_the_empty_state(tenant_a, cast, login):
    response = login(cast["audrey"]).get(PAGE)
    assert response.status_code == 200
    assert "No decisions logged yet." in response.content.decode()


def test_keyset_pages_walk_older_and_back_newer(tenant_a, cast, login, monkeypatch):
    monkeypatch.setattr(views, "PAGE_SIZE", 4)
    # Ten decisions, two pairs sharing a timestamp: the id breaks the tie.
    services.decisions_ingest(tenant_id=tenant_a.pk, gateway_id=None, events=[
        event(n, timestamp=ts(n // 2 if n < 4 else n)) for n in range(10)])
    client = login(cast["audrey"])
    everything = list(DecisionLog.objects.for_tenant(tenant_a).order_by("-timestamp", "-id")
                      .values_list("decision_id", flat=True))
    first = client.get(PAGE, {"tool": "read"})
    assert ids(first) == everything[:4]
    assert first.context["has_older"] and not first.context["has_newer"]
    second = client.get(PAGE, {"tool": "read", "before": first.context["older_cursor"]})
    assert ids(second) == everything[4:8]
    third = client.get(PAGE, {"tool": "read", "before": second.context["older_cursor"]})
    assert ids(third) == everything[8:]
    assert not third.context["has_older"] and third.context["has_newer"]
    back = client.get(PAGE, {"tool": "read", "after": third.context["newer_cursor"]})
    assert ids(back) == everything[4:8]
    assert "?tool=read&before=" in second.content.decode()  # the filters stay on the links
    broken = client.get(PAGE, {"before": "garbage"})
    assert ids(broken) == everything[:4]
    assert "That page link is malformed" in broken.content.decode()


def test_the_page_never_shows_another_tenants_decisions(logged, cast, login):
    response = login(cast["audrey"]).get(PAGE, {"agent": "bot"})
    assert {d.tenant_id for d in response.context["rows"]} == {cast["audrey"].memberships
                                                                .get().tenant_id}
    oscar = login(cast["oscar"])
    assert oscar.get(PAGE).status_code == 404
    assert [d.decision_id for d in oscar.get("/t/bravo/decisions/").context["rows"]] == [
        "d-3", "d-2", "d-1"]


@pytest.mark.parametrize("name", ["bob", "dave", "victor"])
def test_roles_without_view_audit_get_403(logged, cast, login, name):
    decision = DecisionLog.objects.for_tenant(logged["edge1"].tenant).first()
    client = login(cast[name])
    assert client.get(PAGE).status_code == 403
    assert client.get(f"{PAGE}{decision.pk}/").status_code == 403


def test_an_outsider_gets_404_for_page_and_detail(logged, cast, login):
    decision = DecisionLog.objects.for_tenant(logged["edge1"].tenant).first()
    client = login(cast["oscar"])
    assert client.get(PAGE).status_code == 404
    assert client.get(f"{PAGE}{decision.pk}/").status_code == 404
    # Under B's own slug, A's decision is not found either.
    assert client.get(f"/t/bravo/decisions/{decision.pk}/").status_code == 404


# --- Detail page ---------------------------------------------------------------------------------

@pytest.fixture
def linked(tenant_a, tenant_b, cast):
    world = payroll_world(tenant_a, owner=cast["dave"])
    bundle = bundle_publish(tenant=tenant_a, trigger="test")
    gateway, _ = make_gateway(tenant_a)
    escalation = Escalation.objects.create(
        tenant=tenant_a, gateway=gateway, call_id="c-9", agent=world["bot"], scope=world["scope"],
        server="payroll", tool="pay", arguments_sha256="0" * 64, stages=BUILT_IN_STAGES,
        deadline=timezone.now() + timedelta(minutes=15))
    b_world = payroll_world(tenant_b)
    services.decisions_ingest(tenant_id=tenant_a.pk, gateway_id=gateway.pk, events=[
        event(1, outcome="escalate", revision=str(bundle.revision_number),
              grant=world["grant"].pk, escalation_id=escalation.pk),
        event(2, outcome="deny", revision="999", grant=b_world["grant"].pk,
              escalation_id=uuid.uuid4()),
        event(3, revision="oops", bundles={}),
    ])
    rows = {d.decision_id: d for d in DecisionLog.objects.for_tenant(tenant_a)}
    return {"world": world, "bundle": bundle, "escalation": escalation, "gateway": gateway,
            "rows": rows}


def test_the_detail_shows_every_field_and_links_what_exists_here(linked, cast, login):
    decision = linked["rows"]["d-1"]
    response = login(cast["audrey"]).get(f"{PAGE}{decision.pk}/")
    assert response.status_code == 200
    body = response.content.decode()
    bundle, grant, escalation = linked["bundle"], linked["world"]["grant"], linked["escalation"]
    assert (f'href="/t/alpha/bundles/compare/?to={bundle.revision_number}">'
            f"r{bundle.revision_number}</a>") in body
    assert f'href="/t/alpha/bundles/{bundle.pk}/download/"' in body
    assert f'href="/t/alpha/grants/{grant.pk}/">#{grant.pk} bot → payroll:write</a>' in body
    assert f'href="/t/alpha/approvals/escalations/{escalation.pk}/">{escalation.pk}</a>' in body
    assert f'href="/t/alpha/gateways/{linked["gateway"].pk}/">edge-1</a>' in body
    for text in ("d-1", "Escalated", "granted", "call-1", decision.arguments_sha256,
                 "bot (https://idp.example)", "[redacted]", "5b3c6e0a-gw",
                 f"{DAY} 10:15:30.123456"):
        assert text in body


def test_the_detail_says_when_what_it_names_is_not_in_this_tenant(linked, cast, login):
    decision = linked["rows"]["d-2"]
    body = login(cast["alice"]).get(f"{PAGE}{decision.pk}/").content.decode()
    assert "r999 <span class=\"muted\">(no such revision in this tenant)</span>" in body
    # Tenant B's grant has an id, but not in A: no link to it.
    assert f"#{decision.grant_id} <span class=\"muted\">(no such grant in this tenant)" in body
    assert "(no such escalation in this tenant)" in body
    assert f"/grants/{decision.grant_id}/" not in body
    assert f"/approvals/escalations/{decision.escalation_id}/" not in body
    bare = linked["rows"]["d-3"]
    body = login(cast["alice"]).get(f"{PAGE}{bare.pk}/").content.decode()
    assert '<dd id="decision-bundle">—</dd>' in body
    assert '<dd id="decision-grant">—</dd>' in body


# --- API -----------------------------------------------------------------------------------------

def test_the_api_lists_with_filters_and_retrieves(logged, as_user, cast):
    client = as_user(cast["audrey"])
    response = client.get(API)
    assert response.status_code == 200
    assert [d["decision_id"] for d in response.json()["results"]] == ["d-5", "d-4", "d-3", "d-2",
                                                                      "d-1"]
    narrowed = client.get(API, {"agent": "bot", "outcome": "allow",
                                "gateway": logged["edge2"].pk})
    assert [d["decision_id"] for d in narrowed.json()["results"]] == ["d-4"]
    timed = client.get(API, {"since": f"{DAY}T10:10:00Z", "until": f"{DAY}T10:30:00Z"})
    assert [d["decision_id"] for d in timed.json()["results"]] == ["d-3", "d-2"]
    one = narrowed.json()["results"][0]
    assert one["gateway_name"] == "edge-2" and one["server"] == "ehr"
    assert one["arguments"] == {"employee": "[redacted]", "amount": 4}
    detail = client.get(f"{API}{one['id']}/")
    assert detail.status_code == 200 and detail.json() == one


def test_the_api_pages_by_cursor(tenant_a, admin):
    services.decisions_ingest(tenant_id=tenant_a.pk, gateway_id=None,
                              events=[event(n, timestamp=ts(n)) for n in range(7)])
    first = admin.get(API, {"page_size": 3}).json()
    assert [d["decision_id"] for d in first["results"]] == ["d-6", "d-5", "d-4"]
    assert "count" not in first and first["previous"] is None
    second = admin.get(first["next"]).json()
    assert [d["decision_id"] for d in second["results"]] == ["d-3", "d-2", "d-1"]
    third = admin.get(second["next"]).json()
    assert [d["decision_id"] for d in third["results"]] == ["d-0"] and third["next"] is None


def test_the_api_refuses_bad_filters(logged, admin):
    response = admin.get(API, {"outcome": "maybe", "since": "nope"})
    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"outcome", "since"}
    response = admin.get(API, {"since": f"{DAY}T11:00:00Z", "until": f"{DAY}T10:00:00Z"})
    assert response.status_code == 400 and "until" in response.json()["errors"]


def test_the_api_is_for_admins_and_auditors_of_the_tenant(logged, as_user, api, token_for,
                                                          cast, tenant_b):
    decision = DecisionLog.objects.for_tenant(logged["edge1"].tenant).first()
    for name in ("bob", "dave", "victor"):
        client = as_user(cast[name])
        assert client.get(API).status_code == 403
        assert client.get(f"{API}{decision.pk}/").status_code == 403
    outsider = api(token_for(cast["oscar"], tenant_b))
    assert outsider.get(API).status_code == 404
    assert outsider.get(f"{API}{decision.pk}/").status_code == 404
    # Under B's own slug, A's row is not found; B sees only its own.
    assert outsider.get(f"/api/v1/t/bravo/decision-logs/{decision.pk}/").status_code == 404
    assert {d["decision_id"] for d in outsider.get("/api/v1/t/bravo/decision-logs/").json()[
        "results"]} == {"d-1", "d-2", "d-3"}
    assert api().get(API).status_code == 401
    assert as_user(cast["audrey"]).post(API, {}).status_code == 405


# --- Insert methods (PostgreSQL) -----------------------------------------------------------------

@pytest.mark.parametrize("method", ["copy", "unnest", "values"])
def test_every_postgres_insert_method_stores_the_same_rows(tenant_a, postgres_only, method):
    assert connection.vendor == "postgresql"
    escalation = uuid.uuid4()
    batch = [event(1, grant=5, escalation_id=escalation, outcome="escalate"),
             event(2, bundles={}, labels={}), event(1)]
    rows = services.validate_events(batch)
    first = services.decisions_store(tenant_id=tenant_a.pk, gateway_id=None, events=rows,
                                     method=method)
    again = services.decisions_store(tenant_id=tenant_a.pk, gateway_id=None, events=rows,
                                     method=method)
    assert (first.accepted, first.duplicates, again.accepted) == (2, 1, 0)
    one = DecisionLog.objects.get(decision_id="d-1")
    assert (one.escalation_id, one.grant_id, one.bundle_revision) == (escalation, 5, 3)
    assert one.arguments == {"employee": "[redacted]", "amount": 1}
    assert one.timestamp == HOUR.replace(minute=15, second=30, microsecond=123456)
    two = DecisionLog.objects.get(decision_id="d-2")
    assert (two.bundle_revision, two.labels, two.escalation_id) == (None, {}, None)
