"""Web pages of the gateway fleet, the bundle signing keys and the bundle history. Thin: parse
the form → access helper → service → post/redirect/get."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import get_script_prefix, reverse

from bundles import diff, extensions, publish, selectors, services, store
from bundles.access import (
    access_bundle,
    access_gateway,
    access_gateway_token,
    access_signing_key,
    compare_pair,
)
from bundles.forms import CompareForm, GatewayForm, GatewayTokenForm, ImmediateRotateForm
from bundles.keys import KeyUnavailable
from bundles.models import Gateway, SigningKey
from gateway import agentgateway
from governance.tenancy.forms import add_service_errors
from governance.tenancy.mixins import TenantPageView
from governance.tenancy.roles import Cap
from governance.web import attachment, error_text, page_of, query_without_page, vary_on_htmx

# The new gateway token's plaintext waits in the session for exactly one GET of its gateway's
# page after the POST (post/redirect/get: a reload cannot issue a second token), then it is gone.
NEW_TOKEN_SESSION_KEY = "tollgate_new_gateway_token"  # noqa: S105 - a session key name


class HttpResponseSeeOther(HttpResponseRedirect):
    """303: the browser follows with a GET, so a reload cannot re-submit the form."""

    status_code = 303


# --- Gateways (the fleet) ------------------------------------------------------------------------


class GatewayListView(TenantPageView):
    """The fleet: every gateway with its last contact, running revision, lag and staleness.
    htmx re-fetches the table every 30 seconds."""

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        rows = selectors.fleet(self.tenant)
        state = selectors.publish_state(self.tenant)
        template = "bundles/_gateways_table.html" if request.htmx else "bundles/gateways.html"
        return vary_on_htmx(render(request, template, {
            "page": page_of(request, rows),
            "query": query_without_page(request),
            "newest": state.current if state else None,
            "stale_seconds": settings.GATEWAY_STALE_SECONDS,
            "stale_count": sum(row["stale"] for row in rows),
            "conflict_count": sum(bool(row["revision_conflict"]) for row in rows),
        }))


class GatewayCreateView(TenantPageView):
    """Register a gateway; its tokens are issued on its page."""

    capability = Cap.MANAGE_GATEWAYS

    def render_form(self, request, form, status=200):
        return render(request, "bundles/gateway_form.html", {"form": form, "gateway": None},
                      status=status)

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        return self.render_form(request, GatewayForm())

    def post(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        form = GatewayForm(request.POST)
        if form.is_valid():
            try:
                gateway = services.gateway_create(tenant=self.tenant, actor=self.actor,
                                                  created_by=request.user, **form.cleaned_data)
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, f"Registered gateway {gateway.name}. Issue it a token "
                                          "to let it pull bundles.")
                return redirect("bundles:gateway", tenant_slug, gateway.pk)
        return self.render_form(request, form, status=400)


def _gateway_page(request: HttpRequest, gateway: Gateway, token_form: GatewayTokenForm | None
                  = None, status: int = 200) -> HttpResponse:
    ctx = request.tenancy
    row = selectors.fleet_row(ctx.tenant, gateway)
    revealed = request.session.pop(NEW_TOKEN_SESSION_KEY, None)
    new_token = None
    if revealed and revealed.get("tenant") == ctx.tenant.pk and revealed.get(
            "gateway") == gateway.pk:
        token = selectors.tokens(ctx.tenant, gateway).filter(pk=revealed["id"]).first()
        new_token = (token, revealed["plaintext"]) if token else None
    may_manage = ctx.can(Cap.MANAGE_GATEWAYS)
    response = render(request, "bundles/gateway.html", {
        "gateway": gateway,
        "row": row,
        "tokens": selectors.tokens(ctx.tenant, gateway).select_related("created_by"),
        "token_form": (token_form or GatewayTokenForm()) if may_manage else None,
        "new_token": new_token,
        "stale_seconds": settings.GATEWAY_STALE_SECONDS,
        "gateway_api": request.build_absolute_uri(f"{get_script_prefix()}api/v1/gateway/"),
        "report_json": json.dumps(gateway.last_report, indent=2, sort_keys=True,
                                  ensure_ascii=False) if gateway.last_report else "",
        # Sections the apps above the core add (the registry: the servers it fronts).
        "extra_sections": extensions.gateway_sections(request, gateway),
    }, status=status)
    response["Cache-Control"] = "no-store"  # the page may carry a token's plaintext
    return response


class GatewayDetailView(TenantPageView):
    """A gateway: what it last reported, its tokens, and (admins) what to change."""

    def get(self, request: HttpRequest, tenant_slug: str, gateway_id: int) -> HttpResponse:
        return _gateway_page(request, access_gateway(self.tenancy, gateway_id))


class GatewayEditView(TenantPageView):
    """Change a gateway's name, description and labels."""

    capability = Cap.MANAGE_GATEWAYS

    def render_form(self, request, gateway, form, status=200):
        return render(request, "bundles/gateway_form.html", {"form": form, "gateway": gateway},
                      status=status)

    def get(self, request: HttpRequest, tenant_slug: str, gateway_id: int) -> HttpResponse:
        gateway = access_gateway(self.tenancy, gateway_id, write=True)
        return self.render_form(request, gateway,
                                GatewayForm(initial=GatewayForm.initial_for(gateway)))

    def post(self, request: HttpRequest, tenant_slug: str, gateway_id: int) -> HttpResponse:
        gateway = access_gateway(self.tenancy, gateway_id, write=True)
        form = GatewayForm(request.POST)
        if form.is_valid():
            try:
                services.gateway_update(tenant=self.tenant, actor=self.actor, gateway=gateway,
                                        **form.cleaned_data)
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, f"Saved gateway {form.cleaned_data['name']}.")
                return redirect("bundles:gateway", tenant_slug, gateway.pk)
        return self.render_form(request, gateway, form, status=400)


GATEWAY_STATES = {
    Gateway.Status.DISABLED: (
        "Disable", "Every token of the gateway is refused from its next request (401), and "
        "long polls in progress end. Its tokens stay; enabling the gateway accepts them again."),
    Gateway.Status.ACTIVE: (
        "Enable", "Its tokens that were not revoked are accepted again from the next request."),
}


class GatewayStatusView(TenantPageView):
    """Disable or re-enable a gateway; GET asks for confirmation."""

    capability = Cap.MANAGE_GATEWAYS

    def get(self, request: HttpRequest, tenant_slug: str, gateway_id: int) -> HttpResponse:
        gateway = access_gateway(self.tenancy, gateway_id, write=True)
        status = request.GET.get("status", "")
        if status not in GATEWAY_STATES:
            raise Http404("No such status")
        verb, body = GATEWAY_STATES[status]
        return render(request, "confirm.html", {
            "title": f"{verb} gateway {gateway.name}?", "body": body,
            "action": f"{verb} gateway", "hidden": {"status": status},
            "danger": status == Gateway.Status.DISABLED,
            "cancel_url": reverse("bundles:gateway", args=[tenant_slug, gateway.pk]),
        })

    def post(self, request: HttpRequest, tenant_slug: str, gateway_id: int) -> HttpResponse:
        gateway = access_gateway(self.tenancy, gateway_id, write=True)
        try:
            gateway = services.gateway_set_status(tenant=self.tenant, actor=self.actor,
                                                  gateway=gateway,
                                                  status=request.POST.get("status", ""))
        except ValidationError as exc:
            messages.error(request, error_text(exc))
        else:
            messages.success(request, f"Gateway {gateway.name} is now {gateway.status}.")
        return redirect("bundles:gateway", tenant_slug, gateway.pk)


# --- Gateway tokens ------------------------------------------------------------------------------


class GatewayTokenIssueView(TenantPageView):
    """Issue a token; its plaintext is shown once, on the gateway's page."""

    capability = Cap.MANAGE_GATEWAYS

    def post(self, request: HttpRequest, tenant_slug: str, gateway_id: int) -> HttpResponse:
        gateway = access_gateway(self.tenancy, gateway_id, write=True)
        form = GatewayTokenForm(request.POST)
        if form.is_valid():
            try:
                token, plaintext = services.gateway_token_issue(
                    tenant=self.tenant, actor=self.actor, gateway=gateway,
                    name=form.cleaned_data["name"], created_by=request.user,
                )
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                request.session[NEW_TOKEN_SESSION_KEY] = {
                    "tenant": self.tenant.pk, "gateway": gateway.pk, "id": token.pk,
                    "plaintext": plaintext,
                }
                if gateway.status != Gateway.Status.ACTIVE:
                    messages.warning(request, f"{gateway.name} is disabled: the token is "
                                              "refused until you enable the gateway.")
                return HttpResponseSeeOther(
                    reverse("bundles:gateway", args=[tenant_slug, gateway.pk]))
        return _gateway_page(request, gateway, form, status=400)


class GatewayTokenRevokeView(TenantPageView):
    """Confirm, then revoke a gateway token (htmx: the browser confirms, the row is replaced)."""

    capability = Cap.MANAGE_GATEWAYS

    def get(self, request: HttpRequest, tenant_slug: str, gateway_token_id: int) -> HttpResponse:
        token = access_gateway_token(self.tenancy, gateway_token_id, write=True)
        return render(request, "confirm.html", {
            "title": f"Revoke token {token.name!r} ({token.prefix}…) of {token.gateway.name}?",
            "body": "The gateway using it gets 401 from its next request and keeps enforcing "
                    "its last good bundle until it has a new token. This cannot be undone.",
            "action": "Revoke token", "danger": True,
            "cancel_url": reverse("bundles:gateway", args=[tenant_slug, token.gateway_id]),
        })

    def post(self, request: HttpRequest, tenant_slug: str, gateway_token_id: int) -> HttpResponse:
        token = access_gateway_token(self.tenancy, gateway_token_id, write=True)
        token = services.gateway_token_revoke(tenant=self.tenant, actor=self.actor, token=token)
        if request.htmx:
            return vary_on_htmx(render(request, "bundles/_token_row.html", {"token": token}))
        messages.success(request, f"Revoked token {token.name!r} ({token.prefix}…).")
        return vary_on_htmx(redirect("bundles:gateway", tenant_slug, token.gateway_id))


# --- Signing keys --------------------------------------------------------------------------------


class SigningKeyListView(TenantPageView):
    """The tenant's bundle signing keys, newest first, and the rotation controls."""

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        keys = selectors.signing_keys(self.tenant)
        return render(request, "bundles/signing_keys.html", {
            "page": page_of(request, keys),
            "pending": keys.filter(state=SigningKey.State.PENDING).first(),
            "active": keys.filter(state=SigningKey.State.ACTIVE).first(),
            "lead_seconds": settings.BUNDLE_KEY_PUBLISH_LEAD_SECONDS,
            "jwks_url": request.build_absolute_uri(reverse("gateway:keys", args=[tenant_slug])),
        })


def _lead_text(seconds: int) -> str:
    if seconds % 3600 == 0 and seconds >= 3600:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0 and seconds >= 60:
        return f"{seconds // 60} min"
    return f"{seconds} s"


class SigningKeyRotateView(TenantPageView):
    """Rotate: GET explains what happens (``?immediate=1``: the compromised-key variant, which
    asks for the tenant's slug); POST creates the new key."""

    capability = Cap.MANAGE_GATEWAYS

    def render_confirm(self, request, immediate: bool, form=None, status=200) -> HttpResponse:
        slug = self.tenant.slug
        lead = _lead_text(settings.BUNDLE_KEY_PUBLISH_LEAD_SECONDS)
        if immediate:
            context = {
                "title": "Rotate the signing key immediately?",
                "body": "For a compromised key. A new key signs a new bundle right away and the "
                        "current key is revoked: it leaves the published keys, so gateways stop "
                        "accepting anything it signed. Gateways that have not fetched the new "
                        "key yet keep their last good bundle until they refresh their keys (up "
                        f"to {lead}).",
                "action": "Rotate immediately", "danger": True,
                "form": form or ImmediateRotateForm(slug=slug),
                "hidden": {"immediate": "1"},
            }
        else:
            context = {
                "title": "Rotate the signing key?",
                "body": f"A new key is published now as pending and starts signing in {lead}: "
                        "by then every gateway has fetched it with its keys, so the switch "
                        "interrupts nothing. You can activate it earlier from the keys page.",
                "action": "Rotate", "danger": False, "hidden": {"immediate": "0"},
            }
        context["cancel_url"] = reverse("bundles:signing_keys", args=[slug])
        return render(request, "confirm.html", context, status=status)

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        return self.render_confirm(request, immediate=request.GET.get("immediate") == "1")

    def post(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        immediate = request.POST.get("immediate") == "1"
        if immediate:
            form = ImmediateRotateForm(request.POST, slug=self.tenant.slug)
            if not form.is_valid():
                return self.render_confirm(request, True, form, status=400)
        try:
            key = services.signing_key_rotate(tenant=self.tenant, actor=self.actor,
                                              immediate=immediate, created_by=request.user)
        except ValidationError as exc:
            messages.error(request, error_text(exc))
        else:
            if immediate:
                messages.success(request, f"Key {key.kid} signs from now on and the previous key "
                                          "is revoked; the bundle is being re-signed.")
            else:
                messages.success(request, f"Key {key.kid} is published and starts signing at "
                                          f"{key.activate_after:%Y-%m-%d %H:%M} UTC.")
        return redirect("bundles:signing_keys", tenant_slug)


class SigningKeyActivateView(TenantPageView):
    """Make a pending key sign now, before its lead has passed."""

    capability = Cap.MANAGE_GATEWAYS

    def get(self, request: HttpRequest, tenant_slug: str, key_id: int) -> HttpResponse:
        key = access_signing_key(self.tenancy, key_id, write=True)
        return render(request, "confirm.html", {
            "title": f"Activate key {key.kid} now?",
            "body": "It signs the next bundle at once and the current key is retired. Gateways "
                    "that have not fetched it yet reject new bundles until they refresh their "
                    "keys.",
            "action": "Activate now", "danger": False,
            "cancel_url": reverse("bundles:signing_keys", args=[tenant_slug]),
        })

    def post(self, request: HttpRequest, tenant_slug: str, key_id: int) -> HttpResponse:
        key = access_signing_key(self.tenancy, key_id, write=True)
        try:
            key = services.signing_key_activate(tenant=self.tenant, actor=self.actor, key=key)
        except ValidationError as exc:
            messages.error(request, error_text(exc))
        else:
            messages.success(request, f"Key {key.kid} signs from now on.")
        return redirect("bundles:signing_keys", tenant_slug)


class SigningKeyRevokeView(TenantPageView):
    """Withdraw a retired key, or cancel a pending one."""

    capability = Cap.MANAGE_GATEWAYS

    def get(self, request: HttpRequest, tenant_slug: str, key_id: int) -> HttpResponse:
        key = access_signing_key(self.tenancy, key_id, write=True)
        body = ("The rotation is cancelled: the key leaves the published keys and never signs."
                if key.state == SigningKey.State.PENDING else
                "The key leaves the published keys: gateways then reject every bundle it "
                "signed, so make sure they run a bundle signed by the active key. This cannot "
                "be undone.")
        return render(request, "confirm.html", {
            "title": f"Revoke key {key.kid}?", "body": body, "action": "Revoke key",
            "danger": True, "cancel_url": reverse("bundles:signing_keys", args=[tenant_slug]),
        })

    def post(self, request: HttpRequest, tenant_slug: str, key_id: int) -> HttpResponse:
        key = access_signing_key(self.tenancy, key_id, write=True)
        try:
            key = services.signing_key_revoke(tenant=self.tenant, actor=self.actor, key=key)
        except ValidationError as exc:
            messages.error(request, error_text(exc))
        else:
            messages.success(request, f"Revoked key {key.kid}.")
        return redirect("bundles:signing_keys", tenant_slug)


# --- Bundles -------------------------------------------------------------------------------------


class BundleListView(TenantPageView):
    """Every published revision, newest first, with the last build error and "Publish now"."""

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        template = "bundles/_bundles_table.html" if request.htmx else "bundles/bundles.html"
        page = page_of(request, selectors.bundles(self.tenant))
        triggers = selectors.triggers(self.tenant, list(page.object_list))
        for bundle in page.object_list:
            bundle.took_in = triggers.get(bundle.pk)
        return vary_on_htmx(render(request, template, {
            "page": page,
            "query": query_without_page(request),
            "state": selectors.publish_state(self.tenant),
        }))


class BundlePublishView(TenantPageView):
    """Build and publish now (a new revision only if something changed)."""

    capability = Cap.MANAGE_GATEWAYS

    def post(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        try:
            bundle = publish.bundle_publish(tenant=self.tenant, trigger="manual",
                                            actor=self.actor)
        except (ValidationError, KeyUnavailable) as exc:
            text = error_text(exc) if isinstance(exc, ValidationError) else str(exc)
            publish.bundle_publish_failed(tenant=self.tenant, error=text)
            messages.error(request, f"Nothing was published: {text}")
        else:
            if bundle is None:
                current = selectors.publish_state(self.tenant).current
                messages.info(request, f"Nothing changed since r{current.revision_number}: no "
                                       "new revision was published.")
            else:
                messages.success(request, f"Published r{bundle.revision_number}.")
        return redirect("bundles:bundles", tenant_slug)


class BundleCompareView(TenantPageView):
    """What changed between two revisions: ``?from=N&to=M``; without ``from``, the revision
    before ``to``; without ``to``, the newest."""

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        form = CompareForm(request.GET)
        context: dict[str, Any] = {"newest": selectors.bundles(self.tenant).first(),
                                   "form": form, "diff": None, "problem": ""}
        if context["newest"] is None:
            return render(request, "bundles/compare.html", context)
        if not form.is_valid():
            return render(request, "bundles/compare.html", context, status=400)
        try:
            from_bundle, to_bundle = compare_pair(self.tenancy, form.cleaned_data.get("from"),
                                                  form.cleaned_data.get("to"))
        except ValidationError as exc:
            add_service_errors(form, exc)
            return render(request, "bundles/compare.html", context, status=400)
        try:
            old = selectors.bundle_data(from_bundle) if from_bundle else {}
            context["diff"] = diff.diff_data(old, selectors.bundle_data(to_bundle))
        except diff.BundleReadError as exc:
            context["problem"] = str(exc)
        # Show the revisions actually compared (the defaults filled in).
        context["form"] = CompareForm(initial={
            "from": from_bundle.revision_number if from_bundle else None,
            "to": to_bundle.revision_number,
        })
        changes = selectors.registry_changes(
            self.tenant, after_seq=from_bundle.through_seq if from_bundle else 0,
            through_seq=to_bundle.through_seq)
        return render(request, "bundles/compare.html", context | {
            "from_bundle": from_bundle, "to_bundle": to_bundle, "changes": changes,
        })


class BundleDownloadView(TenantPageView):
    """The signed tarball of one revision, as gateways receive it."""

    def get(self, request: HttpRequest, tenant_slug: str, bundle_id: int) -> HttpResponse:
        bundle = access_bundle(self.tenancy, bundle_id)
        content = store.load(bundle.blob_id)
        if content is None:  # pragma: no cover - the blob is PROTECTed by the bundle row
            raise Http404("The bundle's tarball is missing")
        response = HttpResponse(content, content_type="application/gzip")
        response["Content-Disposition"] = (
            f'attachment; filename="{tenant_slug}-r{bundle.revision_number}.tar.gz"')
        response["ETag"] = bundle.etag
        response["X-Content-Type-Options"] = "nosniff"
        return response



# --- Policy exports for other gateways -----------------------------------------------------------

# The current bundle's policy as other gateways take it: an agentgateway configuration
# (gateway/agentgateway.py) or the Cedar policy set and schema already in the bundle. Readers:
# Cap.VIEW_AUDIT (admins, who run the gateways, and auditors): the export says who may call what,
# as the decision logs do.
EXPORT_CAPABILITY = Cap.VIEW_AUDIT
class BundlePolicyExportView(TenantPageView):
    """Download the current bundle's policy for another gateway (``kind``: agentgateway,
    ``?approvals=allow`` to export grants that need approval as plain allows,
    ``?unpinned=allow`` to give pinned tools rules without the definition check; or cedar)."""

    capability = EXPORT_CAPABILITY
    kind = "agentgateway"

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        allowed = {"approvals": agentgateway.APPROVALS, "unpinned": agentgateway.UNPINNED}
        options = {name: request.GET.get(name, "deny") for name in allowed}
        for name, value in options.items():
            if value not in allowed[name]:
                return HttpResponse(f"{name} must be deny or allow.", status=400,
                                    content_type="text/plain; charset=utf-8")
        try:
            content, content_type, filename = selectors.policy_export(self.tenant, self.kind,
                                                                      **options)
        except selectors.NoBundleToExport as exc:
            messages.error(request, str(exc))
            return redirect("bundles:bundles", tenant_slug)
        return attachment(content, content_type, filename)
