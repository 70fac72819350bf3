"""The session registry: which browser sessions each user holds, filled at every sign-in.

Offboarding (SCIM, an admin), back-channel logout and re-validation end a user's sessions
through it, without scanning the session store. Rows are written by the ``user_logged_in`` and
``user_logged_out`` signals, so every way of signing in (OIDC, the demo's password form, tests'
``force_login``) is covered; the hourly ``clear_expired_sessions`` task drops the rows whose
session has gone.
"""

from __future__ import annotations

import logging
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.contrib.sessions.backends.base import SessionBase
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from governance.tenancy.models import UserSession

log = logging.getLogger(__name__)

# The verified OIDC login of this request, set by TollgateOIDCBackend on the request (not the
# session, which django.contrib.auth.login may flush) and read when the user_logged_in signal
# registers the session.
OIDC_LOGIN_ATTR = "_tollgate_oidc_login"
# Session keys: the tokens re-validation uses, and when it is due next (epoch seconds).
OIDC_TOKENS_KEY = "tollgate_oidc_tokens"
RECHECK_AT_KEY = "tollgate_oidc_recheck_at"


def _store_class() -> type[SessionBase]:
    return import_module(settings.SESSION_ENGINE).SessionStore


def session_register(request: HttpRequest, user: AbstractBaseUser) -> UserSession | None:
    """Record the request's (new) session as ``user``'s, with the OIDC login behind it."""
    session = getattr(request, "session", None)
    if session is None:
        return None
    if not session.session_key:
        # django.contrib.auth.login flushed another user's session: give this one its key now.
        session.save()
    key = session.session_key
    login: dict[str, Any] = getattr(request, OIDC_LOGIN_ATTR, None) or {}
    now = timezone.now()
    row, _ = UserSession.objects.update_or_create(
        session_key=key,
        defaults={
            "user": user, "issuer": login.get("iss", "")[:500],
            "subject": login.get("sub", "")[:255], "sid": login.get("sid", "")[:255],
            "created_at": now, "last_checked_at": now,
        },
    )
    if login:
        session[OIDC_TOKENS_KEY] = {
            "access_token": login.get("access_token") or "",
            "refresh_token": login.get("refresh_token") or "",
        }
        session[RECHECK_AT_KEY] = now.timestamp() + settings.OIDC_RECHECK_SECONDS
    return row


def session_unregister(request: HttpRequest) -> None:
    """Forget the request's session (it is being signed out)."""
    key = getattr(getattr(request, "session", None), "session_key", None)
    if key:
        UserSession.objects.filter(session_key=key).delete()


def sessions_delete(sessions: QuerySet[UserSession]) -> int:
    """Delete these sessions from the session store and the registry; returns how many.

    Runs in the caller's transaction for the database session store: the sessions end exactly
    when the change that ended them commits."""
    store = _store_class()()
    keys = list(sessions.values_list("session_key", flat=True))
    for key in keys:
        store.delete(key)
    UserSession.objects.filter(session_key__in=keys).delete()
    return len(keys)


def sessions_prune() -> int:
    """Drop registry rows whose session no longer exists (expired and cleared, or flushed)."""
    if settings.SESSION_ENGINE == "django.contrib.sessions.backends.db":
        from django.contrib.sessions.models import Session

        live = Session.objects.filter(expire_date__gt=timezone.now()).values("session_key")
        deleted, _ = UserSession.objects.exclude(session_key__in=live).delete()
        return deleted
    store = _store_class()()
    gone = [key for key in UserSession.objects.values_list("session_key", flat=True).iterator()
            if not store.exists(key)]
    UserSession.objects.filter(session_key__in=gone).delete()
    return len(gone)


def on_user_logged_in(sender, request, user, **kwargs) -> None:
    if request is not None:
        session_register(request, user)


def on_user_logged_out(sender, request, user, **kwargs) -> None:
    if request is not None:
        session_unregister(request)
