"""The reference bundle verifier: what every gateway checks before it activates a bundle.

A bundle (DESIGN.md §5) is a gzipped tar in OPA's layout::

    .manifest               {"revision": "<N>", "roots": ["mcp"], "metadata": {"tenant",
                             "revision_number", "issued_at", "expires_at", "schema_version"}}
    .signatures.json        {"signatures": ["<compact JWS>"]}
    mcp/data.json           what the decision function (gateway/decision.py) reads
    mcp/policy.cedar        the same grants as Cedar (optional for this verifier)
    mcp/schema.cedarschema

Tar member names have no leading slash and are exactly the names the signature lists. The
JWS header is ``{"alg": "ES256", "kid": …, "typ": "JWT"}`` and its payload is
``{"files": [{"name", "hash" (hex SHA-256), "algorithm": "SHA-256"}, …], "scope",
"iss", "iat", "revision_number", "expires_at"}``.

``verify_bundle()`` returns a ``VerifiedBundle`` or raises ``BundleRejected`` with a stable
``code``. The rules, in the order they are checked; nothing inside the bundle is believed
before the signature over it has been verified:

1. The decompressed size stays under ``max_decompressed_bytes``, enforced while
   decompressing, so a gzip bomb is refused without being inflated.
   Codes: ``gzip_bomb``; ``bad_gzip`` (not gzip, corrupt, truncated).
2. The tar holds at most ``max_files`` members, each a regular file (no links, directories or
   devices) whose name is relative and normalised (no leading ``/``, no empty, ``.`` or
   ``..`` parts) and appears once; after the end-of-archive marker there is only zero padding.
   Codes: ``too_many_files``, ``unsafe_member``, ``duplicate_file``, ``bad_tar``.
3. ``.signatures.json`` holds exactly one signature.
   Codes: ``signature_count`` (none, several, or no such file), ``bad_signature_file``.
4. The signature is ES256 (never ``none``, HMAC, RSA or another curve) by a key whose
   ``kid`` is in the tenant's JWKS, and that key is an EC P-256 signing key. The control
   plane's JWKS lists only unrevoked keys: a kid that is missing is unknown or revoked.
   Codes: ``bad_algorithm``, ``unknown_key``, ``bad_key``, ``bad_jwks``, ``bad_signature``,
   ``bad_payload`` (the signed payload lacks a field or has a wrong type).
5. The signed file list equals the files in the tar other than ``.signatures.json`` (none
   added, none missing, none listed twice) and every SHA-256 matches; the bundle has a
   ``.manifest`` and an ``mcp/data.json`` and nothing outside ``mcp/``.
   Codes: ``file_list_mismatch``, ``hash_mismatch``, ``not_a_bundle``.
6. ``scope`` is the tenant the gateway serves.  Code: ``wrong_scope``.
7. The manifest is schema version 1 with roots ``["mcp"]`` and agrees with the signed
   payload: tenant, revision, issue and expiry times.
   Codes: ``bad_manifest``, ``manifest_mismatch``.
8. The bundle has not expired: now is before ``expires_at``.  Code: ``expired``.
9. ``revision_number`` is greater than the last accepted one. Lower is a rollback
   (``rollback``). Equal is nothing to do (``SameRevision``, code ``same_revision``, so a
   caller can tell it from an attack) unless the tarball's SHA-256 differs from the accepted
   one's (``last_sha256``): one number, two bundles (``revision_conflict``).
10. ``mcp/data.json`` is a JSON object.  Code: ``bad_data``.

On any rejection a gateway keeps its last good bundle and reports the code in its status.

Command line (exit 0 accepted or nothing to do, 1 rejected, 2 usage error)::

    python -m gateway.verify BUNDLE --jwks JWKS.json [--tenant SLUG] [--state STATE.json]

The state file is the reference gateway's own ``state.json`` format (``{"tenant": "alpha",
"revision": 7, "sha256": …}``; an older ``last_revision`` is read too): it supplies the tenant,
the last accepted revision and its hash, and is replaced atomically when a bundle is accepted.

Pure Python (PyJWT + cryptography), no Django: this file is written for gateway vendors.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile
import tempfile
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

MANIFEST = ".manifest"
SIGNATURES = ".signatures.json"
DATA = "mcp/data.json"
ROOT = "mcp"
ALGORITHM = "ES256"
HASH_ALGORITHM = "SHA-256"
# 2: data.json may use the constraint keywords within and url (gateway.constraints.KEYWORD_SINCE).
# 3: a grant may require the person an agent acts for to be in a group (on_behalf_of_group).
SCHEMA_VERSIONS = (1, 2, 3)

DEFAULT_MAX_DECOMPRESSED_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_FILES = 256
_READ_CHUNK = 1024 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
_YEAR_10000 = 253_402_300_800  # datetime cannot represent Unix times from here on

# Only ES256 is registered, so PyJWT itself can never verify with another algorithm.
_JWS = jwt.PyJWS(algorithms=[ALGORITHM])


class BundleRejected(Exception):
    """The bundle must not be activated: ``code`` is stable, ``message`` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class SameRevision(BundleRejected):
    """An authentic bundle of the revision already accepted: nothing to do, not an attack."""

    def __init__(self, revision_number: int) -> None:
        super().__init__(
            "same_revision",
            f"revision {revision_number} is the one already accepted; nothing to do",
        )
        self.revision_number = revision_number


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle that passed every rule, with what a gateway needs to activate it."""

    tenant: str
    revision_number: int
    kid: str
    issuer: str
    issued_at: datetime
    expires_at: datetime
    # Every file of the tar, .manifest and .signatures.json included, by name.
    files: Mapping[str, bytes] = field(repr=False)
    manifest: Mapping[str, Any] = field(repr=False)
    data: Mapping[str, Any] = field(repr=False)
    # The SHA-256 of the tarball: the ETag the control plane serves it under.
    sha256: str = ""


def verify_bundle(
    tarball: bytes,
    *,
    jwks: Mapping[str, Any],
    tenant: str,
    last_revision: int | None = None,
    now: datetime | None = None,
    max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
    last_sha256: str | None = None,
) -> VerifiedBundle:
    """Check ``tarball`` against every rule above; raise ``BundleRejected`` on the first failure.

    ``jwks`` is the tenant's ``GET keys/<tenant>`` document, ``last_revision`` the revision
    the gateway runs now (None before its first bundle) and ``last_sha256`` its tarball's
    SHA-256 (None: unknown), ``now`` a timezone-aware time.
    """
    now = datetime.now(UTC) if now is None else now
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")

    files = _untar(_gunzip(tarball, max_decompressed_bytes), max_files)
    token = _the_signature(files)
    kid, payload = _verify_signature(token, jwks)
    claims = _claims(payload)
    _check_files(claims["files"], files)
    if claims["scope"] != tenant:
        raise BundleRejected("wrong_scope",
                             f"the bundle is for tenant {claims['scope']!r}, not {tenant!r}")
    manifest = _check_manifest(files[MANIFEST], claims)

    expires_at = datetime.fromtimestamp(claims["expires_at"], UTC)
    if now >= expires_at:
        raise BundleRejected("expired", f"the bundle expired at {_rfc3339(expires_at)}")

    revision, sha256 = claims["revision_number"], hashlib.sha256(tarball).hexdigest()
    if last_revision is not None and revision < last_revision:
        raise BundleRejected("rollback", f"revision {revision} is older than the accepted "
                             f"revision {last_revision}")
    if revision == last_revision:
        if last_sha256 and sha256 != last_sha256.lower():  # one number, two bundles
            raise BundleRejected("revision_conflict", f"revision {revision} is another bundle "
                                 "than the one accepted under that number")
        raise SameRevision(revision)

    # Last, as it is the one costly step (a 50 MB data.json takes a second or two to parse).
    data = _json_object(files[DATA], "bad_data", DATA, strict=False)
    return VerifiedBundle(
        tenant=claims["scope"],
        revision_number=revision,
        kid=kid,
        issuer=claims["iss"],
        issued_at=datetime.fromtimestamp(claims["iat"], UTC),
        expires_at=expires_at,
        files=files,
        manifest=manifest,
        data=data,
        sha256=sha256,
    )


# --- 1. gzip, with the size limit enforced while decompressing ---------------------------------


def _gunzip(tarball: bytes, limit: int) -> bytes:
    if tarball[:2] != _GZIP_MAGIC:
        raise BundleRejected("bad_gzip", "the bundle is not gzip data")
    chunks: list[bytes] = []
    size = 0
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(tarball)) as stream:
            # GzipFile.read(n) inflates at most n bytes, so asking for one byte more than the
            # room left proves an oversized bundle without ever holding more than the limit.
            while chunk := stream.read(min(_READ_CHUNK, limit + 1 - size)):
                size += len(chunk)
                if size > limit:
                    raise BundleRejected(
                        "gzip_bomb", f"the bundle decompresses to more than {limit} bytes"
                    )
                chunks.append(chunk)
    except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        raise BundleRejected("bad_gzip",
                             f"the gzip stream is corrupt or truncated ({error})") from error
    return b"".join(chunks)


# --- 2. tar: regular files with safe, unique names ---------------------------------------------


def _untar(raw: bytes, max_files: int) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as archive:
            for count, member in enumerate(archive, start=1):
                if count > max_files:
                    raise BundleRejected(
                        "too_many_files", f"the bundle has more than {max_files} files"
                    )
                if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
                    raise BundleRejected(
                        "unsafe_member", f"{member.name!r} is {_kind(member)}, not a regular file"
                    )
                if not _safe_name(member.name):
                    raise BundleRejected(
                        "unsafe_member", f"{member.name!r} is not a plain relative path"
                    )
                if member.name in files:
                    raise BundleRejected("duplicate_file", f"{member.name!r} appears twice")
                handle = archive.extractfile(member)
                content = handle.read() if handle is not None else b""
                if len(content) != member.size:
                    raise BundleRejected("bad_tar", f"{member.name!r} is truncated")
                files[member.name] = content
            end = archive.offset  # where the end-of-archive marker starts
    except (tarfile.TarError, EOFError, ValueError, UnicodeError) as error:
        raise BundleRejected("bad_tar", f"the bundle is not a readable tar ({error})") from error
    # After the marker only zero padding: anything else is content this reader skips and
    # another (tar --ignore-zeros) may not, so the signature would not cover what it reads.
    if raw[end:].strip(b"\0"):
        raise BundleRejected("bad_tar", "the bundle has data after the end of the archive")
    return files


def _safe_name(name: str) -> bool:
    if not name or name.startswith("/") or "\\" in name or "\0" in name:
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def _kind(member: tarfile.TarInfo) -> str:
    return ("a symbolic link" if member.issym() else "a hard link" if member.islnk()
            else "a directory" if member.isdir() else "a special file")


# --- 3-4. exactly one ES256 signature by a key in the tenant's JWKS -----------------------------


def _the_signature(files: Mapping[str, bytes]) -> str:
    if SIGNATURES not in files:
        raise BundleRejected("signature_count", f"the bundle has no {SIGNATURES}: it is unsigned")
    document = _json_object(files[SIGNATURES], "bad_signature_file", SIGNATURES)
    signatures = document.get("signatures")
    if not isinstance(signatures, list):
        raise BundleRejected("bad_signature_file", f"{SIGNATURES} has no 'signatures' list")
    if len(signatures) != 1:
        raise BundleRejected(
            "signature_count", f"the bundle has {len(signatures)} signatures; exactly one is valid"
        )
    if not isinstance(signatures[0], str):
        raise BundleRejected("bad_signature_file", "the signature is not a compact JWS string")
    return signatures[0]


def _verify_signature(token: str, jwks: Mapping[str, Any]) -> tuple[str, bytes]:
    try:
        header = _JWS.get_unverified_header(token)
    except jwt.PyJWTError as error:
        raise BundleRejected("bad_signature",
                             f"the signature is not a compact JWS ({error})") from error
    algorithm = header.get("alg")
    if algorithm != ALGORITHM:
        raise BundleRejected(
            "bad_algorithm", f"signature algorithm {algorithm!r} refused: only ES256 is accepted"
        )
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise BundleRejected("unknown_key", "the signature names no key (kid)")
    public_key = _public_key(_find_jwk(jwks, kid), kid)
    try:
        decoded = _JWS.decode_complete(token, public_key, algorithms=[ALGORITHM])
    except jwt.InvalidSignatureError:
        raise BundleRejected("bad_signature",
                             f"the signature does not verify with key {kid!r}") from None
    except jwt.PyJWTError as error:
        raise BundleRejected("bad_signature", f"the signature is malformed ({error})") from error
    return kid, decoded["payload"]


def _find_jwk(jwks: Mapping[str, Any], kid: str) -> Mapping[str, Any]:
    keys = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(keys, list):
        raise BundleRejected("bad_jwks", "the JWKS has no 'keys' list")
    found = [key for key in keys if isinstance(key, Mapping) and key.get("kid") == kid]
    if not found:
        raise BundleRejected(
            "unknown_key", f"key {kid!r} is not in the tenant's JWKS (unknown or revoked)"
        )
    if len(found) > 1:
        raise BundleRejected("bad_jwks", f"the JWKS lists key {kid!r} more than once")
    return found[0]


def _public_key(jwk: Mapping[str, Any], kid: str) -> ec.EllipticCurvePublicKey:
    if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
        raise BundleRejected("bad_key", f"key {kid!r} is not an EC P-256 key")
    if jwk.get("alg", ALGORITHM) != ALGORITHM or jwk.get("use", "sig") != "sig":
        raise BundleRejected("bad_key", f"key {kid!r} is not an ES256 signing key")
    try:
        key = ECAlgorithm.from_jwk(dict(jwk))
    except (jwt.PyJWTError, ValueError, TypeError) as error:  # bad base64, off-curve point
        raise BundleRejected(
            "bad_key", f"key {kid!r} is not a valid P-256 key ({error})"
        ) from error
    if isinstance(key, ec.EllipticCurvePrivateKey):
        key = key.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(
        key.curve, ec.SECP256R1
    ):
        raise BundleRejected("bad_key", f"key {kid!r} is not an EC P-256 key")
    return key


def _claims(payload: bytes) -> dict[str, Any]:
    claims = _json_object(payload, "bad_payload", "the signed payload")
    for name, kind in (("scope", str), ("iss", str), ("iat", int), ("revision_number", int),
                       ("expires_at", int), ("files", list)):
        value = claims.get(name)
        # bool is an int in Python, never a number here.
        if not isinstance(value, kind) or isinstance(value, bool):
            raise BundleRejected(
                "bad_payload", f"the signed payload has no valid {name!r} ({kind.__name__})"
            )
    if claims["revision_number"] < 0:
        raise BundleRejected("bad_payload", "revision_number is negative")
    if not all(0 <= claims[name] < _YEAR_10000 for name in ("iat", "expires_at")):
        raise BundleRejected("bad_payload", "iat and expires_at must be Unix times before 10000")
    if claims["expires_at"] <= claims["iat"]:
        raise BundleRejected("bad_payload", "the bundle expires before it is issued")
    for entry in claims["files"]:
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)
                and isinstance(entry.get("hash"), str)
                and isinstance(entry.get("algorithm"), str)):
            raise BundleRejected("bad_payload", "a signed file entry lacks name, hash or algorithm")
        if entry["algorithm"] != HASH_ALGORITHM:
            raise BundleRejected(
                "bad_payload", f"{entry['name']!r} is hashed with {entry['algorithm']!r}, "
                f"only {HASH_ALGORITHM} is accepted",
            )
    return claims


# --- 5. the signed file list is the tar, hash for hash ------------------------------------------


def _check_files(listed: Sequence[Mapping[str, str]], files: Mapping[str, bytes]) -> None:
    names = Counter(entry["name"] for entry in listed)
    twice = sorted(name for name, count in names.items() if count > 1)
    if twice:
        raise BundleRejected("file_list_mismatch", f"the signature lists {twice} twice")
    in_tar = set(files) - {SIGNATURES}
    unsigned, missing = sorted(in_tar - set(names)), sorted(set(names) - in_tar)
    if unsigned or missing:
        raise BundleRejected(
            "file_list_mismatch",
            f"files in the bundle but not signed: {unsigned}; "
            f"signed but not in the bundle: {missing}",
        )
    for entry in listed:
        if hashlib.sha256(files[entry["name"]]).hexdigest() != entry["hash"].lower():
            raise BundleRejected(
                "hash_mismatch", f"{entry['name']!r} does not match its signed SHA-256"
            )
    for required in (MANIFEST, DATA):
        if required not in files:
            raise BundleRejected("not_a_bundle", f"the bundle has no {required}")
    outside = sorted(name for name in in_tar - {MANIFEST} if not name.startswith(ROOT + "/"))
    if outside:
        raise BundleRejected("not_a_bundle", f"files outside the bundle root {ROOT}/: {outside}")


# --- 7. the manifest says what the signature says -----------------------------------------------


def _check_manifest(raw: bytes, claims: Mapping[str, Any]) -> dict[str, Any]:
    manifest = _json_object(raw, "bad_manifest", MANIFEST)
    metadata = manifest.get("metadata")
    if not isinstance(metadata, dict):
        raise BundleRejected("bad_manifest", f"{MANIFEST} has no metadata object")
    version = metadata.get("schema_version")
    if version not in SCHEMA_VERSIONS or isinstance(version, bool):
        raise BundleRejected("bad_manifest", f"schema_version {version!r} is not supported "
                             f"(this verifier reads {', '.join(map(str, SCHEMA_VERSIONS))})")
    if manifest.get("roots") != [ROOT]:
        raise BundleRejected("bad_manifest", f"{MANIFEST} roots must be [{ROOT!r}]")
    revision = claims["revision_number"]
    agreements = {
        "tenant": (metadata.get("tenant"), claims["scope"]),
        "revision": (manifest.get("revision"), str(revision)),
        "revision_number": (metadata.get("revision_number"), revision),
        "issued_at": (_unix(metadata.get("issued_at")), claims["iat"]),
        "expires_at": (_unix(metadata.get("expires_at")), claims["expires_at"]),
    }
    for name, (in_manifest, signed) in agreements.items():
        if in_manifest != signed or isinstance(in_manifest, bool):
            raise BundleRejected(
                "manifest_mismatch", f"{MANIFEST} {name} does not match the signed payload"
            )
    return manifest


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 instant from untrusted input, or None (not a string, malformed, or without
    a time zone)."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _unix(value: Any) -> int | None:
    parsed = parse_time(value)
    return int(parsed.timestamp()) if parsed is not None else None


def _json_object(raw: bytes, code: str, what: str, *, strict: bool = True) -> dict[str, Any]:
    # The small documents that carry the signature and its claims are parsed strictly (no
    # repeated keys). data.json is not: it is covered by a verified hash of a trusted
    # producer's canonical JSON, and the per-object hook would make 50 MB parse 4x slower.
    hook = _no_duplicate_keys if strict else None
    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=hook)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise BundleRejected(code, f"{what} is not valid UTF-8 JSON ({error})") from error
    if not isinstance(value, dict):
        raise BundleRejected(code, f"{what} is not a JSON object")
    return value


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers may keep different copies of a repeated key; signed JSON must mean one thing.
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("a key is repeated")
    return result


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# --- command line -------------------------------------------------------------------------------


class _UsageError(Exception):
    pass


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gateway.verify``: 0 accepted or nothing to do, 1 rejected, 2 usage error."""
    parser = argparse.ArgumentParser(
        prog="python -m gateway.verify",
        description="Verify a Tollgate policy bundle as a gateway does before activating it.",
    )
    parser.add_argument("bundle", type=Path, help="the bundle tarball (.tar.gz)")
    parser.add_argument("--jwks", type=Path, required=True,
                        help="the tenant's JWKS (GET /api/v1/gateway/keys/<tenant>)")
    parser.add_argument("--tenant", help="the tenant slug (required without --state)")
    parser.add_argument("--state", type=Path,
                        help="the gateway's state.json; advanced on acceptance")
    args = parser.parse_args(argv)

    try:
        state = _read_state(args.state)
        tenant = args.tenant or state.get("tenant")
        if not tenant:
            raise _UsageError("--tenant is required when there is no state file")
        if state.get("tenant") not in (None, tenant):
            raise _UsageError(
                f"the state file is for tenant {state['tenant']!r}, not {tenant!r}"
            )
        tarball = _read(args.bundle).read_bytes()
        jwks = _read_json(args.jwks, "JWKS")
    except _UsageError as error:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2

    try:
        sha = state.get("sha256")
        bundle = verify_bundle(tarball, jwks=jwks, tenant=tenant, last_revision=state.get(
            "revision"), last_sha256=sha if isinstance(sha, str) else None)
    except SameRevision as same:
        print(f"revision {same.revision_number} of tenant {tenant} is already accepted: "
              "nothing to do")
        return 0
    except BundleRejected as rejected:
        print(f"rejected: {rejected.code}: {rejected.message}", file=sys.stderr)
        return 1

    if args.state is not None:
        _write_state(args.state, {**state, "tenant": bundle.tenant,
                                  "revision": bundle.revision_number,
                                  "expires_at": _rfc3339(bundle.expires_at),
                                  "sha256": bundle.sha256})
    print(f"accepted revision {bundle.revision_number} of tenant {bundle.tenant} signed by "
          f"{bundle.kid}, expires {_rfc3339(bundle.expires_at)}")
    return 0


def _read(path: Path) -> Path:
    if not path.is_file():
        raise _UsageError(f"{path} is not a readable file")
    return path


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(_read(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise _UsageError(f"cannot read the {what} {path}: {error}") from error


def _read_state(path: Path | None) -> dict[str, Any]:
    if path is None or not path.exists():
        return {}
    state = _read_json(path, "state file")
    if isinstance(state, dict):  # the gateway's "revision", or an older file's "last_revision"
        state = {k: v for k, v in state.items() if k != "last_revision"} | {
            "revision": state.get("revision", state.get("last_revision"))}
    last = state.get("revision") if isinstance(state, dict) else None
    if (not isinstance(state, dict) or not isinstance(state.get("tenant", ""), str)
            or not (last is None or (isinstance(last, int) and not isinstance(last, bool)))):
        raise _UsageError(f'{path} is not a state file like {{"tenant": "alpha", "revision": 7}}')
    return state


def _write_state(path: Path, state: Mapping[str, Any]) -> None:
    # Write a sibling and rename it over the old file: a crash leaves the old state or the new
    # one, never half of either (a lost state would let a rollback through).
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(state, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    with contextlib.suppress(OSError):  # make the rename durable where the OS allows it
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


if __name__ == "__main__":
    sys.exit(main())
