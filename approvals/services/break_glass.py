"""Break-glass self-grants (an admin's emergency access, short, flagged and alerted) and the
expiry of time-bound grants (break-glass ones and those approved requests created)."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from approvals import notices
from approvals.selectors import member_users
from governance.alerting import alert_raise
from governance.audit.services import Actor, audit_record
from governance.tenancy.access import member_can
from governance.tenancy.models import Tenant
from governance.tenancy.roles import Cap, roles_with
from notifications.services import notify
from registry import services as registry
from registry.models import Agent, Grant, ToolScope


@transaction.atomic
def break_glass_grant(*, tenant: Tenant, actor: Actor, admin: AbstractBaseUser, agent: Agent,
                      scope: ToolScope, justification: str, minutes: int) -> Grant:
    """An admin's emergency self-grant: no approval, at most BREAK_GLASS_MAX_MINUTES, flagged
    on the grant (and so in the bundle and the evidence), audited as ``grant.break_glass`` and
    alerted to every admin."""
    if not member_can(tenant, admin, Cap.BREAK_GLASS):
        raise ValidationError("Only an admin can break the glass.")
    if agent.tenant_id != tenant.pk or scope.tenant_id != tenant.pk:
        raise ValidationError("Agent and scope must belong to this tenant.")
    justification = (justification or "").strip()
    if not justification:
        raise ValidationError({"justification": "Say why this cannot wait for an approval."})
    limit = settings.BREAK_GLASS_MAX_MINUTES
    if not 1 <= int(minutes) <= limit:
        raise ValidationError({"minutes": f"Between 1 and {limit} minutes."})
    now = timezone.now()
    grant = registry.grant_create(tenant=tenant, actor=actor, agent=agent, scope=scope,
                                  created_by=admin, expires_at=now + timedelta(
                                      minutes=int(minutes)))
    grant.break_glass = True
    grant.justification = justification
    grant.save(update_fields=["break_glass", "justification"])
    audit_record(tenant=tenant, actor=actor, action="grant.break_glass", obj=grant,
                 after={"break_glass": True, "agent": agent.name, "scope": scope.name,
                        "justification": justification, "minutes": int(minutes),
                        "expires_at": grant.expires_at.isoformat()})
    # Everyone who could break the glass too watches each use of it.
    admins = member_users(tenant, memberships__role__in=roles_with(Cap.BREAK_GLASS))
    subject = (f"Break-glass: {admin.get_username()} granted {scope.name} to agent "
               f"{agent.name} for {int(minutes)} minutes")
    notify(tenant=tenant, event="break_glass.used", subject=subject,
           text=f"{subject}. Justification: {justification}", recipients=admins,
           facts=notices.break_glass_facts(grant, admin, int(minutes)),
           link=reverse("registry:grant", args=[tenant.slug, grant.pk]),
           data={"grant": grant.pk, "agent": agent.name, "scope": scope.name,
                 "risk_level": scope.risk_level, "data_classes": list(scope.data_classes),
                 "admin": admin.get_username(), "justification": justification,
                 "expires_at": grant.expires_at.isoformat()})
    # The break-glass alert rule (one alert per grant), in this same transaction.
    alert_raise(tenant=tenant, kind="break_glass_used", key=f"grant:{grant.pk}", subject=subject,
                detail={"grant": grant.pk, "agent": agent.name, "scope": scope.name,
                        "admin": admin.get_username(), "minutes": int(minutes),
                        "justification": justification, "expires_at": grant.expires_at},
                actor=actor)
    return grant


def grants_expire_due(*, now: datetime | None = None) -> int:
    """Active grants past their expiry become ``expired`` (audited by the system actor), which
    publishes a bundle without them (Celery beat)."""
    now = now or timezone.now()
    count = 0
    for pk in Grant.objects.filter(status=Grant.Status.ACTIVE, expires_at__lte=now
                                   ).values_list("pk", flat=True):
        with transaction.atomic():
            grant = Grant.objects.select_for_update(of=("self",)).select_related(
                "tenant", "agent", "scope").get(pk=pk)
            if grant.status != Grant.Status.ACTIVE or grant.expires_at > now:
                continue
            grant.status = Grant.Status.EXPIRED
            grant.save(update_fields=["status"])
            audit_record(tenant=grant.tenant, actor=Actor.system("approvals"),
                         action="grant.expired", obj=grant,
                         after={"agent": grant.agent.name, "scope": grant.scope.name,
                                "expires_at": grant.expires_at.isoformat(),
                                "break_glass": grant.break_glass})
            count += 1
    return count

