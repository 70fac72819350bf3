"""Calls-per-minute and calls-per-day counters, the ``usage`` the decision function reads.

A grant's ``calls_per_minute`` and ``calls_per_day`` count the calls the gateway forwarded
under that grant. Windows are fixed: the UTC minute (``floor(unix time / 60)``) and the UTC day.
``usage()`` reads the counts of several grants before the decision; ``record()`` adds one after
the call is allowed.

- :class:`MemoryCounters`: one process (the default).
- :class:`RedisCounters`: several gateway replicas share their counts in Redis
  (``INCR`` + ``EXPIRE`` on per-window keys, so nothing needs cleaning up).

Reading then incrementing is not one atomic step: concurrent calls on several replicas can
overshoot a limit by the number of calls in flight. Pure Python, no Django.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol

MINUTE_TTL_SECONDS = 120
DAY_TTL_SECONDS = 2 * 86400


def _windows(at: datetime) -> tuple[str, str]:
    utc = at.astimezone(UTC)
    return f"m{int(utc.timestamp()) // 60}", f"d{utc.date().isoformat()}"


class Counters(Protocol):
    async def usage(self, keys: Sequence[str], at: datetime) -> dict[str, tuple[int, int]]: ...

    async def record(self, key: str, at: datetime) -> None: ...


class MemoryCounters:
    """Counts in this process only."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}

    async def usage(self, keys: Sequence[str], at: datetime) -> dict[str, tuple[int, int]]:
        minute, day = _windows(at)
        return {key: (self._counts.get((key, minute), 0), self._counts.get((key, day), 0))
                for key in keys}

    async def record(self, key: str, at: datetime) -> None:
        minute, day = _windows(at)
        # Drop windows that have passed so a long-running gateway does not grow without bound.
        stale = [k for k in self._counts if k[1][0] == "m" and k[1] != minute
                 or k[1][0] == "d" and k[1] != day]
        for k in stale:
            del self._counts[k]
        for window in (minute, day):
            self._counts[(key, window)] = self._counts.get((key, window), 0) + 1


class RedisCounters:
    """Counts in Redis, shared by every replica that uses the same URL and prefix."""

    def __init__(self, url: str, *, prefix: str = "tollgate:gw") -> None:
        import redis.asyncio

        self._redis = redis.asyncio.Redis.from_url(url)
        self.prefix = prefix

    def _key(self, key: str, window: str) -> str:
        return f"{self.prefix}:{key}:{window}"

    async def usage(self, keys: Sequence[str], at: datetime) -> dict[str, tuple[int, int]]:
        if not keys:
            return {}
        minute, day = _windows(at)
        names = [self._key(k, w) for k in keys for w in (minute, day)]
        values = await self._redis.mget(names)
        counts = [int(v) if v is not None else 0 for v in values]
        return {k: (counts[2 * i], counts[2 * i + 1]) for i, k in enumerate(keys)}

    async def record(self, key: str, at: datetime) -> None:
        minute, day = _windows(at)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(self._key(key, minute))
            pipe.expire(self._key(key, minute), MINUTE_TTL_SECONDS)
            pipe.incr(self._key(key, day))
            pipe.expire(self._key(key, day), DAY_TTL_SECONDS)
            await pipe.execute()

    async def aclose(self) -> None:
        await self._redis.aclose()
