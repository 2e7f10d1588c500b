"""Read-only views of the op log and the event log, for support: why was a phone's change
refused, and what happened to a record. Nothing here can add, change or delete a row."""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from operations.models import Event, Operation
from workorders.registry import ENTITIES
from workspace.base import ReadOnlyAdmin, UuidSearchMixin
from workspace.paginator import EstimatedCountPaginator


class EntityFilter(admin.SimpleListFilter):
    """Entities from the registry (a DISTINCT over the log would scan it)."""

    title = "entity"
    parameter_name = "entity"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(name, name.replace("_", " ")) for name in ENTITIES]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(entity=self.value()) if self.value() else queryset


def pretty_json(value: object) -> SafeString:
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2, ensure_ascii=False))


def device_link(device_id: uuid.UUID | None) -> SafeString | str:
    if device_id is None:
        return "—"
    url = reverse("admin:accounts_device_change", args=[device_id])
    return format_html('<a href="{}">{}</a>', url, str(device_id)[:8])


class LogAdmin(UuidSearchMixin, ReadOnlyAdmin):
    paginator = EstimatedCountPaginator
    show_full_result_count = False
    list_per_page = 50

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest) -> bool:
        # Device and record pages link here filtered by device or record.
        return lookup in {"device", "device_id", "entity_id"} or super().lookup_allowed(
            lookup, value, request
        )


class OperationAdmin(LogAdmin):
    list_display = (
        "op_id",
        "device_column",
        "user",
        "seq",
        "entity",
        "action",
        "status",
        "code",
        "received_at",
        "finished_at",
    )
    list_filter = ("status", "action", EntityFilter, "rejected_at_push")
    list_select_related = ("user",)
    ordering = ("-received_at",)
    search_fields = ("op_id",)  # shows the search box; the search itself is by exact id
    uuid_search_fields = ("op_id", "entity_id", "device_id")
    readonly_fields = (
        "op_id",
        "device_column",
        "user",
        "seq",
        "entity",
        "entity_id",
        "action",
        "base_version",
        "payload",
        "client_time",
        "received_at",
        "status",
        "rejected_at_push",
        "code",
        "detail",
        "version",
        "overridden_fields",
        "conflict_ids",
        "finished_at",
    )
    fields = readonly_fields

    @admin.display(description="device")
    def device_column(self, op: Operation) -> SafeString | str:
        return device_link(op.device_id)

    @admin.display(description="fields (payload)")
    def payload(self, op: Operation) -> SafeString:
        return pretty_json(op.fields)


class EventAdmin(LogAdmin):
    list_display = (
        "created_at",
        "entity",
        "entity_id",
        "version",
        "kind",
        "actor",
        "device_column",
        "changed_fields",
    )
    list_filter = ("kind", EntityFilter)
    list_select_related = ("actor",)
    ordering = ("-id",)
    search_fields = ("entity_id",)
    uuid_search_fields = ("entity_id", "op_id")
    readonly_fields = (
        "entity",
        "entity_id",
        "version",
        "bumped",
        "kind",
        "op_id",
        "device_column",
        "seq",
        "actor",
        "changes_json",
        "overridden_fields",
        "conflict_ids",
        "received_at",
        "created_at",
    )
    fields = readonly_fields

    @admin.display(description="device")
    def device_column(self, event: Event) -> SafeString | str:
        return device_link(event.device_id)

    @admin.display(description="fields")
    def changed_fields(self, event: Event) -> str:
        return ", ".join(event.changes) or "—"

    @admin.display(description="changes (old → new)")
    def changes_json(self, event: Event) -> SafeString:
        return pretty_json(event.changes)
