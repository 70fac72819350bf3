"""The security review's checks that are not proved elsewhere (docs/security.md lists where
each threat is proved): CSRF on every state-changing page, session fixation, open redirects,
stored XSS from MCP servers, secrets in logs, constant-time secret comparison and bearer-token
brute force."""

# ruff: noqa: F811 - the contract test's fixtures are imported and requested by name
from __future__ import annotations

import logging
import uuid

import pytest
from django.contrib.sessions.models import Session
from django.test import Client
from django.utils import timezone

from bundles.models import Gateway
from decision_logs.models import DecisionLog
from governance.audit.services import Actor
from registry import services as registry
from registry.models import Agent, McpServer, Tool
from registry.tool_definition import ToolDefinition
from tests.bundle_support import make_gateway
from tests.contract.test_contract_urls import (  # noqa: F401
    TENANT_ROUTES,
    _values,
    all_routes,
    objects_a,
)
from tests.ui_support import PASSWORD

SYSTEM = Actor.system("test")
PAYLOAD = '<script>alert("tollgate")</script><img src=x onerror=alert(1)>'
ESCAPED = "&lt;script&gt;alert(&quot;tollgate&quot;)&lt;/script&gt;"
WEB_ROUTES = [r for r in all_routes()
              if not r.is_api and r.route not in ("healthz", "readyz", "metrics")]


# --- CSRF -------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", [r for r in WEB_ROUTES if "tenant_slug" in r.params],
                         ids=lambda r: r.route)
def test_every_tenant_page_refuses_a_post_without_the_csrf_token(route, cast, objects_a,
                                                                 tenant_a):
    """A signed-in admin's browser tricked into posting from another site: refused before the
    view runs, whatever the page (a new page is covered without anyone remembering to)."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(cast["alice"])
    url = route.url(**_values(route, tenant_a.slug, objects_a))
    response = client.post(url, {"name": "x", "outcome": "approve"})
    assert response.status_code == 403, (url, response.status_code)
    assert b"CSRF" in response.content


@pytest.mark.parametrize("path", ["/login/", "/logout/", "/"])
def test_sign_in_and_out_refuse_a_post_without_the_csrf_token(path, victor):
    client = Client(enforce_csrf_checks=True)
    response = client.post(path, {"username": "victor", "password": PASSWORD})
    assert response.status_code == 403


def test_the_api_with_a_session_but_no_csrf_token_writes_nothing(cast, tenant_a):
    """The API also takes the browser session (for the API docs page); DRF then demands the
    CSRF token, so a cross-site form cannot use the admin's session to write."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(cast["alice"])
    response = client.post(f"/api/v1/t/{tenant_a.slug}/agents/", {"name": "csrf-bot"},
                           content_type="application/json")
    assert response.status_code == 403
    assert "CSRF" in response.json()["message"]
    assert not Agent.objects.filter(name="csrf-bot").exists()


# --- Sessions and redirects -------------------------------------------------------------------


def test_signing_in_gives_a_new_session_key(client, victor, settings):
    """Session fixation: a session id planted before sign-in is worthless after it."""
    cookie = settings.SESSION_COOKIE_NAME
    session = client.session
    session["planted"] = True
    session.save()
    planted = session.session_key
    client.cookies[cookie] = planted
    response = client.post("/login/", {"username": "victor", "password": PASSWORD})
    assert response.status_code == 302
    assert client.cookies[cookie].value != planted
    assert not Session.objects.filter(session_key=planted).exists()
    assert client.get("/").status_code == 302  # signed in: sent on to the tenant


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/",
                                    "/\\evil.example/", "https:evil.example"])
def test_sign_in_and_out_never_redirect_off_site(client, victor, target):
    response = client.post(f"/login/?next={target}", {"username": "victor",
                                                      "password": PASSWORD})
    assert response.status_code == 302 and "evil.example" not in response["Location"]
    response = client.post(f"/logout/?next={target}")
    assert response.status_code == 302 and "evil.example" not in response["Location"]


# --- Stored XSS: text from MCP servers and gateways is attacker-controlled ----------------------


@pytest.fixture
def hostile(tenant_a, cast):
    """A server whose tool carries script in every text field, a decision log naming a hostile
    agent and tool, as a compromised MCP server or gateway would send them."""
    server = registry.server_create(tenant=tenant_a, actor=SYSTEM, name="hostile",
                                    transport="streamable-http",
                                    url="http://127.0.0.1:9/mcp", description=PAYLOAD)
    wire = {"name": "evil_tool", "title": PAYLOAD, "description": PAYLOAD,
            "inputSchema": {"type": "object", "properties": {
                "x": {"type": "string", "description": PAYLOAD}}},
            "annotations": {"title": PAYLOAD}}
    definition = ToolDefinition.from_wire(wire)
    registry.tools_record_discovery(tenant=tenant_a, actor=SYSTEM, server=server,
                                    definitions=[(definition, definition.definition_sha256)])
    gateway, _ = make_gateway(tenant_a)
    DecisionLog.objects.create(
        tenant=tenant_a, gateway=gateway, decision_id=str(uuid.uuid4()),
        timestamp=timezone.now(), agent=PAYLOAD[:100], server="hostile", tool=PAYLOAD[:100],
        arguments_sha256="0" * 64, outcome="deny", reason=PAYLOAD)
    return {"server": server, "tool": Tool.objects.get(server=server), "gateway": gateway}


def test_hostile_text_is_shown_escaped_on_every_page_that_shows_it(login, cast, tenant_a,
                                                                   hostile):
    client = login(cast["alice"])
    base = f"/t/{tenant_a.slug}"
    decision = DecisionLog.objects.get(tenant=tenant_a)
    pages = [f"{base}/servers/", f"{base}/servers/{hostile['server'].pk}/",
             f"{base}/tools/{hostile['tool'].pk}/",
             f"{base}/decisions/", f"{base}/decisions/{decision.pk}/", f"{base}/dashboard/"]
    shown = 0
    for page in pages:
        response = client.get(page)
        assert response.status_code == 200, page
        body = response.content.decode()
        assert "<script>alert" not in body, page
        assert "onerror=alert" not in body.replace("onerror=alert(1)&gt;", ""), page
        shown += body.count("&lt;script&gt;alert")
    assert shown >= len(pages) - 1  # the text is there, escaped (not dropped)


# --- Secrets ------------------------------------------------------------------------------------


def test_tokens_and_passwords_never_reach_the_logs(client, api, token_for, cast, tenant_a,
                                                   caplog):
    _, gateway_token = make_gateway(tenant_a)
    api_token = token_for(cast["alice"], tenant_a)
    with caplog.at_level(logging.DEBUG):
        api(api_token).get(f"/api/v1/t/{tenant_a.slug}/agents/")
        api("tg_wrong-but-secret-looking-token").get(f"/api/v1/t/{tenant_a.slug}/agents/")
        Client().get(f"/api/v1/gateway/bundles/{tenant_a.slug}",
                     HTTP_AUTHORIZATION=f"Bearer {gateway_token}")
        client.post("/login/", {"username": "victor", "password": "a-wrong-Secret-9"})
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert caplog.records  # the access log did record these requests
    for secret in (api_token, gateway_token, "tg_wrong-but-secret-looking-token",
                   "a-wrong-Secret-9"):
        assert secret not in logged


def test_the_metrics_token_is_compared_in_constant_time(client, settings, monkeypatch):
    import hmac

    from observability import metrics

    calls = []
    original = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(metrics.hmac, "compare_digest", spy)
    settings.METRICS_TOKEN = "metrics-secret-token-0123456789"
    settings.METRICS_ALLOWED_NETWORKS = []
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer nope").status_code == 401
    assert calls and calls[-1] == (b"nope", b"metrics-secret-token-0123456789")


# --- Bearer-token brute force --------------------------------------------------------------------


def test_unknown_api_tokens_from_one_address_are_throttled(api, token_for, cast, tenant_a,
                                                           settings):
    settings.TOKEN_FAILURE_LIMIT_PER_MINUTE = 5
    address = f"10.9.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"
    url = f"/api/v1/t/{tenant_a.slug}/agents/"
    statuses = [Client(REMOTE_ADDR=address).get(url, HTTP_AUTHORIZATION=f"Bearer tg_guess{i}")
                .status_code for i in range(7)]
    assert statuses == [401] * 5 + [429, 429]
    last = Client(REMOTE_ADDR=address).get(url, HTTP_AUTHORIZATION="Bearer tg_guess-again")
    assert 0 < int(last["Retry-After"]) <= 60
    # A real token from that address still works; another address is not affected.
    good = token_for(cast["alice"], tenant_a)
    assert Client(REMOTE_ADDR=address).get(
        url, HTTP_AUTHORIZATION=f"Bearer {good}").status_code == 200
    assert Client(REMOTE_ADDR="10.8.8.8").get(
        url, HTTP_AUTHORIZATION="Bearer tg_other").status_code == 401


def test_unknown_gateway_tokens_from_one_address_are_throttled(tenant_a, settings):
    settings.TOKEN_FAILURE_LIMIT_PER_MINUTE = 3
    _, token = make_gateway(tenant_a)
    address = f"10.7.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"
    url = f"/api/v1/gateway/bundles/{tenant_a.slug}"
    statuses = [Client(REMOTE_ADDR=address).get(url, HTTP_AUTHORIZATION=f"Bearer gw_{i}")
                .status_code for i in range(5)]
    assert statuses == [401] * 3 + [429, 429]
    refused = Client(REMOTE_ADDR=address).get(url, HTTP_AUTHORIZATION="Bearer gw_again")
    assert refused.json()["code"] == "rate_limited" and int(refused["Retry-After"]) > 0
    # The real gateway behind the same address keeps polling (no bundle yet: not a 401/429).
    answer = Client(REMOTE_ADDR=address).get(url, HTTP_AUTHORIZATION=f"Bearer {token}")
    assert answer.status_code not in (401, 429)
    assert Gateway.objects.filter(tenant=tenant_a).count() == 1
    assert McpServer.objects.count() == 0
