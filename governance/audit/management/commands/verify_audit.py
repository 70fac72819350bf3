"""``manage.py verify_audit [--tenant slug]``: recompute the hash chains."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from governance.audit.services import audit_verify
from governance.tenancy.models import Tenant


class Command(BaseCommand):
    help = "Verify the audit hash chains; exit 1 naming the first broken event of each chain."

    def add_arguments(self, parser):
        parser.add_argument("--tenant", help="slug of one tenant (default: every chain)")

    def handle(self, *args, tenant=None, **options):
        target = None
        if tenant:
            target = Tenant.objects.filter(slug=tenant).first()
            if target is None:
                raise CommandError(f"No tenant with slug {tenant!r}.")
        reports = list(audit_verify(tenant=target))
        if target is not None and not reports:
            self.stdout.write(f"tenant {target.slug}: OK (0 events)")
            return
        broken = False
        for report in reports:
            if report.ok:
                self.stdout.write(self.style.SUCCESS(report.line()))
            else:
                broken = True
                self.stdout.write(self.style.ERROR(report.line()))
        if broken:
            raise SystemExit(1)
