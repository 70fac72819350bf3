"""Ending a person's running access: their browser sessions and their personal API tokens.

Called by SCIM (deactivate or delete a user), back-channel logout and session re-validation.
Each function runs in the caller's transaction and records its audit events there.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from governance.audit.services import Actor, audit_record
from governance.tenancy import user_sessions
from governance.tenancy.models import ApiToken, Membership, Tenant, UserSession
from governance.tenancy.services import api_token_revoke


def _tenants_of(user: AbstractBaseUser) -> list[Tenant]:
    return [m.tenant for m in Membership.objects.filter(user=user).select_related("tenant")
            .order_by("tenant_id")]


@transaction.atomic
def user_access_end(
    *, user: AbstractBaseUser, actor: Actor, reason: str, tenant: Tenant | None = None
) -> dict[str, int]:
    """End every session of ``user`` and revoke their personal API tokens (in ``tenant``, or in
    every tenant when None). Idempotent: a second call finds nothing and records nothing.

    Returns ``{"sessions": <ended>, "tokens": <revoked>}``. Audited as ``user.access_ended`` in
    each tenant concerned (``tenant``, else every tenant the user belongs to or lost a token
    in; the platform chain when there is none), plus ``api_token.revoked`` per token.
    """
    reason = reason[:200]
    sessions = user_sessions.sessions_delete(UserSession.objects.filter(user=user))
    tokens = ApiToken.objects.filter(
        user=user, kind=ApiToken.Kind.PERSONAL, revoked_at__isnull=True
    ).select_related("tenant").order_by("pk")
    if tenant is not None:
        tokens = tokens.filter(tenant=tenant)
    revoked: dict[int, int] = {}
    token_tenants: dict[int, Tenant] = {}
    for token in tokens:
        api_token_revoke(tenant=token.tenant, actor=actor, token=token, reason=reason)
        revoked[token.tenant_id] = revoked.get(token.tenant_id, 0) + 1
        token_tenants[token.tenant_id] = token.tenant
    counts = {"sessions": sessions, "tokens": sum(revoked.values())}
    if not sessions and not revoked:
        return counts
    if tenant is not None:
        concerned: list[Tenant | None] = [tenant]
    else:
        by_id = {t.pk: t for t in _tenants_of(user)} | token_tenants
        concerned = [by_id[pk] for pk in sorted(by_id)] or [None]
    for where in concerned:
        audit_record(
            tenant=where, actor=actor, action="user.access_ended", obj=user,
            object_repr=user.get_username(),
            after={"reason": reason, "sessions_ended": sessions,
                   "tokens_revoked": revoked.get(where.pk, 0) if where is not None else 0},
        )
    return counts


@transaction.atomic
def user_sessions_end(
    *, user: AbstractBaseUser, actor: Actor, reason: str, sessions=None,
    tenants: list[Tenant] | None = None,
) -> int:
    """End some (``sessions``, a UserSession queryset of this user) or all of ``user``'s
    sessions, leaving their API tokens alone (a back-channel logout ends a sign-in, not the
    person's access). Audited as ``auth.session_ended`` in ``tenants`` (default: each of the
    user's tenants; the platform chain when there is none)."""
    chosen = UserSession.objects.filter(user=user)
    if sessions is not None:
        chosen = chosen.filter(pk__in=sessions.values("pk"))
    ended = user_sessions.sessions_delete(chosen)
    if ended:
        for where in (_tenants_of(user) if tenants is None else tenants) or [None]:
            audit_record(
                tenant=where, actor=actor, action="auth.session_ended", obj=user,
                object_repr=user.get_username(),
                after={"reason": reason[:200], "sessions_ended": ended},
            )
    return ended
