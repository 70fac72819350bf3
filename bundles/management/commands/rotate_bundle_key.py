"""``manage.py rotate_bundle_key <tenant> [--immediate]`` and ``--reencrypt``."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from bundles import services
from governance import secrets
from governance.audit.services import Actor
from governance.tenancy.models import Tenant


class Command(BaseCommand):
    help = (
        "Rotate a tenant's bundle signing key: the new key is published (pending) now and "
        "signs after BUNDLE_KEY_PUBLISH_LEAD_SECONDS; --immediate makes it sign at once (use "
        "for a compromised key). --reencrypt re-encrypts every private key under the first "
        "SECRET_ENCRYPTION_KEYS entry (and the notification channels' URLs and "
        "secrets, and the exporters' tokens) instead."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("tenant", nargs="?", help="tenant slug")
        parser.add_argument("--immediate", action="store_true",
                            help="activate the new key at once")
        parser.add_argument("--reencrypt", action="store_true",
                            help="re-encrypt all private keys with the newest encryption key")

    def handle(self, *args, tenant=None, immediate=False, reencrypt=False, **options) -> None:
        if reencrypt:
            # Every app's secrets at rest (governance/secrets.py): signing keys, notification
            # channels' URLs and secrets, SIEM exporters' HEC tokens.
            for line in secrets.reencrypt_all():
                self.stdout.write(line)
            return
        if not tenant:
            raise CommandError("Name the tenant: rotate_bundle_key <tenant-slug>.")
        found = Tenant.objects.filter(slug=tenant).first()
        if found is None:
            raise CommandError(f"No tenant with slug {tenant!r}.")
        try:
            key = services.signing_key_rotate(tenant=found, actor=Actor.system(
                "manage.py rotate_bundle_key"), immediate=immediate)
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        if immediate:
            self.stdout.write(f"Key {key.kid} of {found.slug} is active now; bundles are being "
                              "re-signed.")
        else:
            self.stdout.write(f"Key {key.kid} of {found.slug} is published (pending) and signs "
                              f"from {key.activate_after:%Y-%m-%d %H:%M:%S} UTC.")
