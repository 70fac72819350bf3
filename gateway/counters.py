"""Calls-per-minute and calls-per-day counters, the ``usage`` the decision function reads.

A grant's ``calls_per_minute`` and ``calls_per_day`` count the calls the gateway forwarded
under that grant. Windows are fixed: the UTC minute (``floor(unix time / 60)``) and the UTC day.
``usage()`` reads the counts of several grants before the decision (which grant applies, and
the reason if all are exhausted); ``reserve()`` then takes one call of the deciding grant in
ONE atomic step — both windows are incremented only if neither is full — so concurrent calls,
on one replica or several, can never overshoot a limit: the loser of a race is refused.

- :class:`MemoryCounters`: one process (the default).
- :class:`RedisCounters`: several gateway replicas share their counts in Redis (a Lua script
  checks and increments per-window keys that expire, so nothing needs cleaning up).

Pure Python, no Django.
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


MINUTE = "minute"
DAY = "day"


class Counters(Protocol):
    async def usage(self, keys: Sequence[str], at: datetime) -> dict[str, tuple[int, int]]: ...

    async def reserve(self, key: str, at: datetime, *, per_minute: int | None = None,
                      per_day: int | None = None) -> str | None:
        """Count one call unless a limit is reached: None (counted), or ``"minute"`` /
        ``"day"``, the window that is full (nothing counted)."""
        ...


class MemoryCounters:
    """Counts in this process only."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}

    async def usage(self, keys: Sequence[str], at: datetime) -> dict[str, tuple[int, int]]:
        minute, day = _windows(at)
        return {key: (self._counts.get((key, minute), 0), self._counts.get((key, day), 0))
                for key in keys}

    async def reserve(self, key: str, at: datetime, *, per_minute: int | None = None,
                      per_day: int | None = None) -> str | None:
        minute, day = _windows(at)
        if per_minute is not None and self._counts.get((key, minute), 0) >= per_minute:
            return MINUTE
        if per_day is not None and self._counts.get((key, day), 0) >= per_day:
            return DAY
        # No await between the check and the increment: atomic on the event loop.
        # Drop windows that have passed so a long-running gateway does not grow without bound.
        stale = [k for k in self._counts if k[1][0] == "m" and k[1] != minute
                 or k[1][0] == "d" and k[1] != day]
        for k in stale:
            del self._counts[k]
        for window in (minute, day):
            self._counts[(key, window)] = self._counts.get((key, window), 0) + 1
        return None


# KEYS: minute key, day key; ARGV: minute limit, day limit (-1: none), their TTLs.
# Returns 0 (counted), 1 (the minute is full) or 2 (the day is full).
_RESERVE = """
local minute = tonumber(redis.call('GET', KEYS[1]) or '0')
local day = tonumber(redis.call('GET', KEYS[2]) or '0')
local per_minute, per_day = tonumber(ARGV[1]), tonumber(ARGV[2])
if per_minute >= 0 and minute >= per_minute then return 1 end
if per_day >= 0 and day >= per_day then return 2 end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 0
"""


class RedisCounters:
    """Counts in Redis, shared by every replica that uses the same URL and prefix."""

    def __init__(self, url: str, *, prefix: str = "tollgate:gw") -> None:
        import redis.asyncio

        self._redis = redis.asyncio.Redis.from_url(url)
        self.prefix = prefix
        self._reserve = self._redis.register_script(_RESERVE)

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

    async def reserve(self, key: str, at: datetime, *, per_minute: int | None = None,
                      per_day: int | None = None) -> str | None:
        minute, day = _windows(at)
        full = await self._reserve(keys=[self._key(key, minute), self._key(key, day)],
                                   args=[-1 if per_minute is None else per_minute,
                                         -1 if per_day is None else per_day,
                                         MINUTE_TTL_SECONDS, DAY_TTL_SECONDS])
        return {1: MINUTE, 2: DAY}.get(int(full))

    async def aclose(self) -> None:
        await self._redis.aclose()
