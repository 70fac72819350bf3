"""The demo: `manage.py seed_demo` (what `make run` seeds) and the demo's stdio MCP server
(`demo/hr_server.py`, which scripts/run starts behind the reference gateway). Top of the layers:
it may use every feature app, and nothing imports it."""

from __future__ import annotations

from django.apps import AppConfig


class DemoConfig(AppConfig):
    name = "demo"
    label = "demo"
    verbose_name = "Demo"
