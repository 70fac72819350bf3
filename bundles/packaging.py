"""Signed bundle tarballs in OPA's bundle layout (DESIGN.md §5 "Bundle format").

``package()`` turns a tenant's content files into the gzipped tar a gateway downloads:
``.manifest``, the content files under ``mcp/`` and ``.signatures.json`` (one compact ES256
JWS over the SHA-256 of every other file). The same inputs always give the same bytes —
fixed tar metadata, gzip mtime 0 and deterministic ECDSA (RFC 6979) — so a rebuild of an
unchanged tenant has the same ETag.

Pure Python (PyJWT + cryptography), no Django: the reference verifier
(``gateway/verify.py``) checks exactly what this writes.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import tarfile
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from jwt.algorithms import ECAlgorithm
from jwt.api_jws import PyJWS

ALGORITHM = "ES256"
ROOT = "mcp"
MANIFEST = ".manifest"
SIGNATURES = ".signatures.json"
# Compression is nearly all of the packaging time (hashing and tarring 50 MB take ~0.05 s).
# On 50 MB of canonical JSON, level 1 takes ~0.4 s for a tarball ~14 % larger than level 6,
# which takes ~1.3 s: too much of the two seconds a huge tenant has to compile and sign.
COMPRESS_LEVEL = 1


def bundle_json(value: Any) -> bytes:
    """The bytes of a bundle's JSON files: sorted keys (by code point), no insignificant
    whitespace, UTF-8 — the form of ``gateway.canonical.canonical_json`` (THE canonical JSON,
    which the audit chain, tool hashes and receipts use), written by orjson because it writes
    50 MB of policy in a sixth of the time ``json`` takes (0.12 s against 0.73 s for 12 MB).
    The two agree byte for byte on every value the compiler writes but floats in exponent form
    (orjson writes ``1e-05`` as ``1e-5``); nobody recomputes these bytes (the manifest hashes them
    as shipped), so that difference is harmless. NaN and infinities cannot get here: the only
    free-form JSON in a bundle, argument constraints, refuses them when saved
    (``gateway.constraints``). The standard library writes what orjson refuses (integers beyond
    64 bits)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")


def rfc3339(value: datetime) -> str:
    """``2026-11-25T09:00:00Z``: UTC, whole seconds (sub-seconds are dropped, as in ``unix``)."""
    return _utc(value).isoformat(timespec="seconds").replace("+00:00", "Z")


def unix(value: datetime) -> int:
    """Whole seconds since the epoch, truncated like ``rfc3339`` so the two always agree."""
    return int(_utc(value).replace(microsecond=0).timestamp())


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A new ES256 (P-256) signing key."""
    return ec.generate_private_key(ec.SECP256R1())


def public_jwk(public_key: ec.EllipticCurvePublicKey, kid: str) -> dict[str, str]:
    """The public half as a JWK, as ``GET keys/<tenant>`` publishes it."""
    if not isinstance(public_key.curve, ec.SECP256R1):
        raise ValueError("ES256 keys are on P-256")
    numbers = public_key.public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": _b64url(numbers.x.to_bytes(32, "big")),
        "y": _b64url(numbers.y.to_bytes(32, "big")),
        "kid": kid,
        "alg": ALGORITHM,
        "use": "sig",
    }


def manifest(*, scope: str, revision_number: int, issued_at: datetime,
             expires_at: datetime, schema_version: int = 1) -> dict[str, Any]:
    """The ``.manifest`` document (OPA's ``revision`` and ``roots``, Tollgate's metadata)."""
    return {
        "revision": str(revision_number),
        "roots": [ROOT],
        "metadata": {
            "tenant": scope,
            "revision_number": revision_number,
            "issued_at": rfc3339(issued_at),
            "expires_at": rfc3339(expires_at),
            "schema_version": schema_version,
        },
    }


def sign(files: Mapping[str, bytes], *, scope: str, revision_number: int, issued_at: datetime,
         expires_at: datetime, issuer: str, kid: str,
         private_key: ec.EllipticCurvePrivateKey) -> str:
    """The compact JWS over the SHA-256 of every file given (everything but the signatures)."""
    payload = {
        "files": [
            {"name": name, "hash": hashlib.sha256(files[name]).hexdigest(),
             "algorithm": "SHA-256"}
            for name in sorted(files)
        ],
        "scope": scope,
        "iss": issuer,
        "iat": unix(issued_at),
        "revision_number": revision_number,
        "expires_at": unix(expires_at),
    }
    return _JWS.encode(bundle_json(payload), private_key, algorithm=ALGORITHM,
                       headers={"kid": kid})


def package(files: Mapping[str, bytes], *, scope: str, revision_number: int,
            issued_at: datetime, expires_at: datetime, issuer: str, kid: str,
            private_key: ec.EllipticCurvePrivateKey, schema_version: int = 1) -> bytes:
    """The signed, gzipped bundle tarball of ``files`` (paths under ``mcp/``, no leading slash);
    ``schema_version`` is data.json's (``gateway.constraints.schema_version_for``)."""
    for name in files:
        if not (name.startswith(ROOT + "/") and _plain(name)):
            raise ValueError(f"bundle content must be a plain path under {ROOT}/: {name!r}")
    if isinstance(revision_number, bool) or revision_number < 0:
        raise ValueError("revision_number must be a non-negative integer")
    if unix(expires_at) <= unix(issued_at):
        raise ValueError("a bundle must expire after it is issued")

    signed = dict(files)
    signed[MANIFEST] = bundle_json(manifest(
        scope=scope, revision_number=revision_number, issued_at=issued_at,
        expires_at=expires_at, schema_version=schema_version,
    ))
    jws = sign(signed, scope=scope, revision_number=revision_number, issued_at=issued_at,
               expires_at=expires_at, issuer=issuer, kid=kid, private_key=private_key)
    members = {**signed, SIGNATURES: bundle_json({"signatures": [jws]})}
    return gzip.compress(_tar(members, mtime=unix(issued_at)), COMPRESS_LEVEL, mtime=0)


def _tar(members: Mapping[str, bytes], *, mtime: int) -> bytes:
    # Written by hand rather than through TarFile.addfile: the content is already in memory,
    # and one join avoids copying 50 MB through file objects. Headers come from TarInfo, so
    # the archive is an ordinary POSIX (pax) tar.
    parts: list[bytes] = []
    for name in sorted(members):
        content = members[name]
        info = tarfile.TarInfo(name)
        info.size = len(content)
        info.mode = 0o644
        info.mtime = mtime
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.type = tarfile.REGTYPE
        parts.append(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        parts.append(content)
        parts.append(_padding(len(content), tarfile.BLOCKSIZE))
    parts.append(tarfile.NUL * (2 * tarfile.BLOCKSIZE))  # end-of-archive marker
    size = sum(len(part) for part in parts)
    parts.append(_padding(size, tarfile.RECORDSIZE))  # what tarfile itself pads to
    return b"".join(parts)


def _padding(size: int, block: int) -> bytes:
    return tarfile.NUL * (-size % block)


def _plain(name: str) -> bool:
    """Relative and normalised: what the verifier accepts as a tar member name."""
    if "\\" in name or "\0" in name:
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("bundle times must be timezone-aware")
    return value.astimezone(UTC)


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class _DeterministicES256(ECAlgorithm):
    """ES256 with RFC 6979 nonces: no dependence on the RNG, and byte-identical rebuilds."""

    def __init__(self) -> None:
        super().__init__(ECAlgorithm.SHA256)

    def sign(self, msg: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
        der = key.sign(msg, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
        r, s = decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


_JWS = PyJWS(algorithms=[])
_JWS.register_algorithm(ALGORITHM, _DeterministicES256())
