"""factory_boy factories. Every row is created through its service, so each records the audit
events the service records (in the service's order), as the product would.

Registry and gateway factories act as ``SYSTEM`` (``Actor.system("test")``). Their defaults make
something usable: a server is active, a tool is approved, an agent is active; pass ``status`` to
get another state (reached through the same transitions a person would make)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import factory
from django.contrib.auth import get_user_model
from django.utils import timezone

from bundles import services as bundles
from bundles.models import Gateway
from governance.audit.services import Actor
from governance.tenancy import services
from governance.tenancy.models import IdpGroupMapping, Membership, Tenant
from governance.tenancy.roles import Role
from registry import services as registry
from registry.models import Agent, Grant, McpServer, Tool, ToolScope
from registry.tool_definition import ToolDefinition, definition_sha256

SYSTEM = Actor.system("test")
IDP = "https://idp.example"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    password = factory.django.Password("correct horse battery staple")


class TenantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tenant

    slug = factory.Sequence(lambda n: f"tenant-{n}")
    name = factory.LazyAttribute(lambda t: t.slug.title())

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        return services.tenant_create(actor=Actor.system("test"), slug=kwargs["slug"],
                                      name=kwargs["name"])


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    tenant = factory.SubFactory(TenantFactory)
    user = factory.SubFactory(UserFactory)
    role = Role.VIEWER
    source = Membership.Source.MANUAL

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        return services.membership_create(actor=Actor.system("test"), **kwargs)


class GroupMappingFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = IdpGroupMapping

    tenant = factory.SubFactory(TenantFactory)
    group = factory.Sequence(lambda n: f"group-{n}")
    role = Role.VIEWER

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        return services.group_mapping_create(actor=Actor.system("test"), **kwargs)


def make_token(tenant, *, user=None, role=Role.VIEWER, kind="personal", days=30, name="t"):
    """An API token through the service: returns (token, plaintext)."""
    return services.api_token_create(
        tenant=tenant, actor=Actor.system("test"), created_by=user, kind=kind, name=name,
        role=role, expires_at=timezone.now() + timedelta(days=days), owner=user,
    )


@dataclass
class Def:
    """A tool definition as discovery hands it to ``tools_record_discovery``."""

    name: str
    description: str = "does a thing"
    title: str = ""
    input_schema: dict = field(default_factory=lambda: {"type": "object"})
    output_schema: dict | None = None
    annotations: dict = field(default_factory=dict)


def def_sha(d: Def) -> str:
    """The real contract hash (registry.tool_definition), the one gateways recompute."""
    return definition_sha256(ToolDefinition(
        name=d.name, title=d.title, description=d.description, input_schema=d.input_schema,
        output_schema=d.output_schema, annotations=d.annotations))


def _definition(tool: Tool) -> Def:
    """A stored tool's pinned definition, as its server would list it again."""
    return Def(name=tool.name, description=tool.description, title=tool.title,
               input_schema=tool.input_schema, output_schema=tool.output_schema,
               annotations=tool.annotations)


# --- The registry and the gateways ---------------------------------------------------------------

# The transitions (registry services) from a new server or agent to each status.
SERVER_PATHS = {"pending": (), "active": ("active",), "suspended": ("active", "suspended"),
                "retired": ("retired",)}
AGENT_PATHS = {"active": (), "suspended": ("suspended",)}


class ServerFactory(factory.django.DjangoModelFactory):
    """An MCP server (``server.created``), then moved to ``status`` (``server.active`` …)."""

    class Meta:
        model = McpServer

    tenant = factory.SubFactory(TenantFactory)
    name = factory.Sequence(lambda n: f"server-{n}")
    transport = McpServer.Transport.STREAMABLE_HTTP
    url = factory.LazyAttribute(lambda s: "" if s.transport == McpServer.Transport.STDIO
                                else f"https://{s.name}.example/mcp")
    status = McpServer.Status.ACTIVE

    @classmethod
    def _create(cls, model_class, *args, tenant, status, **kwargs):
        server = registry.server_create(tenant=tenant, actor=SYSTEM, **kwargs)
        for step in SERVER_PATHS[status]:
            server = registry.server_transition(tenant=tenant, actor=SYSTEM, server=server,
                                                status=step)
        return server


class ToolFactory(factory.django.DjangoModelFactory):
    """One tool of ``server``: a discovery listing the server's present tools (unchanged, so
    nothing recorded for them) and this one (``tool.discovered``), then ``status``: approved
    (``tool.approved``, the default), blocked (``tool.blocked``) or pending_review.

    ``ToolFactory.listed`` records a whole ``tools/list`` at once, as one sync does."""

    class Meta:
        model = Tool

    server = factory.SubFactory(ServerFactory)
    name = factory.Sequence(lambda n: f"tool-{n}")
    description = "does a thing"
    title = ""
    input_schema = factory.LazyFunction(lambda: {"type": "object"})
    output_schema = None
    annotations = factory.LazyFunction(dict)
    status = Tool.Status.APPROVED

    @classmethod
    def _create(cls, model_class, *args, server, status, **fields):
        listed = [_definition(t) for t in Tool.objects.filter(server=server, present=True)
                  .exclude(name=fields["name"]).order_by("pk")]
        return cls.listed(server, [*listed, Def(**fields)], **{
            Tool.Status.APPROVED: {"approved": [fields["name"]]},
            Tool.Status.BLOCKED: {"blocked": [fields["name"]]},
            Tool.Status.PENDING_REVIEW: {},
        }[status])[fields["name"]]

    @staticmethod
    def listed(server, definitions, *, approved=(), blocked=()) -> dict[str, Tool]:
        """``server`` lists ``definitions`` (names, ``Def`` or discovered ``ToolDefinition``):
        one discovery, then the tools named in ``approved`` approved and those in ``blocked``
        blocked, in that order. Returns the server's tools by name."""
        definitions = [Def(d) if isinstance(d, str) else d for d in definitions]
        registry.tools_record_discovery(tenant=server.tenant, actor=SYSTEM, server=server,
                                        definitions=[(d, def_sha(d)) for d in definitions])
        tools = {t.name: t for t in Tool.objects.filter(server=server)}
        for name in approved:
            tools[name] = registry.tool_approve(tenant=server.tenant, actor=SYSTEM,
                                                tool=tools[name])
        for name in blocked:
            tools[name] = registry.tool_block(tenant=server.tenant, actor=SYSTEM,
                                              tool=tools[name])
        return tools


class ScopeFactory(factory.django.DjangoModelFactory):
    """A tool scope (``scope.created``) holding ``tools``."""

    class Meta:
        model = ToolScope

    tenant = factory.SubFactory(TenantFactory)
    name = factory.Sequence(lambda n: f"scope-{n}")
    description = ""
    risk_level = ToolScope._meta.get_field("risk_level").default
    data_classes = ()
    tools = ()

    @classmethod
    def _create(cls, model_class, *args, tenant, **kwargs):
        return registry.scope_create(tenant=tenant, actor=SYSTEM, **kwargs)


class AgentFactory(factory.django.DjangoModelFactory):
    """An agent (``agent.created``), its ``principals`` — (issuer, subject) pairs, (issuer, client
    id, "client") triples, or subjects of ``IDP`` — added (``agent.principal_added`` each),
    then moved to ``status``."""

    class Meta:
        model = Agent

    tenant = factory.SubFactory(TenantFactory)
    name = factory.Sequence(lambda n: f"agent-{n}")
    owner = None
    purpose = ""
    environment = ""
    principals = ()
    status = Agent.Status.ACTIVE

    @classmethod
    def _create(cls, model_class, *args, tenant, principals, status, **kwargs):
        agent = registry.agent_create(tenant=tenant, actor=SYSTEM, **kwargs)
        for principal in principals:  # (issuer, subject[, kind]) or a subject of IDP
            issuer, subject, *kind = (IDP, principal) if isinstance(principal, str) \
                else principal
            registry.agent_principal_add(tenant=tenant, actor=SYSTEM, agent=agent,
                                         issuer=issuer, subject=subject, kind=(kind or
                                                                              ["subject"])[0])
        for step in AGENT_PATHS[status]:
            agent = registry.agent_transition(tenant=tenant, actor=SYSTEM, agent=agent,
                                              status=step)
        return agent


class GrantFactory(factory.django.DjangoModelFactory):
    """A grant of ``scope`` to ``agent`` (``grant.created``); every term of ``grant_create``
    (limits, window, constraints, ``approval_mode``, ``expires_at``) can be passed."""

    class Meta:
        model = Grant

    tenant = factory.SubFactory(TenantFactory)
    agent = factory.SubFactory(AgentFactory, tenant=factory.SelfAttribute("..tenant"))
    scope = factory.SubFactory(ScopeFactory, tenant=factory.SelfAttribute("..tenant"))

    @classmethod
    def _create(cls, model_class, *args, tenant, **kwargs):
        return registry.grant_create(tenant=tenant, actor=SYSTEM, **kwargs)


class GatewayFactory(factory.django.DjangoModelFactory):
    """A gateway (``gateway.created``) and, unless ``token`` is None, a token of that name
    (``gateway.token_issued``) whose plaintext is ``gateway.plaintext_token``."""

    class Meta:
        model = Gateway

    tenant = factory.SubFactory(TenantFactory)
    name = factory.Sequence(lambda n: f"edge-{n}")
    description = ""
    labels = factory.LazyFunction(dict)
    token = "primary"

    @classmethod
    def _create(cls, model_class, *args, tenant, token, **kwargs):
        gateway = bundles.gateway_create(tenant=tenant, actor=SYSTEM, **kwargs)
        gateway.plaintext_token = None
        if token is not None:
            _, gateway.plaintext_token = bundles.gateway_token_issue(
                tenant=tenant, actor=SYSTEM, gateway=gateway, name=token)
        return gateway


def actions(tenant, n: int) -> list[tuple[str, str]]:
    """The last ``n`` audit events of the tenant, oldest first: (action, actor type)."""
    from governance.audit.models import AuditEvent

    events = AuditEvent.objects.filter(tenant=tenant).order_by("-seq")[:n]
    return [(e.action, e.actor_type) for e in events][::-1]
