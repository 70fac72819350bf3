"""MCP authorization: the gateway as an OAuth 2.1 resource server.

What the MCP specification's "Authorization" section (2025-06-18 and later) asks of an MCP
server, for the reference gateway:

- :class:`ProtectedResource` (ASGI, outside the proxy's bearer check) serves the RFC 9728
  protected-resource metadata at ``/.well-known/oauth-protected-resource`` and at the same
  path followed by the resource URI's path (``…/oauth-protected-resource/mcp``):
  ``resource`` (this gateway's resource URI), ``authorization_servers``,
  ``bearer_methods_supported: ["header"]`` and ``scopes_supported`` when scopes are
  configured. Every 401 of the proxy gets ``WWW-Authenticate: Bearer resource_metadata="…"``
  (plus ``error="invalid_token"`` when a token was sent, RFC 6750 §3.1), which is where an
  MCP client starts its discovery.
- :class:`OAuthIdentities` (an ``Identities`` source, ``gateway/identity.py``) accepts JWT
  access tokens: signature with a key of the issuer's JWKS (``gateway/jwks.py``: cached,
  rotated), algorithm on an allow-list (never ``none`` nor ``HS*``), ``typ`` (when present)
  ``at+jwt`` or ``JWT``, ``iss`` equal to the configured issuer, ``aud`` containing this
  gateway's resource URI (RFC 8707: a token minted for another resource is refused), ``exp``
  required and ``nbf``/``iat`` honoured, with ``leeway`` seconds, the configured scopes
  present. The principal is (``iss``, ``sub``) with the token's client (``azp``, else
  ``client_id``), the RFC 8693 actor (``act.sub``) and the person's groups (the
  ``groups_claim``): with them ``gateway.decision`` knows when the agent acts for a person.

A refused token is logged (INFO, why) and answered 401; nothing of the token is echoed.
Pure Python, no Django.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import jwt

from gateway.identity import Principal, bearer_credential
from gateway.jwks import JwksCache, JwksError

logger = logging.getLogger(__name__)

DEFAULT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
                      "ES512", "EdDSA")
ALLOWED_ALGORITHMS = frozenset(DEFAULT_ALGORITHMS)
ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt", "jwt"})
METADATA_PATH = "/.well-known/oauth-protected-resource"
MAX_GROUPS = 1000


def check_resource_uri(uri: str) -> str:
    """A resource URI as RFC 8707 wants it: absolute http(s), no fragment; returned as is."""
    parts = urlsplit(uri)
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.fragment \
            or "#" in uri:
        raise ValueError("the resource URI must be an absolute http(s) URI without a fragment")
    return uri


def metadata_url(resource: str) -> str:
    """The RFC 9728 metadata URL of ``resource`` (the path-suffixed form)."""
    parts = urlsplit(resource)
    path = parts.path.rstrip("/")
    return f"{parts.scheme}://{parts.netloc}{METADATA_PATH}{path}"


class OAuthIdentities:
    """JWT access tokens of one authorization server, bound to this gateway's resource URI."""

    def __init__(self, *, issuer: str, resource: str, jwks: JwksCache,
                 algorithms: Sequence[str] = DEFAULT_ALGORITHMS, leeway_seconds: float = 30.0,
                 groups_claim: str = "groups", required_scopes: Sequence[str] = ()) -> None:
        if not issuer:
            raise ValueError("issuer is required")
        refused = set(algorithms) - ALLOWED_ALGORITHMS
        if refused or not algorithms:
            raise ValueError(f"algorithms must be among {', '.join(DEFAULT_ALGORITHMS)} "
                             f"(not {', '.join(sorted(refused)) or 'none'})")
        self.issuer = issuer
        self.resource = check_resource_uri(resource)
        self.jwks = jwks
        self.algorithms = tuple(algorithms)
        self.leeway = leeway_seconds
        self.groups_claim = groups_claim
        self.required_scopes = tuple(required_scopes)

    async def identify(self, credential: str) -> Principal | None:
        try:
            return await self.verify(credential)
        except (jwt.InvalidTokenError, JwksError) as error:
            logger.info("OAuth access token refused: %s", error)
            return None

    async def verify(self, token: str) -> Principal:
        """The token's principal; raises ``jwt.InvalidTokenError`` or ``JwksError``."""
        header = jwt.get_unverified_header(token)
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise jwt.InvalidAlgorithmError(f"algorithm {alg!r} is not accepted")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str)
                                or typ.lower() not in ACCESS_TOKEN_TYPES):
            raise jwt.InvalidTokenError(f"token type {typ!r} is not an access token")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise jwt.InvalidTokenError("kid is not a string")
        key = await self.jwks.key_for(kid, alg)
        claims = jwt.decode(
            token, key, algorithms=[alg], issuer=self.issuer, audience=self.resource,
            leeway=self.leeway,
            options={"require": ["iss", "sub", "aud", "exp"], "verify_aud": True},
        )
        return self._principal(claims)

    def _principal(self, claims: dict[str, Any]) -> Principal:
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise jwt.InvalidTokenError("sub is not a string")
        if self.required_scopes:
            granted = claims.get("scope")
            granted = set(granted.split()) if isinstance(granted, str) else set()
            missing = [s for s in self.required_scopes if s not in granted]
            if missing:
                raise jwt.InvalidTokenError(f"scope {' '.join(missing)} not granted")
        client_id = claims.get("azp", claims.get("client_id"))
        if client_id is not None and (not isinstance(client_id, str) or not client_id):
            raise jwt.InvalidTokenError("azp/client_id is not a string")
        actor = None
        act = claims.get("act")
        if act is not None:  # RFC 8693 §4.1: the outermost act is the current actor
            actor = act.get("sub") if isinstance(act, dict) else None
            if not isinstance(actor, str) or not actor:
                raise jwt.InvalidTokenError("act has no sub")
        return Principal(claims["iss"], subject, client_id=client_id, actor=actor,
                         groups=self._groups(claims.get(self.groups_claim)))

    @staticmethod
    def _groups(value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list):
            return tuple(sorted({g for g in value if isinstance(g, str)}))[:MAX_GROUPS]
        return ()


class ProtectedResource:
    """ASGI: RFC 9728 metadata, and ``resource_metadata`` in the 401s of the wrapped app."""

    def __init__(self, app: Any, *, resource: str, authorization_servers: Sequence[str],
                 scopes: Sequence[str] = (), resource_name: str | None = None) -> None:
        self.app = app
        self.resource = check_resource_uri(resource)
        self.metadata_url = metadata_url(resource)
        suffix = urlsplit(resource).path.rstrip("/")
        self.paths = {METADATA_PATH, METADATA_PATH + suffix}
        document: dict[str, Any] = {"resource": resource,
                                    "authorization_servers": list(authorization_servers),
                                    "bearer_methods_supported": ["header"]}
        if scopes:
            document["scopes_supported"] = list(scopes)
        if resource_name:
            document["resource_name"] = resource_name
        self.document = json.dumps(document, sort_keys=True).encode()
        self.scopes = " ".join(scopes)

    def __getattr__(self, name: str) -> Any:  # the wrapped app's attributes (``proxy``)
        return getattr(self.app, name)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope.get("path") in self.paths:
            await self._metadata(scope, send)
            return
        authorization = None
        for name, value in scope.get("headers") or []:
            if name.lower() == b"authorization":
                authorization = value.decode("latin-1")
                break
        challenge = self.challenge(sent_token=bearer_credential(authorization) is not None)

        async def send_with_challenge(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and message.get("status") == 401:
                headers = [(k, v) for k, v in message.get("headers") or []
                           if k.lower() != b"www-authenticate"]
                headers.append((b"www-authenticate", challenge))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_challenge)

    def challenge(self, *, sent_token: bool) -> bytes:
        """The ``WWW-Authenticate`` value of a 401 (RFC 6750 §3, RFC 9728 §5.1)."""
        parts = []
        if sent_token:
            parts.append('error="invalid_token", error_description="the access token is not '
                         'valid for this resource"')
        parts.append(f'resource_metadata="{self.metadata_url}"')
        if self.scopes:
            parts.append(f'scope="{self.scopes}"')
        return ("Bearer " + ", ".join(parts)).encode("latin-1")

    async def _metadata(self, scope: dict[str, Any], send: Any) -> None:
        method = scope.get("method", "GET")
        cors = [(b"access-control-allow-origin", b"*"),
                (b"access-control-allow-methods", b"GET, OPTIONS")]
        if method == "OPTIONS":
            await send({"type": "http.response.start", "status": 204, "headers": cors})
            await send({"type": "http.response.body", "body": b""})
            return
        if method not in ("GET", "HEAD"):
            body = b'{"error":"method_not_allowed"}'
            await send({"type": "http.response.start", "status": 405, "headers": [
                (b"content-type", b"application/json"), (b"allow", b"GET, OPTIONS"),
                (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self.document)).encode()),
            (b"cache-control", b"public, max-age=300"), *cors]})
        await send({"type": "http.response.body",
                    "body": b"" if method == "HEAD" else self.document})
