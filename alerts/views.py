"""Web pages of the alerts: the list (auditors and admins), one alert with acknowledge and
resolve (admins), and the rules (admins). Thin: parse the form → access helper → service →
post/redirect/get."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from alerts import selectors, services
from alerts.access import access_alert
from alerts.forms import AlertActionForm, AlertFilterForm, AlertRuleForm
from alerts.models import KIND_SPECS, Alert, Kind
from governance.tenancy.forms import add_service_errors
from governance.tenancy.mixins import TenantPageView
from governance.tenancy.roles import Cap
from governance.web import page_of, query_without_page, vary_on_htmx


class AlertListView(TenantPageView):
    """Alerts, most recently seen first; open and acknowledged unless the filter says
    otherwise. htmx gets the table."""

    capability = Cap.VIEW_AUDIT

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        form = AlertFilterForm(request.GET or None)
        rows = Alert.objects.none()
        if not form.is_bound:
            rows = selectors.alerts(self.tenant)
        elif form.is_valid():
            rows = selectors.alerts(self.tenant, **form.filters())
        template = "alerts/_table.html" if request.htmx else "alerts/list.html"
        status = 400 if form.errors and not request.htmx else 200
        filtered = any(request.GET.get(name) for name in form.fields)
        return vary_on_htmx(render(request, template, {
            "form": form, "page": page_of(request, rows), "query": query_without_page(request),
            "filtered": filtered,
        }, status=status))


class AlertDetailView(TenantPageView):
    """One alert, what it is about, and (for admins) acknowledge or resolve it with a note."""

    capability = Cap.VIEW_AUDIT
    post_capability = Cap.MANAGE_ALERTS

    def render_page(self, request, alert: Alert, form: AlertActionForm, status: int = 200):
        return render(request, "alerts/detail.html", {
            "alert": alert, "form": form, "spec": KIND_SPECS[alert.rule_kind],
            "target": selectors.alert_target(self.tenant, alert),
            "may_act": self.tenancy.can(Cap.MANAGE_ALERTS) and alert.is_live,
        }, status=status)

    def get(self, request: HttpRequest, tenant_slug: str, alert_id: int) -> HttpResponse:
        alert = access_alert(self.tenancy, alert_id)
        return self.render_page(request, alert, AlertActionForm())

    def post(self, request: HttpRequest, tenant_slug: str, alert_id: int) -> HttpResponse:
        alert = access_alert(self.tenancy, alert_id, write=True)
        form = AlertActionForm(request.POST)
        action = request.POST.get("action", "acknowledge")
        if action not in ("acknowledge", "resolve"):
            form.add_error(None, "Choose Acknowledge or Resolve.")
        elif form.is_valid():
            note = form.cleaned_data["note"]
            try:
                if action == "acknowledge":
                    services.alert_acknowledge(tenant=self.tenant, actor=self.actor,
                                               alert=alert, note=note, user=request.user)
                else:
                    services.alert_resolve(tenant=self.tenant, actor=self.actor, alert=alert,
                                           note=note)
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, "Acknowledged: repeats of this alert no longer "
                                          "notify anyone." if action == "acknowledge" else
                                 "Resolved. The next occurrence raises a new alert.")
                return redirect("alerts:detail", tenant_slug, alert.pk)
        alert.refresh_from_db()
        return self.render_page(request, alert, form, status=400)


class AlertRulesView(TenantPageView):
    """Every rule of the tenant (defaults until changed): on/off, threshold, window,
    severity. Each rule saves on its own."""

    capability = Cap.MANAGE_ALERTS

    def render_page(self, request, forms: dict[str, AlertRuleForm], status: int = 200):
        rows = [(form.rule, KIND_SPECS[form.rule.kind], form) for form in forms.values()]
        return render(request, "alerts/rules.html", {"rows": rows}, status=status)

    def forms(self, data=None, kind: str = "") -> dict[str, AlertRuleForm]:
        rules = services.alert_rules_for(self.tenant)
        return {k: AlertRuleForm(data if k == kind else None, rule=rule)
                for k, rule in rules.items()}

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        return self.render_page(request, self.forms())

    def post(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        kind = request.POST.get("kind", "")
        if kind not in Kind.values:
            messages.error(request, "Choose which rule to save.")
            return self.render_page(request, self.forms(), status=400)
        forms = self.forms(request.POST, kind)
        form = forms[kind]
        if form.is_valid():
            try:
                rule = services.alert_rule_update(tenant=self.tenant, actor=self.actor,
                                                  rule=form.rule, user=request.user,
                                                  **form.changes())
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, f"Saved the rule “{rule.get_kind_display()}”.")
                return redirect("alerts:rules", tenant_slug)
        return self.render_page(request, forms, status=400)
