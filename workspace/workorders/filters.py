"""The work order list's filters beyond plain field values."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.contrib import admin
from django.db.models import Exists, QuerySet
from django.http import HttpRequest
from django.utils import timezone

from workspace.annotations import open_conflicts_here, uploads_in_progress_here
from workspace.workorders.wire import technicians_for


class TechnicianFilter(admin.SimpleListFilter):
    title = "technician"
    parameter_name = "technician"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        users = technicians_for(request.user)
        named = [(str(pk), name) for pk, name in users.values_list("pk", "username")]
        return [("none", "Unassigned"), *named]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value == "none":
            return queryset.filter(assigned_to__isnull=True)
        if value and value.isascii() and value.isdigit():
            return queryset.filter(assigned_to_id=int(value))
        return queryset


class ScheduledDayFilter(admin.SimpleListFilter):
    title = "scheduled day"
    parameter_name = "scheduled_day"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        today = timezone.now().date()
        days = [today + timedelta(days=offset) for offset in range(-1, 7)]
        names = {-1: "Yesterday", 0: "Today", 1: "Tomorrow"}
        return [
            *[(d.isoformat(), names.get((d - today).days, d.strftime("%a %d %b"))) for d in days],
            ("none", "Unscheduled"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value == "none":
            return queryset.filter(scheduled_start__isnull=True)
        if not value:
            return queryset
        try:
            day = date.fromisoformat(value)
        except ValueError:
            return queryset
        start = datetime.combine(day, time.min, tzinfo=UTC)
        return queryset.filter(
            scheduled_start__gte=start, scheduled_start__lt=start + timedelta(days=1)
        )


class YesFilter(admin.SimpleListFilter):
    """A yes/no filter on an ``Exists`` condition."""

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Yes"), ("no", "No")]

    def condition(self) -> Exists:
        raise NotImplementedError

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "yes":
            return queryset.filter(self.condition())
        if self.value() == "no":
            return queryset.filter(~self.condition())
        return queryset


class OpenConflictsFilter(YesFilter):
    title = "open conflicts"
    parameter_name = "open_conflicts"

    def condition(self) -> Exists:
        return Exists(open_conflicts_here())


class UploadingFilter(YesFilter):
    title = "attachments still uploading"
    parameter_name = "uploading"

    def condition(self) -> Exists:
        return Exists(uploads_in_progress_here())


class RecordStateFilter(admin.SimpleListFilter):
    """Live records by default; deleted ones (tombstones) on request."""

    title = "record"
    parameter_name = "record"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("deleted", "Deleted")]

    def choices(self, changelist: Any) -> Any:
        for choice in super().choices(changelist):
            if choice["display"] == "All":
                choice["display"] = "Live"
            yield choice

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(deleted=self.value() == "deleted")
