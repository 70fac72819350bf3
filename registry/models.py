"""The registry: MCP servers, their pinned tools, tool scopes, agents and grants (DESIGN.md §4)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from governance.tenancy.models import TenantScopedModel


class DataClass(models.TextChoices):
    PII = "pii", "PII"
    PHI = "phi", "PHI"
    PCI = "pci", "PCI"
    FINANCIAL = "financial", "Financial"
    CONFIDENTIAL = "confidential", "Confidential"
    PUBLIC = "public", "Public"


class McpFeature(models.TextChoices):
    """What a gateway forwards to a server besides tools (each off by default)."""

    RESOURCES = "resources", "Resources (list, read, templates, subscribe)"
    PROMPTS = "prompts", "Prompts (list, get)"
    COMPLETION = "completion", "Completion of prompt and resource arguments"


class Risk(models.TextChoices):
    LOW = "low", "Low"
    MEDIUM = "medium", "Medium"
    HIGH = "high", "High"
    CRITICAL = "critical", "Critical"


class LifecycleMixin:
    """Models with a ``status`` and a ``TRANSITIONS`` map of the allowed next states."""

    TRANSITIONS: dict[str, set[str]] = {}

    def can_become(self, status: str) -> bool:
        return status in self.TRANSITIONS.get(self.status, set())


class McpServer(LifecycleMixin, TenantScopedModel):
    """An MCP server agents reach through gateways."""

    audit_fields = ("name", "description", "transport", "url", "command", "version",
                    "data_classes", "risk_tier", "forward", "status")

    class Transport(models.TextChoices):
        STREAMABLE_HTTP = "streamable-http", "Streamable HTTP"
        SSE = "sse", "SSE"
        STDIO = "stdio", "stdio"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"
        RETIRED = "retired", "Retired"

    TRANSITIONS: dict[str, set[str]] = {
        Status.PENDING: {Status.ACTIVE, Status.RETIRED},
        Status.ACTIVE: {Status.SUSPENDED, Status.RETIRED},
        Status.SUSPENDED: {Status.ACTIVE, Status.RETIRED},
        Status.RETIRED: set(),
    }

    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    transport = models.CharField(max_length=20, choices=Transport.choices)
    url = models.URLField(max_length=500, blank=True)
    command = models.JSONField(default=list, blank=True)  # argv for stdio servers
    version = models.CharField(max_length=50, blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    data_classes = models.JSONField(default=list, blank=True)
    risk_tier = models.CharField(max_length=10, choices=Risk.choices, default=Risk.MEDIUM)
    # McpFeature values gateways forward besides tools (bundle: the server's ``forward``).
    forward = models.JSONField(default=list, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    # Where the server came from when it was imported from an MCP registry server.json.
    registry_name = models.CharField(max_length=200, blank=True)
    # The newest tools/list run (shown on every server row without another query).
    latest_sync = models.ForeignKey(
        "ServerSync", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    last_synced_at = models.DateTimeField(null=True, blank=True)  # last successful sync
    # The gateways that front this server and report its tools (registry/gateway_discovery.py);
    # the M2M lives here so the core (bundles) never imports the registry.
    gateways = models.ManyToManyField(
        "bundles.Gateway", through="GatewayBinding", blank=True, related_name="servers"
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "name"], name="server_unique_name"),
            models.CheckConstraint(
                condition=models.Q(status__in=["pending", "active", "suspended", "retired"]),
                name="server_status_valid",
            ),
            models.CheckConstraint(
                condition=(models.Q(transport="stdio") | ~models.Q(url="")),
                name="server_remote_has_url",
            ),
        ]
        # Object permission: may approve access to every scope made of this server's tools.
        permissions = [("approve_access", "Can approve access to this server's tools")]

    def __str__(self) -> str:
        return self.name


class ServerSync(TenantScopedModel):
    """One run of ``tools/list`` against a server: queued → running → succeeded | failed."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    class Trigger(models.TextChoices):
        MANUAL = "manual", "Started by a person"
        API = "api", "Started through the API"
        SCHEDULED = "scheduled", "Scheduled re-sync"
        GATEWAY = "gateway", "Reported by a gateway"

    class Via(models.TextChoices):
        WORKER = "worker", "A worker lists the tools"
        GATEWAY = "gateway", "The server's gateways report the tools"

    server = models.ForeignKey(McpServer, on_delete=models.CASCADE, related_name="syncs")
    # Who lists the tools: a worker (remote servers, allow-listed stdio commands) or the
    # server's gateways (stdio servers: the control plane never runs a tenant's command).
    via = models.CharField(max_length=10, choices=Via.choices, default=Via.WORKER)
    # The gateway whose report completed the run (via gateway).
    gateway = models.ForeignKey(
        "bundles.Gateway", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    trigger = models.CharField(max_length=10, choices=Trigger.choices, default=Trigger.MANUAL)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # What the run is doing now, for the progress display ("Connecting…", "Recording 12 tools").
    progress = models.CharField(max_length=200, blank=True)
    tools_listed = models.PositiveIntegerField(null=True, blank=True)
    summary = models.JSONField(default=dict, blank=True)  # SyncSummary counts on success
    error_code = models.CharField(max_length=40, blank=True)
    error_message = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(status__in=["queued", "running", "succeeded", "failed"]),
                name="sync_status_valid",
            ),
            # At most one queued or running sync per server: a second request joins the first.
            models.UniqueConstraint(
                fields=["server"],
                condition=models.Q(status__in=["queued", "running"]),
                name="sync_one_open_per_server",
            ),
        ]

    def __str__(self) -> str:
        return f"sync of {self.server_id} ({self.status})"

    @property
    def is_open(self) -> bool:
        return self.status in (self.Status.QUEUED, self.Status.RUNNING)


class GatewayBinding(TenantScopedModel):
    """A gateway fronts a server: it may report the server's tools, and is asked to."""

    gateway = models.ForeignKey("bundles.Gateway", on_delete=models.CASCADE,
                                related_name="server_bindings")
    server = models.ForeignKey(McpServer, on_delete=models.CASCADE, related_name="bindings")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    # Set when a sync asks the gateways to report (the status answer names the server until
    # a report arrives); cleared by the report.
    requested_at = models.DateTimeField(null=True, blank=True)
    last_reported_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["server__name", "gateway__name"]
        constraints = [
            models.UniqueConstraint(fields=["gateway", "server"], name="binding_unique_pair"),
        ]

    def __str__(self) -> str:
        return f"{self.gateway_id} → {self.server_id}"


class Tool(TenantScopedModel):
    """A tool of a server, pinned to the definition someone approved."""

    # The pinned definition (the drifted one is recorded with the drift).
    audit_fields = ("name", "title", "description", "input_schema", "output_schema",
                    "annotations")

    class Status(models.TextChoices):
        PENDING_REVIEW = "pending_review", "Pending review"
        APPROVED = "approved", "Approved"
        QUARANTINED = "quarantined", "Quarantined (definition drifted)"
        BLOCKED = "blocked", "Blocked"

    server = models.ForeignKey(McpServer, on_delete=models.PROTECT, related_name="tools")
    name = models.CharField(max_length=200)
    title = models.CharField(max_length=300, blank=True)
    description = models.TextField(blank=True)
    input_schema = models.JSONField(default=dict, blank=True)
    output_schema = models.JSONField(null=True, blank=True)
    annotations = models.JSONField(default=dict, blank=True)
    definition_sha256 = models.CharField(max_length=64)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING_REVIEW)
    # A drifted definition waits here, next to the pinned one, until it is approved or blocked.
    drifted_definition = models.JSONField(null=True, blank=True)
    drifted_sha256 = models.CharField(max_length=64, blank=True)
    # Tool-poisoning review (registry/review_findings.py) of the current definition and of the
    # drifted one: [{code, severity, where, message, excerpt}], computed when recorded. A
    # definition with findings is approved only with an explicit confirmation.
    findings = models.JSONField(default=list, blank=True)
    drifted_findings = models.JSONField(default=list, blank=True)
    present = models.BooleanField(default=True)  # still listed by the server at the last sync
    first_seen_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["server__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["server", "name"], name="tool_unique_name"),
            models.CheckConstraint(
                condition=models.Q(
                    status__in=["pending_review", "approved", "quarantined", "blocked"]
                ),
                name="tool_status_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.server.name}/{self.name}"

    @property
    def findings_to_approve(self) -> list[dict]:
        """The findings of the definition approving would pin (see ``sha256_to_approve``)."""
        return self.drifted_findings if self.drifted_definition is not None else self.findings

    @property
    def sha256_to_approve(self) -> str:
        """The hash approving would pin: the drifted definition's if one waits, else the
        current one (approve forms send it back so a stale page approves nothing)."""
        return self.drifted_sha256 if self.drifted_definition is not None \
            else self.definition_sha256


class ToolScope(TenantScopedModel):
    """A named set of tools (``payroll:read``) that grants are made of."""

    audit_fields = ("name", "description", "risk_level", "data_classes")

    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    risk_level = models.CharField(max_length=10, choices=Risk.choices, default=Risk.MEDIUM)
    data_classes = models.JSONField(default=list, blank=True)
    tools = models.ManyToManyField(Tool, blank=True, related_name="scopes")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "name"], name="scope_unique_name"),
        ]
        # Object permission: may approve access to this scope (an approval stage can name it).
        permissions = [("approve_access", "Can approve access to this scope")]

    def __str__(self) -> str:
        return self.name


class Agent(LifecycleMixin, TenantScopedModel):
    """An AI agent, recognised by gateways through its principals."""

    audit_fields = ("name", "purpose", "environment", "owner")

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"

    TRANSITIONS: dict[str, set[str]] = {
        Status.ACTIVE: {Status.SUSPENDED},
        Status.SUSPENDED: {Status.ACTIVE},
    }

    name = models.CharField(max_length=200)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="owned_agents",
    )
    purpose = models.TextField(blank=True)
    environment = models.CharField(max_length=50, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACTIVE)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "name"], name="agent_unique_name"),
            models.CheckConstraint(
                condition=models.Q(status__in=["active", "suspended"]), name="agent_status_valid"
            ),
        ]
        permissions = [("manage_agent", "Can manage this agent (owner)")]

    def __str__(self) -> str:
        return self.name


class AgentPrincipal(TenantScopedModel):
    """An (issuer, subject) pair a gateway recognises the agent by: JWT sub, client id, SPIFFE.

    ``kind`` says which claim of a token it matches: the token's subject (``sub``, the default),
    or its OAuth client (``azp``/``client_id``) — the latter also recognises the agent when it
    acts for a person (a token whose ``sub`` is the person, issued to the agent's client)."""

    class Kind(models.TextChoices):
        SUBJECT = "subject", "Token subject (sub)"
        CLIENT = "client", "OAuth client id (azp / client_id)"

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="principals")
    issuer = models.CharField(max_length=500)
    subject = models.CharField(max_length=500)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.SUBJECT)

    class Meta:
        ordering = ["issuer", "subject"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "issuer", "subject"], name="principal_unique_per_tenant"
            ),
            models.CheckConstraint(condition=models.Q(kind__in=["subject", "client"]),
                                   name="principal_kind_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.subject} @ {self.issuer}"


class Grant(TenantScopedModel):
    """Agent × scope, with limits, argument constraints, an approval mode and an expiry."""

    audit_fields = ("agent", "scope", "calls_per_minute", "calls_per_day", "window_start",
                    "window_end", "window_days", "window_tz", "argument_constraints",
                    "approval_mode", "approval_condition", "on_behalf_of_group", "expires_at",
                    "status")

    class ApprovalMode(models.TextChoices):
        NEVER = "never", "Never"
        ALWAYS = "always", "Always"
        WHEN = "when", "When arguments match a condition"

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        REVOKED = "revoked", "Revoked"
        EXPIRED = "expired", "Expired"

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="grants")
    scope = models.ForeignKey(ToolScope, on_delete=models.PROTECT, related_name="grants")
    calls_per_minute = models.PositiveIntegerField(null=True, blank=True)
    calls_per_day = models.PositiveIntegerField(null=True, blank=True)
    # Time window (in window_tz): calls allowed only between start and end on the given weekdays.
    window_start = models.TimeField(null=True, blank=True)
    window_end = models.TimeField(null=True, blank=True)
    window_days = models.JSONField(default=list, blank=True)  # 0=Monday … 6=Sunday; [] = every day
    window_tz = models.CharField(max_length=64, default="UTC")
    # {tool name: {argument: {enum|const|minimum|maximum|maxLength|pattern|within|url: …}}}
    argument_constraints = models.JSONField(default=dict, blank=True)
    approval_mode = models.CharField(
        max_length=10, choices=ApprovalMode.choices, default=ApprovalMode.NEVER
    )
    # Same shape as argument_constraints: the call is escalated when every listed check holds.
    approval_condition = models.JSONField(default=dict, blank=True)
    # Delegation: only calls made on behalf of a person in this IdP group (the token's groups
    # claim) are covered; empty: no such requirement (the agent may act on its own).
    on_behalf_of_group = models.CharField(max_length=200, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACTIVE)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # An admin's emergency self-grant (approvals.services.break_glass_grant): short, alerted,
    # flagged here, in the audit trail and in the bundle.
    break_glass = models.BooleanField(default=False)
    justification = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(status__in=["active", "revoked", "expired"]),
                name="grant_status_valid",
            ),
            models.CheckConstraint(
                condition=models.Q(approval_mode__in=["never", "always", "when"]),
                name="grant_approval_mode_valid",
            ),
            models.CheckConstraint(
                condition=(
                    models.Q(window_start__isnull=True, window_end__isnull=True)
                    | models.Q(window_start__isnull=False, window_end__isnull=False)
                ),
                name="grant_window_complete",
            ),
        ]
        indexes = [
            models.Index(fields=["tenant", "status", "expires_at"], name="grant_tenant_active")
        ]

    def __str__(self) -> str:
        return f"{self.agent} → {self.scope}"

    def status_at(self, at=None) -> str:
        """The status at ``at`` (default now): an active grant past its expiry is ``expired``
        already, before the per-minute sweep (``grants_expire_due``) records it."""
        at = at or timezone.now()
        if (self.status == self.Status.ACTIVE and self.expires_at is not None
                and self.expires_at <= at):
            return self.Status.EXPIRED
        return self.status

    def is_in_force(self, at=None) -> bool:
        at = at or timezone.now()
        return self.status == self.Status.ACTIVE and (
            self.expires_at is None or self.expires_at > at
        )
