"""The tenancy contract, for every URL the project has (new URLs are covered automatically).

For each tenant-scoped pattern (one with ``<tenant_slug>``):
- anonymous: the web UI sends to the login page, the API answers 401;
- an outsider (admin of tenant B, by session or by B's API token): 404, whatever the method;
- tenant B's admin asking for tenant A's object under B's own slug: 404;
- a member of A whose role lacks the capability the view declares: 403.
A pattern whose object kwarg the test cannot fill, or a new URL outside tenants that is not
listed below, fails the test: decide consciously how it is protected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone

from alerts.models import Alert, AlertRule
from alerts.services import alert_rules_for
from approvals import selectors as approval_selectors
from approvals import services as approval_services
from approvals.models import AccessRequest, ApprovalPolicy, Escalation
from bundles import services as bundle_services
from bundles.models import Bundle, Gateway, GatewayToken, SigningKey
from bundles.publish import bundle_publish
from decision_logs.models import DecisionLog, DecisionRollup, ReplayRun
from evidence.models import EvidencePack
from exports.models import Exporter
from governance.audit.models import AuditEvent
from governance.audit.services import Actor
from governance.tenancy.access import TenantContext
from governance.tenancy.invitations import invitation_create
from governance.tenancy.models import ApiToken, IdpGroupMapping, Invitation, Membership
from governance.tenancy.roles import IDENTITY_CAPABILITIES, Role
from notifications.models import Channel, Delivery
from registry import models as registry
from scim import services as scim_services
from scim.models import ScimGroup, ScimGroupMember, ScimToken, ScimUser
from tests.factories import GroupMappingFactory, make_token

# Patterns outside any tenant, and why they are safe.
NON_TENANT_PATTERNS = {
    "": "tenant picker: login required, shows only the caller's memberships",
    "healthz": "liveness probe, no data",
    "readyz": "readiness probe: which dependency checks pass, no data and no secrets",
    "login/": "sign-in page",
    "logout/": "sign-out, POST only",
    "oidc/authenticate/": "starts OIDC (404 when not configured)",
    "oidc/callback/": "OIDC callback (404 when not configured)",
    "oidc/backchannel-logout/": "IdP to Tollgate, POST only: acts only on a logout token "
                                "signed by the configured IdP's keys (404 when not configured)",
    "api/v1/me/": "who-am-I for the caller only (401 anonymous)",
    "api/v1/schema/": "OpenAPI schema (401 anonymous)",
    "api/schema/": "OpenAPI schema, same document (401 anonymous; no tenant data, only paths)",
    "api/docs/": "Swagger UI over api/schema/ (anonymous → login page; its ?script is the same "
                 "view; calls go through the tenant API's own checks)",
    # The gateway API authenticates machines by gateway token; the token names its tenant, and
    # tests/bundles/test_gateway_api.py proves 401 (none/unknown/revoked) and 404 (another
    # tenant's slug).
    "api/v1/gateway/bundles/<slug:slug>": "gateway: the tenant's signed bundle",
    "api/v1/gateway/keys/<slug:slug>": "gateway: the tenant's JWKS",
    "api/v1/gateway/status": "gateway: OPA status report of the calling gateway",
    "api/v1/gateway/status/<slug:slug>": "gateway: the same, with the tenant in the path",
    # Escalations of the token's tenant only; tests/approvals/test_escalations.py proves 401 and
    # that another tenant's gateway gets 404 for an escalation id it did not create.
    "api/v1/gateway/escalations": "gateway: create an escalation (idempotent on call_id)",
    "api/v1/gateway/escalations/<uuid:escalation_id>": "gateway: an escalation, long-polled",
    "api/v1/gateway/escalations/<uuid:escalation_id>/consume": "gateway: spend the approval",
    # non-tenant: decisions
    # The token's tenant only (the URL names none); tests/decision_logs/test_decision_logs.py
    # proves 401 and that a gateway's rows land in its own tenant and are never visible to another.
    "api/v1/gateway/logs": "gateway: upload OPA decision logs of the calling gateway",
    # Servers bound to the calling gateway only; tests/registry/test_gateway_discovery.py proves
    # 401, and 404 for a server of another tenant or one not bound to the gateway.
    "api/v1/gateway/discovery": "gateway: report the tools of a server it fronts",
    # non-tenant: observability
    # Prometheus exposition: Bearer METRICS_TOKEN or a client in METRICS_ALLOWED_NETWORKS, else
    # 403 (401 for a wrong token); tests/observability/test_metrics.py proves each case.
    "metrics": "Prometheus metrics (token or allowed network; aggregate numbers only)",
    # non-tenant: scim
    # SCIM 2.0 (RFC 7644) by the tenant's SCIM bearer token, whose tenant must be the one in
    # the path; tests/scim/test_endpoint.py proves 401 (none, unknown, revoked) and 404 (a token
    # of another tenant, another tenant's resource).
    "^scim/v2/(?P<scim_tenant>[a-z0-9-]{1,50})(?P<scim_path>/.*)?$":
        "SCIM Users, Groups and discovery of the token's tenant",
}

# Which model an object kwarg names, for web patterns; API viewsets name it with ``pk``.
KWARG_MODELS = {
    "membership_id": Membership,
    "mapping_id": IdpGroupMapping,
    "invitation_id": Invitation,
    "token_id": ApiToken,
    "event_id": AuditEvent,
    "server_id": registry.McpServer,
    "sync_id": registry.ServerSync,
    "tool_id": registry.Tool,
    "scope_id": registry.ToolScope,
    "agent_id": registry.Agent,
    "principal_id": registry.AgentPrincipal,
    "grant_id": registry.Grant,
    "gateway_id": Gateway,
    "gateway_token_id": GatewayToken,
    "binding_id": registry.GatewayBinding,
    "key_id": SigningKey,
    "bundle_id": Bundle,
    "channel_id": Channel,
    "request_id": AccessRequest,
    "policy_id": ApprovalPolicy,
    "escalation_id": Escalation,
    # kwargs: decisions
    "decision_pk": DecisionLog,
    "replay_id": ReplayRun,
    # kwargs: exports
    "exporter_id": Exporter,
    # kwargs: alerts
    "alert_id": Alert,
    # kwargs: evidence
    "pack_id": EvidencePack,
    # kwargs: scim
    "scim_token_id": ScimToken,
}

# ``<converter:name>`` (path()) or ``(?P<name>regex)`` (DRF routers' re_path()).
PARAM = re.compile(r"\(\?P<(?P<rx>\w+)>[^)]*\)|<(?:[^>:]+:)?(?P<name>[^>]+)>")


@dataclass
class Route:
    route: str
    callback: object

    @property
    def params(self) -> list[str]:
        return [m.group("rx") or m.group("name") for m in PARAM.finditer(self.route)]

    @property
    def is_api(self) -> bool:
        return self.route.startswith("api/")

    @property
    def view_class(self):
        return getattr(self.callback, "view_class", None) or getattr(self.callback, "cls", None)

    def url(self, **values) -> str:
        def fill(match):
            return str(values[match.group("rx") or match.group("name")])

        path = PARAM.sub(fill, self.route)
        path = path.replace("^", "").replace("$", "").replace("\\.", ".")
        return "/" + path

    def model_for(self, param: str):
        if param == "pk":
            return getattr(self.view_class, "model", None)
        return KWARG_MODELS.get(param)

    def capability(self, method: str):
        cls = self.view_class
        actions = getattr(self.callback, "actions", None)
        if actions is not None:  # DRF viewset
            action = actions.get(method.lower())
            if action is None:
                return None
            caps = cls.capabilities
            return caps.get(action, caps["*"])
        if hasattr(cls, "capabilities"):  # DRF APIView
            return cls.capabilities.get(method.lower(), cls.capabilities["*"])
        if method == "GET":
            return getattr(cls, "capability", None)
        return getattr(cls, "post_capability", None) or getattr(cls, "capability", None)


def _walk(patterns, prefix=""):
    for p in patterns:
        if isinstance(p, URLResolver):
            yield from _walk(p.url_patterns, prefix + str(p.pattern))
        elif isinstance(p, URLPattern):
            yield Route(prefix + str(p.pattern), p.callback)


def all_routes() -> list[Route]:
    routes = []
    for route in _walk(get_resolver().url_patterns):
        if route.route.endswith("\\.(?P<format>[a-z0-9]+)/?$"):
            continue  # DRF format-suffix variants are the same views
        routes.append(route)
    return routes


TENANT_ROUTES = [r for r in all_routes() if "tenant_slug" in r.params]


def test_every_non_tenant_url_is_accounted_for():
    others = {r.route for r in all_routes() if "tenant_slug" not in r.params}
    assert others == set(NON_TENANT_PATTERNS), (
        "A URL outside /t/<tenant>/ and /api/v1/t/<tenant>/ appeared or vanished; say in "
        "NON_TENANT_PATTERNS why it is safe."
    )


def test_there_are_tenant_routes_to_check():
    assert len(TENANT_ROUTES) >= 15


@pytest.fixture
def objects_a(cast, tenant_a):
    """One object of tenant A per model a URL can name."""
    alice = cast["alice"]
    token, _ = make_token(tenant_a, user=alice, role=Role.ADMIN)
    server = registry.McpServer.objects.create(
        tenant=tenant_a, name="payroll", transport="streamable-http", url="http://127.0.0.1:9/mcp"
    )
    tool = registry.Tool.objects.create(
        tenant=tenant_a, server=server, name="read_salary", definition_sha256="0" * 64
    )
    scope = registry.ToolScope.objects.create(tenant=tenant_a, name="payroll:read")
    scope.tools.add(tool)
    agent = registry.Agent.objects.create(tenant=tenant_a, name="payroll-bot", owner=cast["dave"])
    bundle = bundle_publish(tenant=tenant_a, trigger="test")  # also creates the signing key
    gateway = bundle_services.gateway_create(tenant=tenant_a, actor=Actor.system("test"),
                                             name="edge-1")
    gateway_token, _ = bundle_services.gateway_token_issue(
        tenant=tenant_a, actor=Actor.system("test"), gateway=gateway, name="k8s")
    channel = Channel.objects.create(tenant=tenant_a, name="ops", kind="email",
                                     addresses=["ops@example.com"])
    objects = {
        registry.McpServer: server,
        registry.ServerSync: registry.ServerSync.objects.create(
            tenant=tenant_a, server=server, status="failed"
        ),
        registry.Tool: tool,
        registry.ToolScope: scope,
        registry.Agent: agent,
        registry.AgentPrincipal: registry.AgentPrincipal.objects.create(
            tenant=tenant_a, agent=agent, issuer="https://idp.example", subject="payroll-bot"
        ),
        registry.Grant: registry.Grant.objects.create(tenant=tenant_a, agent=agent, scope=scope),
        Membership: Membership.objects.for_tenant(tenant_a).get(user=cast["victor"]),
        IdpGroupMapping: GroupMappingFactory(tenant=tenant_a, group="a-group"),
        Invitation: invitation_create(tenant=tenant_a, actor=Actor.system("test"),
                                      invited_by=alice, email="invitee@example.com",
                                      role=Role.VIEWER),
        ApiToken: token,
        AuditEvent: AuditEvent.objects.filter(tenant=tenant_a).first(),
        Gateway: gateway,
        GatewayToken: gateway_token,
        registry.GatewayBinding: registry.GatewayBinding.objects.create(
            tenant=tenant_a, gateway=gateway, server=server),
        SigningKey: bundle.key,
        Bundle: bundle,
        Channel: channel,
        Delivery: Delivery.objects.create(tenant=tenant_a, channel=channel,
                                          event="notification.test", subject="test"),
        AccessRequest: approval_services.access_request_create(
            tenant=tenant_a, actor=Actor.system("test"), requester=alice, agent=agent,
            scope=scope, duration_minutes=60, justification="contract"),
        ApprovalPolicy: approval_services.approval_policy_save(
            tenant=tenant_a, actor=Actor.system("test"), scope=scope,
            stages=[{"approvals_required": 1, "roles": ["approver"]}]),
        Escalation: Escalation.objects.create(
            tenant=tenant_a, gateway=gateway, call_id="c-1", agent=agent, scope=scope,
            server="payroll", tool="read_salary", arguments_sha256="0" * 64,
            stages=approval_selectors.BUILT_IN_STAGES,
            deadline=timezone.now() + timedelta(minutes=15)),
    }
    # objects: decisions
    objects[DecisionLog] = DecisionLog.objects.create(
        tenant=tenant_a, gateway=gateway, decision_id="d-1", timestamp=timezone.now(),
        server="payroll", tool="read_salary", arguments_sha256="0" * 64, outcome="deny")
    objects[ReplayRun] = ReplayRun.objects.create(tenant=tenant_a, days=7, status="done")
    # objects: exports
    objects[Exporter] = Exporter.objects.create(
        tenant=tenant_a, name="siem", kind="syslog_udp", stream="audit", host="127.0.0.1",
        port=9)
    # objects: alerts
    objects[Alert] = Alert.objects.create(tenant=tenant_a, rule_kind="gateway_stale",
                                          key=f"gateway:{gateway.pk}", subject="edge-1 stale",
                                          severity="warning")
    objects[AlertRule] = alert_rules_for(tenant_a)["denial_burst"]
    # objects: evidence
    objects[EvidencePack] = EvidencePack.objects.create(
        tenant=tenant_a, period_start=timezone.now().date() - timedelta(days=7),
        period_end=timezone.now().date(), status="done", progress=100, content=b"PK\x05\x06",
        size=4, sha256="0" * 64)
    # objects: scim
    objects[ScimToken] = scim_services.scim_token_create(
        tenant=tenant_a, actor=Actor.system("test"), created_by=alice, name="Okta")[0]
    return objects


def _values(route: Route, slug: str, objects: dict) -> dict:
    values = {"tenant_slug": slug}
    for param in route.params:
        if param == "tenant_slug":
            continue
        model = route.model_for(param)
        assert model in objects, (
            f"{route.route}: the contract test cannot fill <{param}>; add its model to "
            "KWARG_MODELS and an object to objects_a"
        )
        values[param] = objects[model].pk
    return values


def _call(client, method: str, url: str):
    return getattr(client, method.lower())(url)


WEB_METHODS = ["GET", "POST"]
API_METHODS = ["GET", "POST", "PATCH", "DELETE"]


@pytest.mark.parametrize("route", TENANT_ROUTES, ids=lambda r: r.route)
def test_anonymous_is_sent_to_login_or_gets_401(route, client, api, objects_a, tenant_a):
    url = route.url(**_values(route, tenant_a.slug, objects_a))
    for method in API_METHODS if route.is_api else WEB_METHODS:
        response = _call(api() if route.is_api else client, method, url)
        if route.is_api:
            assert response.status_code == 401, (method, url, response.status_code)
            assert response["WWW-Authenticate"].startswith("Bearer")
        else:
            assert response.status_code == 302, (method, url, response.status_code)
            assert response["Location"].startswith("/login/?next=")


@pytest.mark.parametrize("route", TENANT_ROUTES, ids=lambda r: r.route)
def test_outsider_gets_404(route, login, api, token_for, cast, objects_a, tenant_a, tenant_b):
    oscar = cast["oscar"]
    url = route.url(**_values(route, tenant_a.slug, objects_a))
    clients = [login(oscar)]
    if route.is_api:
        clients.append(api(token_for(oscar, tenant_b)))
    for client in clients:
        for method in API_METHODS if route.is_api else WEB_METHODS:
            response = _call(client, method, url)
            assert response.status_code == 404, (method, url, response.status_code)


@pytest.mark.parametrize(
    "route", [r for r in TENANT_ROUTES if len(r.params) > 1], ids=lambda r: r.route
)
def test_other_tenants_object_is_404_in_own_tenant(
    route, login, api, token_for, cast, objects_a, tenant_b
):
    oscar = cast["oscar"]
    url = route.url(**_values(route, tenant_b.slug, objects_a))
    client = api(token_for(oscar, tenant_b)) if route.is_api else login(oscar)
    for method in API_METHODS if route.is_api else WEB_METHODS:
        response = _call(client, method, url)
        if response.status_code == 405:
            continue  # the pattern does not take this method at all
        assert response.status_code == 404, (method, url, response.status_code)


@pytest.mark.parametrize("route", TENANT_ROUTES, ids=lambda r: r.route)
def test_member_without_the_capability_gets_403(
    route, login, api, token_for, cast, objects_a, tenant_a
):
    url = route.url(**_values(route, tenant_a.slug, objects_a))
    checked = 0
    for method in API_METHODS if route.is_api else WEB_METHODS:
        cap = route.capability(method)
        if cap is None:
            continue
        for name in ("victor", "dave", "audrey", "bob"):
            user = cast[name]
            membership = Membership.objects.get(tenant=tenant_a, user=user)
            ctx = TenantContext(tenant=tenant_a, role=membership.role, user=user,
                                membership=membership)
            if ctx.can(cap):
                continue
            client = api(token_for(user, tenant_a)) if route.is_api else login(user)
            response = _call(client, method, url)
            assert response.status_code == 403, (name, method, url, response.status_code)
            checked += 1
    if checked == 0:
        # Every role may use it: make sure that is really meant.
        assert route.capability("GET") is not None


@pytest.mark.parametrize(
    "route", [r for r in TENANT_ROUTES if r.is_api], ids=lambda r: r.route
)
def test_a_service_token_never_administers_identity(route, api, cast, objects_a, tenant_a):
    """Members, invitations, group mappings and tokens: 403 for a service token of any role,
    even admin (issue 17 point 4), on every method of every such URL, present or future."""
    _, plaintext = make_token(tenant_a, user=cast["alice"], kind="service", role=Role.ADMIN)
    url = route.url(**_values(route, tenant_a.slug, objects_a))
    checked = 0
    for method in API_METHODS:
        if route.capability(method) not in IDENTITY_CAPABILITIES:
            continue
        response = _call(api(plaintext), method, url)
        assert response.status_code == 403, (method, url, response.status_code)
        checked += 1
    if re.search(r"\^(members|invitations|group-mappings|tokens)/", route.route):
        assert checked, route.route


def test_every_tenant_model_is_covered_by_the_contract():
    """A new tenant-owned model must be reachable by the checks above, or say why not."""
    from django.apps import apps

    from approvals.models import ApprovalDecision, ApprovalStage
    from governance.tenancy.models import TenantScopedModel

    # Each entry is a promise: remove it when the model's URLs land.
    not_exposed: dict[type, str] = {
        ApprovalStage: "part of a policy: shown and changed only with its policy "
                       "(approval-policies/, approvals/policies/<policy_id>/)",
        ApprovalDecision: "part of a request: made through access-requests/<pk>/decide and "
                          "approvals/requests/<request_id>/decide/, shown with the request",
        # not exposed: scim
        ScimUser: "provisioned by the IdP on /scim/v2/<tenant>/Users with the tenant's SCIM "
                  "token only (tests/scim prove 401 and 404); no page or admin API names it",
        ScimGroup: "provisioned on /scim/v2/<tenant>/Groups like ScimUser",
        ScimGroupMember: "part of a ScimGroup (its members), written only with it",
        # not exposed: decisions
        DecisionRollup: "derived counts of decision_pk rows (hour × outcome), read only by "
                        "the dashboard's charts and /metrics, never addressed by id",
    }
    covered = set(KWARG_MODELS.values()) | {
        getattr(r.view_class, "model", None) for r in TENANT_ROUTES
    }
    for model in apps.get_models():
        if issubclass(model, TenantScopedModel) and model not in not_exposed:
            assert model in covered, (
                f"{model.__name__} is tenant-owned but no URL of the contract test names it"
            )
