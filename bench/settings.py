"""The project's settings with the bench's bare views added to the URLs (bench/urls.py).

The bench server runs with this module so that the gateway poll and the bare view are measured
in the same process, with the same uvicorn flags and the same middleware chain.
"""

from __future__ import annotations

from governance.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls"
