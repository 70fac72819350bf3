"""Serializers of the SCIM tokens API. The plaintext is in the creation answer only."""

from __future__ import annotations

from rest_framework import serializers

from governance.tenancy.api.serializers import username_out


class ScimTokenIn(serializers.Serializer):
    name = serializers.CharField(max_length=100,
                                 help_text="which IdP connection uses it, e.g. Okta production")


class ScimTokenOut(serializers.Serializer):
    id = serializers.IntegerField(read_only=True)
    name = serializers.CharField(read_only=True)
    prefix = serializers.CharField(read_only=True, help_text="identifies the token; not secret")
    created_by = username_out(source="created_by.username")
    created_at = serializers.DateTimeField(read_only=True)
    last_used_at = serializers.DateTimeField(read_only=True, allow_null=True)
    revoked_at = serializers.DateTimeField(read_only=True, allow_null=True)
    active = serializers.BooleanField(read_only=True, source="is_active")


class ScimTokenCreatedOut(ScimTokenOut):
    token = serializers.CharField(read_only=True, help_text="the plaintext, shown only here")
    endpoint = serializers.CharField(read_only=True, help_text="the SCIM base URL")
