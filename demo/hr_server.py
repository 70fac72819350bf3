"""The demo tenant's MCP server: a tiny HR system over stdio (official SDK, ``MCPServer``).

``make run`` registers it for tenant ``acme`` as a stdio server, so the registry has a real
server to sync, review and grant. Data is made up and kept in memory.
Run by hand: ``python demo/hr_server.py`` (speaks MCP on stdin/stdout).
"""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer
from mcp_types import ToolAnnotations

EMPLOYEES = {
    "E100": {"name": "Ada Lovelace", "team": "Analytics", "salary": 182_000},
    "E101": {"name": "Grace Hopper", "team": "Compilers", "salary": 176_500},
    "E102": {"name": "Alan Turing", "team": "Research", "salary": 169_000},
}

server = MCPServer("acme-hr", version="1.0.0", instructions="Acme's HR records (demo data).")


@server.tool(
    title="Look up an employee",
    annotations=ToolAnnotations(readOnlyHint=True, openWorldHint=False),
)
def lookup_employee(employee_id: str) -> dict:
    """Name and team of one employee (no salary)."""
    employee = EMPLOYEES.get(employee_id)
    if employee is None:
        raise ValueError(f"No employee {employee_id}")
    return {"employee_id": employee_id, "name": employee["name"], "team": employee["team"]}


@server.tool(
    title="Read a salary",
    annotations=ToolAnnotations(readOnlyHint=True, openWorldHint=False),
)
def get_salary(employee_id: str) -> dict:
    """The current yearly salary of one employee, in USD."""
    employee = EMPLOYEES.get(employee_id)
    if employee is None:
        raise ValueError(f"No employee {employee_id}")
    return {"employee_id": employee_id, "salary_usd": employee["salary"]}


@server.tool(
    title="Adjust a salary",
    annotations=ToolAnnotations(destructiveHint=True, idempotentHint=False, openWorldHint=False),
)
def adjust_salary(employee_id: str, delta_usd: int, reason: str) -> dict:
    """Raise or lower a salary by delta_usd; the reason is kept with the change."""
    employee = EMPLOYEES.get(employee_id)
    if employee is None:
        raise ValueError(f"No employee {employee_id}")
    employee["salary"] += delta_usd
    return {"employee_id": employee_id, "salary_usd": employee["salary"], "reason": reason}


if __name__ == "__main__":
    server.run("stdio")
