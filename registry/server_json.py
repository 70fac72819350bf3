"""Read an MCP registry ``server.json`` document into the fields of an ``McpServer``.

The official schema (``static.modelcontextprotocol.io/schemas/2025-09-29/server.schema.json``)
describes a server by ``name`` (reverse DNS, one slash), ``description`` (≤ 100 characters),
``version`` (exact, no ranges), and how to reach it: ``remotes`` (streamable-http or sse URLs)
and/or ``packages`` (npm, pypi, oci … run over stdio). This module checks the parts Tollgate
uses and reports *every* problem with the path of the field (``packages[0].transport.type``), so
a person can fix the document in one go. No Django imports: it is a pure function.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

NAME_RE = re.compile(r"^[a-zA-Z0-9.-]+/[a-zA-Z0-9._-]+$")
# Version ranges the registry rejects: ^1.2, ~1.2, >=1.2, 1.x, 1.*, latest.
RANGE_RE = re.compile(r"^[\^~<>=]|[\s|]|(^|\.)[xX*](\.|$)")
REMOTE_TYPES = ("streamable-http", "sse")
PACKAGE_TRANSPORTS = ("stdio", "streamable-http", "sse")
MAX_DOCUMENT_BYTES = 256 * 1024

# How a package of each registry is started over stdio (the runtime a client would use).
RUNNERS = {
    "npm": lambda ident, version: ["npx", "-y", f"{ident}@{version}"],
    "pypi": lambda ident, version: ["uvx", f"{ident}=={version}"],
    "oci": lambda ident, version: ["docker", "run", "-i", "--rm", f"{ident}:{version}"],
}


@dataclass
class ServerJsonError(Exception):
    """The document is not a usable server.json; ``problems`` are (field path, message) pairs."""

    problems: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        return "; ".join(
            f"{path}: {message}" if path else message for path, message in self.problems
        )


@dataclass(frozen=True)
class ImportedServer:
    """What Tollgate takes from a server.json."""

    registry_name: str
    name: str
    description: str
    version: str
    transport: str
    url: str
    command: list[str]


def parse_document(raw: bytes | str) -> Any:
    """Bytes or text → JSON value, or ServerJsonError saying where it broke."""
    if isinstance(raw, bytes):
        if len(raw) > MAX_DOCUMENT_BYTES:
            raise ServerJsonError(
                [("", f"The document is larger than {MAX_DOCUMENT_BYTES // 1024} KiB.")]
            )
        try:
            raw = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ServerJsonError([("", "The document is not UTF-8 text.")]) from None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ServerJsonError(
            [("", f"Not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.")]
        ) from None


class _Checker:
    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def add(self, path: str, message: str) -> None:
        self.problems.append((path, message))

    def string(
        self,
        obj: dict,
        key: str,
        path: str,
        *,
        required: bool,
        max_length: int | None = None,
        min_length: int = 0,
    ) -> str | None:
        where = f"{path}.{key}" if path else key
        if key not in obj:
            if required:
                self.add(where, "This field is required.")
            return None
        value = obj[key]
        if not isinstance(value, str):
            self.add(where, f"Must be a string, not {_type_name(value)}.")
            return None
        if len(value) < min_length:
            self.add(
                where,
                "Must not be empty."
                if min_length == 1
                else f"Must be at least {min_length} characters.",
            )
            return None
        if max_length is not None and len(value) > max_length:
            self.add(where, f"Must be at most {max_length} characters (it has {len(value)}).")
            return None
        return value

    def array(self, obj: dict, key: str) -> list:
        if key not in obj:
            return []
        value = obj[key]
        if not isinstance(value, list):
            self.add(key, f"Must be an array, not {_type_name(value)}.")
            return []
        return value

    def url(self, value: str, where: str) -> bool:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            self.add(where, "Must be an absolute http(s) URL.")
            return False
        if "{" in value:
            self.add(
                where, "URL templates with {variables} cannot be registered; give the resolved URL."
            )
            return False
        return True


def _type_name(value: Any) -> str:
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
        int: "a number",
        float: "a number",
    }.get(type(value), "a value")


def read_server_json(doc: Any) -> ImportedServer:
    """Validate a parsed server.json and choose how Tollgate will reach the server.

    A remote (the first ``remotes`` entry) wins over packages, because Tollgate syncs tools by
    connecting to the server; otherwise the first package with a stdio transport and a known
    registry (npm, pypi, oci) becomes a stdio command.
    """
    check = _Checker()
    if not isinstance(doc, dict):
        raise ServerJsonError([("", f"The document must be a JSON object, not {_type_name(doc)}.")])
    name = check.string(doc, "name", "", required=True, min_length=3, max_length=200)
    if name is not None and not NAME_RE.match(name):
        check.add(
            "name", "Use reverse-DNS form with exactly one slash, e.g. io.github.acme/payroll."
        )
        name = None
    description = check.string(doc, "description", "", required=True, min_length=1, max_length=100)
    version = check.string(doc, "version", "", required=True, min_length=1, max_length=255)
    if version is not None and (version == "latest" or RANGE_RE.search(version)):
        check.add("version", "Must be one exact version, not a range or 'latest'.")

    remotes = check.array(doc, "remotes")
    first_remote: tuple[str, str] | None = None
    for i, remote in enumerate(remotes):
        at = f"remotes[{i}]"
        if not isinstance(remote, dict):
            check.add(at, f"Must be an object, not {_type_name(remote)}.")
            continue
        kind = check.string(remote, "type", at, required=True)
        if kind is not None and kind not in REMOTE_TYPES:
            check.add(f"{at}.type", f"Must be one of {', '.join(REMOTE_TYPES)} (got {kind!r}).")
            kind = None
        url = check.string(remote, "url", at, required=True, min_length=1, max_length=500)
        if url is not None and not check.url(url, f"{at}.url"):
            url = None
        if kind and url and first_remote is None:
            first_remote = (kind, url)

    packages = check.array(doc, "packages")
    first_package: tuple[str, str, list[str]] | None = None
    for i, package in enumerate(packages):
        at = f"packages[{i}]"
        if not isinstance(package, dict):
            check.add(at, f"Must be an object, not {_type_name(package)}.")
            continue
        registry = check.string(package, "registryType", at, required=True, min_length=1)
        ident = check.string(package, "identifier", at, required=True, min_length=1, max_length=300)
        pversion = check.string(package, "version", at, required=True, min_length=1, max_length=255)
        if pversion is not None and (pversion == "latest" or RANGE_RE.search(pversion)):
            check.add(f"{at}.version", "Must be one exact version, not a range or 'latest'.")
            pversion = None
        transport = package.get("transport")
        kind = None
        if "transport" not in package:
            check.add(f"{at}.transport", "This field is required.")
        elif not isinstance(transport, dict):
            check.add(f"{at}.transport", f"Must be an object, not {_type_name(transport)}.")
        else:
            kind = check.string(transport, "type", f"{at}.transport", required=True)
            if kind is not None and kind not in PACKAGE_TRANSPORTS:
                check.add(
                    f"{at}.transport.type",
                    f"Must be one of {', '.join(PACKAGE_TRANSPORTS)} (got {kind!r}).",
                )
                kind = None
            if kind in REMOTE_TYPES:
                url = check.string(transport, "url", f"{at}.transport", required=True, min_length=1)
                if url is not None:
                    check.url(url, f"{at}.transport.url")
        for key in ("packageArguments", "runtimeArguments", "environmentVariables"):
            if key in package and not isinstance(package[key], list):
                check.add(f"{at}.{key}", f"Must be an array, not {_type_name(package[key])}.")
        if first_package is None and kind == "stdio" and registry in RUNNERS and ident and pversion:
            first_package = ("stdio", "", RUNNERS[registry](ident, pversion))

    if not check.problems and first_remote is None and first_package is None:
        check.add(
            "remotes",
            "Give a remote (streamable-http or sse URL) or a stdio package of "
            f"a known registry ({', '.join(RUNNERS)}) so Tollgate can reach it.",
        )
    if check.problems:
        raise ServerJsonError(check.problems)
    assert name is not None and description is not None and version is not None  # noqa: S101 - narrowing for the type checker: check.problems covers it
    if first_remote is not None:
        transport, url, command = first_remote[0], first_remote[1], []
    else:
        transport, url, command = first_package  # type: ignore[misc]
    return ImportedServer(
        registry_name=name,
        name=name,
        description=description,
        version=version,
        transport=transport,
        url=url,
        command=command,
    )
