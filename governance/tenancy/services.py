"""Every write to tenants, memberships, group mappings, identities and API tokens.

Each function is keyword-only, atomic, and records its audit event in the same transaction.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from guardian.shortcuts import assign_perm, remove_perm

from governance.audit.models import AuditChain
from governance.audit.services import Actor, audit_record
from governance.tenancy.models import (
    ApiToken,
    ExternalIdentity,
    IdpGroupMapping,
    Membership,
    Tenant,
    hash_token,
)
from governance.tenancy.roles import Role, role_covers, strongest

User = get_user_model()

MAPPING_PERMISSION = "tenancy.manage_group_mappings"


# --- Tenants -----------------------------------------------------------------------------------


@transaction.atomic
def tenant_create(*, actor: Actor, slug: str, name: str) -> Tenant:
    """Create a tenant and its audit chain."""
    tenant = Tenant(slug=slug, name=name)
    tenant.full_clean()
    tenant.save()
    AuditChain.objects.create(key=AuditChain.key_for(tenant), tenant=tenant)
    audit_record(
        tenant=tenant, actor=actor, action="tenant.created", obj=tenant,
        after=tenant.audit_snapshot(("slug", "name")),
    )
    return tenant


# --- Memberships -------------------------------------------------------------------------------


TENANT_SETTING_LIMITS = {
    "registry_resync_minutes": (0, 7 * 24 * 60),
    "decision_log_retention_days": (1, 10 * 366),
    # A held call waits at least a minute and at most a week for a human.
    "escalation_decision_timeout_seconds": (60, 7 * 24 * 3600),
}
# Settings kept in ``Tenant.settings`` (JSON) rather than in a column: name → (section, key).
JSON_SETTINGS = {
    "escalation_decision_timeout_seconds": ("escalation", "decision_timeout_seconds"),
}


def tenant_settings(tenant: Tenant) -> dict[str, int]:
    """Every setting ``tenant_update_settings`` changes, with its value in force."""
    values = {}
    for name in TENANT_SETTING_LIMITS:
        if name in JSON_SETTINGS:
            section, key = JSON_SETTINGS[name]
            values[name] = tenant.escalation_settings()[key] if section == "escalation" else None
        else:
            values[name] = getattr(tenant, name)
    return values


@transaction.atomic
def tenant_update_settings(*, tenant: Tenant, actor: Actor, **changes: int) -> Tenant:
    """Change a tenant's settings (how often its MCP servers are re-synced, how long its
    decision logs are kept, how long a held call waits for a decision); all or nothing."""
    tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
    unknown = set(changes) - set(TENANT_SETTING_LIMITS)
    if unknown:
        raise ValidationError(f"Cannot change {', '.join(sorted(unknown))} here.")
    errors = {}
    for field, value in changes.items():
        low, high = TENANT_SETTING_LIMITS[field]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            errors[field] = f"Use a whole number from {low} to {high}."
    if errors:
        raise ValidationError(errors)
    current = tenant_settings(tenant)
    before = {field: current[field] for field in changes}
    columns = []
    for field, value in changes.items():
        if field in JSON_SETTINGS:
            section, key = JSON_SETTINGS[field]
            settings = dict(tenant.settings) if isinstance(tenant.settings, dict) else {}
            part = settings.get(section)
            settings[section] = {**(part if isinstance(part, dict) else {}), key: value}
            tenant.settings = settings
            if "settings" not in columns:
                columns.append("settings")
        else:
            setattr(tenant, field, value)
            columns.append(field)
    tenant.save(update_fields=columns)
    audit_record(tenant=tenant, actor=actor, action="tenant.settings_changed", obj=tenant,
                 before=before, after=dict(changes))
    return tenant


def _ensure_admin_remains(tenant: Tenant, *, leaving: Membership) -> None:
    if leaving.role != Role.ADMIN:
        return
    others = Membership.objects.for_tenant(tenant).filter(role=Role.ADMIN).exclude(pk=leaving.pk)
    if not others.exists():
        raise ValidationError(
            "This is the tenant's last admin. Make someone else an admin first."
        )


@transaction.atomic
def membership_create(
    *,
    tenant: Tenant,
    actor: Actor,
    user: AbstractBaseUser,
    role: str,
    source: str = Membership.Source.MANUAL,
) -> Membership:
    """Add a user to a tenant with a role."""
    if Membership.objects.for_tenant(tenant).filter(user=user).exists():
        raise ValidationError(f"{user.get_username()} is already a member of {tenant.name}.")
    membership = Membership(
        tenant=tenant, user=user, role=role, source=source,
        # Created by the IdP, SCIM or an invitation: that is its first confirmation.
        last_confirmed_at=None if source == Membership.Source.MANUAL else timezone.now(),
    )
    membership.full_clean(exclude=["tenant", "user"])
    membership.save()
    audit_record(
        tenant=tenant, actor=actor, action="membership.created", obj=membership,
        after=membership.audit_snapshot(),
    )
    return membership


@transaction.atomic
def membership_change_role(
    *, tenant: Tenant, actor: Actor, membership: Membership, role: str
) -> Membership:
    """Change a member's role (the last admin cannot be demoted)."""
    membership = Membership.objects.for_tenant(tenant).select_for_update().get(pk=membership.pk)
    if role == membership.role:
        return membership
    if role not in Role.values:
        raise ValidationError(f"Unknown role {role!r}.")
    _ensure_admin_remains(tenant, leaving=membership)
    _set_role(tenant=tenant, actor=actor, membership=membership, role=role)
    return membership


@transaction.atomic
def membership_delete(*, tenant: Tenant, actor: Actor, membership: Membership) -> None:
    """Remove a member; their personal tokens in the tenant are revoked with them."""
    membership = Membership.objects.for_tenant(tenant).select_for_update().get(pk=membership.pk)
    _ensure_admin_remains(tenant, leaving=membership)
    _remove(tenant=tenant, actor=actor, membership=membership)


def _set_role(*, tenant: Tenant, actor: Actor, membership: Membership, role: str) -> None:
    before = membership.audit_snapshot()
    membership.role = role
    membership.updated_at = timezone.now()
    membership.save(update_fields=["role", "updated_at"])
    audit_record(
        tenant=tenant, actor=actor, action="membership.role_changed", obj=membership,
        before=before, after=membership.audit_snapshot(),
    )
    _revoke_tokens_exceeding(tenant=tenant, actor=actor, membership=membership)


def _remove(*, tenant: Tenant, actor: Actor, membership: Membership) -> None:
    """Delete a membership with everything it carried: delegations and personal tokens."""
    user = membership.user
    audit_record(
        tenant=tenant, actor=actor, action="membership.deleted", obj=membership,
        before=membership.audit_snapshot(),
    )
    membership.delete()
    if user.has_perm(MAPPING_PERMISSION, tenant):
        remove_perm(MAPPING_PERMISSION, user, tenant)
    for token in ApiToken.objects.for_tenant(tenant).filter(user=user, revoked_at__isnull=True):
        api_token_revoke(tenant=tenant, actor=actor, token=token, reason="membership removed")
    # The service tokens they issued go too: a credential they made must not outlive their
    # access (it could otherwise keep acting with rights its creator no longer holds).
    for token in _service_tokens_created_by(tenant, user):
        api_token_revoke(tenant=tenant, actor=actor, token=token,
                         reason="its creator was removed from the tenant")


def _service_tokens_created_by(tenant: Tenant, user: AbstractBaseUser):
    return ApiToken.objects.for_tenant(tenant).filter(
        kind=ApiToken.Kind.SERVICE, created_by=user, revoked_at__isnull=True
    )


def _revoke_tokens_exceeding(*, tenant: Tenant, actor: Actor, membership: Membership) -> None:
    """After a role change: the member's personal tokens, and the service tokens they created,
    that carry a role above their new one are revoked."""
    tokens = ApiToken.objects.for_tenant(tenant).filter(
        user=membership.user, revoked_at__isnull=True
    )
    for token in tokens:
        if not role_covers(membership.role, token.role):
            api_token_revoke(tenant=tenant, actor=actor, token=token, reason="role lowered")
    for token in _service_tokens_created_by(tenant, membership.user):
        if not role_covers(membership.role, token.role):
            api_token_revoke(tenant=tenant, actor=actor, token=token,
                             reason="its creator's role was lowered")


@transaction.atomic
def membership_set_mapping_delegate(
    *, tenant: Tenant, actor: Actor, membership: Membership, allowed: bool
) -> None:
    """Grant or withdraw the object permission to manage this tenant's group mappings."""
    user = membership.user
    had = user.has_perm(MAPPING_PERMISSION, tenant)
    if had == allowed:
        return
    if allowed:
        assign_perm(MAPPING_PERMISSION, user, tenant)
    else:
        remove_perm(MAPPING_PERMISSION, user, tenant)
    audit_record(
        tenant=tenant, actor=actor,
        action="membership.delegation_granted" if allowed else "membership.delegation_withdrawn",
        obj=membership, after={"user": user.get_username(), "permission": MAPPING_PERMISSION},
    )


# --- IdP group mappings ------------------------------------------------------------------------


@transaction.atomic
def group_mapping_create(*, tenant: Tenant, actor: Actor, group: str, role: str) -> IdpGroupMapping:
    """Map an IdP group to a role in the tenant (takes effect at each member's next login)."""
    group = group.strip()
    if not group:
        raise ValidationError({"group": "Enter the IdP group name exactly as the IdP sends it."})
    if IdpGroupMapping.objects.for_tenant(tenant).filter(group=group).exists():
        raise ValidationError({"group": f"Group {group!r} is already mapped in this tenant."})
    mapping = IdpGroupMapping(tenant=tenant, group=group, role=role)
    mapping.full_clean(exclude=["tenant"])
    mapping.save()
    audit_record(
        tenant=tenant, actor=actor, action="group_mapping.created", obj=mapping,
        after=mapping.audit_snapshot(),
    )
    return mapping


@transaction.atomic
def group_mapping_update(
    *, tenant: Tenant, actor: Actor, mapping: IdpGroupMapping, role: str
) -> IdpGroupMapping:
    """Change the role a group maps to."""
    mapping = IdpGroupMapping.objects.for_tenant(tenant).select_for_update().get(pk=mapping.pk)
    before = mapping.audit_snapshot()
    mapping.role = role
    mapping.full_clean(exclude=["tenant"])
    mapping.save(update_fields=["role"])
    audit_record(
        tenant=tenant, actor=actor, action="group_mapping.updated", obj=mapping,
        before=before, after=mapping.audit_snapshot(),
    )
    return mapping


@transaction.atomic
def group_mapping_delete(*, tenant: Tenant, actor: Actor, mapping: IdpGroupMapping) -> None:
    """Remove a mapping (members lose the role at their next login)."""
    mapping = IdpGroupMapping.objects.for_tenant(tenant).select_for_update().get(pk=mapping.pk)
    audit_record(
        tenant=tenant, actor=actor, action="group_mapping.deleted", obj=mapping,
        before=mapping.audit_snapshot(),
    )
    mapping.delete()


# --- OIDC logins -------------------------------------------------------------------------------


@transaction.atomic
def identity_login(
    *,
    issuer: str,
    subject: str,
    username: str,
    email: str,
    full_name: str,
    groups: list[str],
) -> AbstractBaseUser:
    """An OIDC login: find or create the user, then make memberships match the IdP groups.

    IdP-managed memberships (source=idp) are added, changed and removed so that offboarding in
    the IdP takes effect at the next login; memberships an admin added by hand are left alone.
    """
    identity = (
        ExternalIdentity.objects.select_for_update()
        .select_related("user")
        .filter(issuer=issuer, subject=subject)
        .first()
    )
    if identity is None:
        # No password argument: the account gets an unusable password (SSO only).
        user = User.objects.create_user(username=_free_username(username), email=email)
        identity = ExternalIdentity(user=user, issuer=issuer, subject=subject)
        audit_record(
            tenant=None, actor=Actor.system("oidc"), action="user.created", obj=user,
            after={"username": user.get_username(), "issuer": issuer, "subject": subject},
        )
    user = identity.user
    first, _, last = full_name.partition(" ")
    updates = {"email": email, "first_name": first[:150], "last_name": last[:150]}
    changed = [field for field, value in updates.items() if value and getattr(user, field) != value]
    for field in changed:
        setattr(user, field, updates[field])
    if changed:
        user.save(update_fields=changed)
    identity.last_groups = sorted(set(groups))
    identity.last_login_at = timezone.now()
    identity.save()
    memberships_sync_from_groups(user=user, groups=groups)
    return user


def _free_username(wanted: str) -> str:
    base = (wanted or "user")[:140]
    candidate = base
    n = 1
    while User.objects.filter(username=candidate).exists():
        n += 1
        candidate = f"{base}-{n}"
    return candidate


@transaction.atomic
def memberships_sync_from_groups(
    *,
    user: AbstractBaseUser,
    groups: list[str],
    source: str = Membership.Source.IDP,
    tenant: Tenant | None = None,
    actor: Actor | None = None,
) -> None:
    """Apply the IdP group → role mappings of every tenant (or of ``tenant`` only, for SCIM) to
    one user's memberships.

    IdP-managed memberships (source idp or scim) are added (with ``source``), changed, removed
    and marked confirmed; memberships an admin or an invitation made are left alone.
    """
    actor = actor or Actor.system(f"idp-sync:{user.get_username()}")
    mappings = IdpGroupMapping.objects.filter(group__in=groups).select_related("tenant")
    memberships = Membership.objects.filter(user=user).select_related("tenant")
    if tenant is not None:
        mappings, memberships = mappings.for_tenant(tenant), memberships.for_tenant(tenant)
    wanted: dict[int, list[str]] = {}
    for mapping in mappings:
        wanted.setdefault(mapping.tenant_id, []).append(mapping.role)
    existing = {m.tenant_id: m for m in memberships.select_for_update(of=("self",))}
    tenants = {t.pk: t for t in Tenant.objects.filter(pk__in=set(wanted) | set(existing))}
    now = timezone.now()
    for tenant_id, where in sorted(tenants.items()):
        role = strongest(wanted.get(tenant_id, []))
        membership = existing.get(tenant_id)
        if membership is not None and membership.source not in Membership.IDP_MANAGED:
            continue
        if membership is None and role is not None:
            membership_create(tenant=where, actor=actor, user=user, role=role, source=source)
        elif membership is not None and role is None:
            # The IdP is the source of truth for this membership: it goes even if it was the
            # last admin (a platform operator can always add an admin back by hand).
            _remove(tenant=where, actor=actor, membership=membership)
        else:
            if role != membership.role:
                _set_role(tenant=where, actor=actor, membership=membership, role=role)
            # Bookkeeping, not an audited change: when the IdP last vouched for it.
            Membership.objects.filter(pk=membership.pk).update(last_confirmed_at=now)


@transaction.atomic
def auth_record_login(*, user: AbstractBaseUser, method: str) -> None:
    """Record a successful login in every tenant the user belongs to (else the platform chain)."""
    actor = Actor.user(user)
    tenants = [m.tenant for m in Membership.objects.filter(user=user).select_related("tenant")]
    for tenant in tenants or [None]:
        audit_record(
            tenant=tenant, actor=actor, action="auth.login", obj=user,
            after={"method": method},
        )


@transaction.atomic
def auth_record_logout(*, user: AbstractBaseUser) -> None:
    """Record a logout like a login."""
    actor = Actor.user(user)
    tenants = [m.tenant for m in Membership.objects.filter(user=user).select_related("tenant")]
    for tenant in tenants or [None]:
        audit_record(tenant=tenant, actor=actor, action="auth.logout", obj=user)


@transaction.atomic
def auth_record_login_failed(*, username: str, reason: str) -> None:
    """Failed password logins go to the platform chain (the tenant is not known yet)."""
    audit_record(
        tenant=None, actor=Actor.anonymous(username[:150]), action="auth.login_failed",
        object_type="auth.user", object_repr=username[:150], after={"reason": reason},
    )


# --- API tokens --------------------------------------------------------------------------------

TOKEN_PREFIXES = {ApiToken.Kind.PERSONAL: "tgp_", ApiToken.Kind.SERVICE: "tgs_"}


@transaction.atomic
def api_token_create(
    *,
    tenant: Tenant,
    actor: Actor,
    created_by: AbstractBaseUser,
    kind: str,
    name: str,
    role: str,
    expires_at: datetime,
    owner: AbstractBaseUser | None = None,
) -> tuple[ApiToken, str]:
    """Issue a token; the plaintext is returned once and only its hash is stored."""
    now = timezone.now()
    max_days = settings.API_TOKEN_MAX_DAYS
    if expires_at <= now:
        raise ValidationError({"expires_at": "Choose an expiry date in the future."})
    if expires_at > now + timedelta(days=max_days):
        raise ValidationError({"expires_at": f"Tokens expire within {max_days} days at most."})
    if kind == ApiToken.Kind.PERSONAL:
        if owner is None:
            raise ValidationError("A personal token needs an owner.")
        membership = Membership.objects.for_tenant(tenant).filter(user=owner).first()
        if membership is None or not role_covers(membership.role, role):
            raise ValidationError(
                {"role": "A personal token cannot have more rights than your own role."}
            )
    else:
        owner = None
    plaintext = TOKEN_PREFIXES[kind] + secrets.token_urlsafe(32)
    token = ApiToken(
        tenant=tenant, name=name.strip(), kind=kind, user=owner, role=role,
        token_hash=hash_token(plaintext), prefix=plaintext[:12], created_by=created_by,
        expires_at=expires_at,
    )
    token.full_clean(exclude=["tenant", "user", "created_by", "token_hash"])
    token.save()
    audit_record(
        tenant=tenant, actor=actor, action="api_token.created", obj=token,
        after=token.audit_snapshot(),
    )
    return token, plaintext


@transaction.atomic
def api_token_revoke(*, tenant: Tenant, actor: Actor, token: ApiToken, reason: str = "") -> None:
    """Revoke a token at once (the row stays for the record)."""
    token = ApiToken.objects.for_tenant(tenant).select_for_update().get(pk=token.pk)
    if token.revoked_at is not None:
        return
    token.revoked_at = timezone.now()
    token.save(update_fields=["revoked_at"])
    audit_record(
        tenant=tenant, actor=actor, action="api_token.revoked", obj=token,
        after={"prefix": token.prefix, "reason": reason},
    )
