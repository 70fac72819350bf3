"""Invitations into a tenant: created and revoked by an admin, taken up at the invitee's next
sign-in (OIDC or, in the demo, the local password).

An invitation names an e-mail address or an IdP (issuer, subject) pair, never a user: creating
one answers the same whether or not anybody with that address or subject exists anywhere in the
installation. The only thing it may say about people is what the tenant already knows — that a
member of *this* tenant has that address or subject.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from governance.audit.services import Actor, audit_record
from governance.tenancy.models import Invitation, Membership, Tenant
from governance.tenancy.roles import ROLE_PRECEDENCE, Role
from governance.tenancy.selectors import pending_invitations
from governance.tenancy.services import membership_create


def _clean_invitee(email: str, issuer: str, subject: str) -> tuple[str, str, str]:
    email, issuer, subject = email.strip().lower(), issuer.strip(), subject.strip()
    if email and (issuer or subject):
        raise ValidationError(
            {"email": "Invite by e-mail address or by IdP subject, not both."})
    if not (email or issuer or subject):
        raise ValidationError(
            {"email": "Enter an e-mail address, or an IdP issuer and subject."})
    if email:
        try:
            validate_email(email)
        except ValidationError:
            raise ValidationError({"email": "Enter a valid e-mail address."}) from None
        if len(email) > 254:
            raise ValidationError({"email": "Use at most 254 characters."})
        return email, "", ""
    errors = {}
    if not issuer:
        errors["issuer"] = "Enter the IdP's issuer (the iss of its ID tokens)."
    elif len(issuer) > 500:
        errors["issuer"] = "Use at most 500 characters."
    if not subject:
        errors["subject"] = "Enter the person's subject (the sub the IdP sends)."
    elif len(subject) > 255:
        errors["subject"] = "Use at most 255 characters."
    if errors:
        raise ValidationError(errors)
    return "", issuer, subject


@transaction.atomic
def invitation_create(
    *,
    tenant: Tenant,
    actor: Actor,
    invited_by: AbstractBaseUser | None,
    role: str,
    email: str = "",
    issuer: str = "",
    subject: str = "",
) -> Invitation:
    """Invite someone by e-mail address or by IdP (issuer, subject) with a role.

    The answer never depends on who exists outside this tenant: no user is looked up except
    among the tenant's own members.
    """
    email, issuer, subject = _clean_invitee(email, issuer, subject)
    if role not in Role.values:
        raise ValidationError({"role": f"Unknown role {role!r}."})
    # One invitation at a time per invitee and tenant: concurrent invites of the same person
    # queue on the tenant row, so the duplicate check below cannot race.
    Tenant.objects.select_for_update().filter(pk=tenant.pk).first()
    field = "email" if email else "subject"
    same = Q(email=email) if email else Q(issuer=issuer, subject=subject)
    if pending_invitations().for_tenant(tenant).filter(same).exists():
        raise ValidationError({field: "A pending invitation for this person already exists; "
                                      "revoke it first to invite them with another role."})
    members = Membership.objects.for_tenant(tenant)
    if email:
        is_member = members.filter(user__email__iexact=email).exists()
    else:
        is_member = members.filter(user__external_identities__issuer=issuer,
                                   user__external_identities__subject=subject).exists()
    if is_member:
        raise ValidationError({field: "A member of this tenant already has this "
                                      f"{'e-mail address' if email else 'IdP subject'}."})
    now = timezone.now()
    invitation = Invitation(
        tenant=tenant, email=email, issuer=issuer, subject=subject, role=role,
        invited_by=invited_by, created_at=now,
        expires_at=now + timedelta(days=settings.INVITATION_EXPIRY_DAYS),
    )
    invitation.full_clean(exclude=["tenant", "invited_by"])
    invitation.save()
    audit_record(tenant=tenant, actor=actor, action="invitation.created", obj=invitation,
                 after=invitation.audit_snapshot())
    return invitation


@transaction.atomic
def invitation_revoke(*, tenant: Tenant, actor: Actor, invitation: Invitation) -> None:
    """Withdraw an invitation that has not been taken up (revoking twice is harmless)."""
    invitation = Invitation.objects.for_tenant(tenant).select_for_update().get(pk=invitation.pk)
    if invitation.accepted_at is not None:
        raise ValidationError("This invitation has been taken up already; remove the member "
                              "instead.")
    if invitation.revoked_at is not None:
        return
    invitation.revoked_at = timezone.now()
    invitation.save(update_fields=["revoked_at"])
    audit_record(tenant=tenant, actor=actor, action="invitation.revoked", obj=invitation,
                 before=invitation.audit_snapshot())


@transaction.atomic
def invitations_accept(
    *, user: AbstractBaseUser, email: str, identities: list[tuple[str, str]]
) -> list[Membership]:
    """At a sign-in: take up every pending invitation naming the user's (verified) e-mail
    address or one of their (issuer, subject) pairs.

    In each tenant the strongest invited role becomes a membership (left alone when the user
    is a member already); every matching invitation there is used up. Audited per invitation.
    """
    match = Q()
    if email.strip():
        match |= Q(email=email.strip().lower())
    for issuer, subject in identities:
        match |= Q(issuer=issuer, subject=subject)
    if not match:
        return []
    invitations = list(
        pending_invitations().filter(match).select_related("tenant")
        .select_for_update(of=("self",)).order_by("tenant_id", "pk")
    )
    actor = Actor.user(user)
    now = timezone.now()
    created = []
    by_tenant: dict[int, list[Invitation]] = {}
    for invitation in invitations:
        by_tenant.setdefault(invitation.tenant_id, []).append(invitation)
    for group in by_tenant.values():
        tenant = group[0].tenant
        group.sort(key=lambda i: ROLE_PRECEDENCE.index(i.role))
        existing = Membership.objects.for_tenant(tenant).filter(user=user).first()
        if existing is None:
            existing = membership_create(tenant=tenant, actor=actor, user=user,
                                         role=group[0].role, source=Membership.Source.INVITATION)
            created.append(existing)
            outcome = "member added"
        else:
            outcome = "already a member"
        for invitation in group:
            invitation.accepted_at = now
            invitation.accepted_by = user
            invitation.save(update_fields=["accepted_at", "accepted_by"])
            audit_record(
                tenant=tenant, actor=actor, action="invitation.accepted", obj=invitation,
                after=invitation.audit_snapshot() | {"user": user.get_username(),
                                            "outcome": outcome, "member_role": existing.role},
            )
    return created
