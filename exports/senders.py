"""How one batch reaches an exporter's receiver: a JSON lines file, syslog over UDP or TCP, or a
Splunk HEC endpoint.

Each sender returns only once the receiver has taken the whole batch as far as its protocol can
tell, and raises :class:`SendError` otherwise (a message for the exporter page, never the HEC
token); the caller advances the cursor only after a return. What "taken" means per kind:

- ``jsonl``: the lines are written and ``fsync``-ed;
- ``syslog_udp``: every datagram was handed to the network (UDP has no acknowledgement; an
  ICMP "port unreachable" does surface as a failure);
- ``syslog_tcp``: every frame was written, our side closed, and the receiver closed its side
  without a reset (RFC 6587 has no application-level acknowledgement either);
- ``splunk_hec``: HTTP 200 with HEC's ``{"code": 0, …}`` answer.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import httpx2
from django.conf import settings

from exports import formats
from governance import outbound
from governance.secrets import KeyUnavailable, decrypt_text

if TYPE_CHECKING:
    from decision_logs.models import DecisionLog
    from exports.models import Exporter
    from governance.audit.models import AuditEvent
    from governance.tenancy.models import Tenant

USER_AGENT = "Tollgate-Exports/1"
# A file name, not a path: no separators, no "..", no leading dot.
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class SendError(Exception):
    """This attempt failed; the message says why (shown to admins, retried with backoff)."""


def export_dir(tenant: Tenant) -> Path:
    """The only directory a tenant's JSON lines files may be written to."""
    return Path(settings.EXPORT_FILE_DIR) / tenant.slug


def file_path(exporter: Exporter) -> Path:
    """The exporter's file, re-checked here too: a file name inside the tenant's directory."""
    name = exporter.path
    if not FILE_NAME.fullmatch(name) or ".." in name:
        raise SendError(f"{name!r} is not a plain file name; edit the exporter.")
    return export_dir(exporter.tenant) / name


# --- JSON lines file ---------------------------------------------------------------------------


def _open_for_append(path: Path) -> int:
    try:
        path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        # O_NOFOLLOW: a symlink planted at the name cannot redirect the writes elsewhere.
        return os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                       0o640)
    except OSError as exc:
        raise SendError(f"Cannot open {path.parent.name}/{path.name} for appending: "
                        f"{exc.strerror or exc}") from None


def append_lines(exporter: Exporter, payload: bytes) -> None:
    """Append whole lines and fsync; a line torn by an earlier crash is closed first, so a
    re-sent batch starts on a line of its own."""
    path = file_path(exporter)
    fd = _open_for_append(path)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            payload = b"\n" + payload
        view = memoryview(payload)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except OSError as exc:
        raise SendError(f"Writing {path.parent.name}/{path.name} failed: "
                        f"{exc.strerror or exc}") from None
    finally:
        os.close(fd)


# --- Syslog ------------------------------------------------------------------------------------


def _socket_error(exporter: Exporter, exc: OSError) -> SendError:
    if isinstance(exc, TimeoutError):
        return SendError(f"No answer from {exporter.target} within the timeout.")
    if isinstance(exc, socket.gaierror):
        return SendError(f"Cannot resolve {exporter.host!r}: {exc.strerror or exc}")
    if isinstance(exc, ConnectionRefusedError):
        return SendError(f"{exporter.target} refused the connection (nothing listening?).")
    return SendError(f"{exporter.target}: {type(exc).__name__}: {exc.strerror or exc}")


def _addresses(exporter: Exporter, socktype: int) -> list[tuple]:
    """The receiver's addresses, resolved once and checked by the outbound guard; the socket
    connects to exactly these (a DNS answer that changed since the host was saved is caught)."""
    try:
        return outbound.safe_addresses(exporter.host, exporter.port, socktype=socktype,
                                       purpose="syslog exporter")
    except outbound.OutboundBlocked as exc:
        raise SendError(f"Not sent: {exc}") from None


def send_udp(exporter: Exporter, messages: Sequence[bytes], timeout: float) -> None:
    """One datagram per message, on a connected socket (so ICMP errors are reported)."""
    try:
        family, kind, proto, _, address = _addresses(exporter, socket.SOCK_DGRAM)[0]
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(timeout)
            sock.connect(address)
            for message in messages:
                sock.send(message)
    except OSError as exc:
        raise _socket_error(exporter, exc) from None


def _connect_tcp(addresses: list[tuple], timeout: float) -> socket.socket:
    """``socket.create_connection`` over already resolved (and checked) addresses."""
    error: OSError | None = None
    for family, kind, proto, _, address in addresses:
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error or OSError("no address to connect to")


def send_tcp(exporter: Exporter, frames: bytes, timeout: float) -> None:
    """Octet-counted frames over one connection, then an orderly close both ways."""
    try:
        with _connect_tcp(_addresses(exporter, socket.SOCK_STREAM), timeout) as sock:
            sock.sendall(frames)
            sock.shutdown(socket.SHUT_WR)
            try:
                while sock.recv(4096):
                    pass  # syslog receivers send nothing back; wait for their close
            except TimeoutError:
                pass  # it keeps its side open: everything was written without a reset
    except OSError as exc:
        raise _socket_error(exporter, exc) from None


# --- Splunk HEC --------------------------------------------------------------------------------


def _token(exporter: Exporter) -> str:
    try:
        return decrypt_text(exporter.token_encrypted)
    except KeyUnavailable as exc:
        raise SendError(str(exc)) from None


def send_hec(exporter: Exporter, body: bytes, timeout: float) -> None:
    """POST the batch; only HTTP 200 with ``{"code": 0}`` counts as accepted."""
    try:
        # Checked again now, as the URL was saved (both parsers' reading of its host); then the
        # connection goes only to addresses checked as it is made (no second lookup), and
        # redirects are not followed (the token must not travel anywhere else either).
        outbound.check_url(exporter.url, purpose="Splunk HEC exporter")
        with httpx2.Client(transport=outbound.pinned_transport("Splunk HEC exporter"),
                           timeout=timeout) as client:
            response = client.post(
                exporter.url, content=body, follow_redirects=False,
                headers={"Authorization": f"Splunk {_token(exporter)}",
                         "Content-Type": "application/json", "User-Agent": USER_AGENT},
            )
    except outbound.OutboundBlocked as exc:
        raise SendError(f"Not sent: {exc}") from None
    except httpx2.TimeoutException:
        raise SendError(f"No answer from {exporter.url} within {timeout:g} s.") from None
    except httpx2.HTTPError as exc:  # refused, DNS, TLS …
        raise SendError(f"{type(exc).__name__}: {exc}") from None
    text = response.text[:300].strip()
    if response.status_code != 200:
        raise SendError(f"HTTP {response.status_code}: {text}")
    try:
        answer = json.loads(response.content)
    except ValueError:
        raise SendError(f"HTTP 200 but not a HEC answer (no JSON): {text[:100]}") from None
    if not isinstance(answer, dict) or answer.get("code") != 0:
        raise SendError(f"HEC did not accept the batch: {text}")


# --- Batches and the connection test -----------------------------------------------------------


def send_rows(exporter: Exporter, rows: Sequence[AuditEvent | DecisionLog]) -> None:
    """Send one batch of the exporter's stream (rows in id order); SendError if not taken."""
    slug, stream, timeout = exporter.tenant.slug, exporter.stream, settings.EXPORT_TIMEOUT_SECONDS
    kind = exporter.kind
    if kind == "jsonl":
        append_lines(exporter, b"".join(
            formats.json_line(formats.document(row, stream, slug)) for row in rows))
    elif kind == "syslog_udp":
        limit = settings.EXPORT_SYSLOG_UDP_MAX_BYTES
        send_udp(exporter, [formats.row_syslog(row, stream, slug, limit) for row in rows],
                 timeout)
    elif kind == "syslog_tcp":
        send_tcp(exporter, b"".join(formats.octet_frame(formats.row_syslog(row, stream, slug))
                                    for row in rows), timeout)
    elif kind == "splunk_hec":
        send_hec(exporter, formats.hec_body([
            formats.hec_event(formats.document(row, stream, slug), stream=stream,
                              when=formats.event_time(row), index=exporter.index)
            for row in rows]), timeout)
    else:
        raise SendError(f"Unknown exporter kind {kind!r}.")


def send_probe(exporter: Exporter, timeout: float) -> str:
    """One test message (nothing for a file: it is only opened for appending); what happened,
    for the page, or SendError."""
    slug, stream = exporter.tenant.slug, exporter.stream
    if exporter.kind == "jsonl":
        path = file_path(exporter)
        fd = _open_for_append(path)
        os.close(fd)
        return f"{slug}/{path.name} can be appended to (nothing was written)."
    if exporter.kind == "syslog_udp":
        send_udp(exporter, [formats.probe_syslog(
            stream, slug, exporter.name, settings.EXPORT_SYSLOG_UDP_MAX_BYTES)], timeout)
        return (f"Sent a test datagram to {exporter.target} (UDP does not confirm receipt: "
                "look for it at the receiver).")
    if exporter.kind == "syslog_tcp":
        send_tcp(exporter, formats.octet_frame(formats.probe_syslog(stream, slug, exporter.name)),
                 timeout)
        return f"{exporter.target} took a test message."
    doc = {"type": "test", "tenant": slug, "exporter": exporter.name,
           "message": "Test message from Tollgate; nothing to act on."}
    send_hec(exporter, formats.hec_body([formats.hec_event(
        doc, stream=stream, when=datetime.now(UTC), index=exporter.index)]), timeout)
    return f"{exporter.url} accepted a test event."
