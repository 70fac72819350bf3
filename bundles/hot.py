"""The gateway API's hot-path state, kept out of SQL: token lookups, current-bundle pointers,
per-gateway rate counters and contact times, and the announcement channel that wakes long polls.

With ``REDIS_URL`` everything lives in Redis, reached directly (a sync client for services and
workers, an asyncio client per event loop for the async views, pub/sub for announcements), so a
poll costs one Redis round trip and no thread hop. Without it (the embedded default) Django's
cache stands in (the database cache, reached on the request's own thread and connection) and
long polls re-check once a second instead of being woken.

Coherence: every write that changes what the hot path would answer (a token issued or revoked,
a gateway disabled, a bundle published) updates these keys *after* its transaction commits, and
lookups that miss fall back to the database and fill the key. Token entries also expire after
``TOKEN_TTL`` seconds, which bounds the damage of an invalidation lost to a Redis outage.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from functools import lru_cache
from typing import Any

import redis
import redis.asyncio as aioredis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache

from governance import draining

log = logging.getLogger(__name__)

PREFIX = "tollgate:gw:"
CHANNEL = "tollgate:bundles"


def channel() -> str:
    """The announcement channel of THIS deployment. Redis pub/sub ignores the database number,
    so two deployments (or test runs) on one Redis server, each with its own database, would
    otherwise wake each other's long polls with pointers the other does not have."""
    db = redis.connection.parse_url(settings.REDIS_URL).get("db", 0) if uses_redis() else 0
    return f"{CHANNEL}:db{db}"
TOKEN_TTL = 600
REVOKED = {"revoked": True}


def token_key(token_hash: str) -> str:
    return f"{PREFIX}tok:{token_hash}"


def current_key(slug: str) -> str:
    return f"{PREFIX}cur:{slug}"


def jwks_key(slug: str) -> str:
    return f"{PREFIX}jwks:{slug}"


def _rate_key(gateway_id: int, minute: int) -> str:
    return f"{PREFIX}rl:{gateway_id}:{minute}"


SEEN_HASH = f"{PREFIX}seen"
TOKEN_SEEN_HASH = f"{PREFIX}tokseen"


def _seen_key(gateway_id: int) -> str:
    return f"{PREFIX}seen:{gateway_id}"


def _token_seen_key(token_id: int) -> str:
    return f"{PREFIX}tokseen:{token_id}"


def uses_redis() -> bool:
    return bool(getattr(settings, "REDIS_URL", ""))


@lru_cache(maxsize=2)
def _sync_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)


def sync_client() -> redis.Redis:
    return _sync_client(settings.REDIS_URL)


# Keyed by the loop itself (weakly): a client or subscription must never cross event loops.
_async_clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def async_client() -> aioredis.Redis:
    """One asyncio client per running event loop (a client must not cross loops)."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        # A blocking pool: a burst of requests beyond the pool waits (up to 5 s) for a free
        # connection instead of failing with "too many connections".
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=2,
            max_connections=256, timeout=5,
        )
        client = aioredis.Redis(connection_pool=pool)
        _async_clients[loop] = client
    return client


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _loads(raw: Any) -> Any:
    if raw is None:
        return None
    if isinstance(raw, bytes):
        raw = raw.decode()
    return json.loads(raw) if isinstance(raw, str) else raw


# --- Writes (services, workers; after commit) -------------------------------------------------

def set_json(key: str, value: Any, ttl: int | None = None) -> None:
    if uses_redis():
        sync_client().set(key, _dumps(value), ex=ttl)
    else:
        cache.set(key, _dumps(value), timeout=ttl)


def get_json(key: str) -> Any:
    if uses_redis():
        return _loads(sync_client().get(key))
    return _loads(cache.get(key))


def delete(*keys: str) -> None:
    if not keys:
        return
    if uses_redis():
        sync_client().delete(*keys)
    else:
        cache.delete_many(keys)


def publish(message: dict[str, Any]) -> None:
    """Tell every web process (long polls waiting on ``message['tenant']``) to look again."""
    if uses_redis():
        sync_client().publish(channel(), _dumps(message))


def safely(action: str, fn, *args) -> None:
    """Run a hot-store write whose failure must not undo a committed change (logged instead)."""
    try:
        fn(*args)
    except Exception:  # Redis down: the TTLs and the database fallback keep answers correct
        log.warning("hot store: %s failed", action, exc_info=True)


# --- Reads on the hot path (async) ------------------------------------------------------------

# One round trip for a poll: the token's entry, one more key (the tenant's current pointer or
# JWKS), and — when the entry names a gateway — its rate counter and contact times.
_LOOKUP = """
local entry = redis.call('GET', KEYS[1])
local extra = redis.call('GET', KEYS[2])
local count = -1
if entry then
  local ok, doc = pcall(cjson.decode, entry)
  if ok and type(doc) == 'table' and doc['gateway'] then
    local gateway = tostring(doc['gateway'])
    local rate = ARGV[1] .. gateway .. ':' .. ARGV[2]
    count = redis.call('INCR', rate)
    if count == 1 then redis.call('EXPIRE', rate, 120) end
    redis.call('HSET', ARGV[3], gateway, ARGV[4])
    redis.call('HSET', ARGV[5], tostring(doc['token']), ARGV[4])
  end
end
return {entry, extra, count}
"""
_lookup_scripts: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


async def alookup(token_hash: str, extra_key: str) -> tuple[Any, Any, int | None]:
    """(token entry, value of ``extra_key``, this minute's request count of the entry's
    gateway or None when the entry names none). Redis only."""
    client = async_client()
    loop = asyncio.get_running_loop()
    script = _lookup_scripts.get(loop)
    if script is None:
        script = _lookup_scripts[loop] = client.register_script(_LOOKUP)
    now = time.time()
    entry, extra, count = await script(
        keys=[token_key(token_hash), extra_key],
        args=[f"{PREFIX}rl:", int(now // 60), SEEN_HASH, int(now), TOKEN_SEEN_HASH],
    )
    return _loads(entry), _loads(extra), (None if count == -1 else int(count))


def seconds_to_next_minute() -> int:
    return 60 - int(time.time() % 60)


async def aget_many(keys: list[str]) -> list[Any]:
    if uses_redis():
        return [_loads(v) for v in await async_client().mget(keys)]
    found = await sync_to_async(cache.get_many, thread_sensitive=True)(keys)
    return [_loads(found.get(k)) for k in keys]


async def aset_json(key: str, value: Any, ttl: int | None = None) -> None:
    if uses_redis():
        await async_client().set(key, _dumps(value), ex=ttl)
    else:
        await sync_to_async(cache.set, thread_sensitive=True)(key, _dumps(value), ttl)


async def acount_request(gateway_id: int, token_id: int, limit: int) -> tuple[bool, int]:
    """Count one request of the gateway this minute; note when it and its token were seen.

    Returns (allowed, seconds until the window resets)."""
    now = time.time()
    minute = int(now // 60)
    reset = 60 - int(now % 60)
    key = _rate_key(gateway_id, minute)
    if uses_redis():
        pipe = async_client().pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, 120)
        pipe.hset(SEEN_HASH, str(gateway_id), int(now))
        pipe.hset(TOKEN_SEEN_HASH, str(token_id), int(now))
        count, *_ = await pipe.execute()
    else:
        def bump() -> int:
            cache.add(key, 0, 120)
            cache.set_many({_seen_key(gateway_id): int(now), _token_seen_key(token_id): int(now)},
                           3600)
            return cache.incr(key)

        count = await sync_to_async(bump, thread_sensitive=True)()
    return count <= limit, reset


def _seen(ids: list[int], redis_hash: str, key) -> dict[int, int]:
    if not ids:
        return {}
    if uses_redis():
        values = sync_client().hmget(redis_hash, [str(i) for i in ids])
    else:
        found = cache.get_many([key(i) for i in ids])
        values = [found.get(key(i)) for i in ids]
    return {i: int(v) for i, v in zip(ids, values, strict=True) if v is not None}


def contact_times(gateway_ids: list[int]) -> dict[int, int]:
    """Last contact (unix seconds) per gateway, as counted on the hot path."""
    return _seen(gateway_ids, SEEN_HASH, _seen_key)


def token_use_times(token_ids: list[int]) -> dict[int, int]:
    """Last use (unix seconds) per gateway token, as counted on the hot path."""
    return _seen(token_ids, TOKEN_SEEN_HASH, _token_seen_key)


# --- Announcements: wake long polls -----------------------------------------------------------

class Announcements:
    """Per event loop: one Redis subscription fanned out to the long polls waiting per tenant."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        # Called with each new bundle's announcement before its waiters wake (the gateway API
        # loads the tarball once here, so the woken polls find it in memory).
        self.prepare: Any = None
        self._task: asyncio.Task | None = None
        self.healthy = False
        # The process is stopping: every held wait returns now (its caller answers at once).
        draining.on_drain(self._wake_all)

    def _event(self, slug: str) -> asyncio.Event:
        event = self._events.get(slug)
        if event is None:
            event = self._events[slug] = asyncio.Event()
        return event

    def _wake(self, slug: str, message: dict[str, Any] | None = None) -> None:
        event = self._events.pop(slug, None)
        if event is not None:
            event.message = message  # type: ignore[attr-defined]
            event.set()

    async def _listen(self) -> None:
        backoff = 0.5
        while True:
            # Its own connection, without a read timeout (it is idle between announcements);
            # redis-py pings it every 30 s so a dead connection is noticed.
            client = aioredis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2,
                                             health_check_interval=30)
            try:
                pubsub = client.pubsub()
                await pubsub.subscribe(channel())
                self.healthy = True
                backoff = 0.5
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                       timeout=30)
                    if message is None or message.get("type") != "message":
                        continue
                    try:
                        body = _loads(message["data"])
                        # A tenant's bundle/token news, or any other topic (one escalation).
                        slug = body.get("topic") or body.get("tenant")
                    except (ValueError, AttributeError):
                        continue
                    if slug and body.get("kind") == "bundle" and self.prepare is not None:
                        try:
                            await self.prepare(body)
                        except Exception:
                            log.warning("bundle announcements: prefetch failed", exc_info=True)
                    if slug:
                        self._wake(slug, body)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("bundle announcements: subscription lost; retrying", exc_info=True)
            finally:
                try:
                    await client.aclose()
                except Exception:  # noqa: S110 - the connection is gone either way
                    pass
            self.healthy = False
            # Waiters re-check on their own meanwhile; wake them so they notice sooner.
            self._wake_all()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10)

    def _wake_all(self) -> None:
        for slug in list(self._events):
            self._wake(slug)

    async def wait(self, slug: str, timeout: float) -> dict[str, Any] | None:
        """The announcement for ``slug`` (a new bundle's pointer with ``kind: bundle``, or
        ``kind: tokens`` after a revocation), or None when ``timeout`` seconds passed, the
        subscription dropped or the process is draining: then the caller looks itself (and,
        draining, answers with what it finds: ``governance.draining.remaining`` is 0)."""
        if draining.is_draining():
            return None
        if uses_redis() and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._listen())
        if not (uses_redis() and self.healthy):
            timeout = min(timeout, 1.0)  # no wake-ups: poll the pointer instead
        event = self._event(slug)
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return None
        return getattr(event, "message", None)


_announcements: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def announcements() -> Announcements:
    loop = asyncio.get_running_loop()
    found = _announcements.get(loop)
    if found is None:
        found = _announcements[loop] = Announcements()
    return found
