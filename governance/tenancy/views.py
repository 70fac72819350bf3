"""Web pages: tenant picker, tenant home, members, IdP group mappings, API tokens."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone

from governance.tenancy import invitations, selectors, services
from governance.tenancy.access import (
    access_api_token,
    access_group_mapping,
    access_invitation,
    access_membership,
    visible_tokens,
)
from governance.tenancy.forms import (
    GroupMappingForm,
    GroupMappingRoleForm,
    InvitationForm,
    MemberEditForm,
    TenantSettingsForm,
    TokenCreateForm,
    add_service_errors,
)
from governance.tenancy.mixins import TenantPageView
from governance.tenancy.models import ApiToken
from governance.tenancy.roles import CAPABILITY_LABELS, ROLE_PRECEDENCE, Cap
from governance.web import page_of


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """The tenant picker: straight into the only tenant, a list for several, a clear no-access."""
    memberships = list(selectors.user_memberships(request.user))
    if len(memberships) == 1:
        return redirect("tenancy:tenant_home", tenant_slug=memberships[0].tenant.slug)
    if not memberships:
        identity = request.user.external_identities.order_by("-last_login_at").first()
        return render(
            request, "tenancy/no_access.html",
            {"groups": identity.last_groups if identity else None},
        )
    return render(request, "tenancy/picker.html", {"memberships": memberships})


class TenantHomeView(TenantPageView):
    """Overview of one tenant for any member."""

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        from governance.audit.selectors import audit_event_list

        recent = audit_event_list(self.tenant)[:10] if self.tenancy.can(Cap.VIEW_AUDIT) else []
        return render(request, "tenancy/tenant_home.html", {
            "member_count": selectors.membership_list(self.tenant).count(),
            "mapping_count": selectors.group_mapping_list(self.tenant).count(),
            "recent_events": recent,
            "my_caps": [CAPABILITY_LABELS[c] for c in Cap if self.tenancy.can(c)],
        })


class MemberListView(TenantPageView):
    """Members of the tenant, pending invitations, and the form to invite someone."""

    capability = Cap.MANAGE_MEMBERS

    def invitation_form(self, data=None) -> InvitationForm:
        return InvitationForm(data, sso=settings.OIDC_ENABLED,
                              issuer=getattr(settings, "OIDC_OP_ISSUER", ""))

    def render_page(self, request: HttpRequest, form: InvitationForm, status: int = 200):
        search = request.GET.get("q", "").strip()
        members = selectors.membership_list(self.tenant, search=search)
        return render(request, "tenancy/members.html", {
            "page": page_of(request, members), "form": form, "q": search,
            "query": urlencode({"q": search}) if search else "",
            "invitations": selectors.invitation_list(self.tenant, state="pending")[:100],
            "expiry_days": settings.INVITATION_EXPIRY_DAYS,
        }, status=status)

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        return self.render_page(request, self.invitation_form())

    def post(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        form = self.invitation_form(request.POST)
        if form.is_valid():
            try:
                invitation = invitations.invitation_create(
                    tenant=self.tenant, actor=self.actor, invited_by=request.user,
                    **form.cleaned_data,
                )
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, f"Invited {invitation.invitee} as {invitation.role}: "
                                          "they become a member at their next sign-in.")
                return redirect("tenancy:members", tenant_slug=tenant_slug)
        return self.render_page(request, form, status=400)


class InvitationRevokeView(TenantPageView):
    """Confirm, then revoke a pending invitation."""

    capability = Cap.MANAGE_MEMBERS

    def get(self, request: HttpRequest, tenant_slug: str, invitation_id: int) -> HttpResponse:
        invitation = access_invitation(self.tenancy, invitation_id)
        return render(request, "confirm.html", {
            "title": f"Revoke the invitation of {invitation.invitee}?",
            "body": f"They will not become a {invitation.role} here at their next sign-in. "
                    "You can invite them again later.",
            "action": "Revoke invitation",
            "cancel_url": reverse("tenancy:members", args=[tenant_slug]),
        })

    def post(self, request: HttpRequest, tenant_slug: str, invitation_id: int) -> HttpResponse:
        invitation = access_invitation(self.tenancy, invitation_id)
        try:
            invitations.invitation_revoke(tenant=self.tenant, actor=self.actor,
                                          invitation=invitation)
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
        else:
            messages.success(request, f"Revoked the invitation of {invitation.invitee}.")
        return redirect("tenancy:members", tenant_slug=tenant_slug)


class MemberEditView(TenantPageView):
    """Change a member's role and delegated permissions."""

    capability = Cap.MANAGE_MEMBERS

    def get(self, request: HttpRequest, tenant_slug: str, membership_id: int) -> HttpResponse:
        membership = access_membership(self.tenancy, membership_id)
        form = MemberEditForm(initial={
            "role": membership.role,
            "may_manage_group_mappings": membership.user.has_perm(
                services.MAPPING_PERMISSION, self.tenant),
        })
        return render(request, "tenancy/member_edit.html", {"membership": membership,
                                                             "form": form})

    def post(self, request: HttpRequest, tenant_slug: str, membership_id: int) -> HttpResponse:
        membership = access_membership(self.tenancy, membership_id)
        form = MemberEditForm(request.POST)
        if form.is_valid():
            try:
                services.membership_change_role(
                    tenant=self.tenant, actor=self.actor, membership=membership,
                    role=form.cleaned_data["role"],
                )
                services.membership_set_mapping_delegate(
                    tenant=self.tenant, actor=self.actor, membership=membership,
                    allowed=form.cleaned_data["may_manage_group_mappings"],
                )
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, f"Saved {membership.user.get_username()}.")
                return redirect("tenancy:members", tenant_slug=tenant_slug)
        return render(request, "tenancy/member_edit.html",
                      {"membership": membership, "form": form}, status=400)


class MemberRemoveView(TenantPageView):
    """Confirm, then remove a member."""

    capability = Cap.MANAGE_MEMBERS

    def get(self, request: HttpRequest, tenant_slug: str, membership_id: int) -> HttpResponse:
        membership = access_membership(self.tenancy, membership_id)
        return render(request, "confirm.html", {
            "title": f"Remove {membership.user.get_username()}?",
            "body": "They lose access to this tenant now; their personal API tokens here and "
                    "the service tokens they created are revoked. If an IdP group maps them to "
                    "a role, their next sign-in adds them back.",
            "action": "Remove member",
            "cancel_url": reverse("tenancy:members", args=[tenant_slug]),
        })

    def post(self, request: HttpRequest, tenant_slug: str, membership_id: int) -> HttpResponse:
        membership = access_membership(self.tenancy, membership_id)
        try:
            services.membership_delete(tenant=self.tenant, actor=self.actor,
                                       membership=membership)
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
        else:
            messages.success(request, f"Removed {membership.user.get_username()}.")
        return redirect("tenancy:members", tenant_slug=tenant_slug)


class GroupMappingListView(TenantPageView):
    """IdP group → role mappings, and the form to add one."""

    capability = Cap.MANAGE_GROUP_MAPPINGS

    def render_page(self, request, form, status=200):
        return render(request, "tenancy/group_mappings.html", {
            "page": page_of(request, selectors.group_mapping_list(self.tenant)),
            "form": form,
            "precedence": ROLE_PRECEDENCE,
        }, status=status)

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        return self.render_page(request, GroupMappingForm())

    def post(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        form = GroupMappingForm(request.POST)
        if form.is_valid():
            try:
                services.group_mapping_create(tenant=self.tenant, actor=self.actor,
                                              **form.cleaned_data)
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, f"Group {form.cleaned_data['group']!r} now maps to "
                                          f"{form.cleaned_data['role']}.")
                return redirect("tenancy:group_mappings", tenant_slug=tenant_slug)
        return self.render_page(request, form, status=400)


class GroupMappingEditView(TenantPageView):
    """Change the role of one mapping."""

    capability = Cap.MANAGE_GROUP_MAPPINGS

    def get(self, request: HttpRequest, tenant_slug: str, mapping_id: int) -> HttpResponse:
        mapping = access_group_mapping(self.tenancy, mapping_id)
        return render(request, "tenancy/group_mapping_edit.html", {
            "mapping": mapping, "form": GroupMappingRoleForm(initial={"role": mapping.role}),
        })

    def post(self, request: HttpRequest, tenant_slug: str, mapping_id: int) -> HttpResponse:
        mapping = access_group_mapping(self.tenancy, mapping_id)
        form = GroupMappingRoleForm(request.POST)
        if form.is_valid():
            services.group_mapping_update(tenant=self.tenant, actor=self.actor, mapping=mapping,
                                          role=form.cleaned_data["role"])
            messages.success(request, f"Group {mapping.group!r} now maps to "
                                      f"{form.cleaned_data['role']}.")
            return redirect("tenancy:group_mappings", tenant_slug=tenant_slug)
        return render(request, "tenancy/group_mapping_edit.html",
                      {"mapping": mapping, "form": form}, status=400)


class GroupMappingDeleteView(TenantPageView):
    """Confirm, then delete a mapping."""

    capability = Cap.MANAGE_GROUP_MAPPINGS

    def get(self, request: HttpRequest, tenant_slug: str, mapping_id: int) -> HttpResponse:
        mapping = access_group_mapping(self.tenancy, mapping_id)
        return render(request, "confirm.html", {
            "title": f"Delete the mapping of group {mapping.group!r}?",
            "body": f"Members who hold the {mapping.role} role only through this group lose it "
                    "at their next sign-in.",
            "action": "Delete mapping",
            "cancel_url": reverse("tenancy:group_mappings", args=[tenant_slug]),
        })

    def post(self, request: HttpRequest, tenant_slug: str, mapping_id: int) -> HttpResponse:
        mapping = access_group_mapping(self.tenancy, mapping_id)
        services.group_mapping_delete(tenant=self.tenant, actor=self.actor, mapping=mapping)
        messages.success(request, f"Deleted the mapping of group {mapping.group!r}.")
        return redirect("tenancy:group_mappings", tenant_slug=tenant_slug)


class TokenListView(TenantPageView):
    """API tokens: your own (everyone), all and service tokens (admins). Plaintext shown once."""

    capability = Cap.PERSONAL_TOKENS

    def form(self, data=None) -> TokenCreateForm:
        return TokenCreateForm(
            data, my_role=self.tenancy.role,
            may_issue_service=self.tenancy.can(Cap.MANAGE_SERVICE_TOKENS),
        )

    # The new token's plaintext waits in the session for exactly one GET after the POST
    # (post/redirect/get: a reload cannot create a second token), then it is gone.
    SESSION_KEY = "tollgate_new_token"

    def render_page(self, request, form, *, status=200):
        revealed = request.session.pop(self.SESSION_KEY, None)
        plaintext = None
        if revealed and revealed.get("tenant") == self.tenant.pk:
            token = visible_tokens(self.tenancy).filter(pk=revealed["id"]).first()
            plaintext = (token, revealed["plaintext"]) if token else None
        response = render(request, "tenancy/tokens.html", {
            "page": page_of(request, visible_tokens(self.tenancy)),
            "form": form,
            "plaintext": plaintext,
        }, status=status)
        response["Cache-Control"] = "no-store"
        return response

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        return self.render_page(request, self.form())

    def post(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        form = self.form(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            if data["kind"] == ApiToken.Kind.SERVICE:
                self.tenancy.require(Cap.MANAGE_SERVICE_TOKENS)
            try:
                token, plaintext = services.api_token_create(
                    tenant=self.tenant, actor=self.actor, created_by=request.user,
                    kind=data["kind"], name=data["name"], role=data["role"],
                    expires_at=timezone.now() + timedelta(days=data["expires_in_days"]),
                    owner=request.user if data["kind"] == ApiToken.Kind.PERSONAL else None,
                )
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                request.session[self.SESSION_KEY] = {
                    "tenant": self.tenant.pk, "id": token.pk, "plaintext": plaintext}
                # 303: the browser follows with a GET, so a reload cannot re-submit the form.
                response = HttpResponse(status=303)
                response["Location"] = reverse("tenancy:tokens", args=[tenant_slug])
                return response
        return self.render_page(request, form, status=400)


class TokenRevokeView(TenantPageView):
    """Confirm, then revoke a token."""

    capability = Cap.PERSONAL_TOKENS

    def get(self, request: HttpRequest, tenant_slug: str, token_id: int) -> HttpResponse:
        token = access_api_token(self.tenancy, token_id)
        return render(request, "confirm.html", {
            "title": f"Revoke token {token.name!r} ({token.prefix}…)?",
            "body": "Anything using it gets 401 from its next request. This cannot be undone.",
            "action": "Revoke token",
            "cancel_url": reverse("tenancy:tokens", args=[tenant_slug]),
        })

    def post(self, request: HttpRequest, tenant_slug: str, token_id: int) -> HttpResponse:
        token = access_api_token(self.tenancy, token_id)
        services.api_token_revoke(tenant=self.tenant, actor=self.actor, token=token,
                                  reason="revoked in the web UI")
        messages.success(request, f"Revoked {token.name!r}.")
        return redirect("tenancy:tokens", tenant_slug=tenant_slug)


class TenantSettingsView(TenantPageView):
    """Tenant-wide settings (registry managers)."""

    capability = Cap.MANAGE_REGISTRY

    def get(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        form = TenantSettingsForm(initial=services.tenant_settings(self.tenant))
        return render(request, "tenancy/settings.html", {"form": form})

    def post(self, request: HttpRequest, tenant_slug: str) -> HttpResponse:
        form = TenantSettingsForm(request.POST)
        if form.is_valid():
            try:
                services.tenant_update_settings(
                    tenant=self.tenant, actor=self.actor,
                    **{k: v for k, v in form.cleaned_data.items() if v is not None},
                )
            except ValidationError as exc:
                add_service_errors(form, exc)
            else:
                messages.success(request, "Settings saved.")
                return redirect("tenancy:settings", tenant_slug=tenant_slug)
        return render(request, "tenancy/settings.html", {"form": form}, status=400)
