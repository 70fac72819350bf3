"""Decision-log search and detail pages, and shadow replays (admins and auditors)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from decision_logs import selectors
from decision_logs.access import access_decision, access_replay
from decision_logs.forms import DecisionFilterForm, ReplayForm
from decision_logs.models import DecisionLog
from decision_logs.replay import replay_request
from governance.tenancy.forms import add_service_errors
from governance.tenancy.mixins import TenantPageView
from governance.tenancy.roles import Cap
from governance.web import page_of, query_without_page, vary_on_htmx

PAGE_SIZE = 50
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CURSOR = re.compile(r"(-?\d{1,20})_(\d{1,20})\Z")


def cursor_of(decision: DecisionLog) -> str:
    """A page boundary: the row's timestamp (µs since the epoch) and id."""
    delta = decision.timestamp - EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return f"{micros}_{decision.pk}"


def parse_cursor(value: str | None) -> tuple[datetime, int] | None:
    """``cursor_of``'s inverse; None for an absent one, ValueError for a malformed one."""
    if not value:
        return None
    match = _CURSOR.match(value)
    if not match:
        raise ValueError(value)
    try:
        return EPOCH + timedelta(microseconds=int(match.group(1))), int(match.group(2))
    except OverflowError:
        raise ValueError(value) from None


class DecisionListView(TenantPageView):
    """Search the tenant's decisions, newest first, one keyset page at a time (no COUNT over
    the whole log); htmx requests get just the results."""

    capability = Cap.VIEW_AUDIT

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        query = request.GET.copy()
        for key in ("before", "after"):
            query.pop(key, None)
        form = DecisionFilterForm(query or None, tenant=self.tenant)
        context = {"form": form, "rows": [], "has_older": False, "has_newer": False,
                   "query": query.urlencode(), "cursor_problem": ""}
        try:
            before = parse_cursor(request.GET.get("before"))
            after = parse_cursor(request.GET.get("after"))
        except ValueError:
            before = after = None
            context["cursor_problem"] = ("That page link is malformed; showing the newest "
                                         "decisions instead.")
        if not form.is_bound or form.is_valid():
            rows = selectors.search(self.tenant, form.filters() if form.is_bound else {})
            found, older, newer = selectors.keyset_page(rows, before=before, after=after,
                                                        size=PAGE_SIZE)
            context.update(rows=found, has_older=older, has_newer=newer)
            if found:
                context["older_cursor"] = cursor_of(found[-1])
                context["newer_cursor"] = cursor_of(found[0])
        template = "decisions/_results.html" if request.htmx else "decisions/list.html"
        # htmx swaps only 2xx responses: a rejected filter is shown in the results with a 200.
        status = 400 if form.errors and not request.htmx else 200
        return vary_on_htmx(render(request, template, context, status=status))


class DecisionDetailView(TenantPageView):
    """Every field of one decision, with links to what it names (when it exists here)."""

    capability = Cap.VIEW_AUDIT

    def get(self, request: HttpRequest, tenant_slug: str, decision_pk: int) -> HttpResponse:
        decision = access_decision(self.tenancy, decision_pk)
        return render(request, "decisions/detail.html", {
            "decision": decision, "links": selectors.decision_links(self.tenant, decision),
        })


class ReplayListView(TenantPageView):
    """Shadow replays: the form that starts one and the tenant's runs, newest first."""

    capability = Cap.VIEW_AUDIT

    def context(self, request: HttpRequest, form: ReplayForm) -> dict:
        return {"form": form, "page": page_of(request, selectors.replay_runs(self.tenant)),
                "query": query_without_page(request)}

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        return render(request, "decisions/replays.html", self.context(request, ReplayForm()))

    def post(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        form = ReplayForm(request.POST)
        if form.is_valid():
            try:
                run = replay_request(tenant=self.tenant, actor=self.actor, **form.cleaned_data)
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, f"Shadow replay #{run.pk} queued; this page shows "
                                          "its progress.")
                return redirect("decisions:replay", tenant_slug, run.pk)
        return render(request, "decisions/replays.html", self.context(request, form), status=400)


class ReplayView(TenantPageView):
    """One replay: its progress while it runs (htmx polls the fragment every 2 s), then the
    decisions that would change, per agent and tool, and what could not be replayed."""

    capability = Cap.VIEW_AUDIT

    def get(self, request: HttpRequest, tenant_slug: str, replay_id: int) -> HttpResponse:
        run = access_replay(self.tenancy, replay_id)
        template = "decisions/_replay_status.html" if request.htmx else "decisions/replay.html"
        return vary_on_htmx(render(request, template, {"run": run}))
