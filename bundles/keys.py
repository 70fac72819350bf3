"""Bundle signing keys: ES256 key material, encrypted at rest, and the tenant's JWKS.

Private halves are PKCS#8 PEM encrypted with Fernet (AES-128-CBC + HMAC-SHA256) under
``BUNDLE_KEY_ENCRYPTION_KEYS``; the first key encrypts and every key decrypts, so that key can be
rotated by prepending a new one and re-encrypting (``manage.py rotate_bundle_key --reencrypt``).
The key id is the RFC 7638 JWK thumbprint of the public key: anyone can recompute it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from functools import lru_cache
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings

from bundles import packaging


class KeyUnavailable(RuntimeError):
    """A private key cannot be decrypted (wrong or missing BUNDLE_KEY_ENCRYPTION_KEYS)."""


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(k) for k in keys])


def _cipher() -> MultiFernet:
    return _fernet(tuple(settings.BUNDLE_KEY_ENCRYPTION_KEYS))


def public_jwk(public_key: ec.EllipticCurvePublicKey) -> dict[str, Any]:
    """The JWK of a P-256 public key, with its RFC 7638 thumbprint as ``kid``."""
    jwk = packaging.public_jwk(public_key, kid="")
    core = {name: jwk[name] for name in ("crv", "kty", "x", "y")}  # the members 7638 hashes
    digest = hashlib.sha256(json.dumps(core, separators=(",", ":"), sort_keys=True).encode())
    return {**jwk, "kid": base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()}


def generate() -> tuple[dict[str, Any], str]:
    """A new key pair: (public JWK with kid, encrypted private key)."""
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return public_jwk(private.public_key()), _cipher().encrypt(pem).decode()


def load_private(encrypted: str) -> ec.EllipticCurvePrivateKey:
    try:
        pem = _cipher().decrypt(encrypted.encode())
    except InvalidToken:
        raise KeyUnavailable(
            "The bundle signing key cannot be decrypted with BUNDLE_KEY_ENCRYPTION_KEYS."
        ) from None
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):  # pragma: no cover - we only store EC
        raise KeyUnavailable("The stored signing key is not an EC key.")
    return key


def reencrypt(encrypted: str) -> str:
    """The same private key, encrypted under the first (newest) encryption key."""
    try:
        return _cipher().rotate(encrypted.encode()).decode()
    except InvalidToken:
        raise KeyUnavailable(
            "The bundle signing key cannot be decrypted with BUNDLE_KEY_ENCRYPTION_KEYS."
        ) from None


def encrypt_text(plaintext: str) -> str:
    """Any other secret at rest (e.g. a notification channel's webhook URL), under the same keys."""
    return _cipher().encrypt(plaintext.encode()).decode()


def decrypt_text(token: str) -> str:
    """The plaintext of :func:`encrypt_text`; KeyUnavailable when no configured key opens it."""
    try:
        return _cipher().decrypt(token.encode()).decode()
    except InvalidToken:
        raise KeyUnavailable("A stored secret cannot be decrypted with "
                             "BUNDLE_KEY_ENCRYPTION_KEYS.") from None
