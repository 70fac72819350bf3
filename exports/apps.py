from __future__ import annotations

from django.apps import AppConfig


class ExportsConfig(AppConfig):
    name = "exports"
    label = "exports"
    verbose_name = "Exports"

    def ready(self) -> None:
        # `manage.py rotate_bundle_key --reencrypt` re-encrypts the exporters' tokens too.
        from governance import secrets

        secrets.add_reencrypter(_reencrypt_exporters)


def _reencrypt_exporters() -> str:
    from exports.services import exporters_reencrypt

    return f"Re-encrypted the HEC tokens of {exporters_reencrypt()} SIEM exporter(s)."
