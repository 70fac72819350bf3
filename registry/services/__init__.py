"""Every write to the registry: keyword-only, atomic, audited in the same transaction.

One module per entity (servers, tools, scopes, agents, grants); ``common`` holds what they
share. Callers inside the registry import the entity module; this package re-exports the
services for the other apps and the tests, so ``from registry import services`` keeps working.
"""

from registry.services.agents import (
    AGENT_FIELDS,
    AGENT_PERMISSION,
    agent_create,
    agent_principal_add,
    agent_principal_remove,
    agent_transition,
    agent_update,
)
from registry.services.grants import (
    GRANT_FIELDS,
    TERM_FIELDS,
    grant_create,
    grant_revoke,
    grant_update,
)
from registry.services.scopes import (
    SCOPE_FIELDS,
    scope_create,
    scope_delete,
    scope_set_tools,
    scope_update,
)
from registry.services.servers import (
    SERVER_FIELDS,
    server_create,
    server_import,
    server_transition,
    server_update,
)
from registry.services.tools import (
    TOOL_DEFINITION_FIELDS,
    SyncSummary,
    definition_dict,
    tool_approve,
    tool_block,
    tools_record_discovery,
)

__all__ = [
    "AGENT_FIELDS",
    "AGENT_PERMISSION",
    "GRANT_FIELDS",
    "SCOPE_FIELDS",
    "SERVER_FIELDS",
    "TERM_FIELDS",
    "TOOL_DEFINITION_FIELDS",
    "SyncSummary",
    "agent_create",
    "agent_principal_add",
    "agent_principal_remove",
    "agent_transition",
    "agent_update",
    "definition_dict",
    "grant_create",
    "grant_revoke",
    "grant_update",
    "scope_create",
    "scope_delete",
    "scope_set_tools",
    "scope_update",
    "server_create",
    "server_import",
    "server_transition",
    "server_update",
    "tool_approve",
    "tool_block",
    "tools_record_discovery",
]
