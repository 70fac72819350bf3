"""An authorization server's signing keys (JWKS), fetched, cached and rotated.

:class:`JwksCache` holds the keys of ONE issuer for the OAuth resource server
(``gateway/oauth.py``):

- **Where**: a configured ``jwks_uri``, or the ``jwks_uri`` of the issuer's metadata
  (RFC 8414 ``/.well-known/oauth-authorization-server``, then OpenID Connect discovery), whose
  ``issuer`` must equal the configured one exactly.
- **How long**: as the JWKS answer's ``Cache-Control: max-age`` says (``no-store``/``no-cache``:
  ``min_refetch`` seconds), else ``ttl`` seconds; never longer than ``max_ttl``.
- **Rotation**: a token signed with a ``kid`` the cache does not hold makes it fetch the JWKS
  again at once — such fetches at most once every ``min_refetch`` seconds, so tokens with
  made-up key ids cannot turn the gateway into a flood of requests to the authorization
  server (a key that appears meanwhile is found at the next allowed fetch).
- **Failures**: a fetch that fails keeps the keys already held (the next attempt waits
  ``min_refetch`` seconds); with none held, tokens are refused.
- **Which key**: only signature keys (``use`` absent or ``sig``) whose type fits the token's
  algorithm (RSA for ``RS*``/``PS*``, the matching curve for ``ES*``, OKP for ``EdDSA``), and
  whose own ``alg``, when given, is the token's. A JWKS of one key may be used for a token
  without ``kid``; otherwise the ``kid`` must match.

Pure Python (PyJWT, httpx2 as the ``mcp`` SDK uses it), no Django.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
import jwt

logger = logging.getLogger(__name__)

MAX_JWKS_BYTES = 512 * 1024
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)
_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}


class JwksError(Exception):
    """No key can verify this token (unknown key id, unusable key, JWKS unavailable)."""


def key_fits(jwk: Mapping[str, Any], alg: str) -> bool:
    """Whether a JWK may verify a signature of algorithm ``alg``."""
    if jwk.get("use") not in (None, "sig"):
        return False
    if jwk.get("alg") is not None and jwk.get("alg") != alg:
        return False
    kty = jwk.get("kty")
    if alg[:2] in ("RS", "PS"):
        return kty == "RSA"
    if alg in _CURVES:
        return kty == "EC" and jwk.get("crv") == _CURVES[alg]
    if alg == "EdDSA":
        return kty == "OKP" and jwk.get("crv") in ("Ed25519", "Ed448")
    return False  # HS* (a shared secret) and anything else: never from a public JWKS


def cache_seconds(cache_control: str | None, *, default: float, floor: float,
                  ceiling: float) -> float:
    """How long a JWKS answer may be reused, from its ``Cache-Control`` header."""
    value = (cache_control or "").lower()
    if "no-store" in value or "no-cache" in value:
        return floor
    found = _MAX_AGE.search(value)
    seconds = float(found.group(1)) if found else default
    return max(floor, min(seconds, ceiling))


def metadata_urls(issuer: str) -> list[str]:
    """Where an issuer's metadata lives: RFC 8414 (path inserted after ``/.well-known/``), then
    OpenID Connect discovery (path appended)."""
    parts = urlsplit(issuer)
    origin, path = f"{parts.scheme}://{parts.netloc}", parts.path.rstrip("/")
    return [f"{origin}/.well-known/oauth-authorization-server{path}",
            f"{origin}{path}/.well-known/openid-configuration"]


class JwksCache:
    """The verification keys of one issuer (see the module's text)."""

    def __init__(self, *, issuer: str, jwks_url: str | None = None, ttl: float = 300.0,
                 min_refetch: float = 30.0, max_ttl: float = 86400.0,
                 timeout: float = 10.0) -> None:
        if not issuer:
            raise ValueError("issuer is required")
        self.issuer = issuer
        self.jwks_url = jwks_url
        self.ttl = ttl
        self.min_refetch = min_refetch
        self.max_ttl = max_ttl
        self.timeout = timeout
        self.fetches = 0  # how many JWKS documents were fetched (for tests and status)
        self._keys: list[dict[str, Any]] = []
        self._expires = 0.0
        self._attempted = float("-inf")  # the last fetch of any kind
        self._unknown_kid_at = float("-inf")  # the last fetch an unknown kid asked for
        self._lock = anyio.Lock()

    async def key_for(self, kid: str | None, alg: str) -> jwt.PyJWK:
        """The key that verifies a token with header ``kid`` and ``alg``."""
        now = time.monotonic()
        if now >= self._expires:
            await self._refresh(now, reason="expired")
        key = self._find(kid, alg)
        if key is None and time.monotonic() - self._unknown_kid_at >= self.min_refetch:
            self._unknown_kid_at = time.monotonic()
            await self._refresh(time.monotonic(), reason=f"unknown key id {kid!r}")
            key = self._find(kid, alg)
        if key is None:
            raise JwksError(f"no key {kid!r} for {alg} in the issuer's JWKS")
        try:
            return jwt.PyJWK(key, algorithm=alg)
        except jwt.PyJWTError as error:
            raise JwksError(f"key {kid!r} is unusable: {error}") from error

    def _find(self, kid: str | None, alg: str) -> dict[str, Any] | None:
        if kid is None:
            return self._keys[0] if len(self._keys) == 1 and key_fits(self._keys[0], alg) \
                else None
        return next((k for k in self._keys if k.get("kid") == kid and key_fits(k, alg)), None)

    async def _refresh(self, now: float, *, reason: str) -> None:
        async with self._lock:
            if self._attempted > now:  # another task fetched while this one waited
                return
            self._attempted = time.monotonic()
            try:
                keys, seconds = await self._fetch()
            except (httpx2.HTTPError, ValueError, JwksError) as error:
                logger.warning("cannot fetch the JWKS of %s (%s): %s", self.issuer, reason,
                               error)
                self._expires = time.monotonic() + self.min_refetch
                return
            self._keys = keys
            self._expires = time.monotonic() + seconds
            self.fetches += 1
            logger.info("fetched the JWKS of %s (%s): %d keys, cached %.0f s", self.issuer,
                        reason, len(keys), seconds)

    async def _fetch(self) -> tuple[list[dict[str, Any]], float]:
        async with httpx2.AsyncClient(timeout=self.timeout, follow_redirects=False) as client:
            url = self.jwks_url or await self._discover(client)
            response = await client.get(url, headers={"Accept": "application/json"})
            if response.status_code != 200:
                raise JwksError(f"{url} answered {response.status_code}")
            if len(response.content) > MAX_JWKS_BYTES:
                raise JwksError(f"{url} sent more than {MAX_JWKS_BYTES} bytes")
            document = response.json()
        keys = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(keys, list):
            raise JwksError(f"{url} is not a JWKS (no keys list)")
        seconds = cache_seconds(response.headers.get("cache-control"), default=self.ttl,
                                floor=self.min_refetch, ceiling=self.max_ttl)
        return [k for k in keys if isinstance(k, dict)], seconds

    async def _discover(self, client: httpx2.AsyncClient) -> str:
        """The ``jwks_uri`` of the issuer's metadata (kept once found)."""
        for url in metadata_urls(self.issuer):
            response = await client.get(url, headers={"Accept": "application/json"})
            if response.status_code != 200:
                continue
            metadata = response.json()
            if not isinstance(metadata, dict) or metadata.get("issuer") != self.issuer:
                raise JwksError(f"{url} names another issuer ({metadata.get('issuer')!r})"
                                if isinstance(metadata, dict) else f"{url} is not metadata")
            jwks_uri = metadata.get("jwks_uri")
            if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://",
                                                                          "http://")):
                raise JwksError(f"{url} has no jwks_uri")
            self.jwks_url = jwks_uri
            return jwks_uri
        raise JwksError(f"no authorization server metadata for {self.issuer}")
