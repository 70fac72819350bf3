"""Where scim2-server's protocol core reads and writes one tenant's Users and Groups.

scim2-server (``ScimHandler``) validates each request with scim2-models, applies PUT and PATCH
to the current resource, and calls this storage between its steps; the storage reads through
``scim.selectors`` and writes through ``scim.services`` (audited, and acting on access), all
inside one transaction per SCIM operation.
"""

from __future__ import annotations

from typing import Any, cast

from django.db import transaction
from scim2_models import (
    NotFoundException,
    PreconditionFailedException,
    Resource,
    ResourceType,
    ResponseParameters,
    ScimFilter,
    SearchRequest,
)
from scim2_models.path import CompareOperator, Comparison
from scim2_server.storage import ScimStorage, SearchPage
from scim2_server.utils import parametrize

from governance.audit.services import Actor
from governance.tenancy.models import Tenant
from scim import selectors, services
from scim.models import ScimGroup, ScimUser

CORE_USER = "urn:ietf:params:scim:schemas:core:2.0:User"
CORE_GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
# Kept out of the stored document: the server's own attributes, a User's groups (computed from
# the groups' members) and any password (Tollgate accounts sign in through the IdP only).
NOT_STORED = ("id", "meta", "groups", "password")


def _version(row: ScimUser | ScimGroup) -> str:
    return f'W/"{row.version}"'


class TenantStorage(ScimStorage):
    """The SCIM resources of one tenant, written as ``actor`` (the SCIM token)."""

    def __init__(self, *, tenant: Tenant, actor: Actor, models: dict[str, type]) -> None:
        self.tenant = tenant
        self.actor = actor
        self.models = models  # resource type name → its scim2-models class

    def operation(self):
        return transaction.atomic()

    # -- conversion ---------------------------------------------------------------------------

    def _resource(self, name: str, row: ScimUser | ScimGroup,
                  groups: list[ScimGroup] | None = None) -> Resource[Any]:
        document = dict(row.document)
        document["id"] = str(row.scim_id)
        document["meta"] = {
            "resourceType": name,
            "created": row.created_at.isoformat(),
            "lastModified": row.updated_at.isoformat(),
            "version": _version(row),
        }
        if isinstance(row, ScimUser):
            groups = selectors.groups_of(row) if groups is None else groups
            if groups:
                document["groups"] = [
                    {"value": str(g.scim_id), "display": g.display_name,
                     "$ref": f"Groups/{g.scim_id}", "type": "direct"} for g in groups]
        return cast(Resource[Any], self.models[name].model_validate(document))

    @staticmethod
    def _document(resource: Resource[Any]) -> dict[str, Any]:
        document = resource.model_dump()
        for key in NOT_STORED:
            document.pop(key, None)
        return document

    def _row(self, name: str, resource_id: str) -> ScimUser | ScimGroup:
        row = (selectors.scim_user(self.tenant, resource_id) if name == "User"
               else selectors.scim_group(self.tenant, resource_id))
        if row is None:
            raise NotFoundException(detail=f"No {name} {resource_id}.")
        return row

    @staticmethod
    def _check_version(row: ScimUser | ScimGroup, expected_version: str | None) -> None:
        if expected_version is not None and expected_version != _version(row):
            raise PreconditionFailedException(detail="The resource changed meanwhile.")

    # -- ScimStorage --------------------------------------------------------------------------

    def get(self, resource_type: ResourceType, resource_id: str, *,
            response_parameters: ResponseParameters[Any] | None = None) -> Resource[Any]:
        return self._resource(resource_type.name, self._row(resource_type.name, resource_id))

    def search(self, resource_types: list[ResourceType], search_request: SearchRequest[Any],
               *, position: Any = None) -> SearchPage:
        start = search_request.start_index_0 or 0
        stop = None if search_request.count is None else start + search_request.count
        if len(resource_types) == 1 and search_request.sort_by is None:
            name = resource_types[0].name
            queryset, exact = self._queryset(name, search_request.filter)
            if exact:
                # No filter, or one the database answers exactly (what IdPs send): count and
                # page in the database, build only the page's resources.
                return SearchPage(queryset.count(), self._resources(name, queryset[start:stop]))
        found: list[Resource[Any]] = []
        for resource_type in resource_types:
            found.extend(self._matching(resource_type.name, search_request.filter))
        if search_request.sort_by is not None:
            descending = search_request.sort_order == SearchRequest.SortOrder.descending
            found.sort(key=lambda r: (search_request.sort_value(r) is None,
                                      search_request.sort_value(r) or "", r.id),
                       reverse=descending)
        return SearchPage(len(found), found[start:stop])

    def _resources(self, name: str, rows) -> list[Resource[Any]]:
        rows = list(rows)
        if name != "User":
            return [self._resource(name, row) for row in rows]
        groups = selectors.groups_by_member(self.tenant, rows)
        return [self._resource(name, row, groups[row.pk]) for row in rows]

    def _queryset(self, name: str, scim_filter: ScimFilter[Any] | None):
        """The rows a filter selects, and whether the database selected them exactly: with no
        filter, or an ``eq`` on userName (without case), externalId (exact) or, for groups,
        displayName (without case) — the RFC's semantics for those attributes."""
        if name == "User":
            return self._narrow(selectors.scim_users(self.tenant), scim_filter, {
                "username": lambda v: {"user_name_key": v.casefold()},
                "externalid": lambda v: {"external_id": v}})
        return self._narrow(selectors.scim_groups(self.tenant), scim_filter, {
            "displayname": lambda v: {"display_name__iexact": v},
            "externalid": lambda v: {"external_id": v}})

    def _matching(self, name: str, scim_filter: ScimFilter[Any] | None) -> list[Resource[Any]]:
        """Every resource of a type the filter matches, the filter evaluated by scim2-models
        on each candidate the database narrowed to."""
        queryset, _ = self._queryset(name, scim_filter)
        resources = self._resources(name, queryset)
        if scim_filter is None:
            return resources
        if not scim_filter.models:
            scim_filter = parametrize(ScimFilter, self.models[name])(str(scim_filter))
        return [r for r in resources if scim_filter.match(r)]

    @staticmethod
    def _narrow(queryset, scim_filter, lookups):
        if scim_filter is None:
            return queryset, True
        node = scim_filter.ast
        if (isinstance(node, Comparison) and node.op == CompareOperator.eq
                and isinstance(node.value, str) and node.attr_path.sub_attr is None
                and node.attr_path.uri in (None, "", CORE_USER, CORE_GROUP)):
            lookup = lookups.get(node.attr_path.attr.lower())
            if lookup is not None:
                return queryset.filter(**lookup(node.value)), True
        return queryset, False

    def create(self, resource_type: ResourceType, resource: Resource[Any]) -> Resource[Any]:
        document = self._document(resource)
        if resource_type.name == "User":
            row: ScimUser | ScimGroup = services.scim_user_create(
                tenant=self.tenant, actor=self.actor, document=document)
        else:
            row = services.scim_group_create(tenant=self.tenant, actor=self.actor,
                                             document=document)
        return self._resource(resource_type.name, row)

    def update(self, resource_type: ResourceType, resource: Resource[Any], *,
               expected_version: str | None = None) -> Resource[Any]:
        row = self._row(resource_type.name, cast(str, resource.id))
        self._check_version(row, expected_version)
        document = self._document(resource)
        if isinstance(row, ScimUser):
            row = services.scim_user_update(tenant=self.tenant, actor=self.actor,
                                            scim_user=row, document=document)
        else:
            row = services.scim_group_update(tenant=self.tenant, actor=self.actor, group=row,
                                             document=document)
        return self._resource(resource_type.name, row)

    def delete(self, resource_type: ResourceType, resource_id: str, *,
               expected_version: str | None = None) -> None:
        row = self._row(resource_type.name, resource_id)
        self._check_version(row, expected_version)
        if isinstance(row, ScimUser):
            services.scim_user_delete(tenant=self.tenant, actor=self.actor, scim_user=row)
        else:
            services.scim_group_delete(tenant=self.tenant, actor=self.actor, group=row)
