"""The escalation hold: a call the bundle says needs a human is held while a human decides.

The gateway side of DESIGN.md §5 "Escalations" (the control plane's side is
``approvals/gateway_api.py``). For one held call, :meth:`Escalations.hold`:

1. **Attaches** to the call's escalation: the same call — same principal, server, tool and
   arguments hash — that is already waiting (an earlier attempt got a *pending* result, or an
   identical call is being held right now) re-attaches to that escalation; otherwise
   ``POST escalations`` creates one with a fresh ``call_id`` (the control plane is idempotent on
   ``(gateway, call_id)``, so a create whose answer was lost is safe to repeat). Which
   escalation a call is attached to is kept in ``state_file`` so a gateway restart re-attaches
   too. Identical calls are held one at a time: each approval is spent by one call.
2. **Waits**: ``GET escalations/<id>`` with ``Prefer: wait=N`` (the control plane answers as
   soon as a human decides) until a decision or the hold's maximum (``max_hold`` seconds).
3. **Approved** → the receipt is verified (``gateway.receipts.verify_receipt``: signed by the
   tenant's bundle key, bound to this agent, tool and arguments hash) and spent with
   ``POST escalations/<id>/consume`` (accepted once). Only then is the call forwarded, once.
   **Denied** or **expired** → the call is refused with the approver's reason. Either way the
   escalation is detached: the next identical call asks again.
4. **Still undecided** at ``max_hold`` → a *pending* outcome: the agent gets a tool error that
   names the escalation and says to call again with the same arguments, which re-attaches.

Anything that stops the gateway from getting a decision (the control plane unreachable, a
refused create, a bad receipt) refuses the call: an escalation never fails open.

Pure Python (httpx2), no Django: written for gateway vendors.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2

from gateway.client import API, LoopHttpClient, atomic_write, brief_error
from gateway.receipts import ReceiptRejected, verify_receipt

logger = logging.getLogger(__name__)

APPROVED = "approved"
DENIED = "denied"
PENDING = "pending"
UNAVAILABLE = "unavailable"  # no decision could be obtained: the call is refused
FORGET_AFTER_SECONDS = 86400

# keys(fresh) → the tenant's JWKS (gateway.client.BundleClient.keys).
KeySource = Callable[[bool], Awaitable[Mapping[str, Any]]]
Attached = Callable[[str], Awaitable[None]]
Recheck = Callable[[], Awaitable[str | None]]


@dataclass(frozen=True)
class HeldCall:
    """What the gateway knows about the call it holds."""

    issuer: str
    subject: str
    agent: str
    server: str
    tool: str
    arguments: Mapping[str, Any]
    arguments_sha256: str
    reason: str
    bundle_revision: int | None
    # The person a delegated call is made for ({"subject", "groups"}), shown to the approver.
    on_behalf_of: Mapping[str, Any] | None = None

    @property
    def fingerprint(self) -> str:
        """Same principal (and person), server, tool and arguments: the same call (a retry
        re-attaches; another person's identical call is another request)."""
        identity: list[Any] = [self.issuer, self.subject, self.server, self.tool,
                               self.arguments_sha256]
        if self.on_behalf_of is not None:
            identity.append(self.on_behalf_of.get("subject"))
        return hashlib.sha256(json.dumps(identity).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class HoldOutcome:
    """``status``: approved (forward the call now), denied, expired, pending or unavailable."""

    status: str
    reason: str
    escalation_id: str | None = None
    expires_at: str | None = None

    @property
    def approved(self) -> bool:
        return self.status == APPROVED


class _ControlPlaneError(Exception):
    def __init__(self, message: str, status: int | None = None, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class Escalations:
    """Holds escalated calls for one gateway (see the module docstring).

    ``control_plane``/``token``/``tenant`` as for the bundle client; ``keys`` fetches the
    tenant's JWKS to verify receipts; ``max_hold`` bounds how long one ``tools/call`` is held;
    ``wait_seconds`` is the long poll asked of the control plane per request."""

    def __init__(self, control_plane: str, token: str, tenant: str, *, keys: KeySource,
                 max_hold: float = 60.0, wait_seconds: int = 25,
                 state_file: Path | None = None, request_timeout: float = 10.0,
                 send_arguments: bool = True) -> None:
        self.control_plane = control_plane.rstrip("/")
        self.token = token
        self.tenant = tenant
        self.keys = keys
        self.max_hold = max(0.0, float(max_hold))
        self.wait_seconds = max(1, int(wait_seconds))
        self.state_file = state_file
        self.request_timeout = request_timeout
        self.send_arguments = send_arguments
        self._http = LoopHttpClient()
        self._locks: dict[str, list[Any]] = {}  # fingerprint → [lock, users]
        # fingerprint → {"call_id", "id", "expires_at"}: the escalation a call is attached to.
        self._attached: dict[str, dict[str, Any]] = self._load()

    # --- the hold ------------------------------------------------------------------------------

    async def hold(self, call: HeldCall, *, attached: Attached | None = None,
                   recheck: Recheck | None = None) -> HoldOutcome:
        """Hold ``call`` until a human decides or ``max_hold`` passes (module docstring).

        ``attached(escalation_id)`` is awaited once the call has its escalation (to log the
        ``escalate`` decision at once); ``recheck()`` after an approval and before the receipt
        is spent: a reason to refuse the call after all (the policy changed during the hold),
        or None."""
        key = call.fingerprint
        entry = self._locks.setdefault(key, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                return await self._hold(key, call, attached, recheck)
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._locks[key]

    async def _hold(self, key: str, call: HeldCall, attached: Attached | None,
                    recheck: Recheck | None) -> HoldOutcome:
        deadline = time.monotonic() + self.max_hold
        try:
            doc = await self._attach(key, call)
            if attached is not None:
                await attached(str(doc["id"]))
            while doc.get("status") == PENDING:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return HoldOutcome(
                        PENDING, f"waiting for a human decision on escalation {doc['id']} "
                        f"(until {doc.get('expires_at')}); call the tool again with the same "
                        f"arguments to pick up the decision", doc["id"], doc.get("expires_at"))
                wait = max(1, min(self.wait_seconds, int(remaining + 0.999)))
                doc = await self._read(doc["id"], wait)
        except _ControlPlaneError as exc:
            return HoldOutcome(UNAVAILABLE, f"this call needs approval and no decision could "
                               f"be obtained: {exc}")
        escalation_id = str(doc["id"])
        status = doc.get("status")
        if status != APPROVED:
            self._detach(key)
            why = doc.get("reason") or ("nobody decided before the deadline"
                                        if status == "expired" else "no reason given")
            # "denied" or "expired" (an expiry is a denial): the agent is told which.
            return HoldOutcome(str(status or DENIED), f"approval {status}: {why} (escalation "
                               f"{escalation_id})", escalation_id)
        refusal = await recheck() if recheck is not None else None
        if refusal is not None:
            self._detach(key)
            return HoldOutcome(DENIED, f"approved (escalation {escalation_id}), but the policy "
                               f"now refuses the call: {refusal}", escalation_id)
        outcome = await self._spend(call, doc)
        self._detach(key)
        return outcome

    async def _attach(self, key: str, call: HeldCall) -> dict[str, Any]:
        attached = self._attached.get(key)
        if attached is not None:
            try:
                return await self._read(attached["id"], 0)
            except _ControlPlaneError as exc:
                if exc.status != 404:
                    raise
                self._detach(key)  # not known to the control plane (any more): ask anew
        body: dict[str, Any] = {
            "call_id": uuid.uuid4().hex, "agent": call.agent, "server": call.server,
            "tool": call.tool, "arguments_sha256": call.arguments_sha256,
            "bundle_revision": call.bundle_revision, "reason": call.reason,
        }
        if call.on_behalf_of is not None:
            body["on_behalf_of"] = {"subject": call.on_behalf_of["subject"],
                                    "groups": list(call.on_behalf_of.get("groups") or [])}
        if self.send_arguments:
            body["arguments"] = dict(call.arguments)
        doc = await self._request("POST", f"{API}/escalations", json_body=body)
        self._attached[key] = {"call_id": body["call_id"], "id": str(doc["id"]),
                               "expires_at": doc.get("expires_at"), "attached_at": time.time()}
        self._save()
        logger.info("escalation %s created for %s/%s (agent %s)", doc["id"], call.server,
                    call.tool, call.agent)
        return doc

    async def _read(self, escalation_id: str, wait: int) -> dict[str, Any]:
        headers = {"Prefer": f"wait={wait}"} if wait else {}
        return await self._request("GET", f"{API}/escalations/{escalation_id}",
                                   headers=headers, timeout=wait + self.request_timeout)

    async def _spend(self, call: HeldCall, doc: Mapping[str, Any]) -> HoldOutcome:
        escalation_id = str(doc["id"])
        receipt = doc.get("receipt")
        if not isinstance(receipt, str) or doc.get("consumed"):
            return HoldOutcome(DENIED, f"the approval of escalation {escalation_id} was already "
                               f"used", escalation_id)
        try:
            await self._verify(receipt, call, escalation_id)
        except ReceiptRejected as exc:
            logger.warning("receipt of escalation %s rejected: %s", escalation_id, exc)
            return HoldOutcome(DENIED, f"the approval's receipt was rejected ({exc.code}: "
                               f"{exc.message})", escalation_id)
        try:
            await self._request("POST", f"{API}/escalations/{escalation_id}/consume")
        except _ControlPlaneError as exc:
            if exc.status == 409:
                return HoldOutcome(DENIED, f"the approval of escalation {escalation_id} was "
                                   f"already used", escalation_id)
            return HoldOutcome(UNAVAILABLE, f"the approval could not be spent: {exc}",
                               escalation_id)
        return HoldOutcome(APPROVED, f"approved by a human (escalation {escalation_id})",
                           escalation_id)

    async def _verify(self, receipt: str, call: HeldCall, escalation_id: str) -> None:
        def check(jwks: Mapping[str, Any]) -> None:
            verify_receipt(receipt, jwks, tenant=self.tenant, escalation_id=escalation_id,
                           agent=call.agent, tool=call.tool, server=call.server,
                           arguments_hash=call.arguments_sha256)

        try:
            check(await self.keys(False))
        except ReceiptRejected as exc:
            if exc.code != "unknown_key":
                raise
            check(await self.keys(True))  # signed by a key published after our copy

    # --- HTTP ----------------------------------------------------------------------------------

    async def _request(self, method: str, path: str, *, json_body: Any = None,
                       headers: Mapping[str, str] | None = None,
                       timeout: float | None = None) -> dict[str, Any]:
        url = f"{self.control_plane}{path}"
        all_headers = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        try:
            response = await self._http.get().request(
                method, url, json=json_body, headers=all_headers,
                timeout=timeout or self.request_timeout)
        except httpx2.HTTPError as exc:
            raise _ControlPlaneError(f"{method} {path} failed: {exc!r}") from exc
        if response.status_code not in (200, 201):
            code = ""
            try:
                code = str(response.json().get("code", ""))
            except (ValueError, AttributeError):
                pass
            raise _ControlPlaneError(
                f"{method} {path} answered {response.status_code}: {brief_error(response)}",
                response.status_code, code)
        try:
            doc = response.json()
        except ValueError as exc:
            raise _ControlPlaneError(f"{method} {path} returned no JSON") from exc
        if not isinstance(doc, dict) or "id" not in doc:
            raise _ControlPlaneError(f"{method} {path} returned no escalation")
        return doc

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- which escalation each held call is attached to (survives a restart) -------------------

    def _load(self) -> dict[str, dict[str, Any]]:
        if self.state_file is None:
            return {}
        try:
            raw = json.loads(self.state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(raw, dict):
            return {}
        return {str(k): v for k, v in raw.items()
                if isinstance(v, dict) and isinstance(v.get("id"), str)}

    def _save(self) -> None:
        if self.state_file is None:
            return
        # A call nobody came back for in a day is forgotten (its escalation has long expired).
        cutoff = time.time() - FORGET_AFTER_SECONDS
        self._attached = {k: v for k, v in self._attached.items()
                          if float(v.get("attached_at") or 0) > cutoff}
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.state_file, json.dumps(self._attached, sort_keys=True).encode())

    def _detach(self, key: str) -> None:
        if self._attached.pop(key, None) is not None:
            self._save()

    @property
    def attached(self) -> int:
        """How many calls are waiting for a decision (for status pages and tests)."""
        return len(self._attached)
