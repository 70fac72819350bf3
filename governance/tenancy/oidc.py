"""OpenID Connect login (mozilla-django-oidc, RS256 + PKCE) with group → role mapping."""

from __future__ import annotations

import logging

import jwt
import requests
from django.conf import settings
from django.core.exceptions import SuspiciousOperation
from django.db import transaction
from mozilla_django_oidc.auth import OIDCAuthenticationBackend

from governance.tenancy import invitations, services, user_sessions


def groups_from_claims(claims: dict) -> list[str]:
    """The IdP groups in userinfo claims (``OIDC_GROUPS_CLAIM``); SuspiciousOperation if the
    claim is neither a string nor a list of strings."""
    groups = claims.get(settings.OIDC_GROUPS_CLAIM, [])
    if isinstance(groups, str):
        groups = [groups]
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise SuspiciousOperation(f"the {settings.OIDC_GROUPS_CLAIM!r} claim is not a list")
    return groups


class TollgateOIDCBackend(OIDCAuthenticationBackend):
    """Users are matched on (issuer, sub), never on e-mail; memberships follow the groups claim."""

    def authenticate(self, request, **kwargs):
        """The library's flow; what it raises for a refused sign-in becomes ``Refused`` (the
        callback view logs it once and shows the sign-in error page), never a 500."""
        try:
            return super().authenticate(request, **kwargs)
        except requests.HTTPError as exc:
            raise _token_error(exc) from exc
        except (SuspiciousOperation, jwt.PyJWTError) as exc:
            raise Refused(_one_line(f"the ID token was refused: {exc}")) from exc
        except requests.RequestException as exc:
            raise Refused(_one_line(f"the identity provider could not be reached: {exc}"),
                          unavailable=True) from exc

    def get_token(self, payload):
        token_info = super().get_token(payload)
        # Kept for re-validation (governance.tenancy.revalidation); the library drops it.
        self._refresh_token = token_info.get("refresh_token") if isinstance(token_info, dict) \
            else None
        return token_info

    def retrieve_matching_jwk(self, token):
        # The library indexes the header's "kid" (KeyError, a 500, when a token has none) and
        # compares it with every JWKS entry's: a token that names no key matches none.
        header = jwt.get_unverified_header(token)
        if not isinstance(header.get("kid"), str) or not header["kid"]:
            raise SuspiciousOperation("the ID token names no signing key (no kid)")
        return super().retrieve_matching_jwk(token)

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
        try:
            return self._user_from_claims(access_token, id_token, payload)
        except SuspiciousOperation as exc:
            # Not the library's catch-all, which logs a line of its own: the view logs once.
            raise Refused(_one_line(str(exc))) from exc

    def _user_from_claims(self, access_token, id_token, payload):
        claims = self.get_userinfo(access_token, id_token, payload)
        # OIDC Core 5.3.2: the userinfo subject must be the ID token's subject.
        if claims.get("sub") != payload["sub"]:
            raise SuspiciousOperation("userinfo subject differs from the ID token subject")
        groups = groups_from_claims(claims)
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
            # Invitations by this subject, or by this address if the IdP says it verified it
            # (explicitly: an address without email_verified takes up nothing), take effect now.
            invited_email = verified_email if claims.get("email_verified") is True else ""
            invitations.invitations_accept(
                user=user, email=invited_email, identities=[(payload["iss"], payload["sub"])]
            )
            services.auth_record_login(user=user, method="oidc")
        # Read by the session registry when django.contrib.auth.login signals the sign-in.
        request = getattr(self, "request", None)
        if request is not None:
            sid = payload.get("sid")
            setattr(request, user_sessions.OIDC_LOGIN_ATTR, {
                "iss": payload["iss"], "sub": payload["sub"],
                "sid": sid if isinstance(sid, str) else "",
                "access_token": access_token,
                "refresh_token": getattr(self, "_refresh_token", None) or "",
            })
        return user


# --- Refusals (raised by the backend above, logged once by oidc_views) ----------------------

log = logging.getLogger(__name__)


class Refused(Exception):
    """A sign-in the IdP or this client refused; ``unavailable`` when the IdP could not answer."""

    def __init__(self, reason: str, *, unavailable: bool = False) -> None:
        super().__init__(reason)
        self.unavailable = unavailable


def _one_line(text: str, limit: int = 200) -> str:
    return " ".join(str(text).split())[:limit]


def _token_error(exc: requests.HTTPError) -> Refused:
    """The token endpoint's answer, as its OAuth error code (``invalid_grant``: a replayed,
    expired or forged code) when it gives one."""
    response = exc.response
    status = response.status_code if response is not None else 0
    try:
        body = response.json() if response is not None else {}
    except ValueError:
        body = {}
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, str) and 400 <= status < 500:
        described = body.get("error_description")
        detail = f"{error}: {described}" if isinstance(described, str) else error
        return Refused(_one_line(f"the token endpoint refused the code ({detail})"))
    return Refused(f"the token endpoint answered HTTP {status}", unavailable=status >= 500)


def log_refusal(reason: str, *, unavailable: bool = False) -> None:
    """One line per refused sign-in: WARNING (anyone can send a bad callback), ERROR only when
    the IdP itself could not answer. No traceback: the reason says it all."""
    log.log(logging.ERROR if unavailable else logging.WARNING,
            "OIDC sign-in refused: %s", reason)
