"""Writes to agents and their principals: create, edit, suspend/reactivate."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from guardian.shortcuts import assign_perm, remove_perm

from governance.audit.services import Actor, audit_record
from governance.tenancy.models import Membership, Tenant
from registry.models import Agent, AgentPrincipal
from registry.services.common import transition

AGENT_PERMISSION = "registry.manage_agent"


@transaction.atomic
def agent_create(
    *,
    tenant: Tenant,
    actor: Actor,
    name: str,
    owner: AbstractBaseUser | None,
    purpose: str = "",
    environment: str = "",
) -> Agent:
    """Register an agent; its owner gets the object permission to manage it."""
    if owner is not None and not Membership.objects.for_tenant(tenant).filter(user=owner).exists():
        raise ValidationError({"owner": "The owner must be a member of this tenant."})
    agent = Agent(
        tenant=tenant, name=name.strip(), owner=owner, purpose=purpose, environment=environment
    )
    agent.full_clean(exclude=["tenant", "owner"], validate_unique=False)
    if Agent.objects.for_tenant(tenant).filter(name=agent.name).exists():
        raise ValidationError({"name": f"An agent named {agent.name!r} already exists."})
    agent.save()
    if owner is not None:
        assign_perm(AGENT_PERMISSION, owner, agent)
    audit_record(
        tenant=tenant,
        actor=actor,
        action="agent.created",
        obj=agent,
        after=agent.audit_snapshot(),
    )
    return agent


AGENT_FIELDS = ("name", "purpose", "environment")


@transaction.atomic
def agent_update(*, tenant: Tenant, actor: Actor, agent: Agent, **changes: Any) -> Agent:
    """Change an agent's name, purpose, environment or owner (the owner permission moves)."""
    agent = Agent.objects.for_tenant(tenant).select_for_update().get(pk=agent.pk)
    unknown = set(changes) - set(AGENT_FIELDS) - {"owner"}
    if unknown:
        raise ValidationError(f"Cannot change {', '.join(sorted(unknown))} here.")
    before = agent.audit_snapshot()
    old_owner = agent.owner
    if "owner" in changes:
        owner = changes.pop("owner")
        if owner is not None and not Membership.objects.for_tenant(tenant).filter(
            user=owner
        ).exists():
            raise ValidationError({"owner": "The owner must be a member of this tenant."})
        agent.owner = owner
    for field, value in changes.items():
        setattr(agent, field, value.strip() if field == "name" else value)
    agent.full_clean(exclude=["tenant", "owner"], validate_unique=False)
    if Agent.objects.for_tenant(tenant).filter(name=agent.name).exclude(pk=agent.pk).exists():
        raise ValidationError({"name": f"An agent named {agent.name!r} already exists."})
    agent.save()
    if agent.owner != old_owner:
        if old_owner is not None:
            remove_perm(AGENT_PERMISSION, old_owner, agent)
        if agent.owner is not None:
            assign_perm(AGENT_PERMISSION, agent.owner, agent)
    audit_record(tenant=tenant, actor=actor, action="agent.updated", obj=agent, before=before,
                 after=agent.audit_snapshot())
    return agent


@transaction.atomic
def agent_transition(*, tenant: Tenant, actor: Actor, agent: Agent, status: str) -> Agent:
    """Suspend or reactivate an agent."""
    return transition(tenant=tenant, actor=actor, obj=agent, noun="agent", status=status,
                       refusal="This agent is {current}; it cannot become {wanted}.")


@transaction.atomic
def agent_principal_add(
    *, tenant: Tenant, actor: Actor, agent: Agent, issuer: str, subject: str,
    kind: str = AgentPrincipal.Kind.SUBJECT,
) -> AgentPrincipal:
    """Add an (issuer, subject) pair — a token subject, or an OAuth client id (``kind``); it may
    identify only one agent in the tenant, whichever its kind."""
    issuer, subject = issuer.strip(), subject.strip()
    if not issuer or not subject:
        raise ValidationError("Both issuer and subject are required.")
    if kind not in AgentPrincipal.Kind.values:
        raise ValidationError({"kind": f"Use one of {', '.join(AgentPrincipal.Kind.values)}."})
    taken = AgentPrincipal.objects.for_tenant(tenant).filter(issuer=issuer, subject=subject)
    if taken.exists():
        raise ValidationError(
            {
                "subject": f"{subject!r} from {issuer!r} already identifies "
                f"agent {taken.get().agent.name!r}."
            }
        )
    try:
        with transaction.atomic():
            principal = AgentPrincipal.objects.create(
                tenant=tenant, agent=agent, issuer=issuer, subject=subject, kind=kind
            )
    except IntegrityError:  # a concurrent add won the race
        raise ValidationError({"subject": "This principal is already in use."}) from None
    audit_record(
        tenant=tenant,
        actor=actor,
        action="agent.principal_added",
        obj=agent,
        after={"issuer": issuer, "subject": subject, "kind": kind},
    )
    return principal


@transaction.atomic
def agent_principal_remove(*, tenant: Tenant, actor: Actor, principal: AgentPrincipal) -> None:
    """Remove a principal: gateways stop recognising the agent by it."""
    agent = principal.agent
    audit_record(
        tenant=tenant,
        actor=actor,
        action="agent.principal_removed",
        obj=agent,
        before={"issuer": principal.issuer, "subject": principal.subject,
                "kind": principal.kind},
    )
    principal.delete()
