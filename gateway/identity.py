"""Who is calling: the agent's principal (issuer, subject) from its bearer credential.

The gateway maps an ``Authorization: Bearer <credential>`` header to a :class:`Principal`; the
bundle's ``principals`` table (``{issuer: {subject: agent}}``) then names the agent. Two
sources:

- :class:`StaticIdentities`: a fixed token → (issuer, subject) table, for demos and tests.
- :class:`JwtIdentities`: a JWT signed by a configured issuer, checked against its JWKS
  (a document or a URL, cached): signature, ``iss``, ``exp``/``nbf``, optionally ``aud``.
  The principal is (``iss``, the subject claim, ``sub`` by default).
- ``gateway.oauth.OAuthIdentities``: the MCP authorization specification's resource server —
  OAuth access tokens (JWT) bound to this gateway's resource URI. Its principal also carries
  the token's client, the RFC 8693 actor and the person's groups (delegation).

``identify()`` returns None for a missing, unknown or invalid credential: the proxy answers
401 before any MCP message is read. Pure Python (PyJWT), no Django.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import jwt

logger = logging.getLogger(__name__)

DEFAULT_ALGORITHMS = ("RS256", "ES256", "PS256", "EdDSA")


@dataclass(frozen=True)
class Principal:
    """How the bundle's ``principals`` (and ``clients``) tables know an agent.

    ``client_id`` (``azp``/``client_id``), ``actor`` (``act.sub``) and ``groups`` (the
    configured groups claim) come from OAuth access tokens only: with them the decision knows
    whether the agent acts for a person (``gateway.decision.resolve_caller``)."""

    issuer: str
    subject: str
    client_id: str | None = None
    actor: str | None = None
    groups: tuple[str, ...] = ()

    def caller(self) -> dict[str, Any]:
        """The keyword arguments of ``gateway.decision.decide`` / ``find_agent`` that name
        the caller."""
        return {"issuer": self.issuer, "subject": self.subject, "client_id": self.client_id,
                "actor": self.actor, "groups": self.groups}


class Identities(Protocol):
    """Anything that maps a bearer credential to a principal."""

    async def identify(self, credential: str) -> Principal | None: ...


def bearer_credential(authorization: str | None) -> str | None:
    """The credential of an ``Authorization: Bearer …`` header value, or None."""
    if not authorization:
        return None
    scheme, _, credential = authorization.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        return None
    return credential


class StaticIdentities:
    """A fixed table of bearer tokens → (issuer, subject)."""

    def __init__(self, tokens: Mapping[str, tuple[str, str] | Principal]) -> None:
        self._tokens: dict[str, Principal] = {}
        for token, who in tokens.items():
            if not token:
                raise ValueError("a static token cannot be empty")
            self._tokens[token] = who if isinstance(who, Principal) else Principal(*who)

    async def identify(self, credential: str) -> Principal | None:
        return self._tokens.get(credential)


class JwtIdentities:
    """JWTs of one issuer, verified with its JWKS (``jwks`` document or ``jwks_url``)."""

    def __init__(
        self,
        *,
        issuer: str,
        jwks: Mapping[str, Any] | None = None,
        jwks_url: str | None = None,
        audience: str | Sequence[str] | None = None,
        algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
        subject_claim: str = "sub",
        leeway_seconds: float = 30.0,
        jwks_cache_seconds: int = 300,
    ) -> None:
        if (jwks is None) == (jwks_url is None):
            raise ValueError("give exactly one of jwks and jwks_url")
        if not issuer:
            raise ValueError("issuer is required")
        self.issuer = issuer
        self.audience = audience
        self.algorithms = list(algorithms)
        self.subject_claim = subject_claim
        self.leeway = leeway_seconds
        self._static: jwt.PyJWKSet | None = jwt.PyJWKSet.from_dict(dict(jwks)) if jwks else None
        self._client = (
            jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=jwks_cache_seconds, timeout=10)
            if jwks_url else None
        )
        self._failed_at = 0.0

    def _key_for(self, token: str) -> Any:
        kid = jwt.get_unverified_header(token).get("kid")
        if self._static is not None:
            for key in self._static.keys:
                if kid is None or key.key_id == kid:
                    return key.key
            raise jwt.InvalidTokenError(f"no key {kid!r} in the issuer's JWKS")
        if self._client is None:
            raise jwt.InvalidTokenError("no JWKS configured")
        return self._client.get_signing_key_from_jwt(token).key

    def _verify(self, token: str) -> Principal:
        claims = jwt.decode(
            token,
            self._key_for(token),
            algorithms=self.algorithms,
            issuer=self.issuer,
            audience=self.audience,
            leeway=self.leeway,
            options={"require": ["iss", "exp", self.subject_claim],
                     "verify_aud": self.audience is not None},
        )
        subject = claims[self.subject_claim]
        if not isinstance(subject, str) or not subject:
            raise jwt.InvalidTokenError(f"claim {self.subject_claim} is not a string")
        return Principal(claims["iss"], subject)

    async def identify(self, credential: str) -> Principal | None:
        try:
            # PyJWKClient fetches over blocking urllib: keep it off the event loop.
            return await anyio.to_thread.run_sync(self._verify, credential)
        except jwt.PyJWKClientError as error:
            now = time.monotonic()
            if now - self._failed_at > 60:
                logger.warning("cannot fetch the issuer's JWKS: %s", error)
                self._failed_at = now
            return None
        except jwt.InvalidTokenError as error:
            logger.info("bearer JWT rejected: %s", error)
            return None


class FirstOf:
    """Several identity sources tried in order (e.g. static demo tokens, then JWTs)."""

    def __init__(self, *sources: Identities) -> None:
        self.sources = sources

    async def identify(self, credential: str) -> Principal | None:
        for source in self.sources:
            found = await source.identify(credential)
            if found is not None:
                return found
        return None
