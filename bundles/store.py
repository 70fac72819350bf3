"""Each web process's local copy of bundles: a file per tarball under BUNDLE_LOCAL_DIR, filled
from the durable store (the database) on first use, plus a small in-memory cache of the bytes.

Files are named by SHA-256 and written atomically (temporary file + rename), and what is read
back is checked against its name, so a torn or tampered local file is replaced, never served.
They are group-readable (LOCAL_FILE_MODE) and never world-readable: with BUNDLE_ACCEL_REDIRECT
nginx's workers (another user) read them through the directory's group — a setgid directory owned
by tollgate:www-data, mode 2750, gives every copy that group (deploy/README.md).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

from django.conf import settings

from bundles.models import BundleBlob

log = logging.getLogger(__name__)

MEMORY_BUDGET = 64 * 1024 * 1024
# rw for the web process, r for the proxy's group (X-Accel-Redirect), nothing for others.
LOCAL_FILE_MODE = 0o640

_lock = threading.Lock()
_memory: OrderedDict[str, bytes] = OrderedDict()
_memory_size = 0


def local_path(sha256: str) -> Path:
    return Path(settings.BUNDLE_LOCAL_DIR) / f"{sha256}.tar.gz"


def _remember(sha256: str, content: bytes) -> None:
    global _memory_size
    with _lock:
        if sha256 in _memory:
            _memory.move_to_end(sha256)
            return
        _memory[sha256] = content
        _memory_size += len(content)
        while _memory_size > MEMORY_BUDGET and len(_memory) > 1:
            _, dropped = _memory.popitem(last=False)
            _memory_size -= len(dropped)


def from_memory(sha256: str) -> bytes | None:
    with _lock:
        return _memory.get(sha256)


def _read_local(sha256: str) -> bytes | None:
    try:
        content = local_path(sha256).read_bytes()
    except OSError:
        return None
    return content if hashlib.sha256(content).hexdigest() == sha256 else None


def write_local(sha256: str, content: bytes) -> Path:
    path = local_path(sha256)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        # mkstemp creates 0600, which the proxy's workers could not read (403 on every
        # offloaded download); fchmod is not subject to the umask.
        os.fchmod(fd, LOCAL_FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_local(sha256: str) -> bytes | None:
    """The tarball from memory or the local file (no database); None if neither has it."""
    content = from_memory(sha256) or _read_local(sha256)
    if content is not None:
        _remember(sha256, content)
    return content


def load(sha256: str) -> bytes | None:
    """The tarball, fetched from the database into the local copy if needed."""
    content = read_local(sha256)
    if content is not None:
        return content
    blob = BundleBlob.objects.filter(sha256=sha256).values_list("content", flat=True).first()
    if blob is None:
        return None
    content = bytes(blob)
    if hashlib.sha256(content).hexdigest() != sha256:  # pragma: no cover - store corruption
        raise RuntimeError(f"bundle store: blob {sha256} does not match its hash")
    try:
        write_local(sha256, content)
    except OSError as exc:  # an unwritable local dir costs speed, not correctness
        log.warning("bundle store: cannot write the local copy of %s under %s (%s); serving "
                    "it from the database", sha256, settings.BUNDLE_LOCAL_DIR, exc)
    _remember(sha256, content)
    return content
