"""MCP authorization and delegation end to end: the control plane (live server) with the demo
tenant, ``python -m gateway run`` as an OAuth resource server (``--oauth-issuer``,
``--resource-uri``), the real ``oidc-provider`` (tests/idp, resource indicators on, JWT access
tokens for the gateway's URI) and the official MCP SDK client's OAuth support
(``mcp.client.auth``).

- Discovery: the SDK client (client credentials) is answered 401 with ``resource_metadata``,
  reads the protected-resource metadata, the authorization server's metadata, gets a token for
  the gateway's resource URI and its calls go through.
- Refused: a token for another resource (audience), an expired token.
- Key rotation: the IdP restarts with a new signing key; the next token's unknown ``kid`` makes
  the gateway fetch the JWKS again and the call goes through.
- Delegation: the payroll agent signs people in (authorization code, the IdP's login form driven
  headlessly); its grant holds only on behalf of members of hr-staff: alice's call is allowed,
  bob's refused, and the control plane's decision log names them.
"""

from __future__ import annotations

import io
import json
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import anyio
import httpx2
import pytest
from django.core.management import call_command
from mcp.client.auth import OAuthClientProvider
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)

from bundles.publish import bundle_publish
from decision_logs.models import DecisionLog
from governance.audit.services import Actor
from governance.tenancy.models import Tenant
from registry import services as registry
from registry.models import Agent, ToolScope
from tests.e2e_support import TestIdp, free_port, require_e2e_tools
from tests.gateway_support import gateway_bundle, start_gateway

pytestmark = pytest.mark.e2e

SYSTEM = Actor.system("test")
HR_AGENT, HR_SECRET = "hr-agent", "hr-agent-secret"
PAYROLL_AGENT, PAYROLL_SECRET = "payroll-agent", "payroll-agent-secret"
SHORT_AGENT, SHORT_SECRET = "short-lived-agent", "short-lived-secret"
AGENT_CALLBACK = "http://127.0.0.1:9/agent-callback"  # never served: the test reads the code
OTHER_RESOURCE = "http://127.0.0.1:9/other-mcp"


class Memory:
    """The SDK's TokenStorage, in memory; a pre-registered client (no dynamic registration)."""

    def __init__(self, client: OAuthClientInformationFull | None = None) -> None:
        self.tokens: OAuthToken | None = None
        self.client = client

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


def agent_session(url: str, auth: httpx2.Auth, work, seen: list[tuple[str, str, int]]) -> Any:
    """``work(session)`` in an MCP session of the SDK client authenticating with ``auth``;
    every HTTP exchange (the OAuth ones included) is appended to ``seen``."""

    async def record(response: httpx2.Response) -> None:
        seen.append((response.request.method, str(response.request.url), response.status_code))

    async def main() -> Any:
        client = httpx2.AsyncClient(auth=auth, timeout=httpx2.Timeout(30),
                                    event_hooks={"response": [record]})
        async with client, streamable_http_client(url, http_client=client) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await work(session)

    return anyio.run(main)


def client_credentials(gateway_url: str, issuer: str, client_id: str,
                       secret: str) -> ClientCredentialsOAuthProvider:
    return ClientCredentialsOAuthProvider(
        server_url=gateway_url, storage=Memory(), client_id=client_id, client_secret=secret,
        token_endpoint_auth_method="client_secret_post", issuer=issuer)


def signed_in_as(gateway_url: str, idp: TestIdp, login: str) -> OAuthClientProvider:
    """The payroll agent's authorization-code flow, with ``login`` signing in at the IdP."""
    landed: dict[str, str] = {}

    async def redirect_handler(authorization_url: str) -> None:
        async with httpx2.AsyncClient(timeout=30) as browser:
            url = authorization_url
            for _ in range(10):
                response = await browser.get(url)
                if response.status_code == 200 and "/interaction/" in url:
                    response = await browser.post(url, data={"prompt": "login",
                                                             "login": login, "password": "pw"})
                assert response.is_redirect, (response.status_code, response.text[:500],
                                              idp.stderr()[-2000:])
                url = urljoin(url, response.headers["location"])
                if url.startswith(AGENT_CALLBACK):
                    landed["url"] = url
                    return
        raise AssertionError(f"the IdP never redirected back; last at {url}")

    async def callback_handler() -> AuthorizationCodeResult:
        query = parse_qs(urlsplit(landed["url"]).query)
        return AuthorizationCodeResult(code=query["code"][0], state=query["state"][0],
                                       iss=query.get("iss", [None])[0])

    registered = OAuthClientInformationFull(
        client_id=PAYROLL_AGENT, client_secret=PAYROLL_SECRET, redirect_uris=[AGENT_CALLBACK],
        grant_types=["authorization_code"], response_types=["code"],
        token_endpoint_auth_method="client_secret_post")
    metadata = OAuthClientMetadata(
        redirect_uris=[AGENT_CALLBACK], grant_types=["authorization_code"],
        response_types=["code"], token_endpoint_auth_method="client_secret_post")
    return OAuthClientProvider(server_url=gateway_url, client_metadata=metadata,
                               storage=Memory(registered), redirect_handler=redirect_handler,
                               callback_handler=callback_handler)


async def lookup(session: ClientSession):
    return await session.call_tool("lookup_employee", {"employee_id": "E100"})


def raw_token(issuer: str, client_id: str, secret: str, resource: str) -> str:
    response = httpx2.post(f"{issuer}/token", data={
        "grant_type": "client_credentials", "client_id": client_id, "client_secret": secret,
        "resource": resource}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def initialize_with(url: str, token: str) -> httpx2.Response:
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}}
    return httpx2.post(url, json=body, timeout=30, headers={
        "Accept": "application/json, text/event-stream", "Authorization": f"Bearer {token}"})


@pytest.mark.django_db(transaction=True)
def test_oauth_discovery_audience_expiry_rotation_and_delegation(live_server, settings,
                                                                 tmp_path):
    require_e2e_tools()
    settings.DEBUG = True
    settings.VAR_DIR = tmp_path
    call_command("seed_demo", stdout=io.StringIO())
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    agent_client = {"grant_types": ["client_credentials", "authorization_code"],
                    "response_types": ["code"], "redirect_uris": [AGENT_CALLBACK],
                    "token_endpoint_auth_method": "client_secret_post"}
    idp = TestIdp(workdir=tmp_path, client_id="tollgate", client_secret="unused",
                  redirect_uris=["http://127.0.0.1:9/unused"], post_logout_redirect_uris=[],
                  extra_env={
                      "IDP_EXTRA_CLIENTS": json.dumps([
                          {**agent_client, "client_id": c, "client_secret": s}
                          for c, s in ((HR_AGENT, HR_SECRET), (PAYROLL_AGENT, PAYROLL_SECRET),
                                       (SHORT_AGENT, SHORT_SECRET))]),
                      "IDP_RESOURCE_SERVERS": json.dumps({
                          resource: {"ttl": 300, "ttl_by_client": {SHORT_AGENT: 1}},
                          OTHER_RESOURCE: {"ttl": 300}}),
                  })
    issuer = idp.start()
    idp.set_users({"alice": {"sub": "alice-1", "groups": ["hr-staff"], "password": "pw"},
                   "bob": {"sub": "bob-2", "groups": ["sales"], "password": "pw"}})
    gw = None
    try:
        # The registry: the demo agent is also known by its OAuth client; the payroll agent acts
        # for people, and its grant of hr:read holds only for members of hr-staff.
        acme = Tenant.objects.get(slug="acme")
        hr = Agent.objects.for_tenant(acme).get(name="hr-assistant")
        registry.agent_principal_add(tenant=acme, actor=SYSTEM, agent=hr, issuer=issuer,
                                     subject=HR_AGENT, kind="client")
        payroll = registry.agent_create(tenant=acme, actor=SYSTEM, name="payroll-agent",
                                        owner=None)
        registry.agent_principal_add(tenant=acme, actor=SYSTEM, agent=payroll, issuer=issuer,
                                     subject=PAYROLL_AGENT, kind="client")
        registry.grant_create(tenant=acme, actor=SYSTEM, agent=payroll,
                              scope=ToolScope.objects.for_tenant(acme).get(name="hr:read"),
                              on_behalf_of_group="hr-staff")
        published = bundle_publish(tenant=acme, trigger="test")
        gw = start_gateway(live_server.url, tmp_path, port=port,
                           token_file=tmp_path / "demo-gateway-token",
                           extra=["--oauth-issuer", issuer, "--resource-uri", resource,
                                  "--oauth-leeway", "0", "--jwks-refetch-interval", "1"])
        gw.wait_for(lambda: (b := gateway_bundle(gw)) is not None
                    and b.revision_number == published.revision_number, "the bundle")

        # --- Discovery: 401 → resource metadata → AS metadata → token → the call succeeds.
        seen: list[tuple[str, str, int]] = []
        result = agent_session(gw.url, client_credentials(gw.url, issuer, HR_AGENT, HR_SECRET),
                               lookup, seen)
        assert not result.is_error, result
        assert "Ada Lovelace" in json.dumps(result.model_dump(mode="json"))
        flow = [(m, u, s) for m, u, s in seen]
        assert flow[0] == ("POST", resource, 401)
        assert ("GET", f"http://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp",
                200) in flow
        assert [u for m, u, s in flow if m == "GET" and s == 200
                and u.startswith(f"{issuer}/.well-known/")], flow  # the AS metadata
        assert ("POST", f"{issuer}/token", 200) in flow
        assert ("POST", resource, 200) in flow
        metadata = httpx2.get(f"http://127.0.0.1:{port}/.well-known/oauth-protected-resource"
                              "/mcp", timeout=30).json()
        assert metadata == {"resource": resource, "authorization_servers": [issuer],
                            "bearer_methods_supported": ["header"],
                            "resource_name": "Tollgate gateway for acme-hr"}

        # --- A token minted for another resource is refused (RFC 8707 audience).
        other = initialize_with(gw.url, raw_token(issuer, HR_AGENT, HR_SECRET, OTHER_RESOURCE))
        assert other.status_code == 401
        assert other.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
        assert f'resource_metadata="http://127.0.0.1:{port}/.well-known/oauth-protected-' \
               'resource/mcp"' in other.headers["www-authenticate"]

        # --- An expired token is refused (a one-second token; no leeway on this gateway).
        short = raw_token(issuer, SHORT_AGENT, SHORT_SECRET, resource)
        gw.wait_for(lambda: initialize_with(gw.url, short).status_code == 401,
                    "the one-second token to expire", timeout=60)
        assert "Signature has expired" in gw.output(20000)

        # --- Delegation: alice (hr-staff) is served, bob (sales) is refused.
        alice = agent_session(gw.url, signed_in_as(gw.url, idp, "alice"), lookup, [])
        assert not alice.is_error, alice
        bob = agent_session(gw.url, signed_in_as(gw.url, idp, "bob"), lookup, [])
        assert bob.is_error
        assert "bob-2 is not in group hr-staff" in bob.content[0].text
        gw.wait_for(lambda: DecisionLog.objects.filter(tenant=acme, agent="payroll-agent")
                    .count() >= 2, "the delegated decisions in the control plane's log")
        logged = sorted(DecisionLog.objects.filter(tenant=acme, agent="payroll-agent")
                        .values_list("on_behalf_of", "on_behalf_of_groups", "outcome"))
        assert logged == [("alice-1", ["hr-staff"], "allow"), ("bob-2", ["sales"], "deny")]

        # --- Key rotation: the IdP restarts with a new key (same issuer); the gateway fetches
        # its JWKS again for the unknown kid, and the next agent session goes through.
        idp.stop()
        idp.start(port=int(urlsplit(issuer).port))
        rotated = agent_session(gw.url, client_credentials(gw.url, issuer, HR_AGENT, HR_SECRET),
                                lookup, [])
        assert not rotated.is_error, rotated
        assert "unknown key id" in gw.output(40000)
    finally:
        if gw is not None:
            gw.stop()
        idp.stop()
