"""Gives each pytest-xdist worker its own Redis database, before Django reads its settings.

``make test`` runs the suite on two workers (``pytest -n 2 -p tests.xdist_env``). PostgreSQL
needs nothing: pytest-django already gives each worker its own test database (``…_gw0``,
``…_gw1``). Redis does: the cache (rate limits, token failure counts), the hot bundle store,
pub/sub and the Celery broker would otherwise be shared, and every test starts by clearing the
hot store, under the other worker's feet. Django's settings are read while pytest starts (by
pytest-django), before any conftest.py, so this is a plugin loaded with ``-p``: it rewrites
``REDIS_URL`` at import. Worker ``gwN`` gets database ``(base + 8·N) mod 16`` (CI's 0 → 0 and 8).
Outside xdist (a plain ``pytest``) it changes nothing.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit


def worker_redis_url(url: str, worker: str) -> str:
    """``url`` with its database moved by the worker's number (``gw1`` → +8, modulo 16)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        return url  # a unix socket URL names its database in the query: left alone
    base = int(parts.path.strip("/") or 0)
    number = int(worker.removeprefix("gw"))
    return urlunsplit(parts._replace(path=f"/{(base + 8 * number) % 16}"))


_worker = os.environ.get("PYTEST_XDIST_WORKER")
if _worker and os.environ.get("REDIS_URL"):
    # From the URL as given, so that importing this module again changes nothing.
    _base = os.environ.setdefault("TOLLGATE_TEST_REDIS_URL", os.environ["REDIS_URL"])
    os.environ["REDIS_URL"] = worker_redis_url(_base, _worker)
