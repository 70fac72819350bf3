"""factory_boy factories. Tenant-owned rows are created through services where it matters
(audit events), directly otherwise."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import factory
from django.contrib.auth import get_user_model
from django.utils import timezone

from governance.audit.services import Actor
from governance.tenancy import services
from governance.tenancy.models import IdpGroupMapping, Membership, Tenant
from governance.tenancy.roles import Role
from registry.tool_definition import ToolDefinition, definition_sha256


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


def actions(tenant, n: int) -> list[tuple[str, str]]:
    """The last ``n`` audit events of the tenant, oldest first: (action, actor type)."""
    from governance.audit.models import AuditEvent

    events = AuditEvent.objects.filter(tenant=tenant).order_by("-seq")[:n]
    return [(e.action, e.actor_type) for e in events][::-1]
