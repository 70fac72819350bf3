"""``manage.py create_tenant <slug> <name> [--admin-group G] [--admin-user U]``.

How an operator bootstraps a tenant in production: with OIDC on, map the IdP group whose
members administer the tenant; they become admins at their next sign-in.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from governance.audit.services import Actor
from governance.tenancy import services
from governance.tenancy.models import Tenant
from governance.tenancy.roles import Role


class Command(BaseCommand):
    help = "Create a tenant and its first admins (an IdP group mapping and/or an existing user)."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("name")
        parser.add_argument("--admin-group", action="append", default=[],
                            help="IdP group whose members become admins (repeatable)")
        parser.add_argument("--admin-user", action="append", default=[],
                            help="existing username to make admin (repeatable)")

    def handle(self, *args, slug, name, admin_group, admin_user, **options):
        if not admin_group and not admin_user:
            raise CommandError("Give at least one --admin-group or --admin-user, or nobody "
                               "could administer the tenant.")
        if Tenant.objects.filter(slug=slug).exists():
            raise CommandError(f"A tenant with slug {slug!r} already exists.")
        User = get_user_model()
        actor = Actor.system("create_tenant")
        try:
            with transaction.atomic():
                tenant = services.tenant_create(actor=actor, slug=slug, name=name)
                for group in admin_group:
                    services.group_mapping_create(tenant=tenant, actor=actor, group=group,
                                                  role=Role.ADMIN)
                for username in admin_user:
                    user = User.objects.filter(username=username, is_active=True).first()
                    if user is None:
                        raise CommandError(f"No active user {username!r}.")
                    services.membership_create(tenant=tenant, actor=actor, user=user,
                                               role=Role.ADMIN)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        self.stdout.write(self.style.SUCCESS(f"Created tenant {slug!r} at /t/{slug}/."))
