"""Roles, capabilities and the one permission matrix (the README's table is checked against it)."""

from __future__ import annotations

from enum import StrEnum

from django.db import models


class Role(models.TextChoices):
    """A member's role in one tenant."""

    ADMIN = "admin", "Admin"
    APPROVER = "approver", "Approver"
    AUDITOR = "auditor", "Auditor"
    DEVELOPER = "developer", "Developer"
    VIEWER = "viewer", "Viewer"


# When a user's IdP groups map to several roles in one tenant, the first in this order wins.
ROLE_PRECEDENCE: tuple[str, ...] = (
    Role.ADMIN,
    Role.APPROVER,
    Role.AUDITOR,
    Role.DEVELOPER,
    Role.VIEWER,
)


class Cap(StrEnum):
    """Something a caller may do in a tenant."""

    VIEW = "tenant.view"
    PERSONAL_TOKENS = "tokens.personal"
    MANAGE_MEMBERS = "members.manage"
    MANAGE_GROUP_MAPPINGS = "group_mappings.manage"
    MANAGE_SERVICE_TOKENS = "tokens.service"
    VIEW_AUDIT = "audit.view"
    MANAGE_REGISTRY = "registry.manage"
    MANAGE_GATEWAYS = "gateways.manage"
    OWN_AGENTS = "agents.own"
    REQUEST_ACCESS = "access.request"
    DECIDE_APPROVALS = "approvals.decide"
    BREAK_GLASS = "grants.break_glass"
    MANAGE_NOTIFICATIONS = "notifications.manage"
    MANAGE_EXPORTS = "exports.manage"
    MANAGE_ALERTS = "alerts.manage"
    EXPORT_EVIDENCE = "evidence.export"


_EVERYONE = {Cap.VIEW, Cap.PERSONAL_TOKENS}

ROLE_CAPABILITIES: dict[str, frozenset[Cap]] = {
    Role.ADMIN: frozenset(Cap),
    Role.APPROVER: frozenset(_EVERYONE | {Cap.DECIDE_APPROVALS}),
    Role.AUDITOR: frozenset(_EVERYONE | {Cap.VIEW_AUDIT, Cap.EXPORT_EVIDENCE}),
    Role.DEVELOPER: frozenset(_EVERYONE | {Cap.OWN_AGENTS, Cap.REQUEST_ACCESS}),
    Role.VIEWER: frozenset(_EVERYONE),
}

CAPABILITY_LABELS: dict[Cap, str] = {
    Cap.VIEW: "See the tenant (registry, dashboards)",
    Cap.PERSONAL_TOKENS: "Create and revoke own API tokens",
    Cap.MANAGE_MEMBERS: "Manage members, roles, invitations and SCIM provisioning tokens",
    Cap.MANAGE_GROUP_MAPPINGS: "Manage IdP group → role mappings",
    Cap.MANAGE_SERVICE_TOKENS: "Create and revoke service tokens, revoke anyone's token",
    Cap.VIEW_AUDIT: (
        "Read the audit trail, decision logs and alerts; simulate and shadow-replay policy"
    ),
    Cap.MANAGE_REGISTRY: "Manage servers, tools, scopes, agents, grants",
    Cap.MANAGE_GATEWAYS: (
        "Manage gateways, their server bindings, gateway tokens and bundle signing keys"
    ),
    Cap.OWN_AGENTS: "Own and manage own agents",
    Cap.REQUEST_ACCESS: "Request tool scopes for agents",
    Cap.DECIDE_APPROVALS: "Decide access requests and escalations",
    Cap.BREAK_GLASS: "Break the glass: grant a scope at once, without approval (alerted)",
    Cap.MANAGE_NOTIFICATIONS: "Manage notification channels and see deliveries",
    Cap.MANAGE_EXPORTS: "Manage SIEM exporters (audit events and decision logs)",
    Cap.MANAGE_ALERTS: "Configure alert rules and acknowledge alerts",
    Cap.EXPORT_EVIDENCE: "Generate and download evidence packs",
}


# Administering identity: who is a member and with which role, which IdP groups map to roles,
# and the API tokens that act for people or for the tenant. Only a person (a session, or a
# personal token, which never exceeds its owner's current role) may do it; a service token
# never may, whatever its role: otherwise a service token minted by an admin who was later
# removed or demoted could list members, mint tokens and re-add its creator.
IDENTITY_CAPABILITIES: frozenset[Cap] = frozenset({
    Cap.PERSONAL_TOKENS,
    Cap.MANAGE_MEMBERS,
    Cap.MANAGE_GROUP_MAPPINGS,
    Cap.MANAGE_SERVICE_TOKENS,
})


def capabilities(role: str) -> frozenset[Cap]:
    return ROLE_CAPABILITIES.get(role, frozenset())


def roles_with(cap: Cap) -> list[str]:
    """The roles that carry ``cap``, strongest first (e.g. who to alert about its use)."""
    return [role for role in ROLE_PRECEDENCE if cap in capabilities(role)]


def principal_capabilities(role: str, *, service_token: bool) -> frozenset[Cap]:
    """What a caller with ``role`` may do: a person (session or personal token) everything the
    role carries, a service token the same without the identity capabilities."""
    held = capabilities(role)
    return held - IDENTITY_CAPABILITIES if service_token else held


def role_covers(holder: str, wanted: str) -> bool:
    """True when ``holder`` can do everything ``wanted`` can (tokens never exceed their owner)."""
    return capabilities(wanted) <= capabilities(holder)


def strongest(roles: list[str]) -> str | None:
    for role in ROLE_PRECEDENCE:
        if role in roles:
            return role
    return None


def permission_matrix_markdown() -> str:
    """The README's permission table, generated from ROLE_CAPABILITIES (a test compares them)."""
    roles = list(ROLE_PRECEDENCE)
    lines = [
        "| Capability | " + " | ".join(roles) + " | service token |",
        "|---|" + "---|" * (len(roles) + 1),
    ]
    for cap in Cap:
        marks = ["✓" if cap in capabilities(role) else "" for role in roles]
        service = "never" if cap in IDENTITY_CAPABILITIES else "as its role"
        lines.append(f"| {CAPABILITY_LABELS[cap]} | " + " | ".join(marks) + f" | {service} |")
    return "\n".join(lines)
