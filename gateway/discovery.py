"""The reference gateway's discovery reports: its upstream's tools, told to the control plane.

The control plane never runs a command a tenant supplied, so it cannot list the tools of a
stdio MCP server itself: the gateway that runs the server does, over the MCP session it already
has for itself (``gateway.proxy.Upstream``, beside the agents' sessions), and reports them with
``POST /api/v1/gateway/discovery`` (gateway token, gzipped JSON)::

    {"server": "<--server-name>", "tools": [<every tool of every tools/list page, as sent>],
     "server_info": {"name": "…", "version": "…"}}

The control plane records it as a tool sync of that server (pins, drift quarantine, audit).

:class:`DiscoveryReporter` reports

* when the upstream session is (re-)initialised (``Upstream.on_ready``),
* on every ``notifications/tools/list_changed`` from the upstream (``Upstream.on_tools_changed``),
* every ``interval`` seconds (0: never periodically),
* promptly when the answer to a ``POST status`` carries ``X-Tollgate-Discovery-Requested``
  naming its server (someone pressed *Sync tools*; ``BundleClient(status_listener=…)``).

A report that cannot be made (the upstream cannot list its tools, or still has pages after
``gateway.proxy.MAX_TOOL_PAGES``: a partial list would report the rest as removed) or that the
control plane refuses or cannot be reached is logged at WARNING in one line (the status code and
the control plane's error message) and made again at the next occasion: one of the above, or a
retry after an exponential backoff (``retry_base`` seconds doubling up to ``retry_max``). Reports
run beside the proxy, one at a time, each starting at least ``min_gap`` seconds after the previous
one ended (occasions meanwhile
make one report: an upstream sending list_changed in a loop cannot flood the control plane and
push the gateway's bundle polls into its rate limit), and never hold up an agent's call.

Pure Python (httpx2), no Django: written for gateway vendors.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import time
from collections.abc import Awaitable, Mapping
from typing import Any, Protocol

import httpx2

from gateway.client import API, Backoff, LoopHttpClient, brief_error

log = logging.getLogger(__name__)

DISCOVERY_HEADER = "X-Tollgate-Discovery-Requested"
DEFAULT_INTERVAL = 300.0


class ToolSource(Protocol):
    """What the reporter needs of the upstream (``gateway.proxy.Upstream``)."""

    server_info: dict[str, str] | None

    def list_tools(self) -> Awaitable[list[Any]]: ...


def requested_servers(headers: Mapping[str, str]) -> list[str]:
    """The server names of a status answer's ``X-Tollgate-Discovery-Requested`` header."""
    value = headers.get(DISCOVERY_HEADER) or ""
    return [name.strip() for name in value.split(",") if name.strip()]


class DiscoveryReporter:
    """Reports ``upstream``'s tools as ``server_name`` to ``control_plane`` (module docstring)."""

    def __init__(self, control_plane: str, token: str, server_name: str, upstream: ToolSource,
                 *, interval: float = DEFAULT_INTERVAL, request_timeout: float = 10.0,
                 retry_base: float = 5.0, retry_max: float = 300.0,
                 min_gap: float = 5.0) -> None:
        self.control_plane = control_plane.rstrip("/")
        self.token = token
        self.server_name = server_name
        self.upstream = upstream
        self.interval = interval
        self.request_timeout = request_timeout
        self.backoff = Backoff(retry_base, retry_max)
        self.min_gap = min_gap
        self.reports = 0  # reports the control plane recorded
        self.failures = 0  # reports not made or refused
        self.last_error: str | None = None
        self._due = asyncio.Event()
        self._reasons: list[str] = []
        self._http = LoopHttpClient()

    # --- occasions -----------------------------------------------------------------------------

    def request(self, reason: str) -> None:
        """Ask for a report as soon as the current one (if any) is done; never blocks."""
        if reason not in self._reasons:
            self._reasons.append(reason)
        self._due.set()

    @property
    def due(self) -> bool:
        """Whether a report has been asked for and not started yet."""
        return self._due.is_set()

    def attach(self, upstream: Any) -> None:
        """Report when ``upstream`` (a ``gateway.proxy.Upstream``) initialises or its tools
        change."""
        upstream.on_ready = lambda: self.request("upstream initialised")
        upstream.on_tools_changed = lambda: self.request("tools/list_changed")

    def status_answer(self, headers: Mapping[str, str]) -> None:
        """A ``POST status`` answer's headers: report if the control plane asks for this
        server's tools."""
        if self.server_name in requested_servers(headers):
            self.request("requested by the control plane")

    # --- one report ----------------------------------------------------------------------------

    async def report_once(self, reason: str = "") -> bool:
        """List the upstream's tools and POST them; True when the control plane recorded them.
        Never raises for what the upstream or the control plane does."""
        what = f"discovery report for {self.server_name}" + (f" ({reason})" if reason else "")
        try:
            tools = await self.upstream.list_tools()
        except Exception as exc:  # noqa: BLE001 - any failure to list: log it, try again later
            return self._failed(f"{what} not sent: cannot list the upstream's tools: {exc}")
        body: dict[str, Any] = {"server": self.server_name, "tools": tools}
        if self.upstream.server_info:
            body["server_info"] = dict(self.upstream.server_info)
        try:
            # Tool lists compress well; the control plane takes 16 times its body limit
            # decompressed. NaN and Infinity are not JSON: the control plane could not read them.
            content = gzip.compress(json.dumps(body, allow_nan=False).encode(), compresslevel=6)
        except (TypeError, ValueError) as exc:
            return self._failed(f"{what} not sent: the tools are not JSON: {exc}")
        url = f"{self.control_plane}{API}/discovery"
        try:
            response = await self._http.get().post(
                url, content=content, timeout=self.request_timeout,
                headers={"Authorization": f"Bearer {self.token}", "Content-Encoding": "gzip",
                         "Content-Type": "application/json"})
        except httpx2.HTTPError as exc:
            return self._failed(f"{what}: POST {url} failed: {exc!r}")
        if response.status_code != 200:
            return self._failed(f"{what} refused ({response.status_code}): "
                                f"{brief_error(response)}")
        sync = _sync_of(response)
        log.info("%s recorded: %s tools, sync %s (added %s, changed %s, removed %s, "
                 "quarantined %s)", what, len(tools), sync.get("id"), sync.get("added"),
                 sync.get("changed"), sync.get("removed"), sync.get("quarantined"))
        self.reports += 1
        self.last_error = None
        return True

    def _failed(self, message: str) -> bool:
        log.warning("%s", message)
        self.failures += 1
        self.last_error = message
        return False

    # --- the loop ------------------------------------------------------------------------------

    async def run(self, stop_event: asyncio.Event) -> None:
        """Report on every occasion until ``stop_event`` is set (a report under way is then
        abandoned)."""
        periodic = time.monotonic() + self.interval if self.interval > 0 else None
        retry: float | None = None
        not_before = 0.0
        try:
            while not stop_event.is_set():
                if time.monotonic() < not_before:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop_event.wait(), not_before - time.monotonic())
                    continue
                deadline = min((d for d in (periodic, retry) if d is not None), default=None)
                await self._wait(stop_event, deadline)
                if stop_event.is_set():
                    break
                now = time.monotonic()
                if not (self._due.is_set() or (periodic is not None and now >= periodic)
                        or (retry is not None and now >= retry)):
                    continue
                reasons = self._reasons or (["periodic"] if retry is None else ["retry"])
                self._due.clear()
                self._reasons = []
                report = asyncio.ensure_future(self.report_once(", ".join(reasons)))
                if not await self._finished(report, stop_event):
                    break
                # From the end of this report: the next one starts min_gap after it, whatever
                # the two took to get under way.
                not_before = time.monotonic() + self.min_gap
                if self.interval > 0:
                    periodic = time.monotonic() + self.interval
                if report.result():
                    self.backoff.reset()
                    retry = None
                else:
                    retry = time.monotonic() + self.backoff.next()
        finally:
            await self.aclose()

    async def _wait(self, stop_event: asyncio.Event, deadline: float | None) -> None:
        """Until a report is asked for, ``stop_event`` is set or ``deadline`` (monotonic)."""
        if self._due.is_set():
            return
        waiters = {asyncio.ensure_future(self._due.wait()),
                   asyncio.ensure_future(stop_event.wait())}
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    @staticmethod
    async def _finished(report: asyncio.Future[bool], stop_event: asyncio.Event) -> bool:
        """Wait for ``report``; False (and the report cancelled) if ``stop_event`` comes first."""
        stopping = asyncio.ensure_future(stop_event.wait())
        await asyncio.wait({report, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stopping
        if report.done():
            return True
        report.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await report
        return False

    async def aclose(self) -> None:
        await self._http.aclose()


def _sync_of(response: httpx2.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    sync = body.get("sync") if isinstance(body, dict) else None
    return sync if isinstance(sync, dict) else {}


__all__ = ["DEFAULT_INTERVAL", "DISCOVERY_HEADER", "DiscoveryReporter", "requested_servers"]
