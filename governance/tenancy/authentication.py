"""``Authorization: Bearer`` for the admin REST API (personal and service API tokens)."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed, Throttled
from rest_framework.request import Request

from governance.tenancy import token_guard
from governance.tenancy.models import ApiToken, Membership, hash_token
from governance.tenancy.roles import role_covers

# last_used_at is bookkeeping for the token list, not an audited change: written at most once a
# minute per token so the hot path stays read-only.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class ServicePrincipal:
    """``request.user`` for a service token: authenticated, but not a person."""

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False
    pk = None

    def __init__(self, token: ApiToken) -> None:
        self.token = token

    def get_username(self) -> str:
        return f"service:{self.token.name}"

    def __str__(self) -> str:
        return self.get_username()

    def has_perm(self, perm, obj=None) -> bool:
        return False


class BearerTokenAuthentication(BaseAuthentication):
    """Looks the token up by its SHA-256; expired, revoked or over-privileged tokens fail."""

    keyword = "Bearer"

    def authenticate(self, request: Request):
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword.lower().encode():
            return None
        if len(parts) != 2:
            raise AuthenticationFailed("Malformed Authorization header: use 'Bearer <token>'.")
        try:
            plaintext = parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise AuthenticationFailed("Invalid token.") from None
        token = (
            ApiToken.objects.select_related("tenant", "user")
            .filter(token_hash=hash_token(plaintext))
            .first()
        )
        if token is None:
            wait = token_guard.record_failure(request)
            if wait:
                raise Throttled(wait=wait, detail="Too many unknown tokens from this address; "
                                                  f"try again in {wait} s.")
            raise AuthenticationFailed("Invalid token.")
        if token.revoked_at is not None:
            raise AuthenticationFailed("This token has been revoked.")
        now = timezone.now()
        if token.expires_at <= now:
            raise AuthenticationFailed("This token has expired.")
        if token.user is not None:
            if not token.user.is_active:
                raise AuthenticationFailed("The token's user is deactivated.")
            # Read on every request (never cached): a token stops at once when its owner's
            # last membership of the tenant goes, whichever way it went.
            membership = Membership.objects.for_tenant(token.tenant).filter(user=token.user).first()
            if membership is None:
                raise AuthenticationFailed(
                    "The token's owner is no longer a member of the token's tenant."
                )
            if not role_covers(membership.role, token.role):
                raise AuthenticationFailed(
                    "The token's role exceeds its owner's current role in the tenant."
                )
            principal = token.user
        else:
            principal = ServicePrincipal(token)
        if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return principal, token

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="tollgate"'
