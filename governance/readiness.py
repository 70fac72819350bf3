"""Readiness (``/readyz``): can this web process serve? Liveness (``/healthz``) only says it runs.

A load balancer takes a process out of rotation while ``/readyz`` answers 503. Each check names
what failed in a short, fixed phrase: never a URL, a password, an exception's text or a
traceback (those go to the log, which operators read and load balancers do not).

- ``database``: reachable, and migrated (no migration on disk that is not applied: Django's
  ``MigrationExecutor`` plan, one small query plus the migration graph, ~15 ms).
- ``redis`` (when ``REDIS_URL`` is set: cache, Celery broker and long-poll pub/sub): answers PING.
  Without it (the embedded default) ``broker``: kombu's filesystem queue directory is writable;
  ``cache``: the database cache table answers.
- ``bundle_store``: ``BUNDLE_LOCAL_DIR``, where this process writes its copies of bundles (and
  from which a proxy sends them with ``BUNDLE_ACCEL_REDIRECT``), can be created, written and read.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, connection
from django.db.migrations.executor import MigrationExecutor

log = logging.getLogger(__name__)

OK = "ok"
# Seconds a readiness probe waits for Redis (a load balancer's probe has its own short timeout).
REDIS_TIMEOUT_SECONDS = 2


class NotReady(Exception):
    """A check failed; the message is the short phrase the probe answers with."""


def _unapplied_migrations() -> list[str]:
    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    return [f"{migration.app_label}.{migration.name}" for migration, backwards in plan
            if not backwards]


def check_database() -> None:
    try:
        connection.ensure_connection()
        unapplied = _unapplied_migrations()
    except DatabaseError as exc:
        log.warning("readiness: database unreachable (%s)", exc.__class__.__name__)
        raise NotReady("unreachable") from None
    if unapplied:
        # Migration names are code, not secrets: they tell the operator what `migrate` will do.
        shown = ", ".join(unapplied[:3]) + (" …" if len(unapplied) > 3 else "")
        raise NotReady(f"{len(unapplied)} unapplied migration(s): {shown}")


def check_redis() -> None:
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=REDIS_TIMEOUT_SECONDS,
                                  socket_connect_timeout=REDIS_TIMEOUT_SECONDS)
    try:
        client.ping()
    except redis.RedisError as exc:
        log.warning("readiness: Redis unreachable (%s)", exc.__class__.__name__)
        raise NotReady("unreachable") from None
    finally:
        client.close()


def _writable_directory(path: Path) -> None:
    """Create ``path`` if missing, then write, read back and remove a small file in it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path, prefix=".readyz-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(b"ready")
            if Path(name).read_bytes() != b"ready":
                raise NotReady("not readable")
        finally:
            Path(name).unlink(missing_ok=True)
    except OSError as exc:
        log.warning("readiness: %s is not writable (%s)", path, exc.strerror or exc)
        raise NotReady("not writable") from None


def check_broker() -> None:
    """The embedded default's broker: kombu's filesystem transport writes into this folder."""
    folder = (getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", None) or {}).get(
        "data_folder_in")
    if folder:
        _writable_directory(Path(folder))


def check_cache() -> None:
    from django.core.cache import cache

    try:
        cache.get("readyz")
    except DatabaseError as exc:
        log.warning("readiness: cache unavailable (%s)", exc.__class__.__name__)
        raise NotReady("unavailable") from None


def check_bundle_store() -> None:
    _writable_directory(Path(settings.BUNDLE_LOCAL_DIR))


def checks() -> dict[str, Callable[[], None]]:
    """The checks that apply to this configuration, by name, in the order they run."""
    found: dict[str, Callable[[], None]] = {"database": check_database}
    if getattr(settings, "REDIS_URL", ""):
        found["redis"] = check_redis
    else:
        found["broker"] = check_broker
        found["cache"] = check_cache
    found["bundle_store"] = check_bundle_store
    return found


def readiness() -> tuple[bool, dict[str, str]]:
    """Run every check: (all passed, name → ``"ok"`` or the short phrase saying what failed)."""
    results: dict[str, str] = {}
    for name, check in checks().items():
        try:
            check()
        except NotReady as exc:
            results[name] = str(exc)
        else:
            results[name] = OK
    return all(value == OK for value in results.values()), results
