"""Brute-force guard for bearer tokens: admin API tokens and gateway tokens.

Tokens carry 256 random bits, so guessing one is hopeless; the guard still stops a client from
trying at volume (and from turning the token lookup into a cheap way to load the database).
After ``TOKEN_FAILURE_LIMIT_PER_MINUTE`` bearer credentials from one client address that match
no token within a UTC minute, further unknown credentials from that address get **429** with
``Retry-After`` (the rest of the minute) instead of 401. Only failures are counted and checked,
so a request with a valid token never pays for the guard (the gateway poll's hot path stays one
Redis round trip). Revoked or expired tokens are not counted: a decommissioned gateway that
keeps polling is told it was revoked, not throttled.

Counts live in the default cache (Redis in production, shared by every web process). The
client address is ``client_ip`` (``TRUSTED_PROXY_COUNT`` decides whether X-Forwarded-For is
believed), the same as for sign-in lockouts.
"""

from __future__ import annotations

import time

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest

WINDOW_SECONDS = 60


def _key(address: str, window: int) -> str:
    return f"tokfail:{address}:{window}"


def _window() -> tuple[int, int]:
    now = int(time.time())
    return now // WINDOW_SECONDS, WINDOW_SECONDS - now % WINDOW_SECONDS


def _address(request: HttpRequest) -> str:
    from governance.tenancy.middleware import client_ip

    return client_ip(request) or "unknown"


def record_failure(request: HttpRequest) -> int:
    """Count an unknown bearer credential from this request's address. Returns the seconds to
    wait when the address is over its limit (answer 429), else 0 (answer 401)."""
    window, remaining = _window()
    key = _key(_address(request), window)
    cache.add(key, 0, timeout=WINDOW_SECONDS * 2)
    try:
        count = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=WINDOW_SECONDS * 2)
        count = 1
    return remaining if count > settings.TOKEN_FAILURE_LIMIT_PER_MINUTE else 0


async def arecord_failure(request: HttpRequest) -> int:
    """:func:`record_failure` for async views."""
    window, remaining = _window()
    key = _key(_address(request), window)
    await cache.aadd(key, 0, timeout=WINDOW_SECONDS * 2)
    try:
        count = await cache.aincr(key)
    except ValueError:
        await cache.aset(key, 1, timeout=WINDOW_SECONDS * 2)
        count = 1
    return remaining if count > settings.TOKEN_FAILURE_LIMIT_PER_MINUTE else 0
