"""Registry web pages for agents and their principals."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse

from governance.tenancy.forms import add_service_errors
from governance.tenancy.mixins import TenantPageView
from governance.tenancy.roles import Cap
from governance.web import error_text, page_of, query_without_page
from registry import selectors
from registry.access import access_agent, access_principal, can_manage_agent, manageable_agent_ids
from registry.forms import AgentForm, PrincipalForm
from registry.models import Agent
from registry.services.agents import (
    agent_create,
    agent_principal_add,
    agent_principal_remove,
    agent_transition,
    agent_update,
)


class AgentListView(TenantPageView):
    """Every agent (developers see all, and manage the ones they own)."""

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        search = request.GET.get("q", "").strip()
        mine = request.GET.get("mine") == "1"
        agents = selectors.agent_list(self.tenant, search=search,
                                      owner=request.user if mine else None)
        page = page_of(request, agents)
        manageable = manageable_agent_ids(self.tenancy, page.object_list)
        rows = [(agent, manageable is None or agent.pk in manageable) for agent in page]
        return render(request, "registry/agents.html", {
            "page": page, "rows": rows, "q": search, "mine": mine,
            "query": query_without_page(request),
            "may_create": self.tenancy.can(Cap.OWN_AGENTS),
        })


class AgentCreateView(TenantPageView):
    """Register an agent: a developer owns it; an admin may choose its owner."""

    capability = Cap.OWN_AGENTS
    post_capability = Cap.OWN_AGENTS

    def form(self, data=None) -> AgentForm:
        may_choose = self.tenancy.can(Cap.MANAGE_REGISTRY)
        return AgentForm(data, tenant=self.tenant, may_choose_owner=may_choose,
                         initial={"owner": self.request.user.pk} if may_choose else None)

    def render_form(self, request, form, status=200):
        return render(request, "registry/agent_form.html", {"form": form, "agent": None},
                      status=status)

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        return self.render_form(request, self.form())

    def post(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        form = self.form(request.POST)
        if form.is_valid():
            data = dict(form.cleaned_data)
            owner = data.pop("owner") if "owner" in data else request.user
            try:
                agent = agent_create(tenant=self.tenant, actor=self.actor, owner=owner,
                                              **data)
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, f"Registered agent {agent.name}. Add the principal "
                                          "gateways will recognise it by.")
                return redirect("registry:agent", tenant_slug, agent.pk)
        return self.render_form(request, form, status=400)


def _agent_page(request: HttpRequest, agent: Agent, principal_form: PrincipalForm | None = None,
                status: int = 200) -> HttpResponse:
    ctx = request.tenancy
    can_manage = can_manage_agent(ctx, agent)
    return render(request, "registry/agent.html", {
        "agent": agent,
        "principals": selectors.principal_list(ctx.tenant, agent=agent),
        "grants": selectors.grant_list(ctx.tenant, agent=agent),
        "can_manage": can_manage,
        "principal_form": (principal_form or PrincipalForm()) if can_manage else None,
    }, status=status)


class AgentDetailView(TenantPageView):
    """An agent: its principals, its grants and (for its owner or an admin) what to change."""

    def get(self, request: HttpRequest, tenant_slug: str, agent_id: int) -> HttpResponse:
        return _agent_page(request, access_agent(self.tenancy, agent_id))


class AgentEditView(TenantPageView):
    """Change an agent's name, purpose and environment (and owner, for admins)."""

    capability = Cap.OWN_AGENTS
    post_capability = Cap.OWN_AGENTS

    def form(self, data=None, initial=None) -> AgentForm:
        return AgentForm(data, initial=initial, tenant=self.tenant,
                         may_choose_owner=self.tenancy.can(Cap.MANAGE_REGISTRY))

    def render_form(self, request, agent, form, status=200):
        return render(request, "registry/agent_form.html", {"form": form, "agent": agent},
                      status=status)

    def get(self, request: HttpRequest, tenant_slug: str, agent_id: int) -> HttpResponse:
        agent = access_agent(self.tenancy, agent_id, write=True)
        initial = {"name": agent.name, "purpose": agent.purpose,
                   "environment": agent.environment, "owner": agent.owner_id}
        return self.render_form(request, agent, self.form(initial=initial))

    def post(self, request: HttpRequest, tenant_slug: str, agent_id: int) -> HttpResponse:
        agent = access_agent(self.tenancy, agent_id, write=True)
        form = self.form(request.POST)
        if form.is_valid():
            try:
                agent_update(tenant=self.tenant, actor=self.actor, agent=agent,
                                      **form.cleaned_data)
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, f"Saved agent {form.cleaned_data['name']}.")
                return redirect("registry:agent", tenant_slug, agent.pk)
        return self.render_form(request, agent, form, status=400)


class AgentTransitionView(TenantPageView):
    """Suspend or reactivate an agent (its owner or an admin)."""

    capability = Cap.OWN_AGENTS
    post_capability = Cap.OWN_AGENTS

    def post(self, request: HttpRequest, tenant_slug: str, agent_id: int) -> HttpResponse:
        agent = access_agent(self.tenancy, agent_id, write=True)
        try:
            agent = agent_transition(tenant=self.tenant, actor=self.actor, agent=agent,
                                              status=request.POST.get("status", ""))
        except ValidationError as exc:
            messages.error(request, error_text(exc))
        else:
            messages.success(request, f"Agent {agent.name} is now {agent.status}.")
        return redirect("registry:agent", tenant_slug, agent.pk)


class PrincipalAddView(TenantPageView):
    """Add an (issuer, subject) pair to an agent."""

    capability = Cap.OWN_AGENTS
    post_capability = Cap.OWN_AGENTS

    def post(self, request: HttpRequest, tenant_slug: str, agent_id: int) -> HttpResponse:
        agent = access_agent(self.tenancy, agent_id, write=True)
        form = PrincipalForm(request.POST)
        if form.is_valid():
            try:
                agent_principal_add(tenant=self.tenant, actor=self.actor, agent=agent,
                                             **form.cleaned_data)
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, f"Gateways now recognise {agent.name} as "
                                          f"{form.cleaned_data['subject']!r} from "
                                          f"{form.cleaned_data['issuer']!r}.")
                return redirect("registry:agent", tenant_slug, agent.pk)
        return _agent_page(request, agent, form, status=400)


class PrincipalRemoveView(TenantPageView):
    """Confirm, then remove a principal of an agent."""

    capability = Cap.OWN_AGENTS
    post_capability = Cap.OWN_AGENTS

    def get(self, request: HttpRequest, tenant_slug: str, principal_id: int) -> HttpResponse:
        principal = access_principal(self.tenancy, principal_id, write=True)
        return render(request, "confirm.html", {
            "title": f"Remove principal {principal.subject!r}?",
            "body": f"Gateways stop recognising {principal.agent.name} as {principal.subject!r} "
                    f"from {principal.issuer!r} with the next policy bundle: its calls with that "
                    "identity are denied.",
            "action": "Remove principal",
            "cancel_url": reverse("registry:agent", args=[tenant_slug, principal.agent_id]),
        })

    def post(self, request: HttpRequest, tenant_slug: str, principal_id: int) -> HttpResponse:
        principal = access_principal(self.tenancy, principal_id, write=True)
        agent_id = principal.agent_id
        agent_principal_remove(tenant=self.tenant, actor=self.actor,
                                        principal=principal)
        messages.success(request, f"Removed principal {principal.subject!r}.")
        return redirect("registry:agent", tenant_slug, agent_id)
