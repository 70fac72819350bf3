"""Session re-validation: for IdPs that neither provision by SCIM nor send back-channel logouts.

A signed-in OIDC session is re-checked with the IdP at its first request after
``OIDC_RECHECK_SECONDS``: the refresh-token grant when the IdP issued a refresh token, then the
userinfo endpoint with the (new) access token. Then:

- the IdP refuses (``invalid_grant``, userinfo 401, another subject): the session ends;
- it answers: the user's IdP-managed memberships follow the groups it sends now (as at a
  sign-in); a user left with no membership at all loses the session too;
- it cannot be reached, or answers 5xx: the session is kept and a WARNING is logged, for at most
  ``OIDC_RECHECK_GRACE_SECONDS`` after the IdP last vouched for it; then it ends (fail closed).

Only one request per session checks at a time (a lock in the shared cache); the others go on
with the access the session had.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import jwt
import requests
from django.conf import settings
from django.contrib import auth
from django.core.cache import cache
from django.core.exceptions import SuspiciousOperation
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone
from django.utils.deprecation import MiddlewareMixin

from governance.audit.services import Actor
from governance.tenancy import services
from governance.tenancy.models import ExternalIdentity, Membership, UserSession
from governance.tenancy.offboarding import user_sessions_end
from governance.tenancy.oidc import TollgateOIDCBackend, groups_from_claims
from governance.tenancy.user_sessions import OIDC_TOKENS_KEY, RECHECK_AT_KEY

log = logging.getLogger(__name__)

ACTOR = Actor.system("oidc-revalidation")
# After a failed check (IdP unreachable) the next one is tried this soon at the latest.
RETRY_SECONDS = 60


class IdpRefused(Exception):
    """The IdP no longer vouches for the session."""


class IdpUnavailable(Exception):
    """The IdP could not answer (unreachable, 5xx, an unusable answer)."""


def _json(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _refresh(refresh_token: str) -> tuple[str, str]:
    """The refresh-token grant: (new access token, refresh token to keep)."""
    try:
        response = requests.post(settings.OIDC_OP_TOKEN_ENDPOINT, data={
            "grant_type": "refresh_token", "refresh_token": refresh_token,
            "client_id": settings.OIDC_RP_CLIENT_ID,
            "client_secret": settings.OIDC_RP_CLIENT_SECRET,
        }, timeout=settings.OIDC_TIMEOUT)
    except requests.RequestException as exc:
        raise IdpUnavailable(f"the token endpoint could not be reached: {exc}") from exc
    body = _json(response)
    if response.status_code == 200 and isinstance(body.get("access_token"), str):
        rotated = body.get("refresh_token")
        return body["access_token"], rotated if isinstance(rotated, str) else refresh_token
    if response.status_code in (400, 401) and body.get("error") == "invalid_grant":
        raise IdpRefused("the IdP refused the session's refresh token (invalid_grant)")
    raise IdpUnavailable(f"the token endpoint answered HTTP {response.status_code} "
                         f"{body.get('error', '')}".strip())


def idp_claims(tokens: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Ask the IdP about a session: (its userinfo claims now, the tokens to keep)."""
    access, refresh = tokens.get("access_token") or "", tokens.get("refresh_token") or ""
    if refresh:
        access, refresh = _refresh(refresh)
    if not access:
        raise IdpRefused("the session holds no token to re-check it with")
    try:
        claims = TollgateOIDCBackend().get_userinfo(access, None, None)
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        if status == 401:
            raise IdpRefused("the IdP's userinfo endpoint refused the session's access token "
                             "(401)") from exc
        raise IdpUnavailable(f"the userinfo endpoint answered HTTP {status}") from exc
    except requests.RequestException as exc:
        raise IdpUnavailable(f"the userinfo endpoint could not be reached: {exc}") from exc
    except (ValueError, SuspiciousOperation, jwt.PyJWTError) as exc:
        raise IdpUnavailable(f"the userinfo answer is unusable: {exc}") from exc
    if not isinstance(claims, dict):
        raise IdpUnavailable("the userinfo answer is not a JSON object")
    return claims, {"access_token": access, "refresh_token": refresh}


@transaction.atomic
def session_revalidate(*, row: UserSession, claims: dict[str, Any]) -> bool:
    """Apply what the IdP says about the session's user now; True while the session keeps
    access. Membership changes are audited by the group sync; an ended session as
    ``auth.session_ended``."""
    if claims.get("sub") != row.subject:
        raise IdpRefused("the IdP's userinfo names another subject")
    try:
        groups = groups_from_claims(claims)
    except SuspiciousOperation as exc:
        raise IdpUnavailable(str(exc)) from exc
    ExternalIdentity.objects.filter(issuer=row.issuer, subject=row.subject).update(
        last_groups=sorted(set(groups)))
    tenants = [m.tenant for m in Membership.objects.filter(user=row.user)
               .select_related("tenant").order_by("tenant_id")]
    services.memberships_sync_from_groups(user=row.user, groups=groups)
    if not Membership.objects.filter(user=row.user).exists():
        # Recorded in the tenants the user has just left, beside their membership.deleted.
        user_sessions_end(user=row.user, actor=ACTOR, sessions=UserSession.objects.filter(
            pk=row.pk), reason="re-validation: the IdP's groups map to no role any more",
            tenants=tenants)
        return False
    UserSession.objects.filter(pk=row.pk).update(last_checked_at=timezone.now())
    return True


def _end(row: UserSession, reason: str) -> None:
    user_sessions_end(user=row.user, actor=ACTOR, reason=reason,
                      sessions=UserSession.objects.filter(pk=row.pk))


def revalidate(request: HttpRequest) -> bool:
    """Re-check the request's session with the IdP now; False when it has lost its access
    (the request then goes on signed out)."""
    session = request.session
    lock = f"oidc:recheck:{session.session_key}"
    if not cache.add(lock, 1, timeout=settings.OIDC_TIMEOUT * 3):
        return True  # another request of this session is checking it
    try:
        row = UserSession.objects.select_related("user").filter(
            session_key=session.session_key, user_id=request.user.pk).first()
        if row is None or not row.issuer:
            kept = False  # no longer registered: offboarding could not reach it
        else:
            kept = _check(request, row)
    finally:
        cache.delete(lock)
    if not kept:
        auth.logout(request)
    return kept


def _check(request: HttpRequest, row: UserSession) -> bool:
    session = request.session
    recheck = settings.OIDC_RECHECK_SECONDS
    try:
        claims, tokens = idp_claims(session.get(OIDC_TOKENS_KEY) or {})
        kept = session_revalidate(row=row, claims=claims)
    except IdpRefused as exc:
        log.info("OIDC re-validation ended a session of %s: %s", row.user.get_username(), exc)
        _end(row, f"re-validation: {exc}")
        return False
    except IdpUnavailable as exc:
        unconfirmed = (timezone.now() - row.last_checked_at).total_seconds()
        limit = recheck + settings.OIDC_RECHECK_GRACE_SECONDS
        if unconfirmed > limit:
            log.warning("OIDC re-validation ended a session of %s: the IdP has not confirmed "
                        "it for %d s (limit %d s): %s", row.user.get_username(), unconfirmed,
                        limit, exc)
            _end(row, f"re-validation: the IdP could not be reached for more than {limit} s")
            return False
        log.warning("OIDC re-validation: the IdP could not confirm a session of %s; kept "
                    "(unconfirmed for %d s, limit %d s): %s", row.user.get_username(),
                    unconfirmed, limit, exc)
        session[RECHECK_AT_KEY] = time.time() + min(recheck, RETRY_SECONDS)
        return True
    if kept:
        session[OIDC_TOKENS_KEY] = tokens
        session[RECHECK_AT_KEY] = time.time() + recheck
    return kept


class SessionRevalidationMiddleware(MiddlewareMixin):
    """Re-checks a due OIDC session before the request is served (after authentication)."""

    def process_request(self, request: HttpRequest) -> None:
        if not (settings.OIDC_ENABLED and settings.OIDC_RECHECK_SECONDS):
            return
        due = request.session.get(RECHECK_AT_KEY)
        if not isinstance(due, int | float) or time.time() < due:
            return
        if request.user.is_authenticated:
            revalidate(request)
