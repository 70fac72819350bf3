"""Which gateways front which servers: the gateway page's "Servers it fronts" section, its
bind / unbind views, and the server page's list of gateways (web). The API is
``registry/api/bindings.py``; the services are in ``registry/gateway_discovery.py``.

Bindings are managed by tenant admins (MANAGE_GATEWAYS, as the gateway itself); outsiders get
404 and members without the capability 403, as for every tenant object.
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import reverse

from bundles.access import access_gateway
from bundles.models import Gateway
from governance.tenancy.access import TenantContext, access_object
from governance.tenancy.mixins import TenantPageView
from governance.tenancy.roles import Cap
from governance.web import error_text
from registry import gateway_discovery
from registry.models import GatewayBinding, McpServer


def access_binding(ctx: TenantContext, pk, *, write: bool = False) -> GatewayBinding:
    binding = access_object(ctx.tenant, GatewayBinding, pk)
    if write:
        ctx.require(Cap.MANAGE_GATEWAYS)
    return binding


def bindable_servers(tenant, gateway: Gateway):
    """Servers of the tenant the gateway could front (not retired, not bound yet)."""
    return (McpServer.objects.for_tenant(tenant).exclude(status=McpServer.Status.RETIRED)
            .exclude(bindings__gateway=gateway).order_by("name"))


class BindForm(forms.Form):
    server = forms.ModelChoiceField(queryset=McpServer.objects.none(),
                                    empty_label="Choose a server")

    def __init__(self, *args, tenant, gateway: Gateway, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["server"].queryset = bindable_servers(tenant, gateway)


def gateway_section(request: HttpRequest, gateway: Gateway) -> str:
    """The gateway page's section: the servers it fronts, when it last reported each."""
    ctx = request.tenancy
    bindings = (GatewayBinding.objects.for_tenant(ctx.tenant).filter(gateway=gateway)
                .select_related("server"))
    may_manage = ctx.can(Cap.MANAGE_GATEWAYS)
    return render_to_string("registry/_gateway_servers.html", {
        "gateway": gateway, "bindings": bindings, "may_manage": may_manage,
        "form": BindForm(tenant=ctx.tenant, gateway=gateway) if may_manage else None,
    }, request=request)


def server_bindings(tenant, server: McpServer) -> list[GatewayBinding]:
    """The gateways that front ``server``, for its page."""
    return list(GatewayBinding.objects.for_tenant(tenant).filter(server=server)
                .select_related("gateway").order_by("gateway__name"))


class GatewayBindView(TenantPageView):
    """Bind a server to the gateway (POST from the gateway's page)."""

    capability = Cap.MANAGE_GATEWAYS

    def post(self, request: HttpRequest, tenant_slug: str, gateway_id: int) -> HttpResponse:
        gateway = access_gateway(self.tenancy, gateway_id, write=True)
        form = BindForm(request.POST, tenant=self.tenant, gateway=gateway)
        if not form.is_valid():
            messages.error(request, "Choose a server of this tenant that the gateway does not "
                                    "front yet (retired servers cannot be bound).")
        else:
            server = form.cleaned_data["server"]
            try:
                gateway_discovery.gateway_server_bind(
                    tenant=self.tenant, actor=self.actor, gateway=gateway, server=server,
                    created_by=request.user)
            except ValidationError as exc:
                messages.error(request, error_text(exc))
            else:
                messages.success(request, f"{gateway.name} now fronts {server.name}: it reports "
                                          "the server's tools.")
        return redirect(reverse("bundles:gateway", args=[tenant_slug, gateway.pk])
                        + "#gateway-servers")


class GatewayUnbindView(TenantPageView):
    """Unbind a server from a gateway; GET asks for confirmation."""

    capability = Cap.MANAGE_GATEWAYS

    def get(self, request: HttpRequest, tenant_slug: str, binding_id: int) -> HttpResponse:
        binding = access_binding(self.tenancy, binding_id, write=True)
        return render(request, "confirm.html", {
            "title": f"Stop {binding.gateway.name} fronting {binding.server.name}?",
            "body": "The gateway's reports of this server's tools are refused from now on; the "
                    "tools it reported so far stay as they are.",
            "action": "Unbind", "danger": True,
            "cancel_url": reverse("bundles:gateway", args=[tenant_slug, binding.gateway_id]),
        })

    def post(self, request: HttpRequest, tenant_slug: str, binding_id: int) -> HttpResponse:
        binding = access_binding(self.tenancy, binding_id, write=True)
        gateway_id, names = binding.gateway_id, (binding.gateway.name, binding.server.name)
        gateway_discovery.gateway_server_unbind(tenant=self.tenant, actor=self.actor,
                                                binding=binding)
        messages.success(request, "{} no longer fronts {}.".format(*names))
        return redirect(reverse("bundles:gateway", args=[tenant_slug, gateway_id])
                        + "#gateway-servers")
