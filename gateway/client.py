"""The reference gateway's bundle client: pull, verify, persist, activate, report (DESIGN.md §5).

``BundleClient`` keeps one tenant's policy bundle current:

* ``poll_once()`` asks ``GET bundles/<tenant>`` with the last ETag (``If-None-Match``) and
  ``Prefer: wait=N`` (the control plane holds the request until a newer bundle exists);
* a new bundle is verified with the reference verifier (``gateway.verify.verify_bundle``)
  against the tenant's JWKS (``GET keys/<tenant>``, cached under its ETag and fetched again
  once when the bundle names a key the cached copy lacks) and against the last accepted
  revision: a lower one is a rollback and is refused; the same one is nothing to do if it is
  the same bundle (SHA-256), else a ``revision_conflict`` (reported; a restored control plane
  then publishes above it);
* an accepted bundle is written to ``state_dir`` (``bundle.tar.gz``, ``jwks.json`` and
  ``state.json``: each written to a temporary sibling, fsynced and renamed over the old file)
  before it replaces the active bundle in memory;
* on any failure the last good bundle stays active and the error is kept for the status report.

``load()`` (at start) reads the bundle back from disk and verifies it again with the stored
JWKS, so a gateway restarted while the control plane is down still enforces the last good
policy. ``current()`` is None when there is no bundle or it has expired: the caller must then
deny every call (fail closed).

``status_report()`` is an OPA status report (``labels``, ``bundles{<tenant>: {name,
active_revision, active_sha256, last_successful_download, last_successful_activation,
last_request, code, message, errors}}``); ``report_status()`` posts it to ``POST status``.
``run(stop_event)`` is the loop a gateway runs: long poll, report after every activation or
failure and every ``status_interval`` seconds, back off exponentially with jitter on errors.

Pure Python (httpx2 + the verifier), no Django: this file is written for gateway vendors.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2

from gateway.verify import (
    DEFAULT_MAX_DECOMPRESSED_BYTES,
    DEFAULT_MAX_FILES,
    BundleRejected,
    SameRevision,
    VerifiedBundle,
    parse_time,
    verify_bundle,
)

log = logging.getLogger(__name__)

BUNDLE_FILE = "bundle.tar.gz"
JWKS_FILE = "jwks.json"
STATE_FILE = "state.json"
API = "/api/v1/gateway"
VERSION = "tollgate-reference-gateway/1"

# What poll_once() returns.
ACTIVATED = "activated"
NOT_MODIFIED = "not_modified"
SAME_REVISION = "same_revision"
REJECTED = "rejected"
FAILED = "failed"  # the control plane could not be asked (network, 5xx, 401…): retry later


@dataclass(frozen=True)
class BundleError:
    """Why the last attempt did not activate a bundle (``code`` is stable)."""

    code: str
    message: str
    at: datetime

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "at": rfc3339(self.at)}


class Backoff:
    """Exponential backoff with full jitter: ``base``·2ⁿ capped at ``cap``, times [0.5, 1)."""

    def __init__(self, base: float = 1.0, cap: float = 60.0) -> None:
        self.base, self.cap, self.failures = base, cap, 0

    def next(self, at_least: float = 0.0) -> float:
        ceiling = min(self.cap, self.base * (2 ** self.failures))
        self.failures += 1
        return max(at_least, ceiling * (0.5 + random.random() / 2))  # noqa: S311 - jitter only

    def reset(self) -> None:
        self.failures = 0


class BundleClient:
    """One tenant's bundle: pulled from ``control_plane`` with a gateway ``token``, kept in
    ``state_dir``. See the module docstring."""

    def __init__(
        self,
        control_plane: str,
        tenant: str,
        token: str,
        state_dir: Path,
        *,
        long_poll_seconds: int = 60,
        max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES,
        max_files: int = DEFAULT_MAX_FILES,
        labels: Mapping[str, str] | None = None,
        status_interval: float = 60.0,
        request_timeout: float = 10.0,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        min_poll_interval: float = 1.0,
        decision_logs: Any = None,
        status_listener: Callable[[Mapping[str, str]], None] | None = None,
    ) -> None:
        self.control_plane = control_plane.rstrip("/")
        self.tenant = tenant
        self.token = token
        self.state_dir = Path(state_dir)
        self.long_poll_seconds = max(0, int(long_poll_seconds))
        self.max_decompressed_bytes = max_decompressed_bytes
        self.max_files = max_files
        self.labels = dict(labels or {})
        self.status_interval = status_interval
        self.request_timeout = request_timeout
        self.backoff = Backoff(backoff_base, backoff_max)
        self.min_poll_interval = min_poll_interval
        # Anything with ``stats() -> dict`` (gateway.logs.DecisionLogUploader): its counters
        # (queued, dropped, rejected events) go into the status report.
        self.decision_logs = decision_logs
        # Given the headers of every accepted status report's answer (the control plane asks
        # for a discovery report there: gateway.discovery.DiscoveryReporter.status_answer).
        self.status_listener = status_listener

        self._active: VerifiedBundle | None = None
        self._jwks: dict[str, Any] | None = None
        self._jwks_etag: str | None = None
        self._etag: str | None = None  # the ETag of the active bundle
        self._skip_etag: str | None = None  # a rejected bundle's ETag: do not fetch it again
        self._last_revision: int | None = None  # highest revision ever accepted (persisted)
        self.last_error: BundleError | None = None
        self._report_due = False  # a status report should go out after this poll
        self.activated_at: datetime | None = None
        self.last_request: datetime | None = None
        self.last_successful_request: datetime | None = None
        self.last_successful_download: datetime | None = None
        self._http = LoopHttpClient()

    # --- the active bundle ---------------------------------------------------------------------

    def current(self, now: datetime | None = None) -> VerifiedBundle | None:
        """The active bundle, or None (no bundle, or it has expired): then deny everything."""
        bundle, now = self._active, now or datetime.now(UTC)
        return None if bundle is None or now >= bundle.expires_at else bundle

    @property
    def revision(self) -> int | None:
        """The active bundle's revision (even if expired), for logs and status."""
        return self._active.revision_number if self._active is not None else None

    # --- start-up: the last good bundle from disk ----------------------------------------------

    def load(self, now: datetime | None = None) -> VerifiedBundle | None:
        """Re-verify the bundle kept in ``state_dir`` with the stored JWKS and activate it.

        Returns it, or None (nothing stored, tampered, rolled back or expired: the error is
        recorded and ``current()`` stays None). The highest accepted revision is kept even
        when the stored bundle is refused, so a rollback is still refused after a restart."""
        state = self._read_state()
        self._last_revision = _int_or_none(state.get("revision"))
        self._jwks_etag = state.get("jwks_etag") if isinstance(state.get("jwks_etag"), str) \
            else None
        self.last_successful_download = parse_time(state.get("last_successful_download"))
        bundle_path, jwks_path = self.state_dir / BUNDLE_FILE, self.state_dir / JWKS_FILE
        if not bundle_path.exists():
            return None
        try:
            jwks = json.loads(jwks_path.read_text(encoding="utf-8"))
            tarball = bundle_path.read_bytes()
        except (OSError, ValueError) as exc:
            self._fail("bad_state", f"cannot read the stored bundle or JWKS: {exc}", now)
            return None
        self._jwks = jwks if isinstance(jwks, dict) else None
        try:
            bundle = self._verify(tarball, jwks, None, now)
        except BundleRejected as rejected:
            self._fail(rejected.code, f"stored bundle refused: {rejected.message}", now)
            return None
        if self._last_revision is not None and bundle.revision_number < self._last_revision:
            self._fail("rollback", f"stored bundle has revision {bundle.revision_number}, older "
                       f"than the accepted revision {self._last_revision}", now)
            return None
        self._active = bundle
        self._last_revision = bundle.revision_number
        self._etag = f'"{bundle.sha256}"'
        self.activated_at = parse_time(state.get("activated_at")) or (now or datetime.now(UTC))
        return bundle

    # --- one poll ------------------------------------------------------------------------------

    async def poll_once(self, now: datetime | None = None) -> str:
        """One ``GET bundles/<tenant>``; returns ACTIVATED, NOT_MODIFIED, SAME_REVISION,
        REJECTED or FAILED. Never raises for what the network or the control plane does."""
        headers = {"Authorization": f"Bearer {self.token}"}
        # A refused bundle's ETag too: the long poll then waits for a newer one instead of
        # sending the refused one again at once.
        known = [etag for etag in (self._etag, self._skip_etag) if etag]
        if known:
            headers["If-None-Match"] = ", ".join(known)
        if self.long_poll_seconds:
            headers["Prefer"] = f"wait={self.long_poll_seconds}"
        url = f"{self.control_plane}{API}/bundles/{self.tenant}"
        self.last_request = datetime.now(UTC)
        try:
            status, response_etag, tarball, detail = await self._download(url, headers)
        except httpx2.HTTPError as exc:
            self._fail("unreachable", f"GET {url} failed: {exc!r}", now)
            return FAILED
        if status == 304:
            self.last_successful_request = datetime.now(UTC)
            if response_etag is not None and response_etag == self._etag:
                # The control plane's current bundle is the one we run: any earlier error is
                # over. (A 304 for a refused bundle's ETag keeps that error on display.)
                self._clear_error()
            return NOT_MODIFIED
        if status != 200:
            self._fail(f"http_{status}", f"GET {url} answered {status}: {detail}", now)
            return FAILED
        self.last_successful_request = self.last_successful_download = datetime.now(UTC)
        if tarball is None:
            self._skip_etag = response_etag
            self._fail("too_large", f"the bundle is over {self._max_download} bytes", now)
            return REJECTED
        etag = response_etag or f'"{hashlib.sha256(tarball).hexdigest()}"'
        try:
            jwks = await self._keys()
            try:
                bundle = self._verify(tarball, jwks, None, now)
            except BundleRejected as rejected:
                if rejected.code != "unknown_key":
                    raise
                # A key published after our copy of the JWKS: fetch it once more, fresh.
                jwks = await self._keys(fresh=True)
                bundle = self._verify(tarball, jwks, None, now)
            self._check_revision(bundle)
        except SameRevision:
            self._etag, self._skip_etag = etag, None
            return SAME_REVISION
        except BundleRejected as rejected:
            # Skip what we RECEIVED (the control plane's ETag is the tarball's SHA-256): had we
            # kept the ETag the server sent, a body damaged in transit would make the gateway
            # tell the server it holds the authentic bundle, and never fetch it again.
            self._skip_etag = f'"{hashlib.sha256(tarball).hexdigest()}"'
            self._fail(rejected.code, f"bundle refused: {rejected.message}", now)
            return REJECTED
        except _KeysUnavailable as exc:
            self._fail("keys_unavailable", str(exc), now)
            return FAILED
        try:
            self._persist(tarball, jwks, bundle, etag, now)
        except OSError as exc:
            self._fail("persist_failed", f"cannot write {self.state_dir}: {exc}", now)
            return FAILED
        self._active, self._etag, self._skip_etag = bundle, etag, None
        self._last_revision = bundle.revision_number
        self._jwks = jwks
        self.last_error = None
        log.info("bundle revision %s of %s activated", bundle.revision_number, self.tenant)
        return ACTIVATED

    def _check_revision(self, bundle: VerifiedBundle) -> None:
        """Rule 9 against the highest revision ever accepted (kept on disk). The same revision is
        "nothing to do" only while that very bundle is active (after a stored copy was refused
        at start-up, the authentic one repairs it); another bundle under it is a conflict."""
        last = self._last_revision
        if last is None or bundle.revision_number > last:
            return
        if bundle.revision_number < last:
            raise BundleRejected("rollback", f"revision {bundle.revision_number} is older than "
                                 f"the accepted revision {last}")
        active = self._active
        if active is not None and active.revision_number == last:
            if bundle.sha256 != active.sha256:  # one number, two bundles: never "nothing to do"
                raise BundleRejected("revision_conflict", f"revision {last} offered is another "
                                     f"bundle ({bundle.sha256[:12]}…) than the active one "
                                     f"({active.sha256[:12]}…); keeping the active one")
            raise SameRevision(last)

    @property
    def _max_download(self) -> int:
        # gzip adds a few bytes to what it cannot compress; the verifier bounds the rest.
        return self.max_decompressed_bytes + 1024 * 1024

    async def _download(self, url: str, headers: dict[str, str]
                        ) -> tuple[int, str | None, bytes | None, str]:
        """(status, ETag, body or None when over the size limit, error detail)."""
        timeout = httpx2.Timeout(self.request_timeout,
                                 read=self.long_poll_seconds + self.request_timeout)
        async with self._client().stream("GET", url, headers=headers, timeout=timeout) as resp:
            if resp.status_code != 200:
                await resp.aread()
                return resp.status_code, resp.headers.get("ETag"), b"", brief_error(resp)
            chunks, size = [], 0
            async for chunk in resp.aiter_bytes():
                size += len(chunk)
                if size > self._max_download:
                    return 200, resp.headers.get("ETag"), None, ""
                chunks.append(chunk)
            return 200, resp.headers.get("ETag"), b"".join(chunks), ""

    def _verify(self, tarball: bytes, jwks: Any, last_revision: int | None,
                now: datetime | None) -> VerifiedBundle:
        return verify_bundle(tarball, jwks=jwks if isinstance(jwks, dict) else {},
                             tenant=self.tenant, last_revision=last_revision, now=now,
                             max_decompressed_bytes=self.max_decompressed_bytes,
                             max_files=self.max_files)

    async def keys(self, fresh: bool = False) -> dict[str, Any]:
        """The tenant's JWKS, e.g. to verify escalation receipts: the copy kept with the active
        bundle, or (``fresh``, or none kept) the control plane's current one — falling back to
        the kept copy when the control plane cannot be reached."""
        if not fresh and self._jwks is not None:
            return self._jwks
        try:
            return await self._keys(fresh=True)
        except _KeysUnavailable as exc:
            log.warning("could not refresh the key set: %s", exc)
            return self._jwks or {}

    async def _keys(self, fresh: bool = False) -> dict[str, Any]:
        """The tenant's JWKS: the cached copy unless the control plane has a newer one."""
        headers = {"Authorization": f"Bearer {self.token}"}
        if self._jwks is not None and self._jwks_etag and not fresh:
            headers["If-None-Match"] = self._jwks_etag
        url = f"{self.control_plane}{API}/keys/{self.tenant}"
        try:
            response = await self._client().get(url, headers=headers,
                                                 timeout=self.request_timeout)
        except httpx2.HTTPError as exc:
            raise _KeysUnavailable(f"GET {url} failed: {exc!r}") from exc
        if response.status_code == 304 and self._jwks is not None:
            return self._jwks
        if response.status_code != 200:
            raise _KeysUnavailable(f"GET {url} answered {response.status_code}: "
                                   f"{brief_error(response)}")
        try:
            jwks = response.json()
        except ValueError as exc:
            raise _KeysUnavailable(f"GET {url} returned no JSON: {exc}") from exc
        if not isinstance(jwks, dict):
            raise _KeysUnavailable(f"GET {url} returned no JWKS object")
        self._jwks, self._jwks_etag = jwks, response.headers.get("ETag")
        return jwks

    # --- persistence ---------------------------------------------------------------------------

    def _persist(self, tarball: bytes, jwks: Mapping[str, Any], bundle: VerifiedBundle,
                 etag: str, now: datetime | None) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # Bundle and keys first, the state last: a crash in between leaves a newer verifiable
        # bundle next to an older state, which load() accepts (never the other way round).
        atomic_write(self.state_dir / BUNDLE_FILE, tarball)
        atomic_write(self.state_dir / JWKS_FILE, _json_bytes(jwks))
        self.activated_at = now or datetime.now(UTC)
        self.last_error = None
        self._write_state({"revision": bundle.revision_number, "etag": etag,
                           "sha256": bundle.sha256, "activated_at": rfc3339(self.activated_at),
                           "expires_at": rfc3339(bundle.expires_at)})

    def _read_state(self) -> dict[str, Any]:
        try:
            state = json.loads((self.state_dir / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(state, dict) or state.get("tenant", self.tenant) != self.tenant:
            return {}
        return state

    def _write_state(self, changes: Mapping[str, Any]) -> None:
        state = {**self._read_state(), **changes, "tenant": self.tenant,
                 "jwks_etag": self._jwks_etag,
                 "last_error": self.last_error.as_dict() if self.last_error else None,
                 "last_successful_download": rfc3339(self.last_successful_download)
                 if self.last_successful_download else None}
        self.state_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.state_dir / STATE_FILE, _json_bytes(state))

    def _fail(self, code: str, message: str, now: datetime | None) -> None:
        previous = self.last_error
        self.last_error = BundleError(code, message, now or datetime.now(UTC))
        if previous is not None and (previous.code, previous.message) == (code, message):
            return  # the same failure again (the control plane is still down): no new write
        log.warning("bundle %s: %s: %s", self.tenant, code, message)
        self._save_error()

    def _clear_error(self) -> None:
        if self.last_error is not None:
            self.last_error = None
            self._report_due = True  # the fleet page should stop showing the error now
            self._save_error()

    def _save_error(self) -> None:
        with contextlib.suppress(OSError):
            if (self.state_dir / STATE_FILE).exists():
                self._write_state({})

    # --- status --------------------------------------------------------------------------------

    def status_report(self, now: datetime | None = None) -> dict[str, Any]:
        """The OPA status report the control plane's fleet view reads."""
        now = now or datetime.now(UTC)
        entry: dict[str, Any] = {
            "name": self.tenant,
            "active_revision": str(self.revision) if self.revision is not None else "",
            # Not in OPA's report: lets the control plane tell another bundle under our number.
            "active_sha256": self._active.sha256 if self._active is not None else "",
        }
        for name, value in (("last_successful_download", self.last_successful_download),
                            ("last_successful_activation", self.activated_at),
                            ("last_request", self.last_request),
                            ("last_successful_request", self.last_successful_request)):
            if value is not None:
                entry[name] = rfc3339(value)
        errors: list[dict[str, str]] = []
        if self.last_error is not None:
            errors.append({"code": self.last_error.code, "message": self.last_error.message})
        if self._active is not None and self.current(now) is None:
            errors.append({"code": "expired", "message": "the active bundle expired at "
                           f"{rfc3339(self._active.expires_at)}: every call is denied"})
        elif self._active is None:
            errors.append({"code": "no_bundle", "message": "no bundle has been activated yet: "
                           "every call is denied"})
        if errors:
            entry["code"], entry["message"] = errors[0]["code"], errors[0]["message"]
            entry["errors"] = errors
        report: dict[str, Any] = {"labels": {"version": VERSION, **self.labels},
                                  "bundles": {self.tenant: entry}}
        if self.decision_logs is not None:
            report["decision_logs"] = self.decision_logs.stats()
        return report

    async def report_status(self) -> bool:
        """POST the status report; True when the control plane took it."""
        url = f"{self.control_plane}{API}/status"
        try:
            response = await self._client().post(
                url, json=self.status_report(), timeout=self.request_timeout,
                headers={"Authorization": f"Bearer {self.token}"})
        except httpx2.HTTPError as exc:
            log.warning("status report to %s failed: %r", url, exc)
            return False
        if response.status_code >= 300:
            log.warning("status report refused (%s): %s", response.status_code,
                        brief_error(response))
            return False
        if self.status_listener is not None:
            self.status_listener(response.headers)
        return True

    # --- the loop ------------------------------------------------------------------------------

    async def run(self, stop_event: asyncio.Event) -> None:
        """Poll until ``stop_event`` is set: long polls back to back, backoff with jitter after
        a failure or a refused bundle, a status report after every change and periodically."""
        next_report, outcome = 0.0, None
        try:
            while not stop_event.is_set():
                started = time.monotonic()
                poll = asyncio.ensure_future(self.poll_once())
                stopping = asyncio.ensure_future(stop_event.wait())
                await asyncio.wait({poll, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not poll.done():
                    poll.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await poll
                    break
                stopping.cancel()
                previous, outcome = outcome, poll.result()
                if (outcome in (ACTIVATED, REJECTED, FAILED) or self._report_due
                        or time.monotonic() >= next_report):
                    self._report_due = False
                    await self.report_status()
                    next_report = time.monotonic() + self.status_interval
                if outcome in (FAILED, REJECTED):
                    if outcome == REJECTED and previous == FAILED:  # answered again: the
                        self.backoff.reset()  # outage's backoff must not delay what comes next
                    delay = self.backoff.next()
                else:
                    self.backoff.reset()
                    # Never a tight loop, even against a server that ignores Prefer: wait.
                    delay = self.min_poll_interval - (time.monotonic() - started)
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop_event.wait(), delay)
        finally:
            await self.aclose()

    # --- HTTP ----------------------------------------------------------------------------------

    def _client(self) -> httpx2.AsyncClient:
        return self._http.get()

    async def aclose(self) -> None:
        await self._http.aclose()


class _KeysUnavailable(Exception):
    pass


# --- helpers (the decision-log uploader uses them too) ------------------------------------------


class LoopHttpClient:
    """One ``httpx2.AsyncClient`` per event loop: a client is bound to the loop that opened its
    connections, and a caller may run on a new loop (``asyncio.run`` per call, tests)."""

    def __init__(self) -> None:
        self._http: httpx2.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> httpx2.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._http is None or self._loop is not loop:
            self._http = httpx2.AsyncClient(headers={"User-Agent": VERSION})
            self._loop = loop
        return self._http

    async def aclose(self) -> None:
        if self._http is not None and self._loop is asyncio.get_running_loop():
            await self._http.aclose()
        self._http = self._loop = None


def rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode("utf-8")


def brief_error(response: httpx2.Response) -> str:
    """The control plane's error message of ``response`` (its ``message``, or its
    ``error.message``), or the start of the body: for logs and error states."""
    try:
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            body = body["error"]
        if isinstance(body, dict) and "message" in body:
            return str(body["message"])[:300]
    except ValueError:
        pass
    return response.text[:300]


def atomic_write(path: Path, content: bytes) -> None:
    """Replace ``path`` with ``content``: a temporary sibling, fsynced, renamed over it, and the
    directory fsynced. A crash leaves the old file or the new one, never half of either."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):  # make a rename durable where the OS allows it
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


__all__ = ["ACTIVATED", "FAILED", "NOT_MODIFIED", "REJECTED", "SAME_REVISION", "Backoff",
           "BundleClient", "BundleError", "atomic_write", "rfc3339"]
