"""The reference gateway's decision-log uploader (DESIGN.md §5 "Decision logs").

Every decision a gateway takes is logged: ``decision_event()`` builds the OPA decision-log
event for a ``gateway.decision.Decision`` and ``DecisionLogUploader.log()`` appends it to a
bounded queue on disk; ``flush()`` sends the queue to ``POST /api/v1/gateway/logs`` in gzipped
batches.

The queue is a directory of append-only segment files (``<sequence>.jsonl``, one event a line).
The newest segment takes new events; it is closed once it holds ``max_batch`` events or
``segment_bytes`` bytes, and a closed segment is one upload batch. Guarantees:

* an event leaves the queue only after the control plane answered 200 for its batch (the batch
  is then durably stored); a lost answer makes the batch go again, and the control plane keeps
  each ``decision_id`` once, so every event is stored exactly once;
* the queue never holds more than ``max_queue_bytes``: beyond, the OLDEST segments are dropped
  and their events counted in ``dropped`` (kept across restarts, reported in ``stats()``);
* 429, 5xx and network errors are retried with exponential backoff and jitter, honouring
  ``Retry-After``; a batch the control plane refuses as malformed (400, 413, 415) would be
  refused forever, so it is moved aside to ``rejected/`` and counted, never retried;
* a line cut short by a crash is skipped (and counted as dropped) instead of poisoning its
  batch.

Pure Python (httpx2), no Django: this file is written for gateway vendors.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2

from gateway.client import (
    API,
    Backoff,
    LoopHttpClient,
    atomic_write,
    fsync_directory,
    rfc3339,
)
from gateway.decision import Decision

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".jsonl"
REJECTED_DIR = "rejected"
COUNTERS_FILE = "counters.json"
_SEGMENT = re.compile(r"^(\d{12})\.jsonl$")
# Statuses that mean "this batch will never be accepted": set it aside.
_MALFORMED = {400, 413, 415}


def decision_event(
    *,
    decision: Decision,
    agent: str | None,
    principal: str | Mapping[str, str] | None,
    server: str,
    tool: str,
    arguments_sha256: str,
    bundle_revision: int | None,
    tenant: str,
    call_id: str | int | None = None,
    escalation_id: str | None = None,
    labels: Mapping[str, Any] | None = None,
    now: datetime | None = None,
    arguments: Mapping[str, Any] | None = None,
    target: str | None = None,
) -> dict[str, Any]:
    """The OPA decision-log event of one decision (fields: docs/gateway-contract.md).

    ``principal`` is a string or ``{"issuer", "subject"}``; ``arguments``, when given, must
    already be redacted (they are stored as sent); ``target``: what a resources, prompts or
    completion request names (``tool`` is then its method)."""
    now = now or datetime.now(UTC)
    event_input: dict[str, Any] = {"server": server, "tool": tool,
                                   "arguments_sha256": arguments_sha256}
    agent = agent or decision.agent
    if agent:
        event_input["agent"] = agent
    if principal:
        event_input["principal"] = dict(principal) if isinstance(principal, Mapping) \
            else principal
    if call_id is not None:
        event_input["call_id"] = call_id
    if decision.on_behalf_of is not None:
        event_input["on_behalf_of"] = {
            "subject": decision.on_behalf_of["subject"],
            "groups": list(decision.on_behalf_of.get("groups") or [])}
    if arguments is not None:
        event_input["arguments"] = dict(arguments)
    if target is not None:
        event_input["target"] = target
    result: dict[str, Any] = {"outcome": decision.outcome, "reason": decision.reason}
    if decision.grant is not None and str(decision.grant).isdigit():
        result["grant"] = int(decision.grant)
    if escalation_id is not None:
        result["escalation_id"] = str(escalation_id)
    event: dict[str, Any] = {
        "decision_id": str(uuid.uuid4()),
        "timestamp": rfc3339(now),
        "labels": dict(labels or {}),
        "input": event_input,
        "result": result,
    }
    if bundle_revision is not None:
        event["bundles"] = {tenant: {"revision": str(bundle_revision)}}
    return event


@dataclass
class FlushResult:
    """What one ``flush()`` did: events stored now, already stored, set aside; still queued."""

    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    remaining: int = 0
    error: str | None = None


class DecisionLogUploader:
    """A bounded on-disk queue of decision-log events and its uploader. See the module
    docstring."""

    def __init__(
        self,
        control_plane: str,
        token: str,
        queue_dir: Path,
        *,
        max_batch: int = 500,
        max_queue_bytes: int = 64 * 1024 * 1024,
        segment_bytes: int = 1024 * 1024,
        request_timeout: float = 30.0,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        flush_interval: float = 5.0,
    ) -> None:
        if max_batch < 1 or max_queue_bytes < 1:
            raise ValueError("max_batch and max_queue_bytes must be positive")
        self.control_plane = control_plane.rstrip("/")
        self.token = token
        self.queue_dir = Path(queue_dir)
        self.max_batch = max_batch
        self.max_queue_bytes = max_queue_bytes
        # A segment is dropped whole, so keep several of them under the bound.
        self.segment_bytes = max(1, min(segment_bytes, max_queue_bytes // 4))
        self.request_timeout = request_timeout
        self.backoff = Backoff(backoff_base, backoff_max)
        self.flush_interval = flush_interval
        self.queue_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._flushing = asyncio.Lock()
        counters = self._read_counters()
        self.dropped: int = counters.get("dropped", 0)
        self.rejected: int = counters.get("rejected", 0)
        self.last_error: str | None = None
        self._active: Path | None = None  # the open segment
        self._active_events = 0
        self._active_bytes = 0
        self._in_flight: Path | None = None  # the segment being uploaded: never dropped
        self._queued_bytes = self.queued_bytes()
        self._http = LoopHttpClient()

    # --- the queue -----------------------------------------------------------------------------

    def log(self, event: Mapping[str, Any]) -> None:
        """Append ``event`` to the queue (thread-safe, never blocks on the network)."""
        line = (json.dumps(event, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
                + "\n").encode("utf-8")
        with self._lock:
            if (self._active is None or self._active_events >= self.max_batch
                    or self._active_bytes + len(line) > self.segment_bytes):
                self._open_segment()
            with self._active.open("ab") as handle:
                handle.write(line)
                handle.flush()
            self._active_events += 1
            self._active_bytes += len(line)
            self._queued_bytes += len(line)
            if self._queued_bytes > self.max_queue_bytes:
                self._enforce_bound()

    def segments(self) -> list[Path]:
        """The queue's segments, oldest first."""
        found = [p for p in self.queue_dir.iterdir() if _SEGMENT.match(p.name)]
        return sorted(found, key=lambda p: p.name)

    def queued_bytes(self) -> int:
        return sum(_size(p) for p in self.segments())

    def queued_events(self) -> int:
        return sum(_count_lines(p) for p in self.segments())

    def stats(self) -> dict[str, Any]:
        """Counters for the status report."""
        return {"queued": self.queued_events(), "queued_bytes": self.queued_bytes(),
                "dropped": self.dropped, "rejected": self.rejected,
                "last_error": self.last_error}

    def _open_segment(self) -> None:
        existing = self.segments()
        sequence = int(_SEGMENT.match(existing[-1].name).group(1)) + 1 if existing else 1
        self._active = self.queue_dir / f"{sequence:012d}{SEGMENT_SUFFIX}"
        self._active.touch()
        fsync_directory(self.queue_dir)
        self._active_events = self._active_bytes = 0

    def _close_segment(self) -> None:
        """Stop appending to the open segment (it becomes an upload batch)."""
        with self._lock:
            if self._active is not None and self._active.exists():
                with self._active.open("ab") as handle:
                    os.fsync(handle.fileno())
            self._active = None
            self._active_events = self._active_bytes = 0

    def _enforce_bound(self) -> None:
        segments = [p for p in self.segments() if p != self._in_flight]
        total = self.queued_bytes()
        dropped = self.dropped
        while total > self.max_queue_bytes and segments:
            oldest = segments.pop(0)
            if oldest == self._active:
                # The open segment alone is over the bound: start over with the next event.
                self._active = None
            size, events = _size(oldest), _count_lines(oldest)
            with contextlib.suppress(FileNotFoundError):
                oldest.unlink()
            total -= size
            self.dropped += events
            log.warning("decision-log queue over %s bytes: dropped %s oldest events",
                        self.max_queue_bytes, events)
        self._queued_bytes = total
        if self.dropped != dropped:
            self._write_counters()

    def _read_counters(self) -> dict[str, int]:
        try:
            counters = json.loads((self.queue_dir / COUNTERS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(counters, dict):
            return {}
        return {k: v for k, v in counters.items() if isinstance(v, int)}

    def _write_counters(self) -> None:
        stored = self._read_counters()
        current = {"dropped": self.dropped, "rejected": self.rejected}
        if stored != current:
            atomic_write(self.queue_dir / COUNTERS_FILE,
                         json.dumps(current, sort_keys=True).encode())

    # --- upload --------------------------------------------------------------------------------

    async def flush(self, *, retries: int = 5) -> FlushResult:
        """Upload every queued event, oldest batch first. A retryable failure (network, 429,
        5xx) is retried ``retries`` times with backoff; after that the rest stays queued for
        the next flush and ``result.error`` says why."""
        async with self._flushing:
            result = FlushResult()
            self._close_segment()
            attempts = 0
            for segment in self.segments():
                if segment == self._active:  # opened by log() meanwhile
                    break
                while True:
                    self._in_flight = segment
                    try:
                        outcome = await self._send(segment, result)
                    finally:
                        self._in_flight = None
                    if outcome is None:
                        self.backoff.reset()
                        break
                    attempts += 1
                    if attempts > retries:
                        return self._finish(result, error=self.last_error)
                    await asyncio.sleep(self.backoff.next(at_least=outcome))
            return self._finish(result)

    def _finish(self, result: FlushResult, error: str | None = None) -> FlushResult:
        result.error = error
        result.remaining = self.queued_events()
        with self._lock:
            self._queued_bytes = self.queued_bytes()
        return result

    async def _send(self, segment: Path, result: FlushResult) -> float | None:
        """Upload one segment: None when it is done with (stored or set aside), else the
        seconds the server asked us to wait (0 when it did not say)."""
        events, damaged = _read_events(segment)
        if damaged:
            self.dropped += damaged
            self._write_counters()
        if not events:
            segment.unlink(missing_ok=True)
            return None
        body = gzip.compress(
            ("[" + ",".join(events) + "]").encode("utf-8"), compresslevel=6)
        url = f"{self.control_plane}{API}/logs"
        try:
            response = await self._client().post(
                url, content=body, timeout=self.request_timeout,
                headers={"Authorization": f"Bearer {self.token}", "Content-Encoding": "gzip",
                         "Content-Type": "application/json"})
        except httpx2.HTTPError as exc:
            self.last_error = f"POST {url} failed: {exc!r}"
            log.warning("decision logs: %s", self.last_error)
            return 0.0
        if response.status_code == 200:
            try:
                answer = response.json()
            except ValueError:
                answer = {}
            result.accepted += int(answer.get("accepted", 0)) if isinstance(answer, dict) else 0
            result.duplicates += int(answer.get("duplicates", 0)) \
                if isinstance(answer, dict) else 0
            segment.unlink(missing_ok=True)
            fsync_directory(self.queue_dir)
            self.last_error = None
            return None
        message = brief_error(response)
        self.last_error = f"POST {url} answered {response.status_code}: {message}"
        if response.status_code in _MALFORMED:
            self._set_aside(segment, response.status_code, message)
            result.rejected += len(events)
            return None
        log.warning("decision logs: %s", self.last_error)
        return _retry_after(response)

    def _set_aside(self, segment: Path, status: int, message: str) -> None:
        aside = self.queue_dir / REJECTED_DIR
        aside.mkdir(exist_ok=True)
        target = aside / f"{segment.stem}-{uuid.uuid4().hex[:12]}{SEGMENT_SUFFIX}"
        os.replace(segment, target)
        atomic_write(target.with_suffix(".reason.json"),
                     json.dumps({"status": status, "message": message,
                                 "at": rfc3339(datetime.now(UTC))}).encode())
        fsync_directory(self.queue_dir)
        self.rejected += _count_lines(target)
        self._write_counters()
        log.error("decision logs: batch %s refused (%s: %s), moved to %s", segment.name,
                  status, message, target)

    async def run(self, stop_event: asyncio.Event) -> None:
        """Flush every ``flush_interval`` seconds until ``stop_event`` is set, then once more."""
        try:
            while not stop_event.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop_event.wait(), self.flush_interval)
                await self.flush(retries=0 if stop_event.is_set() else 3)
        finally:
            await self.aclose()

    def _client(self) -> httpx2.AsyncClient:
        return self._http.get()

    async def aclose(self) -> None:
        await self._http.aclose()


def _read_events(segment: Path) -> tuple[list[str], int]:
    """The segment's events as JSON texts, and how many lines were damaged (skipped)."""
    events, damaged = [], 0
    try:
        raw = segment.read_bytes()
    except FileNotFoundError:
        return [], 0
    for line in raw.split(b"\n"):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
            if not isinstance(json.loads(text), dict):
                raise ValueError("not an object")
        except ValueError:
            damaged += 1
            continue
        events.append(text)
    return events, damaged


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _count_lines(path: Path) -> int:
    try:
        return sum(1 for line in path.read_bytes().split(b"\n") if line.strip())
    except FileNotFoundError:
        return 0


def _retry_after(response: httpx2.Response) -> float:
    value = response.headers.get("Retry-After", "")
    try:
        return min(max(float(value), 0.0), 300.0)
    except ValueError:
        return 0.0


def brief_error(response: httpx2.Response) -> str:
    try:
        body = response.json()
        if isinstance(body, dict) and "message" in body:
            return str(body["message"])[:300]
    except ValueError:
        pass
    return response.text[:300]


__all__ = ["DecisionLogUploader", "FlushResult", "decision_event"]
