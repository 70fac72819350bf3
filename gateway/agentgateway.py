"""A bundle's ``mcp/data.json`` → an agentgateway configuration (YAML), as far as it can go.

The shape follows agentgateway's standalone configuration file as documented at
docs.agentgateway.dev ("Authenticate and authorize requests", the ``examples/authorization``
configuration, and the "CEL expressions" reference, as of agentgateway's main branch in 2026):
``binds[].listeners[].routes[]`` with ``policies.mcpAuthorization.rules`` (a list of CEL
expressions, any one of which allows the MCP request; none matching denies it) and
``backends[].mcp.targets[]``. The CEL variables used are the documented ``jwt.<claim>``
(``jwt.iss``, ``jwt.sub``), ``mcp.tool.target`` and ``mcp.tool.name``.

One route per active MCP server (``/mcp/<server>``), whose single target is named after the
server, and one rule per (principal, tool) the decision semantics (gateway/decision.py, DESIGN.md
§4) could allow::

    jwt.iss == "https://idp.example" && jwt.sub == "payroll-bot"
        && mcp.tool.target == "payroll" && mcp.tool.name == "read_salary"

A rule exists when the principal's agent is active, the server active, the tool approved (in
the bundle: quarantined, blocked, pending tools are absent) and an active grant of that agent,
unexpired at export time, is for a scope containing the tool. Everything else is default deny:
no rule. The export never allows a call that ``decide()`` refuses; kind by kind:

- **time windows and grant expiry** are expressed: the rule adds a condition on
  ``request.startTime`` (a timestamp in agentgateway's request context) with the CEL
  timezone-aware getters (``getHours("Europe/Paris")`` …) and ``timestamp("…")``. A gateway
  whose CEL lacks either fails the expression, and a failed expression denies;
- **argument constraints**: agentgateway's ``mcpAuthorization`` context is identity-only (tool
  target and name; ``mcp.tool.arguments`` is filled in after the request, for logs), so a tool a
  grant constrains gets no rule from that grant;
- **approvals**: a grant that requires approval always gives no rule by default (agentgateway
  cannot hold a call for a human); one that requires it *when* a condition matches gives no rule
  for the tools its condition names. ``approvals="allow"`` exports them as plain allows instead;
- **rate limits and quotas**: agentgateway's local rate limit is a token bucket per route (every
  agent and request together, bursting past a per-minute count) and its remote one needs a
  rate-limit service: neither counts calls per grant, so a grant with a limit gives no rule;
- **delegation**: a grant that requires the person the agent acts for to be in a group
  (``on_behalf_of_group``) gives no rule (fail closed); agents known only by an OAuth client id
  (data.json ``clients``) get no rules either (the rules match ``jwt.sub``);
- **pinned definition hashes**: CEL here cannot see a tool's definition, so by default
  (``unpinned="deny"``) no tool gets a rule; ``unpinned="allow"`` exports the rules anyway and
  says that a changed definition is not refused at this gateway.

What is not expressed is listed in the output (YAML comments, so agentgateway loads the file as
is) and in :attr:`Export.not_expressed`, what is expressed with the request time in
:attr:`Export.expressed`.

Pure Python, no Django, no YAML library: the emitter below writes a small, deterministic subset
(every string double-quoted, ASCII only).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time
from typing import Any
from urllib.parse import quote

from gateway.decision import tool_key

APPROVALS = ("deny", "allow")
UNPINNED = ("deny", "allow")
DOCS = "https://agentgateway.dev/docs/reference/cel/"
NOTHING = "false"  # the rule of a server no agent may call

# --- CEL --------------------------------------------------------------------------------------


def cel_string(value: str) -> str:
    """``value`` as a CEL double-quoted string literal (backslash escapes for ``"``, ``\\`` and
    every control or line-separating character; other characters as they are)."""
    out = ['"']
    for char in value:
        code = ord(char)
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\r":
            out.append("\\r")
        elif char == "\t":
            out.append("\\t")
        elif code < 0x20 or 0x7F <= code <= 0x9F or code in (0x2028, 0x2029):
            out.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:
            raise ValueError("a lone surrogate cannot be written in CEL")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


@dataclass(frozen=True, order=True)
class Rule:
    """One allowed (principal, tool) pair; :attr:`cel` is its expression."""

    server: str
    tool: str
    issuer: str
    subject: str
    condition: str = ""  # CEL on the request time (window, expiry); "" when there is none

    @property
    def cel(self) -> str:
        text = (f"jwt.iss == {cel_string(self.issuer)} && jwt.sub == {cel_string(self.subject)}"
                f" && mcp.tool.target == {cel_string(self.server)}"
                f" && mcp.tool.name == {cel_string(self.tool)}")
        return f"{text} && {self.condition}" if self.condition else text


# The request's start time in agentgateway's CEL context (a timestamp; absent → the rule fails,
# and a failed rule denies).
NOW = "request.startTime"


def cel_timestamp(value: datetime) -> str:
    """``timestamp("2026-11-25T09:00:00Z")`` (UTC, microseconds when there are any)."""
    utc = value.astimezone(UTC)
    spec = "microseconds" if utc.microsecond else "seconds"
    return f"timestamp({cel_string(utc.replace(tzinfo=None).isoformat(timespec=spec) + 'Z')})"


def _seconds(value: time) -> int:
    return value.hour * 3600 + value.minute * 60 + value.second


def cel_window(window: Mapping[str, Any]) -> str | None:
    """The CEL condition that holds exactly when gateway.decision's ``_in_window`` does, or None
    when no time is in the window (start == end). ``days`` are Python weekdays (Monday 0); CEL's
    ``getDayOfWeek`` counts from Sunday."""
    start, end = time.fromisoformat(window["start"]), time.fromisoformat(window["end"])
    if start.microsecond or end.microsecond:
        raise ValueError("window bounds are whole seconds")
    if start == end:
        return None
    tz = cel_string(window["tz"])
    now = (f"({NOW}.getHours({tz}) * 3600 + {NOW}.getMinutes({tz}) * 60"
           f" + {NOW}.getSeconds({tz}))")
    days = sorted({int(d) for d in window.get("days") or []})

    def on(weekdays: list[int]) -> str:
        if not days or len(days) == 7:
            return ""
        cel_days = ", ".join(str((d + 1) % 7) for d in sorted(weekdays, key=lambda d: (d + 1) % 7))
        return f" && {NOW}.getDayOfWeek({tz}) in [{cel_days}]"

    if start < end:
        return f"({now} >= {_seconds(start)} && {now} < {_seconds(end)}{on(days)})"
    # Overnight: after midnight the window belongs to the previous day.
    following = [(d + 1) % 7 for d in days]
    return (f"(({now} >= {_seconds(start)}{on(days)})"
            f" || ({now} < {_seconds(end)}{on(following)}))")


# --- Translation ------------------------------------------------------------------------------


@dataclass
class Export:
    """The translation: rules per server, what could not be expressed, and the text."""

    tenant: str
    revision: int | None
    expires_at: str | None
    approvals: str
    unpinned: str = "deny"
    rules: dict[str, list[Rule]] = field(default_factory=dict)
    servers: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    not_expressed: list[dict[str, Any]] = field(default_factory=list)
    expressed: list[dict[str, Any]] = field(default_factory=list)
    left_out: list[dict[str, str]] = field(default_factory=list)

    def config(self) -> dict[str, Any]:
        """The agentgateway configuration as plain values."""
        routes = []
        for name in sorted(self.servers):
            server = self.servers[name]
            routes.append({
                "name": f"tollgate-{name}",
                "matches": [{"path": {"pathPrefix": f"/mcp/{quote(name, safe='')}"}}],
                # An empty rule list would allow everything (agentgateway skips authorization
                # without rules): a server nobody may use gets one rule that never matches.
                "policies": {"mcpAuthorization": {
                    "rules": [rule.cel for rule in self.rules.get(name, [])] or [NOTHING]}},
                "backends": [{"mcp": {"targets": [_target(name, server)]}}],
            })
        return {"binds": [{"port": 3000, "listeners": [{"routes": routes}]}]}

    @property
    def text(self) -> str:
        return render(self)


def _target(name: str, server: Mapping[str, Any]) -> dict[str, Any]:
    transport = server.get("transport")
    if transport == "sse":
        return {"name": name, "sse": {"host": server.get("url", "")}}
    if transport == "stdio":
        # The bundle does not carry the command line of a stdio server: fill it in.
        return {"name": name, "stdio": {"cmd": "", "args": []}}
    return {"name": name, "mcp": {"host": server.get("url", "")}}


def _instant(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def translate(data: Mapping[str, Any], *, at: datetime, revision: int | None = None,
              expires_at: str | None = None, approvals: str = "deny",
              unpinned: str = "deny") -> Export:
    """Translate a parsed ``mcp/data.json`` as of ``at`` (aware): grants expired by then give
    no rule. ``revision`` and ``expires_at`` (the bundle's) go in the header."""
    if at.tzinfo is None:
        raise ValueError("the export's time must be timezone-aware")
    if approvals not in APPROVALS:
        raise ValueError(f"approvals must be one of {', '.join(APPROVALS)}")
    if unpinned not in UNPINNED:
        raise ValueError(f"unpinned must be one of {', '.join(UNPINNED)}")
    export = Export(tenant=str(data.get("tenant", "")), revision=revision,
                    expires_at=expires_at, approvals=approvals, unpinned=unpinned)
    servers = data.get("servers", {})
    for name in sorted(servers):
        if servers[name].get("status") == "active":
            export.servers[name] = servers[name]
            export.rules[name] = []
            if servers[name].get("transport") == "stdio":
                export.not_expressed.append({
                    "kind": "stdio_command", "server": name,
                    "detail": "the bundle does not carry the command of a stdio server",
                    "effect": "fill in the target's stdio cmd and args"})
        else:
            export.left_out.append({"what": "server", "name": name,
                                    "why": f"server is {servers[name].get('status')}"})
    for key in sorted(data.get("withheld_tools", {})):
        export.left_out.append({"what": "tool", "name": key,
                                "why": f"tool is {data['withheld_tools'][key]}"})
    tools = data.get("tools", {})
    agents = data.get("agents", {})
    principals = data.get("principals", {})
    found: set[Rule] = set()
    pinned: dict[str, str] = {}
    for grant in sorted(data.get("grants", []),
                        key=lambda g: (str(g["agent"]), len(str(g["id"])), str(g["id"]))):
        gid, agent_name = str(grant["id"]), grant["agent"]
        agent = agents.get(agent_name)
        if agent is None or agent.get("status") != "active":
            export.left_out.append({"what": "grant", "name": gid, "why": f"agent {agent_name} "
                                    f"is {agent.get('status') if agent else 'unknown'}"})
            continue
        if grant.get("expires_at") and _instant(grant["expires_at"]) <= at:
            export.left_out.append({"what": "grant", "name": gid, "why": "grant expired"})
            continue
        base = {"grant": gid, "agent": agent_name, "scope": grant["scope"]}
        refused = _refused_tools(export, base, grant)
        if refused is None:
            continue
        condition = _time_condition(export, base, grant)
        if condition is None:
            continue
        pairs = [(issuer, subject) for issuer, subject in agent.get("principals", [])
                 if principals.get(issuer, {}).get(subject) == agent_name]
        scope = data.get("scopes", {}).get(grant["scope"], {})
        for key in scope.get("tools", []):
            tool = tools.get(key)
            if tool is None or tool_key(tool["server"], tool["name"]) != key:
                continue
            if tool["name"] in refused or tool["server"] not in export.servers:
                continue
            pinned[key] = tool["definition_sha256"]
            if unpinned == "deny":
                continue
            for issuer, subject in pairs:
                found.add(Rule(tool["server"], tool["name"], issuer, subject, condition))
    # A rule without a condition makes the same principal's conditional rules for the tool moot.
    always = {(r.server, r.tool, r.issuer, r.subject) for r in found if not r.condition}
    for rule in sorted(found):
        if not rule.condition or (rule.server, rule.tool, rule.issuer, rule.subject) not in always:
            export.rules[rule.server].append(rule)
    effect = ("no rule: refused (CEL here cannot compare the served definition with the pinned "
              "one; export with unpinned=allow to accept that)" if unpinned == "deny" else
              "allowed whatever definition the server serves (unpinned=allow)")
    for key in sorted(pinned):
        export.not_expressed.append({"kind": "pinned_definition", "tool": key,
                                     "detail": f"definition_sha256 {pinned[key]}",
                                     "effect": effect})
    return export


def _refused_tools(export: Export, base: dict[str, Any],
                   grant: Mapping[str, Any]) -> set[str] | None:
    """The tool names this grant gives no rule for (checks agentgateway cannot run: argument
    constraints, approval conditions), or None when it gives no rule at all (approval always,
    rate limits and quotas). Each is listed in ``export.not_expressed``."""
    refused: set[str] = set()
    constraints = grant.get("argument_constraints") or {}
    constrained = {name for name, args in constraints.items() if args}
    if constrained:
        export.not_expressed.append({
            **base, "kind": "argument_constraints", "detail": _json(constraints),
            "effect": "no rule for " + ", ".join(_json(n) for n in sorted(constrained))
                      + " (agentgateway's authorization CEL does not see arguments)"})
        refused |= constrained
    mode = grant.get("approval_mode", "never")
    if mode != "never":
        condition = grant.get("approval_condition") or {}
        asked = {name for name, args in condition.items() if args}
        detail = "always" if mode == "always" else "when " + _json(condition)
        if export.approvals == "allow":
            effect = "allowed WITHOUT approval"
        elif mode == "always":
            effect = ("no rule: calls needing approval are refused (agentgateway cannot hold "
                      "a call for a human)")
        else:
            effect = ("no rule for " + (", ".join(_json(n) for n in sorted(asked)) or "(none)")
                      + ": calls that may need approval are refused (agentgateway cannot hold "
                        "a call for a human)")
        export.not_expressed.append({**base, "kind": "approval", "detail": detail,
                                     "effect": effect})
        if export.approvals == "deny":
            refused |= asked
    limits = [f"{grant[k]} calls per {unit}" for k, unit in
              (("calls_per_minute", "minute"), ("calls_per_day", "day"))
              if grant.get(k) is not None]
    if limits:
        export.not_expressed.append({
            **base, "kind": "rate_limit", "detail": ", ".join(limits),
            "effect": "no rule: refused (agentgateway has no per-grant call count to emit)"})
    group = grant.get("on_behalf_of_group")
    if group:
        export.not_expressed.append({
            **base, "kind": "on_behalf_of", "detail": f"only on behalf of a member of {group}",
            "effect": "no rule: refused (the rules match the agent's own token; who it acts for "
                      "and that person's groups are not checked here)"})
    if limits or group or (mode == "always" and export.approvals == "deny"):
        return None
    return refused


def _time_condition(export: Export, base: dict[str, Any], grant: Mapping[str, Any]) -> str | None:
    """The CEL condition of the grant's window and expiry on ``request.startTime`` ("" when it
    has neither), or None when no time is in its window. Each is listed in ``export.expressed``."""
    parts = []
    if grant.get("window"):
        window = grant["window"]
        days = ",".join(str(d) for d in window.get("days") or []) or "every day"
        detail = f"{window['start']}-{window['end']} {window['tz']} (days {days})"
        try:
            condition = cel_window(window)
        except ValueError:  # not written by Tollgate's compiler (HH:MM): refuse, do not guess
            condition = None
        if condition is None:
            export.not_expressed.append({**base, "kind": "time_window", "detail": detail,
                                         "effect": "no rule: no time of this window can be "
                                                   "expressed"})
            return None
        export.expressed.append({**base, "kind": "time_window", "detail": detail})
        parts.append(condition)
    if grant.get("expires_at"):
        export.expressed.append({**base, "kind": "grant_expiry",
                                 "detail": f"expires {grant['expires_at']}"})
        parts.append(f"{NOW} < {cel_timestamp(_instant(grant['expires_at']))}")
    return " && ".join(parts)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# --- YAML -------------------------------------------------------------------------------------

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")


def yaml_string(value: str) -> str:
    """A YAML double-quoted scalar, ASCII only."""
    out = ['"']
    for char in value:
        code = ord(char)
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif 0x20 <= code < 0x7F:
            out.append(char)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return yaml_string(value)
    raise TypeError(f"cannot write {type(value).__name__}")


def _key(key: str) -> str:
    return key if _PLAIN_KEY.match(key) and key not in ("null", "true", "false") else (
        yaml_string(key))


def _emit(value: Any, indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{_key(key)}:")
                lines.extend(_emit(item, indent + 2))
            else:
                lines.append(f"{pad}{_key(key)}: {_inline(item)}")
    else:
        for item in value:
            if isinstance(item, dict | list) and item:
                nested = _emit(item, indent + 2)
                lines.append(f"{pad}- {nested[0].lstrip()}")
                lines.extend(nested[1:])
            else:
                lines.append(f"{pad}- {_inline(item)}")
    return lines


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)


def _comment(text: str) -> str:
    """One comment line: never a line break inside (names are JSON-escaped)."""
    ascii_text = text.encode("ascii", "backslashreplace").decode()
    return "# " + re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", ascii_text)


def _who(entry: Mapping[str, Any]) -> str:
    if "grant" in entry:
        return (f"grant {entry['grant']} (agent {_json(entry['agent'])}, scope "
                f"{_json(entry['scope'])})")
    if "server" in entry:
        return f"server {_json(entry['server'])}"
    return f"tool {_json(entry['tool'])}"


def render(export: Export) -> str:
    """The configuration file: a header, what was not expressed, then the YAML."""
    revision = f"r{export.revision}" if export.revision is not None else "(no revision)"
    head = [
        f"Tollgate policy of tenant {_json(export.tenant)}, bundle {revision}, as an "
        "agentgateway configuration.",
        "Shape: agentgateway's standalone config file (binds/listeners/routes, policies."
        "mcpAuthorization.rules, backends.mcp.targets) as in agentgateway's "
        f"examples/authorization/config.yaml and CEL reference ({DOCS}), main branch, 2026.",
        f"Valid until {export.expires_at or '(unknown)'} (the bundle's expires_at): export "
        "again before then.",
        "Authenticate agents with a jwtAuth policy for your issuer(s); each rule checks jwt.iss "
        "and jwt.sub.",
        "Default deny: a call no rule matches is refused. Approvals: "
        + ("calls needing approval are refused." if export.approvals == "deny" else
           "grants needing approval are exported as plain allows."),
        "Never more than Tollgate allows: what this CEL cannot check (arguments, rate limits "
        "and quotas, approvals) gives no rule.",
        "Pinned definitions: " + (
            "every tool is refused, since CEL here cannot compare a tool's definition with the "
            "pinned one (export with unpinned=allow to accept that risk)."
            if export.unpinned == "deny" else
            "NOT checked (unpinned=allow): a changed tool definition is not refused here."),
        "Time windows and grant expiry are CEL on request.startTime (timezone-aware getters); "
        "a gateway without them fails those rules, which denies.",
    ]
    lines = [_comment(text) for text in head]
    lines.append("#")
    lines.append(_comment("x-tollgate-not-expressed (refused here unless it says otherwise; "
                          "Tollgate's reference gateway enforces them):"))
    if not export.not_expressed:
        lines.append(_comment("  (nothing)"))
    for entry in export.not_expressed:
        lines.append(_comment(f"- {entry['kind']}: {_who(entry)}: {entry['detail']} -> "
                              f"{entry['effect']}"))
    lines.append("#")
    lines.append(_comment("x-tollgate-expressed (CEL on request.startTime):"))
    if not export.expressed:
        lines.append(_comment("  (nothing)"))
    for entry in export.expressed:
        lines.append(_comment(f"- {entry['kind']}: {_who(entry)}: {entry['detail']}"))
    lines.append("#")
    lines.append(_comment("Left out (default deny):"))
    if not export.left_out:
        lines.append(_comment("  (nothing)"))
    for entry in export.left_out:
        lines.append(_comment(f"- {entry['what']} {_json(entry['name'])}: {entry['why']}"))
    lines.extend(_emit(export.config(), 0))
    return "\n".join(lines) + "\n"
