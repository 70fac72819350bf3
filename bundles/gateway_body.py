"""Reading a gateway's request body, possibly gzip-encoded, without inflating a bomb
(decision-log uploads, discovery reports): ``body_encoding`` and ``read_body`` check the
headers and the size, ``gunzip`` stops at the limit; ``BodyRefused`` carries the JSON error."""

from __future__ import annotations

import zlib

from asgiref.sync import sync_to_async
from django.http import HttpRequest

GZIP = ("gzip", "x-gzip")

# Inflate in steps of this many output bytes at most, checking the limit between steps.
_STEP = 1024 * 1024


class BodyRefused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def body_encoding(request: HttpRequest) -> bool:
    """Whether the body is gzipped; ``BodyRefused`` 415 for an encoding the gateway API does
    not take."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity", *GZIP):
        raise BodyRefused(415, "unsupported_encoding", "Send the body as is or with "
                          "'Content-Encoding: gzip'.")
    return encoding in GZIP


async def read_body(request: HttpRequest, limit: int, *, invalid_code: str,
                    too_large: str) -> bytes:
    """The raw body, read off the event loop; ``BodyRefused`` 413 (``too_large``) past
    ``limit`` bytes, declared or sent, and 400 (``invalid_code``) for a bad Content-Length."""
    try:
        declared = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        raise BodyRefused(400, invalid_code, "Malformed Content-Length header.") from None
    if declared > limit:
        raise BodyRefused(413, "too_large", too_large)
    raw = await sync_to_async(request.read, thread_sensitive=False)(limit + 1)
    if len(raw) > limit:
        raise BodyRefused(413, "too_large", too_large)
    return raw


def gunzip(raw: bytes, limit: int) -> bytes:
    """The decompressed body (several gzip members are concatenated), or ``BodyRefused`` 413
    as soon as more than ``limit`` bytes come out — never inflating beyond ``limit`` + 1 MiB —
    or 400 for a damaged stream."""
    out = bytearray()
    data = raw
    try:
        while data:
            inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            while True:
                want = min(_STEP, limit + 1 - len(out))
                piece = inflater.decompress(data, want)
                out += piece
                if len(out) > limit:
                    raise BodyRefused(413, "too_large", f"The decompressed body is over "
                                      f"{limit} bytes (DECISION_LOG_MAX_DECOMPRESSED_BYTES).")
                data = inflater.unconsumed_tail
                # Out of input with room left: the member is done, or the body is cut short.
                if inflater.eof or (not data and len(piece) < want):
                    break
            if not inflater.eof:
                raise BodyRefused(400, "invalid", "The gzip body is truncated.")
            data = inflater.unused_data
    except zlib.error as exc:
        raise BodyRefused(400, "invalid", f"The body is not valid gzip: {exc}") from None
    return bytes(out)
