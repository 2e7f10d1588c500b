"""Conflicts: a concurrent edit of a ``manual`` field (or of a deleted record), kept for a
person to resolve. The record keeps the server value until then."""

from __future__ import annotations

import uuid

from django.db import models

from accounts.models import Device, Organization, User


class ConflictStatus(models.TextChoices):
    OPEN = "open"
    RESOLVED = "resolved"


class Resolution(models.TextChoices):
    SERVER = "server"
    CLIENT = "client"
    CUSTOM = "custom"


class Conflict(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    entity = models.CharField(max_length=40)
    entity_id = models.UUIDField()
    work_order_id = models.UUIDField()
    field = models.CharField(max_length=60)
    base_value = models.JSONField(null=True)
    server_value = models.JSONField(null=True)
    client_value = models.JSONField(null=True)
    op_id = models.UUIDField()
    device = models.ForeignKey(Device, on_delete=models.PROTECT, related_name="+")
    author = models.ForeignKey(User, on_delete=models.PROTECT, related_name="+")
    status = models.CharField(
        max_length=10, choices=ConflictStatus.choices, default=ConflictStatus.OPEN
    )
    resolution = models.CharField(max_length=10, choices=Resolution.choices, blank=True)
    resolved_value = models.JSONField(null=True, blank=True)
    resolved_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    version_after = models.BigIntegerField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["op_id", "field"], name="conflict_op_field_uniq"),
        ]
        indexes = [
            models.Index(fields=["organization", "status", "created_at"], name="conflict_org_idx"),
            models.Index(fields=["work_order_id", "status"], name="conflict_wo_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.entity}.{self.field} ({self.status})"
