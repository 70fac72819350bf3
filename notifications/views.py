"""Web pages of the notification channels and their delivery log (admins only). Thin: parse the
form → access helper → service → post/redirect/get."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse

from governance.tenancy.forms import add_service_errors
from governance.tenancy.mixins import TenantPageView
from governance.tenancy.roles import Cap
from governance.web import error_text, page_of, query_without_page, vary_on_htmx
from notifications import selectors, services
from notifications.access import access_channel
from notifications.forms import ChannelForm, DeliveryFilterForm
from notifications.models import Channel, Delivery


class NotificationPage(TenantPageView):
    capability = Cap.MANAGE_NOTIFICATIONS


class ChannelListView(NotificationPage):
    """The tenant's channels, with their pending and failed deliveries."""

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        return render(request, "notifications/channels.html", {
            "channels": selectors.channels(self.tenant),
        })


class ChannelFormView(NotificationPage):
    def render_form(self, request, form, channel=None, status=200):
        return render(request, "notifications/channel_form.html",
                      {"form": form, "channel": channel}, status=status)

    def saved(self, request, channel: Channel, verb: str) -> HttpResponse:
        messages.success(request, f"{verb} channel {channel.name}. Use “Send test” to check it.")
        return redirect("notifications:channels", self.tenant.slug)


class ChannelCreateView(ChannelFormView):
    """Add an e-mail, Slack or webhook channel."""

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        return self.render_form(request, ChannelForm())

    def post(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        form = ChannelForm(request.POST)
        if form.is_valid():
            try:
                channel = services.channel_create(tenant=self.tenant, actor=self.actor,
                                                   created_by=request.user, **form.cleaned_data)
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                return self.saved(request, channel, "Added")
        return self.render_form(request, form, status=400)


class ChannelEditView(ChannelFormView):
    """Change a channel; its URL and secret are never shown, only replaced."""

    def get(self, request: HttpRequest, tenant_slug: str, channel_id: int) -> HttpResponse:
        channel = access_channel(self.tenancy, channel_id)
        return self.render_form(request, ChannelForm(initial=ChannelForm.initial_for(channel),
                                                     channel=channel), channel)

    def post(self, request: HttpRequest, tenant_slug: str, channel_id: int) -> HttpResponse:
        channel = access_channel(self.tenancy, channel_id)
        form = ChannelForm(request.POST, channel=channel)
        if form.is_valid():
            try:
                channel = services.channel_update(tenant=self.tenant, actor=self.actor,
                                                   channel=channel, **form.cleaned_data)
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                return self.saved(request, channel, "Saved")
        return self.render_form(request, form, channel, status=400)


class ChannelDeleteView(NotificationPage):
    """Confirm, then delete a channel with its delivery log."""

    def get(self, request: HttpRequest, tenant_slug: str, channel_id: int) -> HttpResponse:
        channel = access_channel(self.tenancy, channel_id)
        count = channel.deliveries.count()
        return render(request, "confirm.html", {
            "title": f"Delete channel {channel.name}?",
            "body": f"Nothing is sent to it any more, and its {count} deliver"
                    f"{'y' if count == 1 else 'ies'} (the log below it) are deleted too; the "
                    "audit trail keeps the record of the channel.",
            "action": "Delete channel", "danger": True,
            "cancel_url": reverse("notifications:channels", args=[tenant_slug]),
        })

    def post(self, request: HttpRequest, tenant_slug: str, channel_id: int) -> HttpResponse:
        channel = access_channel(self.tenancy, channel_id)
        services.channel_delete(tenant=self.tenant, actor=self.actor, channel=channel)
        messages.success(request, f"Deleted channel {channel.name}.")
        return redirect("notifications:channels", tenant_slug)


class ChannelTestView(NotificationPage):
    """Queue a test message to one channel (POST only)."""

    def post(self, request: HttpRequest, tenant_slug: str, channel_id: int) -> HttpResponse:
        channel = access_channel(self.tenancy, channel_id)
        try:
            services.channel_test(tenant=self.tenant, actor=self.actor, channel=channel)
        except ValidationError as exc:
            messages.error(request, error_text(exc))
        else:
            messages.success(request, f"Test queued for {channel.name}; its outcome appears "
                                      "in the deliveries below within seconds.")
        url = reverse("notifications:deliveries", args=[tenant_slug])
        return redirect(f"{url}?channel={channel.pk}")


class DeliveryListView(NotificationPage):
    """Every delivery, newest first, filtered by status, channel and event; htmx gets the
    table."""

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        form = DeliveryFilterForm(request.GET or None, tenant=self.tenant)
        rows = Delivery.objects.none()
        if not form.is_bound:
            rows = selectors.deliveries(self.tenant)
        elif form.is_valid():
            rows = selectors.deliveries(self.tenant, **form.filters())
        template = ("notifications/_deliveries_table.html" if request.htmx
                    else "notifications/deliveries.html")
        status = 400 if form.errors and not request.htmx else 200
        return vary_on_htmx(render(request, template, {
            "form": form, "page": page_of(request, rows), "query": query_without_page(request),
            "filtered": form.is_bound,
        }, status=status))
