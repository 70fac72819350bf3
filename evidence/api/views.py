"""Evidence packs REST API (admins and auditors): list, request (queued for a worker), poll the
status and progress, download the zip.

Thin: the pack comes through evidence.access (404 outside the tenant, 403 without
EXPORT_EVIDENCE), the request and the download through the services (which audit them).
"""

from __future__ import annotations

from django.http import HttpResponse
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.decorators import action
from rest_framework.exceptions import APIException
from rest_framework.request import Request
from rest_framework.response import Response

from evidence import selectors, services
from evidence.access import access_pack
from evidence.api import serializers as s
from evidence.models import EvidencePack
from evidence.views import zip_response
from governance.tenancy.api.base import TenantViewSet
from governance.tenancy.api.schema import WRITE, ErrorOut, error_responses
from governance.tenancy.roles import Cap

# Every endpoint needs EXPORT_EVIDENCE: reads can be 403 too.
READ = error_responses(403)


class NotReady(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "not_ready"
    default_detail = "The evidence pack is not built yet."


class EvidencePackViewSet(TenantViewSet):
    """Evidence packs for auditors: one zip per period (UTC days, both included) with CSV,
    JSON, report.html and manifest.json, built by a worker. Poll ``status`` and ``progress``;
    download once ``status`` is ``done``. Every request and download is audited."""

    model = EvidencePack
    capabilities = {"*": Cap.EXPORT_EVIDENCE}

    def perform_content_negotiation(self, request: Request, force: bool = False):
        # The zip goes out whatever the Accept header asks for; errors are JSON.
        return super().perform_content_negotiation(
            request, force=force or getattr(self, "action", None) == "download")

    @extend_schema(responses={200: s.EvidencePackOut(many=True), **READ})
    def list(self, request: Request, tenant_slug: str) -> Response:
        return self.page(selectors.packs(self.tenancy.tenant), s.EvidencePackOut)

    @extend_schema(responses={200: s.EvidencePackOut, **READ})
    def retrieve(self, request: Request, tenant_slug: str, pk: str) -> Response:
        return Response(s.EvidencePackOut(access_pack(self.tenancy, pk)).data)

    @extend_schema(request=s.EvidencePackIn,
                   description="Queue a pack for the period; poll the answer's URL for progress.",
                   responses={202: s.EvidencePackOut, **WRITE})
    def create(self, request: Request, tenant_slug: str) -> Response:
        pack = services.evidence_pack_request(**self.service_kwargs(),
                                              requested_by=self.tenancy.user,
                                              **self.parse(s.EvidencePackIn))
        url = reverse("evidence-packs-detail", kwargs={"tenant_slug": tenant_slug, "pk": pack.pk})
        pack = access_pack(self.tenancy, pack.pk)
        return Response(s.EvidencePackOut(pack).data, status=status.HTTP_202_ACCEPTED,
                        headers={"Location": url})

    @extend_schema(
        description="The zip (application/zip) of a done pack; 409 not_ready before. Each "
                    "download is recorded in the audit trail (evidence.downloaded).",
        responses={(200, "application/zip"): OpenApiResponse(OpenApiTypes.BINARY,
                                                             description="the evidence pack"),
                   409: OpenApiResponse(ErrorOut, description="Not built yet (not_ready)."),
                   **READ},
    )
    @action(detail=True, methods=["get"])
    def download(self, request: Request, tenant_slug: str, pk: str) -> HttpResponse:
        pack = access_pack(self.tenancy, pk)
        if pack.status != EvidencePack.Status.DONE:
            raise NotReady(f"The evidence pack is {pack.status}: download it once it is done.")
        content = services.evidence_pack_download(**self.service_kwargs(), pack=pack)
        return zip_response(pack, content)
