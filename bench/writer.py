"""Registry writes through the service layer, from a process of their own (section 4).

``python -m bench.writer TENANT_SLUG`` reads commands on stdin — ``create`` (grant_create) or
``revoke`` (grant_revoke of the grant it created last) — and answers each with one JSON line:
the moment the write's transaction committed (``time.monotonic()``, comparable with the poller's
on Linux, and wall-clock ``time.time()`` to compare with the bundle's ``created_at``).
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "governance.settings")
    import django

    django.setup()
    from django.db import transaction

    from governance.audit.services import Actor
    from governance.tenancy.models import Tenant
    from registry import services
    from registry.models import Agent, ToolScope

    actor = Actor.system("bench writer")
    tenant = Tenant.objects.get(slug=sys.argv[1])
    agent = Agent.objects.for_tenant(tenant).get(name="bot")
    scope = ToolScope.objects.for_tenant(tenant).get(name="payroll:all")
    last = None
    print("READY", flush=True)
    for line in sys.stdin:
        command = line.strip()
        if not command:
            continue
        committed: dict[str, float] = {}

        def mark(committed: dict[str, float] = committed) -> None:
            committed.update(monotonic=time.monotonic(), wall=time.time())

        started = time.monotonic()
        # Registered before the service's own on-commit hooks (which schedule the build), so it
        # runs first, right after COMMIT returns.
        with transaction.atomic():
            transaction.on_commit(mark)
            if command == "create":
                last = services.grant_create(tenant=tenant, actor=actor, agent=agent,
                                             scope=scope, calls_per_minute=30)
            elif command == "revoke" and last is not None:
                services.grant_revoke(tenant=tenant, actor=actor, grant=last, reason="bench")
            else:
                print(json.dumps({"error": f"unknown command {command!r}"}), flush=True)
                continue
        print(json.dumps({"command": command, "t_commit": committed["monotonic"],
                          "wall_commit": committed["wall"],
                          "write_seconds": committed["monotonic"] - started}), flush=True)


if __name__ == "__main__":
    main()
