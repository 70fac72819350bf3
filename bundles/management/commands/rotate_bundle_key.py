"""``manage.py rotate_bundle_key <tenant> [--immediate]`` and ``--reencrypt``."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from bundles import services
from exports.services import exporters_reencrypt
from governance.audit.services import Actor
from governance.tenancy.models import Tenant
from notifications.services import channels_reencrypt


class Command(BaseCommand):
    help = (
        "Rotate a tenant's bundle signing key: the new key is published (pending) now and "
        "signs after BUNDLE_KEY_PUBLISH_LEAD_SECONDS; --immediate makes it sign at once (use "
        "for a compromised key). --reencrypt re-encrypts every private key under the first "
        "BUNDLE_KEY_ENCRYPTION_KEYS entry (and the notification channels' URLs and "
        "secrets) instead."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("tenant", nargs="?", help="tenant slug")
        parser.add_argument("--immediate", action="store_true",
                            help="activate the new key at once")
        parser.add_argument("--reencrypt", action="store_true",
                            help="re-encrypt all private keys with the newest encryption key")

    def handle(self, *args, tenant=None, immediate=False, reencrypt=False, **options) -> None:
        if reencrypt:
            count = services.signing_keys_reencrypt()
            self.stdout.write(f"Re-encrypted {count} signing key(s).")
            count = channels_reencrypt()
            self.stdout.write(f"Re-encrypted the URLs and secrets of {count} notification "
                              "channel(s).")
            count = exporters_reencrypt()
            self.stdout.write(f"Re-encrypted the HEC tokens of {count} SIEM exporter(s).")
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
