"""Bundle signing keys: ES256 key material, encrypted at rest, and the tenant's JWKS.

Private halves are PKCS#8 PEM encrypted as secrets at rest (governance/secrets.py, under
``SECRET_ENCRYPTION_KEYS``), re-encrypted by ``manage.py rotate_bundle_key --reencrypt``.
The key id is the RFC 7638 JWK thumbprint of the public key: anyone can recompute it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bundles import packaging
from governance.secrets import KeyUnavailable, decrypt_bytes, encrypt_bytes
from governance.secrets import reencrypt as _reencrypt

__all__ = ["KeyUnavailable", "generate", "load_private", "public_jwk", "reencrypt"]
_WHAT = "The bundle signing key"


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
    return public_jwk(private.public_key()), encrypt_bytes(pem)


def load_private(encrypted: str) -> ec.EllipticCurvePrivateKey:
    pem = decrypt_bytes(encrypted, what=_WHAT)
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):  # pragma: no cover - we only store EC
        raise KeyUnavailable("The stored signing key is not an EC key.")
    return key


def reencrypt(encrypted: str) -> str:
    """The same private key, encrypted under the first (newest) encryption key."""
    return _reencrypt(encrypted, what=_WHAT)
