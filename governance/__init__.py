"""Tollgate control plane: Django project package and the cross-cutting core."""

from __future__ import annotations

from governance.celery import app as celery_app

__all__ = ["celery_app"]
