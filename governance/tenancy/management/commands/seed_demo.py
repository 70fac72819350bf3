"""``manage.py seed_demo``: the demo tenant ``acme`` with one user per role (idempotent)."""

from __future__ import annotations

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

    @transaction.atomic
    def handle(self, *args, force=False, **options):
        if not settings.DEBUG and not force:
            raise CommandError("Refusing to create demo users with known passwords while DEBUG "
                               "is off; pass --force if you really mean it.")
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
