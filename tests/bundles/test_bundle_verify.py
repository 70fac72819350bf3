"""Signed bundles (bundles/packaging.py) and the reference verifier every gateway
runs (gateway/verify.py): DESIGN.md §5 "Bundle format" and "Verification rules". Pure: no
database, no Django in either module."""

from __future__ import annotations

import ast
import base64
import gzip
import hashlib
import io
import json
import random
import subprocess
import sys
import tarfile
import tracemalloc
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bundles import packaging
from bundles.packaging import bundle_json, generate_key, package, public_jwk
from gateway import verify as gateway_verify
from gateway.verify import (
    DEFAULT_MAX_DECOMPRESSED_BYTES,
    BundleRejected,
    SameRevision,
    VerifiedBundle,
    verify_bundle,
)

REPO = Path(__file__).resolve().parents[2]
ISSUER = "https://tollgate.example"
NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
ISSUED = NOW - timedelta(hours=1)
DATA = {"agents": {"bot": {"status": "active"}}, "servers": {"payroll": {"tools": ["read"]}},
        "note": "donnée signée"}
CONTENT = {
    "mcp/data.json": bundle_json(DATA),
    "mcp/policy.cedar": b'permit(principal, action, resource) when { false };\n',
    "mcp/schema.cedarschema": b'{"mcp":{"entityTypes":{},"actions":{}}}',
}
OLD_KEY = generate_key()
NEW_KEY = generate_key()
STRANGER_KEY = generate_key()


def build(*, key=OLD_KEY, kid="k-old", scope="alpha", revision=5, issued_at=ISSUED,
          ttl=timedelta(hours=24), files=None) -> bytes:
    return package(CONTENT if files is None else files, scope=scope, revision_number=revision,
                   issued_at=issued_at, expires_at=issued_at + ttl, issuer=ISSUER, kid=kid,
                   private_key=key)


def jwks(*keys: tuple[str, object]) -> dict:
    return {"keys": [public_jwk(key.public_key(), kid) for kid, key in keys]}


JWKS = jwks(("k-old", OLD_KEY))


def verify(tarball: bytes, **options) -> VerifiedBundle:
    options.setdefault("jwks", JWKS)
    options.setdefault("tenant", "alpha")
    options.setdefault("now", NOW)
    return verify_bundle(tarball, **options)


def rejection(tarball: bytes, **options) -> BundleRejected:
    with pytest.raises(BundleRejected) as caught:
        verify(tarball, **options)
    return caught.value


def members(tarball: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(tarball))) as archive:
        return {m.name: archive.extractfile(m).read() for m in archive}


def tar(files: dict[str, bytes], *specials: tarfile.TarInfo) -> bytes:
    """A gzipped tar of ``files`` (as given, no checks) followed by ``specials`` (links, dirs…)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
        for info in specials:
            archive.addfile(info, io.BytesIO(b"x" * info.size) if info.size else None)
    return gzip.compress(raw.getvalue())


def a_manifest() -> dict:
    """The manifest build() writes by default."""
    return packaging.manifest(scope="alpha", revision_number=5, issued_at=ISSUED,
                              expires_at=ISSUED + timedelta(hours=24))


def signed(files: dict[str, bytes]) -> bytes:
    """A tarball of exactly ``files`` (.manifest included), signed as build() signs."""
    token = packaging.sign(files, scope="alpha", revision_number=5, issued_at=ISSUED,
                           expires_at=ISSUED + timedelta(hours=24), issuer=ISSUER, kid="k-old",
                           private_key=OLD_KEY)
    return tar({**files, ".signatures.json": signatures_of(token)})


def signatures_of(*tokens: str) -> bytes:
    return bundle_json({"signatures": list(tokens)})


def the_token(tarball: bytes) -> str:
    return json.loads(members(tarball)[".signatures.json"])["signatures"][0]


def segment(token: str, index: int) -> bytes:
    part = token.split(".")[index]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def gzip_bomb(size: int = 1 << 30) -> bytes:
    """A valid gzipped tar whose one member is ``size`` zero bytes, made without ever holding
    them: after a full flush deflate restarts, so every 1 MiB of zeros compresses to the same
    bytes and the compressed stream is one block repeated."""
    info = tarfile.TarInfo("mcp/data.json")
    info.size = size
    head = info.tobuf(tarfile.PAX_FORMAT)
    tail = bytes(2 * tarfile.BLOCKSIZE)
    zeros = bytes(1 << 20)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    first = deflate.compress(head) + deflate.flush(zlib.Z_FULL_FLUSH)
    step = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    last = deflate.compress(tail) + deflate.flush()
    crc = zlib.crc32(head)
    for _ in range(size // len(zeros)):
        crc = zlib.crc32(zeros, crc)
    crc = zlib.crc32(tail, crc)
    length = len(head) + size + len(tail)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    trailer = crc.to_bytes(4, "little") + (length & 0xFFFFFFFF).to_bytes(4, "little")
    return b"".join([header, first, *[step] * (size // len(zeros)), last, trailer])


# --- the good path and the format ----------------------------------------------------------------


def test_it_accepts_a_good_bundle():
    tarball = build()

    bundle = verify(tarball, last_revision=4)

    assert bundle.tenant == "alpha"
    assert bundle.revision_number == 5
    assert bundle.kid == "k-old"
    assert bundle.issuer == ISSUER
    assert bundle.issued_at == ISSUED
    assert bundle.expires_at == NOW + timedelta(hours=23)
    assert bundle.data == DATA
    assert bundle.manifest == {
        "revision": "5", "roots": ["mcp"],
        "metadata": {"tenant": "alpha", "revision_number": 5,
                     "issued_at": "2026-11-25T08:00:00Z", "expires_at": "2026-11-26T08:00:00Z",
                     "schema_version": 1},
    }
    assert set(bundle.files) == {".manifest", ".signatures.json", *CONTENT}
    assert bundle.files["mcp/policy.cedar"] == CONTENT["mcp/policy.cedar"]
    assert bundle.sha256 == hashlib.sha256(tarball).hexdigest()


def test_it_accepts_a_first_bundle_without_a_last_revision():
    assert verify(build(revision=1)).revision_number == 1


def test_the_same_inputs_give_byte_identical_tarballs():
    assert build() == build()
    assert build() != build(issued_at=NOW)  # and the inputs do matter


def test_the_tarball_is_the_documented_layout():
    tarball = build()
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(tarball))) as archive:
        infos = archive.getmembers()
    names = [info.name for info in infos]
    assert names == sorted([".manifest", ".signatures.json", *CONTENT])
    for info in infos:
        assert info.isreg()
        assert (info.mode, info.uid, info.gid, info.uname, info.gname) == (0o644, 0, 0, "", "")
        assert info.mtime == int(ISSUED.timestamp())
    assert tarball[4:8] == b"\0\0\0\0"  # gzip mtime

    files = members(tarball)
    manifest = json.loads(files[".manifest"])
    assert files[".manifest"] == bundle_json(manifest)
    assert files[".signatures.json"] == bundle_json(json.loads(files[".signatures.json"]))

    token = the_token(tarball)
    assert segment(token, 0) == b'{"alg":"ES256","kid":"k-old","typ":"JWT"}'
    payload = json.loads(segment(token, 1))
    assert payload == {
        "files": [{"name": name, "hash": hashlib.sha256(files[name]).hexdigest(),
                   "algorithm": "SHA-256"} for name in names if name != ".signatures.json"],
        "scope": "alpha", "iss": ISSUER, "iat": int(ISSUED.timestamp()),
        "revision_number": 5, "expires_at": int((NOW + timedelta(hours=23)).timestamp()),
    }


def test_the_public_jwk_is_an_es256_signing_key():
    key = public_jwk(OLD_KEY.public_key(), "k-old")

    assert {k: key[k] for k in ("kty", "crv", "kid", "alg", "use")} == {
        "kty": "EC", "crv": "P-256", "kid": "k-old", "alg": "ES256", "use": "sig"}
    assert jwt.PyJWK(key).key.public_numbers() == OLD_KEY.public_key().public_numbers()


def test_packaging_refuses_paths_outside_the_root():
    for name in ("data.json", "/mcp/data.json", "mcp/../x", "mcp//x"):
        with pytest.raises(ValueError):
            build(files={name: b"{}"})


# --- tampering ---------------------------------------------------------------------------------


def test_it_rejects_a_flipped_byte_in_any_file():
    original = members(build())
    signature_codes = {"bad_signature_file", "signature_count", "bad_signature", "bad_algorithm",
                       "unknown_key"}
    for name, content in original.items():
        assert content, name
        for position in range(len(content)):
            flipped = bytearray(content)
            flipped[position] ^= 0x01
            code = rejection(tar({**original, name: bytes(flipped)})).code
            if name == ".signatures.json":
                assert code in signature_codes, (name, position, code)
            else:
                assert code == "hash_mismatch", (name, position, code)


def test_it_rejects_a_flipped_byte_in_the_tarball_itself():
    tarball = build()
    content = gzip.decompress(tarball)
    for position in range(len(tarball)):
        flipped = bytearray(tarball)
        flipped[position] ^= 0x01
        try:
            same = gzip.decompress(bytes(flipped)) == content
        except (OSError, EOFError, zlib.error):
            same = False
        if same:
            # Deflate has slack (header flags, unused code lengths): these flips change nothing
            # the gateway would run, and the verifier judges what the gzip decompresses to.
            assert verify(bytes(flipped)).revision_number == 5
        else:
            with pytest.raises(BundleRejected):
                verify(bytes(flipped))


def test_it_rejects_an_added_file():
    files = members(build())

    for name in ("mcp/extra.json", "elsewhere.json", ".hidden"):
        error = rejection(tar({**files, name: b"{}"}))
        assert error.code == "file_list_mismatch"
        assert repr(name) in error.message


def test_it_rejects_a_removed_file():
    files = members(build())
    for name in files.keys() - {".signatures.json"}:
        error = rejection(tar({n: c for n, c in files.items() if n != name}))
        assert error.code == "file_list_mismatch", name
        assert f"signed but not in the bundle: [{name!r}]" in error.message


def test_it_rejects_a_duplicate_file_entry_in_the_tar():
    files = members(build())
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as archive:
        for name, content in [*files.items(), ("mcp/data.json", b"{}")]:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))

    assert rejection(gzip.compress(raw.getvalue())).code == "duplicate_file"


def test_it_rejects_a_file_listed_twice_in_the_signature():
    files = members(build())
    payload = json.loads(segment(the_token(build()), 1))
    payload["files"].append(payload["files"][0])
    forged = jwt.PyJWS().encode(bundle_json(payload), OLD_KEY, algorithm="ES256",
                                headers={"kid": "k-old"})

    error = rejection(tar({**files, ".signatures.json": signatures_of(forged)}))
    assert (error.code, error.message) == (
        "file_list_mismatch", f"the signature lists [{payload['files'][0]['name']!r}] twice")


# --- keys ----------------------------------------------------------------------------------------


def test_it_rejects_a_signature_by_an_unknown_key():
    error = rejection(build(key=STRANGER_KEY, kid="k-stranger"))
    assert (error.code, error.message) == (
        "unknown_key", "key 'k-stranger' is not in the tenant's JWKS (unknown or revoked)")


def test_it_rejects_a_signature_by_another_key_under_a_known_kid():
    assert rejection(build(key=STRANGER_KEY, kid="k-old")).code == "bad_signature"


def test_it_rejects_a_key_no_longer_in_the_jwks():
    tarball = build()
    assert verify(tarball).kid == "k-old"

    revoked = jwks(("k-new", NEW_KEY))
    assert rejection(tarball, jwks=revoked).code == "unknown_key"


def test_it_accepts_both_keys_across_a_rotation_then_only_the_new_one():
    by_old = build(key=OLD_KEY, kid="k-old", revision=5)
    by_new = build(key=NEW_KEY, kid="k-new", revision=6)
    during = jwks(("k-old", OLD_KEY), ("k-new", NEW_KEY))

    assert verify(by_old, jwks=during, last_revision=4).kid == "k-old"
    assert verify(by_new, jwks=during, last_revision=5).kid == "k-new"

    after = jwks(("k-new", NEW_KEY))
    assert verify(by_new, jwks=after, last_revision=5).kid == "k-new"
    assert rejection(by_old, jwks=after, last_revision=4).code == "unknown_key"


def test_it_rejects_a_jwks_entry_that_is_not_an_ec_p256_key():
    rsa_key = jwt.algorithms.RSAAlgorithm.to_jwk(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(),
        as_dict=True)
    assert rejection(build(), jwks={"keys": [{**rsa_key, "kid": "k-old"}]}).code == "bad_key"
    broken = {**JWKS["keys"][0], "x": JWKS["keys"][0]["y"]}  # not a point on the curve
    assert rejection(build(), jwks={"keys": [broken]}).code == "bad_key"
    assert rejection(build(), jwks={"keys": JWKS["keys"] * 2}).code == "bad_jwks"
    assert rejection(build(), jwks={}).code == "bad_jwks"


@pytest.mark.parametrize("algorithm", ["none", "HS256", "RS256", "ES384"])
def test_it_rejects_any_algorithm_but_es256(algorithm):
    tarball = build()
    files = members(tarball)
    payload = segment(the_token(tarball), 1)
    key = {
        "none": None,
        # The classic confusion: the verifier's public key used as an HMAC secret.
        "HS256": OLD_KEY.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint),
        "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ES384": packaging.ec.generate_private_key(packaging.ec.SECP384R1()),
    }[algorithm]
    forged = jwt.PyJWS().encode(payload, key, algorithm=algorithm, headers={"kid": "k-old"})

    error = rejection(tar({**files, ".signatures.json": signatures_of(forged)}))
    assert (error.code, error.message) == (
        "bad_algorithm", f"signature algorithm {algorithm!r} refused: only ES256 is accepted")


# --- signature count -----------------------------------------------------------------------------


def test_it_rejects_two_signatures():
    tarball = build()
    files = members(tarball)
    token = the_token(tarball)

    error = rejection(tar({**files, ".signatures.json": signatures_of(token, token)}))
    assert (error.code, error.message) == (
        "signature_count", "the bundle has 2 signatures; exactly one is valid")


def test_it_rejects_no_signature():
    files = members(build())

    empty = rejection(tar({**files, ".signatures.json": signatures_of()}))
    assert empty.code == "signature_count"
    unsigned = rejection(tar({n: c for n, c in files.items() if n != ".signatures.json"}))
    assert (unsigned.code, unsigned.message) == (
        "signature_count", "the bundle has no .signatures.json: it is unsigned")
    for document in (b"[]", b"{}", b'{"signatures":"x"}', b"not json", b'{"signatures":[1]}'):
        error = rejection(tar({**files, ".signatures.json": document}))
        assert error.code == "bad_signature_file", document


# --- scope, revision, expiry, manifest -----------------------------------------------------------


def test_it_rejects_a_bundle_of_another_tenant():
    error = rejection(build(scope="bravo"))
    assert (error.code, error.message) == (
        "wrong_scope", "the bundle is for tenant 'bravo', not 'alpha'")


def test_it_rejects_a_lower_revision_as_a_rollback():
    error = rejection(build(revision=5), last_revision=6)
    assert (error.code, error.message) == (
        "rollback", "revision 5 is older than the accepted revision 6")
    assert not isinstance(error, SameRevision)


def test_an_equal_revision_is_nothing_to_do_not_an_attack():
    with pytest.raises(SameRevision) as caught:
        verify(build(revision=5), last_revision=5)

    assert caught.value.code == "same_revision"
    assert caught.value.revision_number == 5
    assert isinstance(caught.value, BundleRejected)  # a gateway that only knows this keeps going


def test_an_equal_revision_of_a_forged_bundle_is_still_a_rejection():
    # Nothing inside a bundle is believed before its signature: no "nothing to do" for forgeries.
    error = rejection(build(key=STRANGER_KEY, kid="k-old", revision=5), last_revision=5)
    assert error.code == "bad_signature"


def test_it_rejects_an_expired_bundle():
    tarball = build(issued_at=NOW - timedelta(hours=25))
    error = rejection(tarball)
    assert (error.code, error.message) == ("expired", "the bundle expired at 2026-11-25T08:00:00Z")

    exactly = build(issued_at=NOW - timedelta(hours=24))
    assert rejection(exactly).code == "expired"
    assert verify(exactly, now=NOW - timedelta(seconds=1)).revision_number == 5


@pytest.mark.parametrize("change", [
    {"tenant": "bravo"},
    {"revision_number": 6},
    {"revision": "6"},
    {"expires_at": "2027-01-01T00:00:00Z"},
    {"issued_at": "2026-11-25T08:00:01Z"},
])
def test_it_rejects_a_signed_manifest_that_disagrees_with_the_signature(change):
    manifest = a_manifest()
    if "revision" in change:
        manifest.update(change)
    else:
        manifest["metadata"].update(change)

    error = rejection(signed({**CONTENT, ".manifest": bundle_json(manifest)}))
    assert error.code == "manifest_mismatch"


def test_it_rejects_a_signed_bundle_without_data_json():
    files = {"mcp/policy.cedar": CONTENT["mcp/policy.cedar"]}
    assert rejection(build(files=files)).code == "not_a_bundle"


def test_it_rejects_a_signed_data_json_that_is_not_an_object():
    error = rejection(build(files={**CONTENT, "mcp/data.json": b"[]"}))
    assert (error.code, error.message) == ("bad_data", "mcp/data.json is not a JSON object")


@pytest.mark.parametrize("version", [4, 0, True, "2"])
def test_it_rejects_a_schema_version_it_does_not_know(version):
    manifest = a_manifest()
    manifest["metadata"]["schema_version"] = version

    error = rejection(signed({**CONTENT, ".manifest": bundle_json(manifest)}))
    assert (error.code, error.message) == (
        "bad_manifest",
        f"schema_version {version!r} is not supported (this verifier reads 1, 2, 3)")


def test_it_reads_version_3_and_a_version_2_verifier_refuses_it(monkeypatch):
    """Version 3 bundles (a grant requiring the person an agent acts for to be in a group) verify
    here; a gateway that reads only up to version 2 refuses them instead of ignoring the group."""
    manifest = a_manifest()
    manifest["metadata"]["schema_version"] = 3
    bundle = signed({**CONTENT, ".manifest": bundle_json(manifest)})
    assert verify(bundle).revision_number == 5
    monkeypatch.setattr(gateway_verify, "SCHEMA_VERSIONS", (1, 2))
    error = rejection(bundle)
    assert (error.code, error.message) == (
        "bad_manifest", "schema_version 3 is not supported (this verifier reads 1, 2)")


def test_it_reads_version_2_and_a_version_1_verifier_refuses_it(monkeypatch):
    """Version 2 bundles (constraints with within or url) verify here; a gateway that reads only
    version 1 refuses them, and so keeps its last good bundle instead of skipping those checks."""
    manifest = a_manifest()
    manifest["metadata"]["schema_version"] = 2
    bundle = signed({**CONTENT, ".manifest": bundle_json(manifest)})
    assert verify(bundle).revision_number == 5
    monkeypatch.setattr(gateway_verify, "SCHEMA_VERSIONS", (1,))
    error = rejection(bundle)
    assert (error.code, error.message) == (
        "bad_manifest", "schema_version 2 is not supported (this verifier reads 1)")


# --- hostile archives ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return gzip_bomb()


def test_the_bomb_is_a_real_gzip_of_a_gibibyte(bomb):
    assert len(bomb) < 2 << 20
    assert int.from_bytes(bomb[-4:], "little") == ((1 << 30) + 1536) & 0xFFFFFFFF
    with gzip.GzipFile(fileobj=io.BytesIO(bomb)) as stream:
        head = stream.read(tarfile.BLOCKSIZE)
    assert tarfile.TarInfo.frombuf(head, "utf-8", "surrogateescape").size == 1 << 30


def test_it_refuses_a_gzip_bomb_without_inflating_it(bomb):
    tracemalloc.start()
    try:
        error = rejection(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert (error.code, error.message) == (
        "gzip_bomb", f"the bundle decompresses to more than {DEFAULT_MAX_DECOMPRESSED_BYTES} bytes")
    # It stopped at the limit: nowhere near the gibibyte the bomb inflates to.
    assert peak < 2 * DEFAULT_MAX_DECOMPRESSED_BYTES


def test_the_size_limit_is_the_callers():
    tarball = build()
    size = len(gzip.decompress(tarball))

    assert verify(tarball, max_decompressed_bytes=size).revision_number == 5
    assert rejection(tarball, max_decompressed_bytes=size - 1).code == "gzip_bomb"


def test_it_refuses_too_many_files():
    files = members(build())
    many = {**files, **{f"mcp/f{i}.json": b"{}" for i in range(10)}}
    assert rejection(tar(many), max_files=8).code == "too_many_files"


def test_it_rejects_truncated_gzip():
    tarball = build()
    for cut in (len(tarball) // 2, len(tarball) - 8, len(tarball) - 1, 5):
        error = rejection(tarball[:cut])
        assert error.code == "bad_gzip", cut


def test_it_rejects_garbage():
    noise = random.Random(0).randbytes(4096)

    assert rejection(noise).code == "bad_gzip"
    assert rejection(b"").code == "bad_gzip"
    assert rejection(b"\x1f\x8b" + noise).code == "bad_gzip"
    assert rejection(gzip.compress(noise)).code == "bad_tar"
    assert rejection(gzip.compress(b"")).code == "bad_tar"


def _special(name: str, kind: bytes, linkname: str = "", size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = size
    return info


@pytest.mark.parametrize("member", [
    _special("mcp/link.json", tarfile.SYMTYPE, "/etc/passwd"),
    _special("mcp/hard.json", tarfile.LNKTYPE, "mcp/data.json"),
    _special("mcp/dir", tarfile.DIRTYPE),
    _special("mcp/fifo", tarfile.FIFOTYPE),
    _special("../evil.json", tarfile.REGTYPE, size=2),
    _special("mcp/../../evil.json", tarfile.REGTYPE, size=2),
    _special("/etc/evil.json", tarfile.REGTYPE, size=2),
    _special("./mcp/evil.json", tarfile.REGTYPE, size=2),
], ids=lambda info: info.name)
def test_it_refuses_members_that_are_not_plain_regular_files(member):
    error = rejection(tar(members(build()), member))
    assert error.code == "unsafe_member"
    assert repr(member.name) in error.message


# --- command line --------------------------------------------------------------------------------


def run_cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.verify", *map(str, args)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )


@pytest.fixture
def cli_files(tmp_path):
    """Bundles of revisions 6 and 7 issued a minute ago (the CLI checks against the clock)."""
    issued = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    paths = {}
    for revision in (6, 7):
        paths[revision] = tmp_path / f"bundle-{revision}.tar.gz"
        paths[revision].write_bytes(build(revision=revision, issued_at=issued))
    (tmp_path / "jwks.json").write_text(json.dumps(JWKS))
    expires = (issued + timedelta(hours=24)).isoformat().replace("+00:00", "Z")
    return paths, tmp_path / "jwks.json", expires


def test_cli_advances_the_state_and_then_refuses_a_rollback(tmp_path, cli_files):
    bundles, jwks_file, expires = cli_files
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"tenant": "alpha", "revision": 5}))

    first = run_cli(bundles[7], "--jwks", jwks_file, "--state", state)
    assert (first.returncode, first.stderr) == (0, "")
    assert first.stdout == (
        f"accepted revision 7 of tenant alpha signed by k-old, expires {expires}\n")
    saved = json.loads(state.read_text())
    assert (saved["tenant"], saved["revision"]) == ("alpha", 7)
    assert saved["sha256"] == hashlib.sha256(bundles[7].read_bytes()).hexdigest()

    second = run_cli(bundles[6], "--jwks", jwks_file, "--state", state)
    assert second.returncode == 1
    assert second.stderr == (
        "rejected: rollback: revision 6 is older than the accepted revision 7\n")
    assert json.loads(state.read_text())["revision"] == 7
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".state")] == []

    again = run_cli(bundles[7], "--jwks", jwks_file, "--state", state)
    assert (again.returncode, again.stdout) == (
        0, "revision 7 of tenant alpha is already accepted: nothing to do\n")


def test_cli_starts_a_state_file_from_the_tenant_option(tmp_path, cli_files):
    bundles, jwks_file, _ = cli_files
    state = tmp_path / "new-state.json"

    result = run_cli(bundles[6], "--jwks", jwks_file, "--tenant", "alpha", "--state", state)

    assert result.returncode == 0, result.stderr
    assert json.loads(state.read_text())["revision"] == 6


def test_cli_reads_and_keeps_a_gateway_state_file(tmp_path, cli_files):
    """Pointed at the reference gateway's own state.json (gateway/client.py writes "revision"),
    it refuses an older revision and rewrites the file in that format, keeping the gateway's
    other fields; a file in the older format ("last_revision") is still read."""
    bundles, jwks_file, _ = cli_files
    state = tmp_path / "state.json"
    gateway_state = {"tenant": "alpha", "revision": 7, "etag": '"abc"', "sha256": "0" * 64,
                     "activated_at": "2026-12-01T00:00:00Z", "jwks_etag": None,
                     "last_error": None, "last_successful_download": None}
    state.write_text(json.dumps(gateway_state))
    older = run_cli(bundles[6], "--jwks", jwks_file, "--state", state)
    assert older.returncode == 1
    assert "rollback: revision 6 is older than the accepted revision 7" in older.stderr
    assert json.loads(state.read_text()) == gateway_state

    state.write_text(json.dumps({**gateway_state, "revision": 5}))
    assert run_cli(bundles[6], "--jwks", jwks_file, "--state", state).returncode == 0
    saved = json.loads(state.read_text())
    assert saved["revision"] == 6 and "last_revision" not in saved
    assert (saved["etag"], saved["activated_at"]) == ('"abc"', "2026-12-01T00:00:00Z")

    state.write_text(json.dumps({"tenant": "alpha", "last_revision": 7}))
    legacy = run_cli(bundles[6], "--jwks", jwks_file, "--state", state)
    assert legacy.returncode == 1 and "rollback" in legacy.stderr


def test_cli_without_state_only_checks(cli_files):
    bundles, jwks_file, _ = cli_files

    accepted = run_cli(bundles[6], "--jwks", jwks_file, "--tenant", "alpha")
    assert accepted.returncode == 0
    assert accepted.stdout.startswith("accepted revision 6 of tenant alpha signed by k-old")

    wrong = run_cli(bundles[6], "--jwks", jwks_file, "--tenant", "bravo")
    assert (wrong.returncode, wrong.stdout) == (1, "")
    assert wrong.stderr == "rejected: wrong_scope: the bundle is for tenant 'alpha', not 'bravo'\n"


def test_cli_usage_errors_exit_2(tmp_path, cli_files):
    bundles, jwks_file, _ = cli_files
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"tenant": "bravo", "revision": 1}))

    no_tenant = run_cli(bundles[6], "--jwks", jwks_file)
    assert no_tenant.returncode == 2
    assert "--tenant is required when there is no state file" in no_tenant.stderr
    assert run_cli(bundles[6], "--tenant", "alpha").returncode == 2  # no --jwks
    assert run_cli(tmp_path / "missing.tar.gz", "--jwks", jwks_file,
                   "--tenant", "alpha").returncode == 2
    mismatch = run_cli(bundles[6], "--jwks", jwks_file, "--tenant", "alpha", "--state", other)
    assert mismatch.returncode == 2
    assert "the state file is for tenant 'bravo', not 'alpha'" in mismatch.stderr


# --- purity ------------------------------------------------------------------------------------


PURE_FILES = ["gateway/verify.py", "bundles/packaging.py"]


@pytest.mark.parametrize("path", PURE_FILES)
def test_the_bundle_modules_import_no_django(path):
    """Only the standard library, PyJWT, cryptography (and orjson for the packager)."""
    tree = ast.parse((REPO / path).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    allowed = set(sys.stdlib_module_names) | {"__future__", "jwt", "cryptography", "orjson"}
    assert imported - allowed == set()


def test_loading_the_bundle_modules_loads_no_django():
    # packaging.py is loaded by path: importing the governance package would start the Django
    # project (its __init__ sets up Celery), which is not the module's doing.
    code = (
        "import importlib.util, sys\n"
        "import gateway.verify\n"
        "spec = importlib.util.spec_from_file_location('packaging', "
        "'bundles/packaging.py')\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('django', 'governance')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=60, check=True)
    assert result.stdout == "[]\n"
