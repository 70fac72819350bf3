"""Structured JSON logs carrying the request id that also appears in audit events."""

from __future__ import annotations

import json
import logging
import logging.config
from datetime import UTC, datetime

from governance import context


class RequestContextFilter(logging.Filter):
    """Attach the current request id and client IP to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = context.current()
        record.request_id = ctx.request_id if ctx else None
        record.client_ip = ctx.ip if ctx else None
        if ctx is None:
            # Django logs a returned 4xx/5xx ("Bad Request: /login/") after the middleware has
            # left the request's context; the request it passes along still knows its id.
            request = getattr(record, "request", None)
            record.request_id = getattr(request, "request_id", None)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "client_ip"):
            value = getattr(record, key, None)
            if value:
                payload[key] = value
        fields = getattr(record, "fields", None)  # logger.info(..., extra={"fields": {...}})
        if isinstance(fields, dict):
            for key, value in fields.items():
                payload.setdefault(key, value)
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def configure(config: dict) -> None:
    """Django's ``LOGGING_CONFIG``: apply ``LOGGING``, and turn Python warnings into log records
    (logger ``py.warnings``), so they are JSON lines too instead of plain text on stderr."""
    logging.config.dictConfig(config)
    logging.captureWarnings(True)
