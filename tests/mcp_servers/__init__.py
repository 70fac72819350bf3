"""Servers the registry discovery tests talk to: a real MCP server and a few that are not."""
