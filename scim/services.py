"""Every write of SCIM provisioning: tokens, users, groups, and what they do to access.

Each function is keyword-only, atomic, and records its audit event in the same transaction.
Deactivating or deleting a SCIM user ends the person's access in the same transaction
(``user_access_end``: every session and their personal tokens), then removes the membership
SCIM or IdP logins made; reactivating restores it from the tenant's group mappings.

Refusals are the SCIM exceptions of scim2-models (the endpoint answers them in SCIM's error
schema): a value another resource holds → 409 ``uniqueness``, a member that is not a resource
of the tenant → 400 ``invalidValue``.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from scim2_models import InvalidValueException, UniquenessException

from governance.audit.models import AuditEvent
from governance.audit.services import Actor, audit_record
from governance.tenancy.models import (
    ApiToken,
    ExternalIdentity,
    Membership,
    Tenant,
    hash_token,
)
from governance.tenancy.offboarding import user_access_end
from governance.tenancy.services import (
    _free_username,
    api_token_revoke,
    memberships_sync_from_groups,
)
from scim.models import ScimGroup, ScimGroupMember, ScimToken, ScimUser

User = get_user_model()

TOKEN_PREFIX = "tgscim_"  # noqa: S105 (a label, not a secret)
# last_used_at is written at most this often per token (a busy IdP calls many times a second).
LAST_USED_RESOLUTION_SECONDS = 60
DEACTIVATION_REASON = "deactivated by the IdP (SCIM)"
DELETION_REASON = "deleted by the IdP (SCIM)"


def token_actor(token: ScimToken) -> Actor:
    """The audit actor of a request made with a SCIM token."""
    return Actor(AuditEvent.ActorType.TOKEN, str(token.pk),
                 f"SCIM token {token.name} ({token.prefix}…)")


def _sync(*, tenant: Tenant, actor: Actor, user: AbstractBaseUser, groups: list[str]) -> None:
    """The core's group → role computation for this tenant only, as SCIM (the memberships IdP
    logins or SCIM made follow; manual ones and invitations are left alone)."""
    memberships_sync_from_groups(user=user, groups=groups, source=Membership.Source.SCIM,
                                 tenant=tenant, actor=actor)


# --- Tokens ------------------------------------------------------------------------------------


@transaction.atomic
def scim_token_create(
    *, tenant: Tenant, actor: Actor, created_by: AbstractBaseUser | None, name: str
) -> tuple[ScimToken, str]:
    """Issue a SCIM bearer token; the plaintext is returned once and only its hash is kept."""
    name = (name or "").strip()
    if not name:
        raise ValidationError({"name": "Name the token (for example the IdP it is for)."})
    if len(name) > 100:
        raise ValidationError({"name": "Use at most 100 characters."})
    plaintext = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ScimToken.objects.create(
        tenant=tenant, name=name, token_hash=hash_token(plaintext), prefix=plaintext[:14],
        created_by=created_by,
    )
    audit_record(tenant=tenant, actor=actor, action="scim_token.created", obj=token,
                 after=token.audit_snapshot())
    return token, plaintext


@transaction.atomic
def scim_token_revoke(*, tenant: Tenant, actor: Actor, token: ScimToken) -> ScimToken:
    """Revoke a SCIM token at once (the row stays for the record)."""
    token = ScimToken.objects.for_tenant(tenant).select_for_update().get(pk=token.pk)
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit_record(tenant=tenant, actor=actor, action="scim_token.revoked", obj=token,
                     after={"prefix": token.prefix})
    return token


@transaction.atomic
def scim_token_seen(*, token: ScimToken) -> None:
    """Note that the IdP used the token: ``last_used_at`` (at most once a minute), and an audit
    event the first time it is ever used."""
    now = timezone.now()
    last = token.last_used_at
    if last is not None and (now - last).total_seconds() < LAST_USED_RESOLUTION_SECONDS:
        return
    ScimToken.objects.filter(pk=token.pk).update(last_used_at=now)
    token.last_used_at = now
    if last is None:
        audit_record(tenant=token.tenant, actor=token_actor(token),
                     action="scim_token.first_used", obj=token, after={"prefix": token.prefix})


# --- Users -------------------------------------------------------------------------------------


def _user_fields(document: dict[str, Any]) -> tuple[str, str, bool]:
    user_name = document.get("userName")
    if not isinstance(user_name, str) or not user_name.strip():
        raise InvalidValueException(detail="userName is required.")
    if len(user_name) > 255:
        raise InvalidValueException(detail="userName is longer than 255 characters.")
    external_id = document.get("externalId") or ""
    if len(external_id) > 255:
        raise InvalidValueException(detail="externalId is longer than 255 characters.")
    active = document.get("active")
    return user_name, external_id, True if active is None else bool(active)


def _check_user_unique(tenant: Tenant, user_name: str, external_id: str,
                       exclude: int | None = None) -> None:
    users = ScimUser.objects.for_tenant(tenant).exclude(pk=exclude)
    if users.filter(user_name_key=user_name.casefold()).exists():
        raise UniquenessException(detail=f"userName {user_name!r} is already provisioned.")
    if external_id and users.filter(external_id=external_id).exists():
        raise UniquenessException(detail=f"externalId {external_id!r} is already provisioned.")


def _identity_user(*, tenant: Tenant, actor: Actor, external_id: str, user_name: str,
                   document: dict[str, Any]) -> AbstractBaseUser:
    """The Django user an OIDC login with (issuer, externalId) finds, created if none."""
    issuer = settings.SCIM_IDENTITY_ISSUER
    if external_id:
        identity = (ExternalIdentity.objects.select_for_update().select_related("user")
                    .filter(issuer=issuer, subject=external_id).first())
        if identity is not None:
            return identity.user
    name = document.get("name") or {}
    emails = document.get("emails") or []
    primary = next((e for e in emails if e.get("primary")), emails[0] if emails else {})
    # No password: the account signs in through the IdP only.
    user = User.objects.create_user(
        username=_free_username(user_name[:140]), email=(primary.get("value") or "")[:254],
        first_name=(name.get("givenName") or "")[:150],
        last_name=(name.get("familyName") or "")[:150],
    )
    if external_id:
        ExternalIdentity.objects.create(user=user, issuer=issuer, subject=external_id)
    audit_record(tenant=tenant, actor=actor, action="user.created", obj=user,
                 after={"username": user.get_username(), "issuer": issuer if external_id else "",
                        "subject": external_id, "via": "scim"})
    return user


def _link_identity(*, user: AbstractBaseUser, external_id: str) -> None:
    """A new externalId for a provisioned user: the identity it names must be theirs."""
    if not external_id:
        return
    identity = ExternalIdentity.objects.filter(
        issuer=settings.SCIM_IDENTITY_ISSUER, subject=external_id).first()
    if identity is None:
        ExternalIdentity.objects.create(
            user=user, issuer=settings.SCIM_IDENTITY_ISSUER, subject=external_id)
    elif identity.user_id != user.pk:
        raise UniquenessException(
            detail=f"externalId {external_id!r} is the identity of another user.")


@transaction.atomic
def scim_user_create(*, tenant: Tenant, actor: Actor, document: dict[str, Any]) -> ScimUser:
    """Provision a user: tie it to the person OIDC knows by (issuer, externalId), or create one.

    A new user has no group yet, so no membership is made here: the IdP's group pushes make it.
    A user created inactive has their access in the tenant ended as by a deactivation."""
    user_name, external_id, active = _user_fields(document)
    _check_user_unique(tenant, user_name, external_id)
    user = _identity_user(tenant=tenant, actor=actor, external_id=external_id,
                          user_name=user_name, document=document)
    if ScimUser.objects.for_tenant(tenant).filter(user=user).exists():
        raise UniquenessException(detail="This person is already provisioned in the tenant.")
    scim_user = ScimUser.objects.create(
        tenant=tenant, user=user, user_name=user_name, user_name_key=user_name.casefold(),
        external_id=external_id, active=active, document=document,
    )
    audit_record(tenant=tenant, actor=actor, action="scim.user_created", obj=scim_user,
                 after={**scim_user.audit_snapshot(), "user": user.get_username()})
    if not active:
        _end_access(tenant=tenant, actor=actor, scim_user=scim_user, reason=DEACTIVATION_REASON)
    return scim_user


@transaction.atomic
def scim_user_update(*, tenant: Tenant, actor: Actor, scim_user: ScimUser,
                     document: dict[str, Any]) -> ScimUser:
    """Replace a user's document (PUT, or the result of a PATCH). ``active`` going false ends
    the person's access in this request; going true restores the membership from groups."""
    scim_user = ScimUser.objects.for_tenant(tenant).select_for_update().get(pk=scim_user.pk)
    user_name, external_id, active = _user_fields(document)
    _check_user_unique(tenant, user_name, external_id, exclude=scim_user.pk)
    if external_id != scim_user.external_id:
        _link_identity(user=scim_user.user, external_id=external_id)
    before = scim_user.audit_snapshot()
    was_active = scim_user.active
    scim_user.user_name = user_name
    scim_user.user_name_key = user_name.casefold()
    scim_user.external_id = external_id
    scim_user.active = active
    scim_user.document = document
    scim_user.version += 1
    scim_user.updated_at = timezone.now()
    scim_user.save()
    audit_record(tenant=tenant, actor=actor, action="scim.user_updated", obj=scim_user,
                 before=before, after=scim_user.audit_snapshot())
    if was_active and not active:
        audit_record(tenant=tenant, actor=actor, action="scim.user_deactivated", obj=scim_user,
                     after={"user": scim_user.user.get_username()})
        _end_access(tenant=tenant, actor=actor, scim_user=scim_user, reason=DEACTIVATION_REASON)
    elif active and not was_active:
        audit_record(tenant=tenant, actor=actor, action="scim.user_reactivated", obj=scim_user,
                     after={"user": scim_user.user.get_username()})
        _sync_roles(tenant=tenant, actor=actor, scim_users=[scim_user])
    return scim_user


@transaction.atomic
def scim_user_delete(*, tenant: Tenant, actor: Actor, scim_user: ScimUser) -> None:
    """Deprovision a user: access ends now, they leave every group, the SCIM user goes (the
    person's account stays, for the audit trail and any other tenant)."""
    scim_user = ScimUser.objects.for_tenant(tenant).select_for_update().get(pk=scim_user.pk)
    audit_record(tenant=tenant, actor=actor, action="scim.user_deleted", obj=scim_user,
                 before={**scim_user.audit_snapshot(), "user": scim_user.user.get_username()})
    _end_access(tenant=tenant, actor=actor, scim_user=scim_user, reason=DELETION_REASON)
    member_id = str(scim_user.scim_id)
    for group in ScimGroup.objects.for_tenant(tenant).filter(memberships__member=scim_user):
        group.document = {**group.document, "members": [
            m for m in group.document.get("members") or [] if m.get("value") != member_id]}
        group.version += 1
        group.updated_at = timezone.now()
        group.save(update_fields=["document", "version", "updated_at"])
    scim_user.delete()


def _end_access(*, tenant: Tenant, actor: Actor, scim_user: ScimUser, reason: str) -> None:
    """The person's access to this tenant ends now: every session and their personal tokens
    here (``user_access_end``), then the membership SCIM or IdP logins made (a manual one stays,
    for an admin to decide).

    One exception: a person who is also a member of *another* tenant keeps their sessions,
    which carry that other access too. A tenant's SCIM token speaks for that tenant only; were
    it able to end sessions everywhere, one tenant's admin could sign anyone of the
    installation out, over and over, by provisioning their subject. Their access here ends in
    this request all the same: their personal tokens here are revoked, and the membership goes
    (a session without one gets 404 on this tenant's pages).
    """
    user = scim_user.user
    elsewhere = Membership.objects.filter(user=user).exclude(tenant=tenant).exists()
    if not elsewhere:
        user_access_end(user=user, actor=actor, reason=reason, tenant=tenant)
    else:
        tokens = ApiToken.objects.for_tenant(tenant).filter(
            user=user, kind=ApiToken.Kind.PERSONAL, revoked_at__isnull=True)
        for token in tokens:
            api_token_revoke(tenant=tenant, actor=actor, token=token, reason=reason)
        audit_record(tenant=tenant, actor=actor, action="scim.sessions_kept", obj=scim_user,
                     after={"user": user.get_username(),
                            "why": "a member of another tenant: only access here ends"})
    _sync(tenant=tenant, actor=actor, user=user, groups=[])


def _sync_roles(*, tenant: Tenant, actor: Actor, scim_users: list[ScimUser]) -> None:
    """The role each active user's SCIM groups give through the tenant's IdP group mappings."""
    for scim_user in scim_users:
        if not scim_user.active:
            continue
        groups = list(ScimGroup.objects.for_tenant(tenant)
                      .filter(memberships__member=scim_user).values_list("display_name",
                                                                         flat=True))
        _sync(tenant=tenant, actor=actor, user=scim_user.user, groups=groups)


# --- Groups ------------------------------------------------------------------------------------


def _group_fields(tenant: Tenant, document: dict[str, Any],
                  exclude: int | None = None) -> tuple[str, str]:
    display_name = document.get("displayName")
    if not isinstance(display_name, str) or not display_name.strip():
        raise InvalidValueException(detail="displayName is required.")
    if len(display_name) > 200:
        raise InvalidValueException(detail="displayName is longer than 200 characters.")
    if ScimGroup.objects.for_tenant(tenant).exclude(pk=exclude).filter(
            display_name=display_name).exists():
        raise UniquenessException(detail=f"Group {display_name!r} already exists.")
    return display_name, document.get("externalId") or ""


def _members(tenant: Tenant, document: dict[str, Any],
             group: ScimGroup | None = None) -> list[ScimUser]:
    """The user members a group document names; every member must be a resource of the
    tenant (a user, or another group: nested groups are kept but give no role)."""
    wanted: list[uuid.UUID] = []
    for member in document.get("members") or []:
        try:
            wanted.append(uuid.UUID(str(member.get("value"))))
        except (ValueError, AttributeError):
            raise InvalidValueException(
                detail=f"members: {member.get('value')!r} is not a resource id.") from None
    users = {u.scim_id: u for u in ScimUser.objects.for_tenant(tenant).filter(scim_id__in=wanted)
             .select_related("user")}
    groups = set(ScimGroup.objects.for_tenant(tenant).filter(scim_id__in=wanted)
                 .values_list("scim_id", flat=True))
    unknown = [str(w) for w in wanted if w not in users and w not in groups]
    if unknown:
        raise InvalidValueException(
            detail=f"members: no user or group {', '.join(unknown)} in this tenant.")
    if group is not None and group.scim_id in groups:
        raise InvalidValueException(detail="members: a group cannot be its own member.")
    return list(users.values())


def _set_members(group: ScimGroup, members: list[ScimUser]) -> tuple[set[ScimUser],
                                                                    set[ScimUser]]:
    current = {link.member for link in group.memberships.select_related("member__user")}
    wanted = set(members)
    added, removed = wanted - current, current - wanted
    ScimGroupMember.objects.filter(group=group, member__in=removed).delete()
    ScimGroupMember.objects.bulk_create(
        [ScimGroupMember(tenant=group.tenant, group=group, member=m) for m in added])
    return added, removed


@transaction.atomic
def scim_group_create(*, tenant: Tenant, actor: Actor, document: dict[str, Any]) -> ScimGroup:
    """Create a group with its members; members get the role its name maps to."""
    display_name, external_id = _group_fields(tenant, document)
    members = _members(tenant, document)
    group = ScimGroup.objects.create(tenant=tenant, display_name=display_name,
                                     external_id=external_id, document=document)
    _set_members(group, members)
    audit_record(tenant=tenant, actor=actor, action="scim.group_created", obj=group,
                 after={**group.audit_snapshot(),
                        "members": sorted(m.user_name for m in members)})
    _sync_roles(tenant=tenant, actor=actor, scim_users=members)
    return group


@transaction.atomic
def scim_group_update(*, tenant: Tenant, actor: Actor, group: ScimGroup,
                      document: dict[str, Any]) -> ScimGroup:
    """Replace a group (PUT, or the result of a PATCH): new name, members added or removed;
    every member whose groups changed gets the role they now map to."""
    group = ScimGroup.objects.for_tenant(tenant).select_for_update().get(pk=group.pk)
    display_name, external_id = _group_fields(tenant, document, exclude=group.pk)
    members = _members(tenant, document, group=group)
    before = group.audit_snapshot()
    renamed = display_name != group.display_name
    group.display_name = display_name
    group.external_id = external_id
    group.document = document
    group.version += 1
    group.updated_at = timezone.now()
    group.save()
    added, removed = _set_members(group, members)
    audit_record(tenant=tenant, actor=actor, action="scim.group_updated", obj=group,
                 before=before, after={**group.audit_snapshot(),
                                       "members_added": sorted(m.user_name for m in added),
                                       "members_removed": sorted(m.user_name for m in removed)})
    affected = set(members) | removed if renamed else added | removed
    _sync_roles(tenant=tenant, actor=actor, scim_users=sorted(affected, key=lambda u: u.pk))
    return group


@transaction.atomic
def scim_group_delete(*, tenant: Tenant, actor: Actor, group: ScimGroup) -> None:
    """Delete a group; its members lose the role it gave them."""
    group = ScimGroup.objects.for_tenant(tenant).select_for_update().get(pk=group.pk)
    members = [link.member for link in group.memberships.select_related("member__user")]
    group_id = str(group.scim_id)
    audit_record(tenant=tenant, actor=actor, action="scim.group_deleted", obj=group,
                 before={**group.audit_snapshot(),
                         "members": sorted(m.user_name for m in members)})
    group.delete()
    # A group that named it as a nested member no longer does.
    for other in ScimGroup.objects.for_tenant(tenant):
        kept = [m for m in other.document.get("members") or [] if m.get("value") != group_id]
        if len(kept) != len(other.document.get("members") or []):
            other.document = {**other.document, "members": kept}
            other.version += 1
            other.save(update_fields=["document", "version"])
    _sync_roles(tenant=tenant, actor=actor, scim_users=members)
