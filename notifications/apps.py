from __future__ import annotations

from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    name = "notifications"
    label = "notifications"
    verbose_name = "Notifications"

    def ready(self) -> None:
        # `manage.py rotate_bundle_key --reencrypt` re-encrypts the channels' secrets too.
        from governance import secrets

        secrets.add_reencrypter(_reencrypt_channels)


def _reencrypt_channels() -> str:
    from notifications.services import channels_reencrypt

    return f"Re-encrypted the URLs and secrets of {channels_reencrypt()} notification channel(s)."
