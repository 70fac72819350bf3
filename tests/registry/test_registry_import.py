"""Import of MCP registry server.json documents (server_json.py and services.server_import)."""

from __future__ import annotations

import copy
import json

import pytest
from django.core.exceptions import ValidationError

from governance.audit.models import AuditEvent
from governance.audit.services import Actor
from registry import services
from registry.models import McpServer
from registry.server_json import ServerJsonError, parse_document, read_server_json

SYSTEM = Actor.system("test")

REMOTE = {
    "$schema": "https://static.modelcontextprotocol.io/schemas/2025-09-29/server.schema.json",
    "name": "io.github.acme/payroll",
    "description": "Payroll lookups and adjustments",
    "version": "1.4.2",
    "repository": {"url": "https://github.com/acme/payroll-mcp", "source": "github"},
    "remotes": [{"type": "streamable-http", "url": "https://mcp.acme.example/payroll"}],
}

NPM = {
    "name": "io.github.modelcontextprotocol/everything",
    "description": "Exercises every MCP feature",
    "version": "2026.8.31",
    "packages": [
        {
            "registryType": "npm",
            "registryBaseUrl": "https://registry.npmjs.org",
            "identifier": "@modelcontextprotocol/server-everything",
            "version": "2026.8.31",
            "transport": {"type": "stdio"},
            "environmentVariables": [{"name": "DEBUG", "isRequired": False}],
        }
    ],
}


def _problems(doc) -> dict[str, str]:
    with pytest.raises(ServerJsonError) as caught:
        read_server_json(doc)
    return dict(caught.value.problems)


def _with(doc: dict, path: str, value) -> dict:
    """A copy of ``doc`` with the dotted/indexed ``path`` set (or removed when value is ...)."""
    doc = copy.deepcopy(doc)
    target = doc
    keys = [
        int(k) if k.isdigit() else k for k in path.replace("[", ".").replace("]", "").split(".")
    ]
    for key in keys[:-1]:
        target = target[key]
    if value is ...:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return doc


def test_a_remote_becomes_an_http_server():
    imported = read_server_json(REMOTE)
    assert imported.name == imported.registry_name == "io.github.acme/payroll"
    assert (imported.transport, imported.url, imported.command) == (
        "streamable-http",
        "https://mcp.acme.example/payroll",
        [],
    )
    assert imported.version == "1.4.2"


@pytest.mark.parametrize(
    ("registry_type", "command"),
    [
        ("npm", ["npx", "-y", "@modelcontextprotocol/server-everything@2026.8.31"]),
        ("pypi", ["uvx", "@modelcontextprotocol/server-everything==2026.8.31"]),
        (
            "oci",
            ["docker", "run", "-i", "--rm", "@modelcontextprotocol/server-everything:2026.8.31"],
        ),
    ],
)
def test_a_stdio_package_becomes_a_command(registry_type, command):
    imported = read_server_json(_with(NPM, "packages[0].registryType", registry_type))
    assert (imported.transport, imported.url, imported.command) == ("stdio", "", command)


@pytest.mark.parametrize(
    ("path", "value", "field", "message"),
    [
        ("name", ..., "name", "This field is required."),
        ("name", "payroll", "name", "Use reverse-DNS form with exactly one slash"),
        ("name", 42, "name", "Must be a string, not a number."),
        ("description", "x" * 101, "description", "Must be at most 100 characters (it has 101)."),
        ("description", "", "description", "Must not be empty."),
        ("version", "^1.2.3", "version", "Must be one exact version, not a range or 'latest'."),
        ("version", "1.x", "version", "Must be one exact version"),
        ("remotes", {"type": "sse"}, "remotes", "Must be an array, not an object."),
        (
            "remotes[0].type",
            "carrier-pigeon",
            "remotes[0].type",
            "Must be one of streamable-http, sse (got 'carrier-pigeon').",
        ),
        (
            "remotes[0].url",
            "ftp://mcp.acme.example",
            "remotes[0].url",
            "Must be an absolute http(s) URL.",
        ),
        (
            "remotes[0].url",
            "https://{tenant}.acme.example/mcp",
            "remotes[0].url",
            "URL templates with {variables} cannot be registered",
        ),
        (
            "remotes[0]",
            "https://mcp.acme.example",
            "remotes[0]",
            "Must be an object, not a string.",
        ),
    ],
)
def test_errors_point_at_the_field(path, value, field, message):
    problems = _problems(_with(REMOTE, path, value))
    assert field in problems, problems
    assert problems[field].startswith(message)


@pytest.mark.parametrize(
    ("path", "value", "field", "message"),
    [
        (
            "packages[0].transport.type",
            "carrier-pigeon",
            "packages[0].transport.type",
            "Must be one of stdio, streamable-http, sse (got 'carrier-pigeon').",
        ),
        ("packages[0].transport", ..., "packages[0].transport", "This field is required."),
        ("packages[0].version", "latest", "packages[0].version", "Must be one exact version"),
        ("packages[0].identifier", ..., "packages[0].identifier", "This field is required."),
        (
            "packages[0].environmentVariables",
            "DEBUG=1",
            "packages[0].environmentVariables",
            "Must be an array, not a string.",
        ),
    ],
)
def test_package_errors_point_at_the_field(path, value, field, message):
    problems = _problems(_with(NPM, path, value))
    assert problems[field].startswith(message), problems


def test_every_problem_is_reported_at_once():
    doc = {"name": "bad", "version": "~1", "remotes": [{"type": "sse"}]}
    assert set(_problems(doc)) == {"name", "description", "version", "remotes[0].url"}


def test_a_server_nobody_can_reach_is_refused():
    doc = _with(NPM, "packages[0].registryType", "nuget")  # no stdio runner Tollgate knows
    assert "remotes" in _problems(doc)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"name": ', "Not valid JSON: Expecting value at line 1, column 10."),
        (b"\xff\xfe\x00", "The document is not UTF-8 text."),
        (b"[1, 2]", None),
        (b" " * (256 * 1024 + 1), "The document is larger than 256 KiB."),
    ],
)
def test_unreadable_documents_say_why(raw, message):
    if message is None:
        assert _problems(parse_document(raw)) == {
            "": "The document must be a JSON object, not an array."
        }
        return
    with pytest.raises(ServerJsonError) as caught:
        parse_document(raw)
    assert caught.value.problems == [("", message)]


def test_import_registers_a_pending_server_with_its_origin(tenant_a):
    server = services.server_import(
        tenant=tenant_a, actor=SYSTEM, document=json.dumps(REMOTE).encode()
    )
    assert server.status == McpServer.Status.PENDING
    assert server.registry_name == "io.github.acme/payroll"
    assert server.url == "https://mcp.acme.example/payroll"
    assert server.description == "Payroll lookups and adjustments"
    actions = list(
        AuditEvent.objects.filter(
            tenant=tenant_a, object_id=str(server.pk), action__startswith="server."
        )
        .order_by("seq")
        .values_list("action", flat=True)
    )
    assert actions == ["server.created", "server.imported"]


def test_import_errors_are_keyed_by_field_path_and_nothing_is_written(tenant_a):
    with pytest.raises(ValidationError) as caught:
        services.server_import(
            tenant=tenant_a,
            actor=SYSTEM,
            document=_with(NPM, "packages[0].transport.type", "carrier-pigeon"),
        )
    assert caught.value.message_dict == {
        "packages[0].transport.type": [
            "Must be one of stdio, streamable-http, sse (got 'carrier-pigeon')."
        ]
    }
    assert not McpServer.objects.exists()
    assert not AuditEvent.objects.filter(action__startswith="server.").exists()


def test_the_same_registry_server_is_imported_once_per_tenant(tenant_a, tenant_b):
    services.server_import(tenant=tenant_a, actor=SYSTEM, document=REMOTE)
    services.server_import(tenant=tenant_b, actor=SYSTEM, document=REMOTE)  # other tenant: fine
    with pytest.raises(ValidationError) as caught:
        services.server_import(tenant=tenant_a, actor=SYSTEM, document=REMOTE)
    assert caught.value.message_dict == {
        "name": ["io.github.acme/payroll is already registered in this tenant."]
    }
