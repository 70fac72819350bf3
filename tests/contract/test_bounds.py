"""Every integer input is bounded: a number too large for its column (99999999999999999999,
2^63) is a message on its field, on the web and in the API, never a 500 and never stored.

Two contract tests keep it so for inputs added later: every integer field a form declares states
its bounds (``governance.bounds`` gives them by default), and every integer the admin API's
document takes, in a body or a query, has a ``minimum`` and a ``maximum``.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer

from governance.bounds import BIGINT_MAX, INT_MAX
from registry.models import Grant
from tests.bundle_support import payroll_world

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "governance", ROOT / "registry", ROOT / "approvals"]
API = "/api/v1/t/alpha"
HUGE = [99999999999999999999, 2**63, -(2**63) - 1]
TOO_LARGE = f"Ensure this value is less than or equal to {INT_MAX}."
TOO_SMALL = f"Ensure this value is greater than or equal to {-(2**31)}."


def message_for(value: int) -> str:
    return TOO_LARGE if value > 0 else TOO_SMALL


# --- Contracts ---------------------------------------------------------------------------------


def _unbounded_form_fields() -> list[str]:
    """``forms.IntegerField(...)`` (or Float/Decimal) calls that omit min_value or max_value."""
    found = []
    for folder in SOURCES:
        for path in folder.rglob("*.py"):
            if "migrations" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == "forms"
                        and node.func.attr in {"IntegerField", "FloatField", "DecimalField"}):
                    given = {k.arg for k in node.keywords}
                    if not {"min_value", "max_value"} <= given:
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_every_integer_a_form_declares_is_bounded():
    assert _unbounded_form_fields() == []


def _resolve(document: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _unbounded(document: dict, schema: dict, where: str, seen: set[str]) -> list[str]:
    if "$ref" in schema:
        if schema["$ref"] in seen:
            return []
        seen = seen | {schema["$ref"]}
    schema = _resolve(document, schema)
    if schema.get("readOnly"):
        return []
    found = []
    if schema.get("type") in {"integer", "number"}:
        low, high = schema.get("minimum"), schema.get("maximum")
        if low is None or high is None or low < -(2**63) or high > BIGINT_MAX:
            found.append(where)
    for key in ("allOf", "oneOf", "anyOf"):
        for i, part in enumerate(schema.get(key, [])):
            found += _unbounded(document, part, f"{where}/{key}{i}", seen)
    for name, prop in schema.get("properties", {}).items():
        found += _unbounded(document, prop, f"{where}.{name}", seen)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            found += _unbounded(document, schema[key], f"{where}[]", seen)
    return found


def test_every_integer_the_admin_api_takes_is_bounded():
    generated = SchemaGenerator().get_schema(request=None, public=True)
    document = json.loads(OpenApiJsonRenderer().render(generated, renderer_context={}))
    found = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if not isinstance(operation, dict):
                continue
            for parameter in operation.get("parameters", []):
                if parameter["in"] in {"query", "header"}:
                    found += _unbounded(document, parameter["schema"],
                                        f"{method.upper()} {path} ?{parameter['name']}", set())
            for content in operation.get("requestBody", {}).get("content", {}).values():
                found += _unbounded(document, content["schema"], f"{method.upper()} {path}",
                                    set())
    assert sorted(set(found)) == []


# --- The inputs that overflowed ----------------------------------------------------------------


@pytest.fixture
def world(tenant_a, dave):
    return payroll_world(tenant_a, owner=dave)


@pytest.mark.parametrize("value", HUGE)
@pytest.mark.parametrize("field", ["calls_per_minute", "calls_per_day"])
def test_a_grant_limit_too_large_is_a_400_on_its_field(admin, world, field, value):
    response = admin.post(f"{API}/grants/", {"agent": world["bot"].pk,
                                             "scope": world["scope"].pk, field: value},
                          format="json")
    assert response.status_code == 400
    assert response.json()["errors"] == {field: [message_for(value)]}
    assert Grant.objects.count() == 1  # the world's own

    response = admin.patch(f"{API}/grants/{world['grant'].pk}/", {field: value}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"] == {field: [message_for(value)]}
    world["grant"].refresh_from_db()
    assert (world["grant"].calls_per_minute, world["grant"].calls_per_day) == (10, None)


@pytest.mark.parametrize("value", HUGE)
def test_a_grant_limit_too_large_is_a_message_on_the_form(login, alice, world, value):
    grant = world["grant"]
    response = login(alice).post(f"/t/alpha/grants/{grant.pk}/edit/", {
        "calls_per_minute": str(value), "calls_per_day": "", "window_start": "",
        "window_end": "", "window_tz": "UTC", "expires_at": "", "approval_mode": "never",
        "argument_constraints": "", "approval_condition": ""})
    assert response.status_code in {200, 400}
    assert response.context["form"].errors == {"calls_per_minute": [message_for(value)]}
    grant.refresh_from_db()
    assert grant.calls_per_minute == 10


@pytest.mark.parametrize(("url", "body", "field"), [
    ("alert-rules/{rule}/", {"threshold": 2**63}, "threshold"),
    ("alert-rules/{rule}/", {"window_minutes": 99999999999999999999}, "window_minutes"),
    ("access-requests/", {"agent": "{bot}", "scope": "{scope}", "justification": "why",
                          "duration_minutes": 2**63}, "duration_minutes"),
    ("break-glass/", {"agent": "{bot}", "scope": "{scope}", "justification": "why",
                      "minutes": 99999999999999999999}, "minutes"),
    ("approval-policies/", {"decision_hours": 2**63, "stages": [{"roles": ["approver"]}]},
     "decision_hours"),
])
def test_every_other_integer_of_the_api_refuses_a_huge_value_on_its_field(
        admin, world, url, body, field):
    rules = admin.get(f"{API}/alert-rules/").json()["results"]
    rule = next(r["id"] for r in rules if r["kind"] == "denial_burst")
    names = {"{bot}": world["bot"].pk, "{scope}": world["scope"].pk}
    body = {k: names.get(v, v) if isinstance(v, str) else v for k, v in body.items()}
    method = admin.patch if "{rule}" in url else admin.post
    response = method(f"{API}/{url.format(rule=rule)}", body, format="json")
    assert response.status_code == 400, response.json()
    assert response.json()["errors"] == {field: [TOO_LARGE]}


def test_a_revision_number_beyond_bigint_is_a_400(admin, world):
    response = admin.get(f"{API}/bundles/diff/?to={2**63}")
    assert response.status_code == 400
    assert response.json()["errors"] == {"to": [f"Ensure this value is less than or equal to "
                                                f"{BIGINT_MAX}."]}


def test_a_window_day_beyond_the_range_is_a_400_on_its_item(admin, world):
    response = admin.post(f"{API}/grants/", {"agent": world["bot"].pk, "scope": world["scope"].pk,
                                             "window_days": [2**63]}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"] == {"window_days": {"0": [TOO_LARGE]}}




# --- Bodies over DATA_UPLOAD_MAX_MEMORY_SIZE ---------------------------------------------------


@pytest.mark.parametrize("megabytes", [10, 100])
def test_a_body_too_large_for_the_admin_api_is_a_json_413(admin, megabytes, settings):
    body = b'{"name": "' + b"a" * (megabytes * 2**20) + b'"}'
    response = admin.generic("POST", f"{API}/agents/", body, content_type="application/json")
    assert response.status_code == 413
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"code": "too_large", "message": "The body is over "
                               f"{settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes."}


def test_a_body_too_large_for_a_web_form_keeps_the_html_page(login, alice, settings):
    response = login(alice).post("/t/alpha/agents/new/", {"name": "a" * (10 * 2**20)})
    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/html")


def test_the_api_schema_documents_the_413_of_every_operation_with_a_body(admin):
    schema = admin.get("/api/v1/schema/?format=json").json()
    with_body = [(path, method, operation) for path, item in schema["paths"].items()
                 for method, operation in item.items() if "requestBody" in operation]
    assert with_body
    for path, method, operation in with_body:
        assert "413" in operation["responses"], f"{method.upper()} {path}"
