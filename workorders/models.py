"""The synced records. They are a projection of the event log (operations.Event):
``manage.py rebuild_projection`` recomputes them from the events alone."""

from __future__ import annotations

from typing import Any, ClassVar

from django.conf import settings
from django.db import models

from accounts.models import Organization


class SyncedRecord(models.Model):
    objects: ClassVar[models.Manager[Any]]

    # Client-made UUID: a record has the same id on the phone and on the server from birth.
    id = models.UUIDField(primary_key=True)
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    version = models.PositiveIntegerField(default=0)
    deleted = models.BooleanField(default=False)
    # Per field: {"v": version that last changed it, "d": device id, "s": seq, "op": op id}.
    field_meta = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True


class Priority(models.TextChoices):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


class Status(models.TextChoices):
    NEW = "new"
    SCHEDULED = "scheduled"
    EN_ROUTE = "en_route"
    ON_SITE = "on_site"
    ON_HOLD = "on_hold"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class WorkOrder(SyncedRecord):
    title = models.CharField(max_length=200, blank=True, default="")
    description = models.TextField(blank=True, default="")
    address = models.CharField(max_length=500, blank=True, default="")
    customer_name = models.CharField(max_length=200, blank=True, default="")
    customer_phone = models.CharField(max_length=50, blank=True, default="")
    scheduled_start = models.DateTimeField(null=True, blank=True)
    scheduled_end = models.DateTimeField(null=True, blank=True)
    priority = models.CharField(max_length=10, choices=Priority.choices, default=Priority.NORMAL)
    assigned_to = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="assigned_work_orders",
    )
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.NEW)
    technician_notes = models.TextField(blank=True, default="")
    arrived_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["organization", "assigned_to"], name="wo_org_assignee_idx"),
            models.Index(fields=["organization", "scheduled_start"], name="wo_org_sched_idx"),
            models.Index(fields=["organization", "status"], name="wo_org_status_idx"),
        ]

    def __str__(self) -> str:
        return self.title or str(self.id)


class ChecklistItem(SyncedRecord):
    work_order = models.ForeignKey(WorkOrder, on_delete=models.PROTECT, related_name="checklist")
    label = models.CharField(max_length=500, blank=True, default="")
    done = models.BooleanField(default=False)

    def __str__(self) -> str:
        return self.label


class Comment(SyncedRecord):
    work_order = models.ForeignKey(WorkOrder, on_delete=models.PROTECT, related_name="comments")
    body = models.TextField(blank=True, default="")

    def __str__(self) -> str:
        return self.body[:50]
