"""The gateway-facing API (DESIGN.md §5): ``/api/v1/gateway/…``, for machines, not people.

Plain async Django views rather than DRF: the bundle poll is the hottest path of the product and
must not hop to a thread. Its cost on the hot path is one Redis round trip (``hot.alookup``: the
token entry, the current pointer, the rate counter and contact times in one script) and no SQL:
a token or pointer missing from the hot store is looked up once in the database and cached.

Errors are JSON ``{"code", "message"}``: 401 no/unknown/revoked token (with
``WWW-Authenticate: Bearer``), 404 a tenant that is not the token's, 400 malformed input, 413 a
body over GATEWAY_MAX_BODY_BYTES, 429 over GATEWAY_RATE_LIMIT_PER_MINUTE (with Retry-After).

Redis down: the answers come from the database (token, current pointer) and the store (the
tarball), requests are not rate-limited, and a long poll is answered at once as a plain poll
(``application/gzip``: OPA then polls on its own interval until long polls are answered again).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import re
import time
import weakref
from dataclasses import dataclass
from typing import Any

import redis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from bundles import extensions, hot, publish, selectors, services, store
from bundles.models import Gateway, GatewayToken
from governance import draining
from governance.tenancy import token_guard
from governance.tenancy.models import hash_token

LONG_POLL_TYPE = "application/vnd.openpolicyagent.bundles"
PLAIN_TYPE = "application/gzip"
_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d+)", re.IGNORECASE)
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
log = logging.getLogger(__name__)
# The hot store (Redis) unreachable, refusing or timing out.
HOT_STORE_DOWN = (redis.RedisError, OSError)


def released(fn):
    """``fn`` (a database read of a request that may then be held for a long poll), giving the
    request's database connection back as soon as it returns. Django closes a connection only
    when the request ends: 1,000 held polls with cold tokens would otherwise hold 1,000
    connections (PostgreSQL's limit is 100). Inside a transaction (tests) nothing is closed."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        finally:
            if not connection.in_atomic_block:
                connection.close()

    return run


async def _hot_write(action: str, fn, *args: Any) -> None:
    """A hot-store write the answer does not depend on (a cache fill): skipped if Redis is down."""
    try:
        await fn(*args)
    except HOT_STORE_DOWN as exc:
        log.warning("hot store unavailable: %s skipped (%s)", action, exc)


async def _hot_get(key: str) -> tuple[Any, bool]:
    """(value of ``key`` or None, whether the hot store answered)."""
    try:
        return (await hot.aget_many([key]))[0], True
    except HOT_STORE_DOWN as exc:
        log.warning("hot store unavailable: %s read from the database (%s)", key, exc)
        return None, False


def error(status: int, code: str, message: str, **headers: str) -> JsonResponse:
    response = JsonResponse({"code": code, "message": message}, status=status)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    response["Cache-Control"] = "no-store"
    return response


def _unauthorized(message: str) -> JsonResponse:
    return error(401, "not_authenticated", message, WWW_Authenticate='Bearer realm="tollgate"')


@dataclass(frozen=True)
class Caller:
    tenant: str
    tenant_id: int
    gateway: int
    token: int
    # Redis could not be reached for this request: answers come from the database.
    degraded: bool = False


def _lookup_token(token_hash: str) -> dict[str, Any]:
    """Cold path: the token's hot-store entry, from the database."""
    token = (GatewayToken.objects.select_related("gateway", "tenant")
             .filter(token_hash=token_hash).first())
    if token is None:
        return {"unknown": True}
    if token.revoked_at is not None or token.gateway.status != Gateway.Status.ACTIVE:
        return hot.REVOKED
    return {"tenant": token.tenant.slug, "tenant_id": token.tenant_id,
            "gateway": token.gateway_id, "token": token.pk}


async def _token_entry(token_hash: str, cached: Any, fill: bool = True) -> dict[str, Any]:
    if cached is not None:
        return cached
    entry = await sync_to_async(released(_lookup_token))(token_hash)
    if not fill:  # Redis is down: do not wait for it a second time
        return entry
    # Unknown tokens are cached briefly too, so guessing cannot be turned into SQL load.
    await _hot_write("token fill", hot.aset_json, hot.token_key(token_hash), entry,
                     60 if "unknown" in entry else hot.TOKEN_TTL)
    return entry


def _bearer(request: HttpRequest) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value or len(value) > 256:
        return None
    return value


async def authenticate(request: HttpRequest, slug: str | None, extra_key: str | None = None
                       ) -> tuple[Caller | None, HttpResponse | None, Any]:
    """(caller, None, value of ``extra_key``) or (None, error response, None). ``slug`` None:
    the token's own tenant (the token names it).

    With Redis this is one round trip (``hot.alookup``: token entry, the extra key, and the
    gateway's rate counter and contact times in one script); a token not in the hot store is
    looked up in the database once and cached."""
    plaintext = _bearer(request)
    if plaintext is None:
        return None, _unauthorized("Send the gateway token as 'Authorization: Bearer <token>'."), \
            None
    token_hash = hash_token(plaintext)
    count: int | None = None
    degraded = False
    try:
        if hot.uses_redis():
            cached, value, count = await hot.alookup(token_hash, extra_key or hot.token_key(
                token_hash))
        else:
            cached, value = await hot.aget_many([hot.token_key(token_hash),
                                                 extra_key or hot.token_key(token_hash)])
    except HOT_STORE_DOWN as exc:  # Redis down: the database answers (and no rate limit)
        log.warning("hot store unavailable: gateway request served from the database (%s)",
                    exc)
        cached = value = None
        degraded = True
    entry = await _token_entry(token_hash, cached, fill=not degraded)
    if entry.get("unknown"):
        wait = await token_guard.arecord_failure(request)
        if wait:
            return None, error(429, "rate_limited", "Too many unknown tokens from this address; "
                               f"try again in {wait} s.", Retry_After=str(wait)), None
        return None, _unauthorized("Unknown gateway token."), None
    if entry.get("revoked"):
        return None, _unauthorized("This gateway token has been revoked or its gateway "
                                   "disabled."), None
    if slug is not None and entry["tenant"] != slug:
        return None, error(404, "not_found", "No such tenant for this gateway."), None
    limit = settings.GATEWAY_RATE_LIMIT_PER_MINUTE
    if degraded:
        allowed, reset = True, 0
    elif count is None:  # not counted by the lookup (no Redis, or the entry was just filled)
        try:
            allowed, reset = await hot.acount_request(entry["gateway"], entry["token"], limit)
        except HOT_STORE_DOWN:
            allowed, reset, degraded = True, 0, True
    else:
        allowed, reset = count <= limit, hot.seconds_to_next_minute()
    if not allowed:
        return None, error(429, "rate_limited", "Too many requests from this gateway; slow "
                           "down.", Retry_After=str(reset)), None
    caller = Caller(entry["tenant"], entry["tenant_id"], entry["gateway"], entry["token"],
                    degraded)
    return caller, None, value if extra_key else None


async def _still_valid(request: HttpRequest) -> bool:
    """Re-check the token after a long wait (it may have been revoked meanwhile)."""
    plaintext = _bearer(request)
    token_hash = hash_token(plaintext or "")
    cached, answered = await _hot_get(hot.token_key(token_hash))
    entry = await _token_entry(token_hash, cached, fill=answered)
    return not (entry.get("unknown") or entry.get("revoked"))


def _wait_seconds(request: HttpRequest) -> int | None:
    match = _WAIT.search(request.headers.get("Prefer", ""))
    if not match:
        return None
    return min(int(match.group(1)), settings.BUNDLE_MAX_WAIT_SECONDS)


def _etag_matches(header: str, etag: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True
    candidates = [c.strip().removeprefix("W/") for c in header.split(",")]
    return etag in candidates


async def _pointer(slug: str, cached: Any, fill: bool = True) -> dict[str, Any] | None:
    if cached is not None:
        return cached
    pointer = await sync_to_async(released(publish.current_pointer))(slug)
    if pointer is not None and fill:
        await _hot_write("pointer fill", hot.aset_json, hot.current_key(slug), pointer)
    return pointer


async def _body_response(pointer: dict[str, Any], content_type: str) -> HttpResponse:
    sha = pointer["sha256"]
    headers = {"ETag": f'"{sha}"', "Cache-Control": "no-cache",
               "X-Bundle-Revision": str(pointer["revision"])}
    if settings.BUNDLE_ACCEL_REDIRECT:
        if not store.local_path(sha).exists():
            content = await sync_to_async(store.load)(sha)
            if content is not None and not store.local_path(sha).exists():
                # The local copy cannot be written (logged by the store): the proxy would find
                # no file, so the body goes out from here.
                return HttpResponse(content, content_type=content_type, headers=headers)
        response = HttpResponse(b"", content_type=content_type, headers=headers)
        response["X-Accel-Redirect"] = f"{settings.BUNDLE_ACCEL_REDIRECT.rstrip('/')}/{sha}.tar.gz"
        return response
    content = store.from_memory(sha) or await load_once(sha)
    if content is None:
        return error(503, "unavailable", "The bundle is being published; retry shortly.",
                     Retry_After="2")
    return HttpResponse(content, content_type=content_type, headers=headers)


# Per event loop (a future belongs to one loop): sha256 → the read in flight.
_loading_by_loop: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


async def _prefetch(announcement: dict[str, Any]) -> None:
    if not settings.BUNDLE_ACCEL_REDIRECT and store.from_memory(announcement["sha256"]) is None:
        await load_once(announcement["sha256"])


async def load_once(sha: str) -> bytes | None:
    """The tarball, read from the local copy or the database by one request per process while
    the others that need it wait for that read (10,000 woken polls, one fetch)."""
    loop = asyncio.get_running_loop()
    _loading = _loading_by_loop.setdefault(loop, {})
    pending = _loading.get(sha)
    if pending is not None:
        return await asyncio.shield(pending)
    future = loop.create_future()
    _loading[sha] = future
    try:
        content = await sync_to_async(store.read_local, thread_sensitive=False)(sha)
        if content is None:
            content = await sync_to_async(store.load)(sha)
        future.set_result(content)
        return content
    except BaseException as exc:
        future.set_exception(exc)
        future.exception()  # retrieved: waiters re-raise it, no "never retrieved" warning
        raise
    finally:
        _loading.pop(sha, None)


def _not_modified(etag: str, content_type: str) -> HttpResponse:
    response = HttpResponse(status=304, headers={"ETag": etag, "Cache-Control": "no-cache"})
    response["Content-Type"] = content_type
    return response


async def bundle(request: HttpRequest, slug: str) -> HttpResponse:
    """``GET bundles/<slug>``: the current bundle, 304 when unchanged, long poll with
    ``Prefer: wait=N``."""
    if request.method not in ("GET", "HEAD"):
        return error(405, "method_not_allowed", "Use GET.", Allow="GET, HEAD")
    caller, failure, cached_pointer = await authenticate(request, slug, hot.current_key(slug))
    if failure is not None:
        return failure
    # Redis down: no wake-ups to wait for, and holding would cost a query a second per waiter;
    # answer now as a plain poll (the gateway polls again on its own interval).
    wait = None if caller.degraded else _wait_seconds(request)
    content_type = LONG_POLL_TYPE if wait is not None else PLAIN_TYPE
    known = request.headers.get("If-None-Match", "")
    pointer = await _pointer(slug, cached_pointer, fill=not caller.degraded)
    deadline = time.monotonic() + (wait or 0)
    while True:
        if pointer is not None:
            etag = f'"{pointer["sha256"]}"'
            if not _etag_matches(known, etag):
                return await _body_response(pointer, content_type)
        remaining = draining.remaining(deadline)  # 0 once the process is stopping
        if remaining <= 0:
            if pointer is None:
                return error(503, "no_bundle", "No bundle has been published for this tenant "
                             "yet; retry shortly.", Retry_After="5")
            return _not_modified(etag, content_type)
        announcements = hot.announcements()
        if announcements.prepare is None:
            announcements.prepare = _prefetch
        message = await announcements.wait(slug, min(remaining, 30.0))
        if message is not None and message.get("kind") == "bundle":
            # The announcement carries the new pointer: no round trip for 10,000 waiters.
            pointer = {k: message[k] for k in ("tenant", "revision", "sha256", "size",
                                               "expires_at")}
            continue
        # Timed out, a revocation, or the subscription dropped: look for ourselves.
        if not await _still_valid(request):
            return _unauthorized("This gateway token has been revoked or its gateway disabled.")
        cached, answered = await _hot_get(hot.current_key(slug))
        pointer = await _pointer(slug, cached, fill=answered)
        if not answered:  # Redis went away during the hold: answer now, as a plain poll
            deadline, content_type = time.monotonic(), PLAIN_TYPE


async def keys(request: HttpRequest, slug: str) -> HttpResponse:
    """``GET keys/<slug>``: JWKS of the tenant's pending, active and retired keys."""
    if request.method not in ("GET", "HEAD"):
        return error(405, "method_not_allowed", "Use GET.", Allow="GET, HEAD")
    caller, failure, cached = await authenticate(request, slug, hot.jwks_key(slug))
    if failure is not None:
        return failure
    document = cached
    if document is None:
        document = await sync_to_async(selectors.jwks)(caller.tenant_id)
        await _hot_write("jwks fill", hot.aset_json, hot.jwks_key(slug), document, 3600)
    body = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
    etag = f'"{hashlib.sha256(body).hexdigest()}"'
    if _etag_matches(request.headers.get("If-None-Match", ""), etag):
        return HttpResponse(status=304, headers={"ETag": etag})
    return HttpResponse(body, content_type="application/jwk-set+json",
                        headers={"ETag": etag, "Cache-Control": "no-cache"})


async def _read_json(request: HttpRequest) -> tuple[Any, HttpResponse | None]:
    limit = settings.GATEWAY_MAX_BODY_BYTES
    try:
        declared = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        return None, error(400, "invalid", "Malformed Content-Length header.")
    if declared > limit:
        return None, error(413, "too_large", f"The body is over {limit} bytes.")
    raw = await sync_to_async(request.read, thread_sensitive=False)(limit + 1)
    if len(raw) > limit:
        return None, error(413, "too_large", f"The body is over {limit} bytes.")
    try:
        return json.loads(raw), None
    except (UnicodeDecodeError, ValueError) as exc:
        return None, error(400, "invalid", f"The body is not valid JSON: {exc}")
    except RecursionError:  # "[[[[…" nested deeper than the parser can go (a 500 otherwise)
        return None, error(400, "invalid", "The body is not valid JSON: nested too deeply.")


def _has_nul(value: Any) -> bool:
    """A NUL character anywhere (PostgreSQL's jsonb cannot store one: a 500 otherwise)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(item) for item in value)
    return False


def _validate_status(report: Any) -> str | None:
    if not isinstance(report, dict):
        return "An OPA status report is a JSON object."
    if _has_nul(report):
        return "A status report cannot contain NUL characters (\\u0000)."
    if "labels" in report and not isinstance(report["labels"], dict):
        return "labels: must be an object."
    bundles = report.get("bundles", {})
    if not isinstance(bundles, dict):
        return "bundles: must be an object keyed by bundle name."
    for name, entry in bundles.items():
        if not isinstance(entry, dict):
            return f"bundles.{name}: must be an object."
        if "errors" in entry and not isinstance(entry["errors"], list):
            return f"bundles.{name}.errors: must be a list."
        if not _is_revision(entry.get("active_revision", "")):
            return (f"bundles.{name}.active_revision: must be a revision number as a string of "
                    'digits (e.g. "12"), or "" before the first bundle.')
        sha = entry.get("active_sha256", "")
        if not (sha == "" or (isinstance(sha, str) and _SHA256.fullmatch(sha))):
            return (f"bundles.{name}.active_sha256: must be the SHA-256 of the active bundle's "
                    'tarball as 64 hexadecimal digits, or "" before the first bundle.')
    return None


def _is_revision(value: Any) -> bool:
    """OPA's ``active_revision`` is a string; ours are the numbers 1 … 2^63 − 1 (a bigint)."""
    if value == "":
        return True
    return (isinstance(value, str) and 0 < len(value) <= 19 and value.isascii()
            and value.isdigit() and 1 <= int(value) <= 2**63 - 1)


@csrf_exempt
async def status(request: HttpRequest, slug: str | None = None) -> HttpResponse:
    """``POST status``: an OPA status report from the calling gateway."""
    if request.method != "POST":
        return error(405, "method_not_allowed", "Use POST.", Allow="POST")
    # The token names its tenant; the URL may (``status/<slug>``) or may not repeat it.
    caller, failure, _ = await authenticate(request, slug)
    if failure is not None:
        return failure
    report, failure = await _read_json(request)
    if failure is not None:
        return failure
    problem = _validate_status(report)
    if problem:
        return error(400, "invalid", problem)
    headers = await sync_to_async(_record_status)(caller.gateway, report)
    # Still a 204 (OPA-compatible clients are unaffected); apps may add headers, e.g.
    # X-Tollgate-Discovery-Requested naming the servers whose tools it should report now.
    return HttpResponse(status=204, headers=headers)


def _record_status(gateway_id: int, report: dict[str, Any]) -> dict[str, str]:
    gateway = Gateway.objects.get(pk=gateway_id)
    gateway = services.gateway_record_status(gateway=gateway, report=report)
    return extensions.status_headers(gateway)


__all__ = ["bundle", "keys", "status"]
