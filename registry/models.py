"""Registry models: filled in by the registry issue."""
