"""OpenID Connect Back-Channel Logout 1.0: the IdP tells Tollgate that a sign-in has ended.

``POST /oidc/backchannel-logout/`` with ``logout_token=<JWT>``. The token is verified as the
specification (section 2.6) asks: signed by a key of the IdP's JWKS with the configured
algorithm; ``iss`` the configured issuer; ``aud`` containing our client id; ``iat`` within
``OIDC_LOGOUT_TOKEN_MAX_AGE``; the back-channel logout event; ``sid`` and/or ``sub``; no
``nonce``; a ``jti`` never seen before (remembered in the shared cache). Then the sessions of
that IdP session (``sid``), or else every session of that (issuer, subject), end.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

import jwt
import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import transaction
from django.db.models import Q

from governance.audit.services import Actor
from governance.tenancy.models import UserSession
from governance.tenancy.offboarding import user_sessions_end

log = logging.getLogger(__name__)

LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
MAX_TOKEN_LENGTH = 16 * 1024
# The IdP's JWKS is kept this long; a token naming a key not in it fetches it again, at most
# once per JWKS_REFETCH_SECONDS (an unknown kid cannot make Tollgate hammer the IdP).
JWKS_CACHE_SECONDS = 300
JWKS_REFETCH_SECONDS = 10
JWKS_CACHE_KEY = "oidc:bcl:jwks"
# How far ahead of our clock an iat (or behind it an exp) may be.
CLOCK_SKEW_SECONDS = 60


class LogoutTokenInvalid(Exception):
    """The logout token is refused (400, ``invalid_request``)."""


class IdpKeysUnavailable(Exception):
    """The IdP's JWKS could not be fetched, so no token can be verified now (503)."""


def _fetch_jwks() -> list[dict[str, Any]]:
    try:
        response = requests.get(settings.OIDC_OP_JWKS_ENDPOINT, timeout=settings.OIDC_TIMEOUT)
        response.raise_for_status()
        keys = response.json().get("keys")
    except (requests.RequestException, ValueError, AttributeError) as exc:
        raise IdpKeysUnavailable(f"the IdP's JWKS could not be fetched: {exc}") from exc
    if not isinstance(keys, list):
        raise IdpKeysUnavailable("the IdP's JWKS has no keys list")
    keys = [k for k in keys if isinstance(k, dict)]
    cache.set(JWKS_CACHE_KEY, keys, timeout=JWKS_CACHE_SECONDS)
    return keys


def _signing_key(kid: str, alg: str) -> jwt.PyJWK:
    def find(keys: list[dict[str, Any]]) -> dict[str, Any] | None:
        for key in keys:
            if key.get("kid") == kid and key.get("alg", alg) == alg \
                    and key.get("use", "sig") == "sig":
                return key
        return None

    keys = cache.get(JWKS_CACHE_KEY)
    key = find(keys) if isinstance(keys, list) else None
    if key is None and (keys is None or cache.add(f"{JWKS_CACHE_KEY}:refetch", 1,
                                                  timeout=JWKS_REFETCH_SECONDS)):
        key = find(_fetch_jwks())
    if key is None:
        raise LogoutTokenInvalid(f"the logout token is signed with a key ({kid!r}) that is not "
                                 "in the IdP's JWKS")
    try:
        return jwt.PyJWK(key, algorithm=alg)
    except jwt.PyJWTError as exc:
        raise LogoutTokenInvalid(f"the IdP's key {kid!r} cannot be used: {exc}") from exc


def logout_token_verify(token: str) -> dict[str, Any]:
    """The verified claims of a logout token, or ``LogoutTokenInvalid`` saying what is wrong.
    Verifying records nothing, except the ``jti`` of a token that passed every check."""
    if not token:
        raise LogoutTokenInvalid("logout_token is missing")
    if len(token) > MAX_TOKEN_LENGTH:
        raise LogoutTokenInvalid("logout_token is too long")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise LogoutTokenInvalid(f"logout_token is not a signed JWT: {exc}") from exc
    alg, kid = header.get("alg"), header.get("kid")
    if alg != settings.OIDC_RP_SIGN_ALGO:
        raise LogoutTokenInvalid(f"logout_token must be signed with "
                                 f"{settings.OIDC_RP_SIGN_ALGO}, not {alg!r}")
    if not isinstance(kid, str) or not kid:
        raise LogoutTokenInvalid("logout_token names no signing key (no kid)")
    key = _signing_key(kid, alg)
    max_age = settings.OIDC_LOGOUT_TOKEN_MAX_AGE
    try:
        claims = jwt.decode(
            token, key=key, algorithms=[alg], audience=settings.OIDC_RP_CLIENT_ID,
            issuer=settings.OIDC_OP_ISSUER, leeway=CLOCK_SKEW_SECONDS,
            options={"require": ["iss", "aud", "iat", "jti", "events"]},
        )
    except jwt.PyJWTError as exc:
        raise LogoutTokenInvalid(f"logout_token was refused: {exc}") from exc
    iat = claims["iat"]
    if not isinstance(iat, int | float) or abs(time.time() - iat) > max_age:
        raise LogoutTokenInvalid(f"logout_token's iat is more than {max_age} s away from now")
    events = claims["events"]
    if not isinstance(events, dict) or not isinstance(events.get(LOGOUT_EVENT), dict):
        raise LogoutTokenInvalid(f"logout_token's events has no {LOGOUT_EVENT} member")
    if "nonce" in claims:
        raise LogoutTokenInvalid("logout_token must not contain a nonce")
    sid, sub = claims.get("sid"), claims.get("sub")
    if sid is None and sub is None:
        raise LogoutTokenInvalid("logout_token names neither sid nor sub")
    for name, value in (("sid", sid), ("sub", sub)):
        if value is not None and (not isinstance(value, str) or not value or len(value) > 255):
            raise LogoutTokenInvalid(f"logout_token's {name} is not a non-empty string")
    jti = claims["jti"]
    if not isinstance(jti, str) or not jti or len(jti) > 255:
        raise LogoutTokenInvalid("logout_token's jti is not a non-empty string")
    # Last, so a refused token never uses up a jti. Kept longer than a token can be accepted.
    seen = "oidc:bcl:jti:" + hashlib.sha256(
        json.dumps([claims["iss"], jti]).encode()).hexdigest()
    if not cache.add(seen, 1, timeout=2 * max_age + 60):
        raise LogoutTokenInvalid("logout_token was used already (jti replayed)")
    return claims


@transaction.atomic
def backchannel_logout(*, claims: dict[str, Any]) -> int:
    """End the sessions a verified logout token names; returns how many ended. Audited as
    ``auth.session_ended`` per user (in each of their tenants)."""
    sid, sub = claims.get("sid"), claims.get("sub")
    if sid is not None:
        match = Q(sid=sid) & (Q(subject=sub) if sub is not None else Q())
        if sub is not None:
            # Sessions whose ID token carried no sid cannot be told apart: all of the subject's.
            match |= Q(subject=sub, sid="")
    else:
        match = Q(subject=sub)
    sessions = UserSession.objects.filter(Q(issuer=claims["iss"]) & match)
    actor = Actor.system("oidc-backchannel-logout")
    ended = 0
    users = get_user_model().objects.filter(pk__in=sessions.values("user_id")).order_by("pk")
    for user in users:
        ended += user_sessions_end(user=user, actor=actor, sessions=sessions.filter(user=user),
                                   reason="the IdP ended the sign-in (back-channel logout)")
    return ended
