"""``POST /api/v1/gateway/discovery``: a gateway reports the tools of a server it fronts.

Body ``{"server": "<McpServer.name>", "tools": [<MCP Tool objects, every page of tools/list>],
"server_info": {"name", "version"}?}``, as is or with ``Content-Encoding: gzip``. The answer is
**200** ``{"server", "sync": {"id", "status", "added", "changed", "removed", "quarantined"}}``
once the report is recorded exactly as a worker sync (``registry/gateway_discovery.py``).

Errors (JSON ``{"code", "message"}`` as every gateway call; nothing is recorded):

* 400 ``invalid_report``: not the shape above (tools not a list, a tool without a string name,
  duplicate names, NUL characters, a malformed schema…), bad JSON or gzip;
* 401 / 429 as for every gateway call (``bundles.gateway_api.authenticate``);
* 404 ``not_found``: no server of that name in the gateway's tenant, or not bound to this
  gateway (the two are not told apart);
* 409 ``not_synced``: the server is retired;
* 413 ``too_large``: a body over GATEWAY_MAX_BODY_BYTES, or over 16 times that decompressed;
* 415 ``unsupported_encoding``: a Content-Encoding other than gzip or identity.
"""

from __future__ import annotations

import json
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from bundles.gateway_api import authenticate, error
from bundles.gateway_body import BodyRefused, body_encoding, gunzip, read_body
from bundles.models import Gateway
from registry import gateway_discovery as discovery

DECOMPRESSED_FACTOR = 16


def _decode(raw: bytes, gzipped: bool) -> Any:
    if gzipped:
        limit = settings.GATEWAY_MAX_BODY_BYTES * DECOMPRESSED_FACTOR
        try:
            raw = gunzip(raw, limit)
        except BodyRefused as refused:
            if refused.status == 413:
                raise discovery.Refused(413, "too_large", "The decompressed body is over "
                                        f"{limit} bytes.") from None
            raise discovery.Refused(400, "invalid_report", refused.message) from None
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise discovery.Refused(400, "invalid_report", f"The body is not valid JSON: {exc}"
                                ) from None
    except RecursionError:
        raise discovery.Refused(400, "invalid_report", "The body is not valid JSON: nested too "
                                "deeply.") from None


def _report(tenant_id: int, gateway_id: int, raw: bytes, gzipped: bool) -> dict[str, Any]:
    report = discovery.parse_report(_decode(raw, gzipped))
    gateway = Gateway.objects.select_related("tenant").get(pk=gateway_id, tenant_id=tenant_id)
    run, quarantined = discovery.discovery_record(gateway=gateway, report=report)
    return discovery.report_answer(run, quarantined)


@csrf_exempt
async def discovery_report(request: HttpRequest) -> HttpResponse:
    """``POST discovery``: record the calling gateway's report of a bound server's tools."""
    if request.method != "POST":
        return error(405, "method_not_allowed", "Use POST.", Allow="POST")
    caller, failure, _ = await authenticate(request, None)
    if failure is not None:
        return failure
    limit = settings.GATEWAY_MAX_BODY_BYTES
    try:
        gzipped = body_encoding(request)
        raw = await read_body(request, limit, invalid_code="invalid_report",
                              too_large=f"The body is over {limit} bytes.")
        doc = await sync_to_async(_report)(caller.tenant_id, caller.gateway, raw, gzipped)
    except (BodyRefused, discovery.Refused) as refused:
        return error(refused.status, refused.code, refused.message)
    response = JsonResponse(doc)
    response["Cache-Control"] = "no-store"
    return response


__all__ = ["discovery_report"]
