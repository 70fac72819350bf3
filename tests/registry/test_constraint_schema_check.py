"""Grant constraints are checked against the tools' input schemas when they are saved
(gateway/constraints.py ``validate_against_schemas``, called by registry/services/grants.py):
an argument the tool does not have, or a keyword that cannot apply to the argument's declared
type, is an error on the field — through the service, the REST API and the web form — and
nothing is stored.

Issue 19 §1: ``{"get_salary": {"nonexistent_arg": …}}`` was saved and every call was then
refused with no hint to the admin.
"""

from __future__ import annotations

import json

import pytest
from django.core.exceptions import ValidationError

from governance.audit.models import AuditEvent
from governance.audit.services import Actor
from registry import services
from registry.models import Grant, Tool
from tests.factories import Def, def_sha

SYSTEM = Actor.system("test")
API = "/api/v1/t/alpha"

SALARY = {"type": "object", "properties": {"employee_id": {"type": "string"},
                                           "year": {"type": "integer"}},
          "required": ["employee_id"]}
READ = {"type": "object", "properties": {
    "path": {"type": "string"},
    "head": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
    "encoding": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
    "options": {"type": "object"},
    "anything": {},
}, "additionalProperties": False}
PING = {"type": "object", "additionalProperties": False}
OPEN = {"type": "object", "properties": {"q": {"type": "string"}},
        "additionalProperties": {"type": "number"}}
BARE = {"type": "object"}


def _server(tenant, name, defs):
    server = services.server_create(tenant=tenant, actor=SYSTEM, name=name,
                                    transport="streamable-http", url=f"https://{name}.example/m")
    services.tools_record_discovery(tenant=tenant, actor=SYSTEM, server=server,
                                    definitions=[(d, def_sha(d)) for d in defs])
    return {t.name: t for t in Tool.objects.filter(server=server)}


@pytest.fixture
def scope(tenant_a):
    tools = _server(tenant_a, "hr", [Def("get_salary", input_schema=SALARY),
                                     Def("read_text_file", input_schema=READ),
                                     Def("ping", input_schema=PING),
                                     Def("search", input_schema=OPEN),
                                     Def("bare", input_schema=BARE)])
    return services.scope_create(tenant=tenant_a, actor=SYSTEM, name="hr:read",
                                 tools=list(tools.values()))


@pytest.fixture
def agent(tenant_a, dave):
    return services.agent_create(tenant=tenant_a, actor=SYSTEM, name="hr-bot", owner=dave)


def _create(tenant, agent, scope, **terms):
    return services.grant_create(tenant=tenant, actor=SYSTEM, agent=agent, scope=scope, **terms)


REFUSED = [
    ({"get_salary": {"nonexistent_arg": {"const": "x"}}},
     "argument_constraints.get_salary.nonexistent_arg: the tool's input schema has no argument "
     "'nonexistent_arg' (it has employee_id, year)"),
    ({"ping": {"host": {"const": "x"}}},
     "argument_constraints.ping.host: the tool's input schema has no argument 'host' (it takes "
     "none)"),
    ({"get_salary": {"year": {"within": ["/srv"]}}},
     "argument_constraints.get_salary.year.within: applies to strings, but the tool declares "
     "this argument as integer"),
    ({"get_salary": {"year": {"url": {"schemes": ["https"]}}}},
     "argument_constraints.get_salary.year.url: applies to strings, but the tool declares this "
     "argument as integer"),
    ({"get_salary": {"year": {"pattern": "^20"}}},
     "argument_constraints.get_salary.year.pattern: applies to strings, but the tool declares "
     "this argument as integer"),
    ({"get_salary": {"employee_id": {"maximum": 10}}},
     "argument_constraints.get_salary.employee_id.maximum: applies to numbers, but the tool "
     "declares this argument as string"),
    ({"get_salary": {"year": {"enum": [2025, "2026"]}}},
     "argument_constraints.get_salary.year.enum: '2026' can never match: the tool declares "
     "this argument as integer"),
    ({"get_salary": {"year": {"const": 2025.5}}},
     "argument_constraints.get_salary.year.const: 2025.5 can never match: the tool declares "
     "this argument as integer"),
    ({"read_text_file": {"head": {"maxLength": 3}}},
     "argument_constraints.read_text_file.head.maxLength: applies to strings, but the tool "
     "declares this argument as integer or null"),
    ({"read_text_file": {"options": {"within": ["/srv"]}}},
     "argument_constraints.read_text_file.options.within: applies to strings, but the tool "
     "declares this argument as object"),
    ({"search": {"limit": {"pattern": "x"}}},
     "argument_constraints.search.limit.pattern: applies to strings, but the tool declares this "
     "argument as number"),
]


@pytest.mark.parametrize(("constraints", "message"), REFUSED)
def test_the_service_refuses_constraints_the_tool_cannot_satisfy(tenant_a, agent, scope,
                                                                 constraints, message):
    with pytest.raises(ValidationError) as caught:
        _create(tenant_a, agent, scope, argument_constraints=constraints)
    assert caught.value.message_dict == {"argument_constraints": [message]}
    assert not Grant.objects.exists()
    assert not AuditEvent.objects.filter(action="grant.created").exists()


def test_approval_conditions_are_checked_the_same_way(tenant_a, agent, scope):
    with pytest.raises(ValidationError) as caught:
        _create(tenant_a, agent, scope, approval_mode="when",
                approval_condition={"get_salary": {"salary": {"minimum": 1}}})
    assert caught.value.message_dict == {"approval_condition": [
        "approval_condition.get_salary.salary: the tool's input schema has no argument "
        "'salary' (it has employee_id, year)"]}


@pytest.mark.parametrize("constraints", [
    {"get_salary": {"employee_id": {"pattern": "^E[0-9]+$", "maxLength": 8}}},
    {"get_salary": {"year": {"minimum": 2020, "enum": [2025, 2026.0]}}},
    {"read_text_file": {"path": {"within": ["/srv/files/public"]}}},
    {"read_text_file": {"encoding": {"enum": ["utf-8", None]}}},  # anyOf string | null
    {"read_text_file": {"anything": {"within": ["/srv"]}}},  # no declared type: cannot tell
    {"read_text_file": {"options": {"const": {"a": 1}}}},
    {"search": {"q": {"url": {"schemes": ["https"]}}, "limit": {"maximum": 5}}},
    {"bare": {"whatever": {"within": ["/srv"]}}},  # a schema that lists nothing says nothing
])
def test_constraints_that_fit_the_schema_are_stored(tenant_a, agent, scope, constraints):
    grant = _create(tenant_a, agent, scope, argument_constraints=constraints)
    grant.refresh_from_db()
    assert grant.argument_constraints == constraints


def test_same_named_tools_of_two_servers_must_both_fit(tenant_a, agent, scope):
    other = _server(tenant_a, "hr2", [Def("get_salary", input_schema={
        "type": "object", "properties": {"employee_id": {"type": "integer"}}})])
    scope.tools.add(other["get_salary"])
    with pytest.raises(ValidationError) as caught:
        _create(tenant_a, agent, scope,
                argument_constraints={"get_salary": {"employee_id": {"pattern": "^E"}}})
    assert caught.value.message_dict == {"argument_constraints": [
        "argument_constraints.get_salary.employee_id.pattern: applies to strings, but the tool "
        "declares this argument as integer"]}


def test_an_update_is_checked_only_for_the_constraints_it_sets(tenant_a, agent, scope):
    """Setting new constraints is checked; an unrelated edit of a grant whose constraints no
    longer fit (the pinned schema changed on re-approval) is not blocked by them."""
    grant = _create(tenant_a, agent, scope,
                    argument_constraints={"get_salary": {"year": {"minimum": 2020}}})
    with pytest.raises(ValidationError) as caught:
        services.grant_update(tenant=tenant_a, actor=SYSTEM, grant=grant,
                              argument_constraints={"get_salary": {"yr": {"minimum": 1}}})
    assert list(caught.value.message_dict) == ["argument_constraints"]
    Tool.objects.filter(name="get_salary").update(
        input_schema={"type": "object", "properties": {"employee_id": {"type": "string"}}})
    services.grant_update(tenant=tenant_a, actor=SYSTEM, grant=grant, calls_per_minute=5)
    grant.refresh_from_db()
    assert grant.calls_per_minute == 5
    assert grant.argument_constraints == {"get_salary": {"year": {"minimum": 2020}}}


# --- REST API and web form ---------------------------------------------------------------------


def test_the_api_answers_400_on_the_field_and_stores_nothing(admin, agent, scope):
    constraints, message = REFUSED[0]
    response = admin.post(f"{API}/grants/", {"agent": agent.pk, "scope": scope.pk,
                                             "argument_constraints": constraints},
                          format="json")
    assert response.status_code == 400
    assert response.json()["errors"] == {"argument_constraints": [message]}
    assert response.json()["message"] == message
    assert not Grant.objects.exists()


def test_the_api_refuses_a_bad_within_on_patch(admin, tenant_a, agent, scope):
    grant = _create(tenant_a, agent, scope)
    response = admin.patch(f"{API}/grants/{grant.pk}/", {"argument_constraints": {
        "read_text_file": {"path": {"within": ["/srv/files/public/"]}}}}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"] == {"argument_constraints": [
        "argument_constraints.read_text_file.path.within[0]: must be written normalised: "
        "'/srv/files/public' (no '.', '..', repeated or trailing '/')"]}
    grant.refresh_from_db()
    assert grant.argument_constraints == {}


def test_the_web_form_shows_the_error_on_the_field_and_stores_nothing(login, alice, agent,
                                                                       scope):
    constraints, message = REFUSED[2]
    response = login(alice).post("/t/alpha/grants/new/", {
        "agent": agent.pk, "scope": scope.pk, "calls_per_minute": "", "calls_per_day": "",
        "window_start": "", "window_end": "", "window_tz": "UTC", "expires_at": "",
        "approval_mode": "never", "argument_constraints": json.dumps(constraints),
        "approval_condition": ""})
    assert response.status_code == 400
    body = response.content.decode()
    field_html = body.split('for="id_argument_constraints"')[1].split('<div class="field')[0]
    assert f'<p class="error">{message}</p>' in field_html
    assert not Grant.objects.exists()
