"""OpenID Connect login (mozilla-django-oidc, RS256 + PKCE) with group → role mapping."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import SuspiciousOperation
from django.db import transaction
from mozilla_django_oidc.auth import OIDCAuthenticationBackend

from governance.tenancy import invitations, services


class TollgateOIDCBackend(OIDCAuthenticationBackend):
    """Users are matched on (issuer, sub), never on e-mail; memberships follow the groups claim."""

    def verify_token(self, token, **kwargs):
        payload = super().verify_token(token, **kwargs)
        audience = payload.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if settings.OIDC_RP_CLIENT_ID not in audiences:
            raise SuspiciousOperation("ID token audience is not this client")
        if payload.get("iss") != settings.OIDC_OP_ISSUER:
            raise SuspiciousOperation("ID token issuer is not the configured OIDC_OP_ISSUER")
        if not payload.get("sub"):
            raise SuspiciousOperation("ID token has no subject")
        return payload

    def get_or_create_user(self, access_token, id_token, payload):
        claims = self.get_userinfo(access_token, id_token, payload)
        # OIDC Core 5.3.2: the userinfo subject must be the ID token's subject.
        if claims.get("sub") != payload["sub"]:
            raise SuspiciousOperation("userinfo subject differs from the ID token subject")
        groups = claims.get(settings.OIDC_GROUPS_CLAIM, [])
        if isinstance(groups, str):
            groups = [groups]
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise SuspiciousOperation(f"the {settings.OIDC_GROUPS_CLAIM!r} claim is not a list")
        email = claims.get("email") or ""
        username = (
            claims.get("preferred_username") or (email.split("@")[0] if email else "")
            or payload["sub"]
        )
        verified_email = email[:254] if claims.get("email_verified", True) else ""
        with transaction.atomic():
            user = services.identity_login(
                issuer=payload["iss"], subject=payload["sub"], username=username[:150],
                email=verified_email, full_name=claims.get("name") or "", groups=groups,
            )
            # Invitations by this subject or this (verified) address take effect now.
            invitations.invitations_accept(
                user=user, email=verified_email, identities=[(payload["iss"], payload["sub"])]
            )
            services.auth_record_login(user=user, method="oidc")
        return user
