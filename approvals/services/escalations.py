"""Runtime escalations (DESIGN.md §5): a gateway holds a tool call its grant says needs a
human's approval and asks here; approvers decide it like an access request (the rules:
``approvals.services.decisions``); an approval is spent once, with a short-lived receipt."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import jwt
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.cache import cache
from django.db import transaction
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from approvals import notices
from approvals.models import Decidable, Escalation
from approvals.selectors import member_users, policy_rules
from approvals.services.decisions import (
    Outcome,
    announce,
    deadline_passed,
    decide_item,
    locked,
)
from bundles import keys
from bundles.models import Gateway
from bundles.services import gateway_actor, signing_key_for_build
from governance.audit.services import Actor, audit_record
from governance.tenancy.models import Tenant
from governance.tenancy.roles import Cap, roles_with
from notifications.services import notify
from registry.compiler import escalation_settings
from registry.models import Agent, Grant, Tool

RECEIPT_TYPE = "tollgate-receipt+jwt"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class Refused(Exception):
    """An escalation call the gateway API answers with an error: ``status``, ``code``,
    ``message`` (and ``retry_after`` for a flood)."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = (status, code, message,
                                                                  retry_after)



def _in_force(now: datetime) -> Q:
    return Q(status=Grant.Status.ACTIVE) & (Q(expires_at__isnull=True) | Q(expires_at__gt=now))


def _flood_alert(tenant: Tenant, gateway: Gateway, agent: Agent, count: int,
                 now: datetime) -> None:
    """Once per agent and minute: an audit event and a notification to the alert channels."""
    if not cache.add(f"approvals:flood:{agent.pk}:{int(now.timestamp()) // 60}", 1, 120):
        return
    with transaction.atomic():
        audit_record(tenant=tenant, actor=gateway_actor(gateway), action="escalation.flood",
                     obj=agent, after={"agent": agent.name, "gateway": gateway.name,
                                       "in_last_minute": count,
                                       "limit": settings.ESCALATION_RATE_LIMIT_PER_MINUTE})
        # Those who can stop the agent (suspend it, revoke its grants): the registry managers.
        admins = member_users(tenant, memberships__role__in=roles_with(Cap.MANAGE_REGISTRY))
        subject = (f"Escalation flood: agent {agent.name} asked for approval {count} times in "
                   f"a minute; further escalations are refused")
        notify(tenant=tenant, event="escalation.flood", subject=subject, text=subject + ".",
               facts=[("Agent", notices.agent_label(agent)), ("Gateway", gateway.name),
                      ("Escalations in the last minute", count),
                      ("Limit per minute", settings.ESCALATION_RATE_LIMIT_PER_MINUTE)],
               link=reverse("registry:agent", args=[tenant.slug, agent.pk]),
               recipients=admins, data={"agent": agent.name, "gateway": gateway.name,
                                        "count": count})


def _validate_call(body: dict[str, Any]) -> dict[str, Any]:
    def text(name: str, limit: int = 200, required: bool = True) -> str:
        value = body.get(name, "")
        if not isinstance(value, str) or (required and not value.strip()) or len(value) > limit:
            raise Refused(400, "invalid", f"{name}: a string of 1 to {limit} characters.")
        return value.strip()

    call = {"call_id": text("call_id"), "agent": text("agent"), "server": text("server"),
            "tool": text("tool"), "reason": text("reason", 2000, required=False)}
    sha = body.get("arguments_sha256")
    if not isinstance(sha, str) or not _SHA256.match(sha):
        raise Refused(400, "invalid", "arguments_sha256: 64 lowercase hex digits.")
    call["arguments_sha256"] = sha
    arguments = body.get("arguments")
    if arguments is not None and not isinstance(arguments, dict):
        raise Refused(400, "invalid", "arguments: an object (possibly redacted) or absent.")
    call["arguments"] = arguments
    revision = body.get("bundle_revision")
    if revision is not None and (not isinstance(revision, int) or isinstance(revision, bool)
                                 or revision < 0):
        raise Refused(400, "invalid", "bundle_revision: a non-negative integer.")
    call["bundle_revision"] = revision
    call["on_behalf_of"], call["on_behalf_of_groups"] = _person(body.get("on_behalf_of"))
    return call


def _person(value: Any) -> tuple[str, list[str]]:
    """``on_behalf_of`` of a delegated call: {subject, groups?} → (subject, groups)."""
    if value is None:
        return "", []
    subject = value.get("subject") if isinstance(value, dict) else None
    if not isinstance(subject, str) or not subject.strip() or len(subject) > 500 \
            or "\x00" in subject:
        raise Refused(400, "invalid", "on_behalf_of: {\"subject\": a string of 1 to 500 "
                                      "characters, \"groups\": [strings]} or absent.")
    groups = value.get("groups", [])
    if not isinstance(groups, list) or len(groups) > 1000 or any(
            not isinstance(g, str) or len(g) > 200 or "\x00" in g for g in groups):
        raise Refused(400, "invalid", "on_behalf_of.groups: at most 1000 strings of at most "
                                      "200 characters.")
    return subject, sorted(set(groups))


def _same_call(existing: Escalation, call: dict[str, Any]) -> bool:
    return (existing.agent.name, existing.server, existing.tool, existing.arguments_sha256) == (
        call["agent"], call["server"], call["tool"], call["arguments_sha256"])


def _existing(gateway: Gateway, call: dict[str, Any]) -> Escalation | None:
    existing = Escalation.objects.select_related("agent").filter(
        gateway=gateway, call_id=call["call_id"]).first()
    if existing is not None and not _same_call(existing, call):
        raise Refused(409, "conflict", f"call_id {call['call_id']} was already used for "
                                       f"another call; use a new call_id per tool call.")
    return existing


def escalation_create(*, tenant: Tenant, gateway: Gateway, body: Any,
                      now: datetime | None = None) -> tuple[Escalation, bool]:
    """``POST escalations``: (the escalation, created?). Idempotent on (gateway, call_id): the
    same call again returns the existing one. Raises ``Refused``: 400 malformed or nothing to
    approve (unknown agent or tool, no grant in force asks for approval: the gateway denies),
    409 a call_id reused for another call, 429 the agent's flood limit."""
    if not isinstance(body, dict):
        raise Refused(400, "invalid", "An escalation is a JSON object.")
    call = _validate_call(body)
    now = now or timezone.now()
    existing = _existing(gateway, call)
    if existing is not None:
        return existing, False
    limit = settings.ESCALATION_RATE_LIMIT_PER_MINUTE
    with transaction.atomic():
        # The agent's row lock serialises its escalations, so the flood count is exact.
        agent = Agent.objects.for_tenant(tenant).select_for_update().filter(
            name=call["agent"]).first()
        if agent is None:
            raise Refused(400, "invalid", f"agent: no agent {call['agent']} in this tenant.")
        existing = _existing(gateway, call)  # a concurrent twin committed while we waited
        if existing is not None:
            return existing, False
        recent = Escalation.objects.filter(agent=agent, created_at__gt=now - timedelta(
            seconds=60)).count()
        if recent < limit:
            escalation = _create_escalation(tenant, gateway, agent, call, now)
            return escalation, True
    _flood_alert(tenant, gateway, agent, recent + 1, now)
    raise Refused(429, "rate_limited", f"Agent {agent.name} has asked for approval {recent} "
                  f"times in the last minute (limit {limit}): refused, not queued.",
                  retry_after=60)


def _create_escalation(tenant: Tenant, gateway: Gateway, agent: Agent, call: dict[str, Any],
                       now: datetime) -> Escalation:
    if agent.status != Agent.Status.ACTIVE:
        raise Refused(400, "invalid", f"agent: {agent.name} is {agent.status}.")
    tool = Tool.objects.for_tenant(tenant).filter(server__name=call["server"],
                                                  name=call["tool"]).first()
    if tool is None:
        raise Refused(400, "invalid", f"tool: no tool {call['tool']} on server "
                                      f"{call['server']} in this tenant.")
    grants = (Grant.objects.for_tenant(tenant).filter(_in_force(now), agent=agent,
                                                      scope__tools=tool)
              .exclude(approval_mode=Grant.ApprovalMode.NEVER).select_related("scope")
              .order_by("pk"))
    # A grant that requires the person to be in a group asks only for its members' calls.
    grant = next((g for g in grants if not g.on_behalf_of_group
                  or g.on_behalf_of_group in call["on_behalf_of_groups"]
                  and call["on_behalf_of"]), None)
    if grant is None:
        raise Refused(400, "invalid", f"No grant in force lets agent {agent.name} call "
                                      f"{call['server']}/{call['tool']} with approval: deny "
                                      f"the call (and refresh the bundle).")
    rules = policy_rules(tenant, grant.scope)
    timeout = int(escalation_settings(tenant)["decision_timeout_seconds"])
    escalation = Escalation.objects.create(
        tenant=tenant, gateway=gateway, call_id=call["call_id"], agent=agent, grant=grant,
        scope=grant.scope, server=call["server"], tool=call["tool"],
        arguments=call["arguments"], arguments_sha256=call["arguments_sha256"],
        bundle_revision=call["bundle_revision"], reason=call["reason"],
        on_behalf_of=call["on_behalf_of"], on_behalf_of_groups=call["on_behalf_of_groups"],
        stages=rules.stages,
        alternates=rules.alternates, created_at=now, deadline=now + timedelta(seconds=timeout),
    )
    audit_record(tenant=tenant, actor=gateway_actor(gateway), action="escalation.created",
                 obj=escalation, after={**escalation.audit_snapshot(),
                                        "call_id": escalation.call_id, "grant": grant.pk,
                                        "gateway": gateway.name,
                                        "arguments_sent": call["arguments"] is not None})
    announce(tenant, escalation, "escalation.created")
    return escalation


@transaction.atomic
def escalation_decide(*, tenant: Tenant, actor: Actor, escalation: Escalation,
                      approver: AbstractBaseUser, outcome: str, reason: str = "",
                      now: datetime | None = None) -> Outcome:
    """One approver's decision on an escalation (the same rules as access requests)."""
    return decide_item(tenant=tenant, actor=actor, item=escalation, approver=approver,
                       outcome=outcome, reason=reason, now=now)


@transaction.atomic
def escalation_refresh(*, tenant: Tenant, escalation: Escalation,
                       now: datetime | None = None) -> Escalation:
    """The escalation as it stands, its passed deadline handled first (alternates or expiry);
    what the gateway's GET sees."""
    now = now or timezone.now()
    if escalation.status == Decidable.Status.PENDING and now >= escalation.deadline:
        escalation = locked(tenant, escalation)
        if escalation.status == Decidable.Status.PENDING and now >= escalation.deadline:
            deadline_passed(tenant, escalation, now)
    return escalation


def escalation_receipt(*, escalation: Escalation, now: datetime | None = None
                       ) -> tuple[str, datetime]:
    """A short-lived ES256 receipt for an approved, unconsumed escalation, signed with the
    tenant's active bundle key (gateways already trust its JWKS) and bound to the agent, the
    tool, the arguments' hash and the escalation id. Minted on each read; one use in total,
    enforced by ``escalation_consume``."""
    now = now or timezone.now()
    tenant = escalation.tenant
    with transaction.atomic():  # the tenant's very first key may be created here
        key = signing_key_for_build(tenant=tenant)
    expires = now + timedelta(seconds=settings.ESCALATION_RECEIPT_SECONDS)
    payload = {"iss": settings.TOLLGATE_BASE_URL, "scope": tenant.slug,
               "sub": str(escalation.pk), "jti": str(escalation.pk),
               "agent": escalation.agent.name, "server": escalation.server,
               "tool": escalation.tool, "arguments_sha256": escalation.arguments_sha256,
               "iat": int(now.timestamp()), "exp": int(expires.timestamp())}
    token = jwt.encode(payload, keys.load_private(key.private_key_encrypted), algorithm="ES256",
                       headers={"kid": key.kid, "typ": RECEIPT_TYPE})
    return token, expires


@transaction.atomic
def escalation_consume(*, tenant: Tenant, gateway: Gateway, escalation: Escalation,
                       now: datetime | None = None) -> Escalation:
    """``POST escalations/<id>/consume``: atomically spend the approval; anything but an
    approved, unspent escalation is ``Refused`` 409 (a second consume, a denial, an expiry)."""
    escalation = locked(tenant, escalation)
    if escalation.status != Decidable.Status.APPROVED:
        raise Refused(409, "conflict", f"The escalation is {escalation.status}: there is no "
                                       f"approval to use.")
    if escalation.consumed_at is not None:
        raise Refused(409, "conflict", f"The approval was already used at "
                                       f"{escalation.consumed_at.isoformat()}.")
    escalation.consumed_at = now or timezone.now()
    escalation.save(update_fields=["consumed_at"])
    audit_record(tenant=tenant, actor=gateway_actor(gateway), action="escalation.consumed",
                 obj=escalation, after={**escalation.audit_snapshot(),
                                        "gateway": gateway.name,
                                        "consumed_at": escalation.consumed_at.isoformat()})
    return escalation

