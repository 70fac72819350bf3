"""The escalation contract of the gateway API (DESIGN.md §5): a gateway holding a tool call
asks a human, waits for the decision, and spends the approval once.

* ``POST escalations`` ``{call_id, agent, server, tool, arguments?, arguments_sha256,
  bundle_revision, reason}`` → 201 ``{id, status, expires_at}`` (200 with the existing one for
  the same ``(gateway, call_id)``); 400 malformed or nothing to approve; 409 a ``call_id``
  reused for another call; 429 the agent's flood limit (with ``Retry-After``; not queued).
* ``GET escalations/<id>`` (``Prefer: wait=N``: held until decided or N seconds, woken by the
  decision through Redis pub/sub) → ``{id, status, expires_at, decided_at, reason, consumed,
  receipt?, receipt_expires_at?}``; ``approved`` and unspent carries a receipt
  (``gateway/receipts.py``); undecided past the deadline is ``expired`` (a denial).
* ``POST escalations/<id>/consume`` → 200 once; 409 for every later attempt or an escalation
  that is not approved.

Authentication, 401/404/413/429 and error bodies are those of the bundle API. An escalation of
another tenant is 404.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from approvals.models import Escalation
from approvals.services.decisions import escalation_topic
from approvals.services.escalations import (
    Refused,
    escalation_consume,
    escalation_create,
    escalation_receipt,
    escalation_refresh,
)
from bundles import hot
from bundles.gateway_api import (
    _read_json,
    _still_valid,
    _unauthorized,
    _wait_seconds,
    authenticate,
    error,
    released,
)
from bundles.models import Gateway
from bundles.packaging import rfc3339
from governance import draining


def _refused(exc: Refused) -> JsonResponse:
    headers = {"Retry_After": str(exc.retry_after)} if exc.retry_after else {}
    return error(exc.status, exc.code, exc.message, **headers)


def _document(escalation: Escalation) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": str(escalation.pk), "status": escalation.status,
        "expires_at": rfc3339(escalation.deadline),
        "decided_at": rfc3339(escalation.decided_at) if escalation.decided_at else None,
        "reason": escalation.deny_reason or None,
        "consumed": escalation.consumed_at is not None,
    }
    if escalation.status == Escalation.Status.APPROVED and escalation.consumed_at is None:
        doc["receipt"], expires = escalation_receipt(escalation=escalation)
        doc["receipt_expires_at"] = rfc3339(expires)
    return doc


def _json(doc: dict[str, Any], status: int = 200) -> JsonResponse:
    response = JsonResponse(doc, status=status)
    response["Cache-Control"] = "no-store"
    return response


def _create(tenant_id: int, gateway_id: int, body: Any) -> tuple[dict[str, Any], bool]:
    gateway = Gateway.objects.select_related("tenant").get(pk=gateway_id, tenant_id=tenant_id)
    escalation, created = escalation_create(tenant=gateway.tenant, gateway=gateway,
                                            body=body)
    escalation = escalation_refresh(tenant=gateway.tenant, escalation=escalation)
    return _document(escalation), created


@csrf_exempt
async def escalations(request: HttpRequest) -> HttpResponse:
    """``POST escalations``."""
    if request.method != "POST":
        return error(405, "method_not_allowed", "Use POST.", Allow="POST")
    caller, failure, _ = await authenticate(request, None)
    if failure is not None:
        return failure
    body, failure = await _read_json(request)
    if failure is not None:
        return failure
    try:
        doc, created = await sync_to_async(_create)(caller.tenant_id, caller.gateway, body)
    except Refused as exc:
        return _refused(exc)
    return _json(doc, 201 if created else 200)


def _read(tenant_id: int, escalation_id: uuid.UUID) -> tuple[dict[str, Any], Escalation] | None:
    escalation = (Escalation.objects.select_related("tenant", "agent")
                  .filter(pk=escalation_id, tenant_id=tenant_id).first())
    if escalation is None:
        return None
    escalation = escalation_refresh(tenant=escalation.tenant, escalation=escalation)
    return _document(escalation), escalation


def _not_found() -> JsonResponse:
    return error(404, "not_found", "No such escalation for this gateway's tenant.")


async def escalation(request: HttpRequest, escalation_id: uuid.UUID) -> HttpResponse:
    """``GET escalations/<id>``, long-polled with ``Prefer: wait=N``."""
    if request.method not in ("GET", "HEAD"):
        return error(405, "method_not_allowed", "Use GET.", Allow="GET, HEAD")
    caller, failure, _ = await authenticate(request, None)
    if failure is not None:
        return failure
    found = await sync_to_async(released(_read))(caller.tenant_id, escalation_id)
    if found is None:
        return _not_found()
    doc, held = found
    deadline = time.monotonic() + (_wait_seconds(request) or 0)
    topic = escalation_topic(escalation_id)
    while held.status == Escalation.Status.PENDING:
        remaining = draining.remaining(deadline)  # 0 once the process is stopping
        if remaining <= 0:
            break
        # Until the decision is announced, the escalation's own deadline, or 30 s (then look).
        until_expiry = max(0.05, held.deadline.timestamp() - time.time())
        await hot.announcements().wait(topic, min(remaining, until_expiry, 30.0))
        if not await _still_valid(request):
            return _unauthorized("This gateway token has been revoked or its gateway disabled.")
        found = await sync_to_async(released(_read))(caller.tenant_id, escalation_id)
        if found is None:
            return _not_found()
        doc, held = found
    return _json(doc)


def _consume(tenant_id: int, gateway_id: int, escalation_id: uuid.UUID) -> dict[str, Any] | None:
    gateway = Gateway.objects.select_related("tenant").get(pk=gateway_id, tenant_id=tenant_id)
    escalation = Escalation.objects.filter(pk=escalation_id, tenant_id=tenant_id).first()
    if escalation is None:
        return None
    escalation = escalation_consume(tenant=gateway.tenant, gateway=gateway,
                                    escalation=escalation)
    return {"id": str(escalation.pk), "status": escalation.status, "consumed": True,
            "consumed_at": rfc3339(escalation.consumed_at)}


@csrf_exempt
async def consume(request: HttpRequest, escalation_id: uuid.UUID) -> HttpResponse:
    """``POST escalations/<id>/consume``: once."""
    if request.method != "POST":
        return error(405, "method_not_allowed", "Use POST.", Allow="POST")
    caller, failure, _ = await authenticate(request, None)
    if failure is not None:
        return failure
    try:
        doc = await sync_to_async(_consume)(caller.tenant_id, caller.gateway, escalation_id)
    except Refused as exc:
        return _refused(exc)
    if doc is None:
        return _not_found()
    return _json(doc)


__all__ = ["consume", "escalation", "escalations"]
