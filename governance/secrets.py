"""Secrets at rest: Fernet (AES-128-CBC + HMAC-SHA256) under ``SECRET_ENCRYPTION_KEYS``.

The first key encrypts and every key decrypts, so the key can be rotated by prepending a new one
and re-encrypting (``manage.py rotate_bundle_key --reencrypt``). Used for the bundle signing
keys' private halves, notification channel URLs and secrets, and exporter tokens. The setting's
old name ``BUNDLE_KEY_ENCRYPTION_KEYS`` is still read (governance/settings.py).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

SETTING = "SECRET_ENCRYPTION_KEYS"


class KeyUnavailable(RuntimeError):
    """A secret cannot be decrypted (wrong or missing SECRET_ENCRYPTION_KEYS)."""


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(k) for k in keys])


def _cipher() -> MultiFernet:
    return _fernet(tuple(settings.SECRET_ENCRYPTION_KEYS))


def encrypt_bytes(plaintext: bytes) -> str:
    return _cipher().encrypt(plaintext).decode()


def decrypt_bytes(token: str, *, what: str = "A stored secret") -> bytes:
    """The plaintext of :func:`encrypt_bytes`; KeyUnavailable when no configured key opens it."""
    try:
        return _cipher().decrypt(token.encode())
    except InvalidToken:
        raise KeyUnavailable(f"{what} cannot be decrypted with {SETTING}.") from None


def encrypt_text(plaintext: str) -> str:
    """A secret at rest (e.g. a notification channel's webhook URL)."""
    return encrypt_bytes(plaintext.encode())


def decrypt_text(token: str) -> str:
    """The plaintext of :func:`encrypt_text`; KeyUnavailable when no configured key opens it."""
    return decrypt_bytes(token).decode()


def reencrypt(token: str, *, what: str = "A stored secret") -> str:
    """The same secret, encrypted under the first (newest) key."""
    try:
        return _cipher().rotate(token.encode()).decode()
    except InvalidToken:
        raise KeyUnavailable(f"{what} cannot be decrypted with {SETTING}.") from None


# --- Re-encryption under the newest key (manage.py rotate_bundle_key --reencrypt) -------------
# Each app that keeps secrets at rest registers ``fn() -> report line`` from its
# ``AppConfig.ready()``; the command runs them in registration (INSTALLED_APPS) order.
_reencrypters: list[Callable[[], str]] = []


def add_reencrypter(fn: Callable[[], str]) -> None:
    """Register ``fn`` (once, however often ``ready()`` runs)."""
    if fn not in _reencrypters:
        _reencrypters.append(fn)


def reencrypt_all() -> list[str]:
    """Re-encrypt every registered kind of secret; one report line per kind."""
    return [fn() for fn in _reencrypters]
