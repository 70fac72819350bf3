"""A small authorization server for the gateway's OAuth tests: its metadata and JWKS over real
HTTP (a thread), RSA keys it can rotate, and access tokens signed with them.

The end-to-end test (tests/e2e/test_gateway_oauth_e2e.py) uses the real ``oidc-provider``
instead; this one lets a test mint exactly the token it needs (expired, another audience, an
``act`` claim …) and count the JWKS fetches.
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm


class FakeIssuer:
    """Serves ``/.well-known/openid-configuration`` and ``/jwks``; ``rotate()`` adds a new
    signing key (and, with ``drop_old``, removes the others)."""

    def __init__(self) -> None:
        self.keys: list[tuple[str, Any]] = []  # published, newest last
        self.made: dict[str, Any] = {}  # every key ever made, published or not
        self.jwks_fetches = 0
        self.cache_control: str | None = "max-age=300"
        self.rotate()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": owner.issuer, "jwks_uri": f"{owner.issuer}/jwks",
                            "token_endpoint": f"{owner.issuer}/token"}
                elif self.path == "/jwks":
                    owner.jwks_fetches += 1
                    body = owner.jwks()
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if owner.cache_control and self.path == "/jwks":
                    self.send_header("Cache-Control", owner.cache_control)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeIssuer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def rotate(self, *, drop_old: bool = False) -> str:
        kid = f"k-{uuid.uuid4().hex[:8]}"
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.keys = ([] if drop_old else self.keys) + [(kid, key)]
        self.made[kid] = key
        return kid

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid, key in self.keys:
            jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
            keys.append(jwk | {"kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": keys}

    def token(self, *, audience: str | list[str], subject: str = "bot", kid: str | None = None,
              algorithm: str = "RS256", key: Any = None, headers: dict[str, Any] | None = None,
              lifetime: timedelta = timedelta(minutes=5), **claims: Any) -> str:
        """An access token of the newest key (or ``kid``'s), valid for ``lifetime``."""
        kid = kid or self.keys[-1][0]
        signing = key if key is not None else self.made[kid]
        now = datetime.now(UTC)
        body = {"iss": self.issuer, "sub": subject, "aud": audience, "iat": now,
                "exp": now + lifetime, "jti": uuid.uuid4().hex} | claims
        return jwt.encode({k: v for k, v in body.items() if v is not None}, signing,
                          algorithm=algorithm,
                          headers={"kid": kid, "typ": "at+jwt"} | (headers or {}))
