"""Approvals models: filled in by the approvals issue."""
