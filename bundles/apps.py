from __future__ import annotations

from django.apps import AppConfig


class BundlesConfig(AppConfig):
    name = "bundles"
    label = "bundles"
    verbose_name = "Policy bundles"

    def ready(self) -> None:
        # Registry changes recorded in the audit trail schedule a (debounced) bundle build.
        from bundles import publish
        from governance import secrets

        publish.connect()
        # `manage.py rotate_bundle_key --reencrypt`: the signing keys first, then the other
        # apps' secrets at rest (each registers itself the same way).
        secrets.add_reencrypter(_reencrypt_signing_keys)


def _reencrypt_signing_keys() -> str:
    from bundles.services import signing_keys_reencrypt

    return f"Re-encrypted {signing_keys_reencrypt()} signing key(s)."
