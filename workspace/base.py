"""What each role may do in the workspace, for every page at once.

Dispatchers hold no Django model permissions. What they may see and change follows from
their role and organisation alone, so permissions live here, in one base class, instead of
in rows of ``auth_permission`` that would have to be kept in step with the roles.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import admin
from django.db.models import Model, Q, QuerySet
from django.http import HttpRequest

from workspace.site import dispatcher_of, may_use_admin


class DispatcherAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Role-based permissions and organisation scoping for every dispatcher-facing admin.

    A superuser sees every organisation but writes only as a dispatcher of the record's
    organisation: every write is an op of a dispatcher's admin device, and an op needs one.
    Subclasses say which writes the workspace offers at all.
    """

    offers_add = False
    offers_change = False
    offers_delete = False
    # Path from the model to its organisation id, for scoping.
    organization_path = "organization_id"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        rows = super().get_queryset(request)
        if request.user.is_superuser:
            return rows
        dispatcher = dispatcher_of(request.user)
        if dispatcher is None:
            return rows.none()
        return rows.filter(**{self.organization_path: dispatcher.organization_id})

    def has_module_permission(self, request: HttpRequest) -> bool:
        return may_use_admin(request.user)

    def has_view_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return may_use_admin(request.user)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self.offers_add and dispatcher_of(request.user) is not None

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return self.offers_change and self.may_write(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return self.offers_delete and self.may_write(request, obj)

    def may_write(self, request: HttpRequest, obj: Model | None) -> bool:
        dispatcher = dispatcher_of(request.user)
        if dispatcher is None:
            return False
        return obj is None or self.organization_of(obj) == dispatcher.organization_id

    def organization_of(self, obj: Model) -> int | None:
        value = obj
        for part in self.organization_path.split("__"):
            value = getattr(value, part)
        return value  # type: ignore[return-value]


class ReadOnlyAdmin(DispatcherAdmin):
    """The logs (ops, events): visible, never edited from the admin."""

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions


class UuidSearchMixin:
    """Search by exact id: the logs are too big for a substring match on every row."""

    uuid_search_fields: tuple[str, ...] = ()

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        if not search_term:
            return queryset, False
        try:
            key = uuid.UUID(search_term.strip())
        except ValueError:
            return queryset.none(), False
        match = Q()
        for name in self.uuid_search_fields:
            match |= Q(**{name: key})
        return queryset.filter(match), False
