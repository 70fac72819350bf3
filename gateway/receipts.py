"""Escalation receipts: what a gateway checks before it forwards a call a human approved.

The control plane answers ``GET /api/v1/gateway/escalations/<id>`` for an approved escalation
with a receipt: a compact JWS signed ES256 by the tenant's bundle signing key (the key set the
gateway already fetches from ``keys/<tenant>``), header ``{"alg": "ES256", "kid": …,
"typ": "tollgate-receipt+jwt"}``, payload::

    {"iss", "scope": "<tenant>", "sub": "<escalation id>", "jti": "<escalation id>",
     "agent", "server", "tool", "arguments_sha256", "iat", "exp"}

``verify_receipt()`` accepts it only when the signature verifies with a key of the JWKS, the
type is a receipt (a bundle signature is not), it has not expired, and it is bound to exactly
this call: tenant, escalation, agent, tool (and server) and the hash of the arguments the gateway
is about to forward. Then the gateway spends it with ``POST escalations/<id>/consume``: the
control plane accepts that once; a second consume (a replayed receipt) is 409.

``arguments_sha256()`` is the hash both sides use: SHA-256 of the arguments as canonical JSON
(sorted keys, no insignificant whitespace, UTF-8, no NaN/Infinity).

Pure Python (PyJWT + cryptography), no Django: written for gateway vendors.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from typing import Any

import jwt

from gateway.canonical import canonical_json
from gateway.verify import ALGORITHM, BundleRejected, _find_jwk, _public_key

RECEIPT_TYPE = "tollgate-receipt+jwt"
LEEWAY_SECONDS = 5
_JWS = jwt.PyJWS(algorithms=[ALGORITHM])


class ReceiptRejected(Exception):
    """Do not forward the call: ``code`` is stable, ``message`` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def arguments_sha256(arguments: Mapping[str, Any] | None) -> str:
    """Hex SHA-256 of the call's arguments as canonical JSON (``{}`` when there are none);
    ValueError when they are not JSON (NaN, a lone surrogate, nesting too deep to serialise)."""
    try:
        canonical = canonical_json(dict(arguments or {}))
    except RecursionError:
        raise ValueError("the arguments are nested too deeply to hash") from None
    return hashlib.sha256(canonical).hexdigest()


def verify_receipt(token: str, jwks: Mapping[str, Any], *, tenant: str, escalation_id: str,
                   agent: str, tool: str, arguments_hash: str, server: str | None = None,
                   now: float | None = None) -> dict[str, Any]:
    """The receipt's claims, or ``ReceiptRejected`` (codes: ``bad_receipt``, ``bad_algorithm``,
    ``unknown_key``, ``bad_key``, ``bad_signature``, ``expired``, ``wrong_call``)."""
    try:
        header = _JWS.get_unverified_header(token)
    except jwt.PyJWTError as error:
        raise ReceiptRejected("bad_receipt", f"not a compact JWS ({error})") from error
    if header.get("alg") != ALGORITHM:
        raise ReceiptRejected("bad_algorithm", f"algorithm {header.get('alg')!r} refused")
    if header.get("typ") != RECEIPT_TYPE:
        raise ReceiptRejected("bad_receipt", f"type {header.get('typ')!r} is not a receipt")
    kid = header.get("kid")
    try:
        key = _public_key(_find_jwk(jwks, kid), kid) if isinstance(kid, str) and kid else None
    except BundleRejected as error:
        raise ReceiptRejected(error.code, error.message) from error
    if key is None:
        raise ReceiptRejected("unknown_key", "the receipt names no key (kid)")
    try:
        payload = _JWS.decode_complete(token, key, algorithms=[ALGORITHM])["payload"]
        claims = json.loads(payload)
    except jwt.InvalidSignatureError:
        raise ReceiptRejected("bad_signature", f"the signature does not verify with {kid!r}") \
            from None
    except (jwt.PyJWTError, ValueError) as error:
        raise ReceiptRejected("bad_receipt", f"malformed receipt ({error})") from error
    if not isinstance(claims, dict):
        raise ReceiptRejected("bad_receipt", "the payload is not a JSON object")
    exp = claims.get("exp")
    if not isinstance(exp, int) or isinstance(exp, bool):
        raise ReceiptRejected("bad_receipt", "the receipt has no expiry")
    if (time.time() if now is None else now) >= exp + LEEWAY_SECONDS:
        raise ReceiptRejected("expired", "the receipt has expired: read the escalation again")
    expected = {"scope": tenant, "sub": escalation_id, "agent": agent, "tool": tool,
                "arguments_sha256": arguments_hash}
    if server is not None:
        expected["server"] = server
    wrong = sorted(name for name, value in expected.items() if claims.get(name) != value)
    if wrong:
        raise ReceiptRejected("wrong_call", f"the receipt is for another call ({', '.join(wrong)}"
                                            f" differ)")
    return claims
