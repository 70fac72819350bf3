"""``within`` against the third-party ``@modelcontextprotocol/server-filesystem`` (issue 19 §1).

The control plane (live server) with the demo tenant; the real server-filesystem over stdio
(``node …/dist/index.js <root>``) behind ``python -m gateway run`` as its own process, which
reports the server's tools to the control plane (the control plane runs no command); the tools
approved, ``read_text_file`` granted to the demo agent with an argument constraint, the bundle
published; the official MCP SDK client as the agent.

The server's allowed root holds ``public/readme.txt`` and ``secret/x``, so the *server* serves
both: only the grant stands between the agent and the secret.

* ``{"path": {"within": ["<root>/public"]}}``: the readme is read; every escape through ``..``
  (also ``//..``, ``/./..``, ``sub/../..``) is refused by the gateway with the ``within`` reason,
  and the secret never comes back.
* ``{"path": {"pattern": "^<root>/public/"}}``: the documented limitation of ``pattern`` (and the
  reason ``within`` exists): the regex sees the prefix, the server resolves ``..`` and returns
  the secret.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from mcp.client.session import ClientSession

from bundles.models import Gateway
from bundles.publish import bundle_publish
from governance.audit.services import Actor
from governance.tenancy.models import Tenant
from registry import gateway_discovery
from registry import services as registry
from registry.models import Agent, Tool
from tests.gateway_support import AGENT_TOKEN, GatewayProcess, await_bundle, grant_of, start_gateway
from tests.mcp_support import REPO, as_agent

pytestmark = pytest.mark.e2e

SYSTEM = Actor.system("filesystem server e2e test")
FILESYSTEM_JS = (
    REPO / "tests/mcp/node_modules/@modelcontextprotocol/server-filesystem/dist/index.js"
)
SERVER = "files"
SCOPE = "files:read"
README = "the public readme 4c1d"
SECRET = "the secret b7e9"  # noqa: S105 - a file's content, the thing that must not leak
ESCAPES = [  # relative to the server's root: each resolves to secret/x
    "public/../secret/x",
    "public//../secret/x",
    "public/./../secret/x",
    "public/sub/../../secret/x",
]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The server's allowed directory: public/readme.txt and secret/x (real path: the server
    resolves its roots with realpath)."""
    if not FILESYSTEM_JS.is_file():
        pytest.fail(f"{FILESYSTEM_JS.relative_to(REPO)} is missing: run `npm ci --prefix "
                    "tests/mcp` (make test does it through scripts/test-deps).")
    directory = (tmp_path / "files").resolve()
    (directory / "public").mkdir(parents=True)
    (directory / "secret").mkdir()
    (directory / "public" / "readme.txt").write_text(README)
    (directory / "secret" / "x").write_text(SECRET)
    return directory


@contextmanager
def filesystem_behind_gateway(live_server, settings, tmp_path: Path, root: Path,
                              constraints: dict[str, Any]) -> Iterator[tuple[GatewayProcess,
                                                                             str]]:
    """The demo tenant, server-filesystem behind the gateway process, ``read_text_file``
    granted to hr-assistant with ``constraints`` and published; yields (gateway, grant id)
    once the gateway runs that bundle."""
    settings.DEBUG = True
    settings.VAR_DIR = tmp_path
    call_command("seed_demo", stdout=io.StringIO())
    acme = Tenant.objects.get(slug="acme")
    command = [shutil.which("node") or "node", str(FILESYSTEM_JS), str(root)]
    server = registry.server_create(tenant=acme, actor=SYSTEM, name=SERVER, transport="stdio",
                                    command=command)
    server = registry.server_transition(tenant=acme, actor=SYSTEM, server=server,
                                        status="active")
    gateway_discovery.gateway_server_bind(
        tenant=acme, actor=SYSTEM, gateway=Gateway.objects.get(tenant=acme,
                                                               name="demo-gateway"),
        server=server)
    gw = start_gateway(live_server.url, tmp_path, token_file=tmp_path / "demo-gateway-token",
                       server_name=SERVER, upstream_cmd=command)
    try:
        # The tools come from the gateway's discovery report, as the server lists them.
        gw.wait_for(lambda: Tool.objects.filter(server=server, name="read_text_file").exists(),
                    "the gateway's discovery report", timeout=120)
        tools = list(Tool.objects.filter(server=server))
        read_text_file = next(t for t in tools if t.name == "read_text_file")
        assert read_text_file.input_schema["properties"]["path"] == {"type": "string"}
        for tool in tools:
            registry.tool_approve(tenant=acme, actor=SYSTEM, tool=tool)
        scope = registry.scope_create(tenant=acme, actor=SYSTEM, name=SCOPE,
                                      tools=[read_text_file])
        registry.grant_create(tenant=acme, actor=SYSTEM,
                              agent=Agent.objects.get(tenant=acme, name="hr-assistant"),
                              scope=scope, argument_constraints=constraints)
        bundle_publish(tenant=acme, trigger="test")
        data = await_bundle(gw, acme, lambda d: grant_of(d, "hr-assistant", SCOPE),
                            "the bundle with the read_text_file grant")
        terms = grant_of(data, "hr-assistant", SCOPE)
        assert terms["argument_constraints"] == constraints
        yield gw, terms["id"]
    finally:
        gw.stop()


def read(gw: GatewayProcess, *paths: str) -> list[Any]:
    """The agent calls read_text_file on each path, in order, in one session."""

    async def work(session: ClientSession) -> list[Any]:
        return [await session.call_tool("read_text_file", {"path": path}) for path in paths]

    return as_agent(gw.url, AGENT_TOKEN, work)


def text(result: Any) -> str:
    return " ".join(getattr(part, "text", "") for part in result.content)


def everything(result: Any) -> str:
    return json.dumps(result.model_dump(mode="json"))


@pytest.mark.django_db(transaction=True)
def test_within_keeps_the_agent_inside_the_public_directory_of_server_filesystem(
        live_server, settings, tmp_path, root):
    public = f"{root}/public"
    constraints = {"read_text_file": {"path": {"within": [public]}}}
    with filesystem_behind_gateway(live_server, settings, tmp_path, root,
                                   constraints) as (gw, grant_id):
        escapes = [f"{root}/{escape}" for escape in ESCAPES]
        readme, *refused = read(gw, f"{public}/readme.txt", *escapes)

        assert not readme.is_error, text(readme)
        assert README in text(readme)
        for path, result in zip(escapes, refused, strict=True):
            assert result.is_error, path
            assert text(result) == (f"denied by Tollgate: grant {grant_id}: argument path: "
                                    f"must be a path within {public}; it resolves outside "
                                    "every root"), path
            assert SECRET not in everything(result), path
        assert SECRET not in gw.output(200_000)


@pytest.mark.django_db(transaction=True)
def test_pattern_is_not_a_containment_check_server_filesystem_resolves_dotdot_past_it(
        live_server, settings, tmp_path, root):
    """A documented limitation, kept as evidence: a regex on the raw path sees the public
    prefix, the server resolves ``..`` inside its own root, and the secret comes back. This is
    what ``within`` is for (docs/gateway-contract.md, "Argument constraints")."""
    public = f"{root}/public"
    constraints = {"read_text_file": {"path": {"pattern": f"^{re.escape(public)}/"}}}
    with filesystem_behind_gateway(live_server, settings, tmp_path, root,
                                   constraints) as (gw, _):
        escapes = [f"{root}/{escape}" for escape in ESCAPES]
        readme, *leaked = read(gw, f"{public}/readme.txt", *escapes)

        assert not readme.is_error, text(readme)
        assert README in text(readme)
        for path, result in zip(escapes, leaked, strict=True):
            assert not result.is_error, (path, text(result))
            assert SECRET in text(result), path
