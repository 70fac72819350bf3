"""Registry web pages, one module per entity: servers (and their tool syncs), tools (with the
drift diff), scopes, agents, grants. Thin: parse the form → access helper → service →
post/redirect/get. ``registry/urls.py`` names each view by its module."""
