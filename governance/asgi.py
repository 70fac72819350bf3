"""ASGI entry point, served by uvicorn (long-poll gateway endpoints are async views)."""

from __future__ import annotations

import os
import sys

from django.core.exceptions import ImproperlyConfigured

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "governance.settings")

try:
    from django.core.asgi import get_asgi_application

    application = get_asgi_application()
except ImproperlyConfigured as exc:
    # Say which variable is wrong instead of a traceback, and do not start.
    sys.stderr.write(f"Configuration error: {exc}\n")
    raise SystemExit(2) from None
