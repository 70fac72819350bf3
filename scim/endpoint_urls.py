"""/scim/v2/<tenant>/… : the SCIM endpoint (its own bearer tokens; see scim/endpoint.py)."""

from __future__ import annotations

from django.urls import re_path

from scim.endpoint import scim_endpoint

urlpatterns = [
    re_path(r"^scim/v2/(?P<scim_tenant>[a-z0-9-]{1,50})(?P<scim_path>/.*)?$", scim_endpoint,
            name="scim-endpoint"),
]
