"""``manage.py seed_demo``: the demo tenant ``acme`` with one user per role and a small registry
(a real stdio MCP server, demo/hr_server.py, fronted by the demo gateway that reports its tools,
partly reviewed, scoped and granted to an agent). Idempotent: what exists is left alone."""

from __future__ import annotations

import sys
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from governance.audit.services import Actor
from governance.tenancy import services
from governance.tenancy.models import IdpGroupMapping, Membership, Tenant
from governance.tenancy.roles import Role

DEMO_PASSWORD = "tollgate-demo"  # noqa: S105 - printed to the person running the demo
DEMO_USERS = [
    ("admin", Role.ADMIN),
    ("approver", Role.APPROVER),
    ("auditor", Role.AUDITOR),
    ("developer", Role.DEVELOPER),
    ("viewer", Role.VIEWER),
]


class Command(BaseCommand):
    help = "Create the demo tenants (acme, globex) and a demo user per role."

    def add_arguments(self, parser):
        parser.add_argument("--force", action="store_true",
                            help="seed even with DEBUG off (the passwords are public!)")

    def handle(self, *args, force=False, **options):
        if not settings.DEBUG and not force:
            raise CommandError("Refusing to create demo users with known passwords while DEBUG "
                               "is off; pass --force if you really mean it.")
        self._seed_people()
        self._seed_registry()
        self._seed_gateway()
        self._seed_decisions()

    @transaction.atomic
    def _seed_people(self):
        actor = Actor.system("seed_demo")
        User = get_user_model()
        tenants = {}
        for slug, name in (("acme", "Acme Corp"), ("globex", "Globex")):
            tenant = Tenant.objects.filter(slug=slug).first()
            tenants[slug] = tenant or services.tenant_create(actor=actor, slug=slug, name=name)
        acme = tenants["acme"]
        for username, role in DEMO_USERS:
            user = User.objects.filter(username=username).first()
            if user is None:
                user = User.objects.create_user(username=username,
                                                email=f"{username}@acme.example")
                user.set_password(DEMO_PASSWORD)
                user.save()
            if not Membership.objects.for_tenant(acme).filter(user=user).exists():
                services.membership_create(tenant=acme, actor=actor, user=user, role=role)
            group = f"acme-{role}s"
            if not IdpGroupMapping.objects.for_tenant(acme).filter(group=group).exists():
                services.group_mapping_create(tenant=acme, actor=actor, group=group, role=role)
        admin = User.objects.get(username="admin")
        if not Membership.objects.for_tenant(tenants["globex"]).filter(user=admin).exists():
            services.membership_create(tenant=tenants["globex"], actor=actor, user=admin,
                                       role=Role.ADMIN)
        self.stdout.write(f"Demo tenant 'acme' ready. Logins (password: {DEMO_PASSWORD}):")
        for username, role in DEMO_USERS:
            self.stdout.write(f"  {username:<10} {role}")
        self.stdout.write("  (admin is also admin of 'globex', to show the tenant picker)")

    def _demo_gateway(self, acme, actor):
        from bundles import services as bundles
        from bundles.models import Gateway

        gateway = Gateway.objects.for_tenant(acme).filter(name="demo-gateway").first()
        return gateway or bundles.gateway_create(tenant=acme, actor=actor, name="demo-gateway",
                                                 description="Local demo gateway",
                                                 labels={"env": "demo"})

    def _seed_registry(self):
        """A real stdio MCP server for acme, fronted by the demo gateway (``make run`` starts it
        with ``--server-name acme-hr``: it reports the server's tools); its tools are recorded
        now, as that gateway reports them, so the demo starts populated."""
        from registry import gateway_discovery
        from registry import services as registry
        from registry.discovery import DiscoveryError, discover_tools
        from registry.models import GatewayBinding, McpServer, Tool

        acme = Tenant.objects.get(slug="acme")
        actor = Actor.system("seed_demo")
        gateway = self._demo_gateway(acme, actor)
        existing = McpServer.objects.for_tenant(acme).filter(name="acme-hr").first()
        if existing is not None:
            if not GatewayBinding.objects.filter(gateway=gateway, server=existing).exists():
                gateway_discovery.gateway_server_bind(tenant=acme, actor=actor,
                                                      gateway=gateway, server=existing)
            return
        User = get_user_model()
        developer = User.objects.get(username="developer")
        server = registry.server_create(
            tenant=acme, actor=actor, name="acme-hr", transport="stdio",
            command=[sys.executable, str(Path(settings.BASE_DIR) / "demo" / "hr_server.py")],
            description="Acme's HR records (demo data, stdio)", version="1.0.0",
            data_classes=["pii", "financial"], risk_tier="high",
        )
        server = registry.server_transition(tenant=acme, actor=actor, server=server,
                                            status="active")
        gateway_discovery.gateway_server_bind(tenant=acme, actor=actor, gateway=gateway,
                                              server=server)
        # The command is this repository's demo server, chosen by the seed (never tenant data);
        # its tools are recorded as the demo gateway reports them (POST discovery).
        try:
            result = discover_tools(transport="stdio", command=server.command, timeout=60)
            gateway_discovery.discovery_record(gateway=gateway, report=gateway_discovery.Report(
                server=server.name, tools=result.tools, server_name=result.server_name,
                server_version=result.server_version))
        except (DiscoveryError, gateway_discovery.Refused) as exc:
            self.stderr.write(f"Demo server tools not recorded: {exc}")
        tools = {t.name: t for t in Tool.objects.for_tenant(acme).filter(server=server)}
        readers = [tools[name] for name in ("lookup_employee", "get_salary") if name in tools]
        for tool in readers:
            registry.tool_approve(tenant=acme, actor=actor, tool=tool)
        scope = registry.scope_create(
            tenant=acme, actor=actor, name="hr:read", description="Read employee records",
            risk_level="medium", data_classes=["pii", "financial"], tools=readers,
        )
        agent = registry.agent_create(
            tenant=acme, actor=actor, name="hr-assistant", owner=developer,
            purpose="Answers employees' HR questions", environment="production",
        )
        registry.agent_principal_add(tenant=acme, actor=actor, agent=agent,
                                     issuer="https://idp.acme.example", subject="hr-assistant")
        registry.grant_create(tenant=acme, actor=actor, agent=agent, scope=scope,
                              calls_per_minute=30, calls_per_day=2000)
        self.stdout.write("Demo registry: server acme-hr (stdio) with "
                          f"{len(tools)} tools, scope hr:read granted to agent hr-assistant.")

    def _seed_gateway(self):
        """A registered gateway whose token is kept in var/ (0600) so the demo can be polled
        with curl, and the first bundle published at once."""
        from bundles import publish
        from bundles import services as bundles

        acme = Tenant.objects.get(slug="acme")
        actor = Actor.system("seed_demo")
        token_file = Path(settings.VAR_DIR) / "demo-gateway-token"
        gateway = self._demo_gateway(acme, actor)
        if not token_file.exists():  # first run, or var/ was cleaned: a fresh token
            _, plaintext = bundles.gateway_token_issue(tenant=acme, actor=actor,
                                                       gateway=gateway, name="demo")
            token_file.parent.mkdir(parents=True, exist_ok=True)
            token_file.touch(mode=0o600)
            token_file.write_text(plaintext + "\n")
        bundle = publish.bundle_publish(tenant=acme, trigger="demo seed")
        revision = bundle.revision_number if bundle else acme.publish_state.last_revision
        self.stdout.write(
            f"Demo gateway: bundle revision {revision}; poll it with\n"
            f"  curl -H \"Authorization: Bearer $(cat {token_file})\" "
            f"{settings.TOLLGATE_BASE_URL}/api/v1/gateway/bundles/acme -o acme.tar.gz"
        )

    def _seed_decisions(self):
        """A day of the demo gateway's decision log, so the dashboard and the decision search
        have something to show before a real gateway runs: calls of the demo agent (and of an
        unknown principal) decided by the real decision function over the published bundle,
        uploaded through the real ingestion service. Seeded once (idempotent on decision id)."""
        import random
        from datetime import UTC, datetime, timedelta

        from bundles import selectors
        from bundles.models import Gateway
        from decision_logs.models import DecisionLog
        from decision_logs.services import decisions_ingest
        from gateway.decision import decide
        from gateway.receipts import arguments_sha256

        acme = Tenant.objects.get(slug="acme")
        if DecisionLog.objects.for_tenant(acme).exists():
            return
        state = selectors.publish_state(acme)
        if state is None or state.current is None:
            return
        bundle = state.current
        data = selectors.bundle_data(bundle)
        gateway = Gateway.objects.for_tenant(acme).filter(name="demo-gateway").first()
        rng = random.Random(20261124)  # noqa: S311 - demo history, the same on every machine
        now = datetime.now(UTC).replace(microsecond=0)
        calls = [  # (issuer, subject, tool, weight)
            ("https://idp.acme.example", "hr-assistant", "lookup_employee", 60),
            ("https://idp.acme.example", "hr-assistant", "get_salary", 25),
            ("https://idp.acme.example", "hr-assistant", "adjust_salary", 10),
            ("https://idp.acme.example", "payroll-export", "get_salary", 5),
        ]
        events = []
        for n in range(600):
            issuer, subject, tool, _ = rng.choices(calls, weights=[c[3] for c in calls])[0]
            at = now - timedelta(seconds=rng.randint(0, 24 * 3600))
            arguments = {"employee_id": rng.choice(["E100", "E101", "E102"])}
            decision = decide(data, issuer=issuer, subject=subject, server="acme-hr",
                              tool=tool, arguments=arguments, at=at)
            digest = arguments_sha256(arguments)
            result = {"outcome": decision.outcome, "reason": decision.reason}
            if decision.grant:
                result["grant"] = decision.grant
            events.append({
                "decision_id": f"demo-{n:04d}",
                "timestamp": at.isoformat().replace("+00:00", "Z"),
                "labels": {"id": "demo-gateway", "source": "seed_demo"},
                "bundles": {"acme": {"revision": str(bundle.revision_number)}},
                "input": {"agent": decision.agent or "", "server": "acme-hr", "tool": tool,
                          "principal": {"issuer": issuer, "subject": subject},
                          "arguments_sha256": digest, "call_id": f"demo-call-{n:04d}"},
                "result": result,
            })
        stored = decisions_ingest(tenant_id=acme.pk, gateway_id=gateway.pk if gateway else None,
                                  events=events)
        self.stdout.write(f"Demo decision log: {stored.accepted} decisions of the last 24 h "
                          "(the real decision function over the current bundle).")
